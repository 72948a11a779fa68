#!/usr/bin/python
# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""Run one command in a process group of its own, recorded on the host so that recovery can stop it."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: tracked_command
short_description: Run a command in its own process group, recorded on the host while it runs
version_added: "0.2.0"
description:
  - Runs a command like M(ansible.builtin.command) (no shell), but in a session and process group of its own,
    and records the group under C(<app_root>/.deployctl/processes/) before the command executes. The record
    is removed once the command has ended.
  - When the Ansible worker, the SSH connection or the control node dies meanwhile, the command keeps
    running and its record stays; M(deployctl.core.tracked_processes) kills the group and confirms it is
    gone, which deployctl does before it restores any database.
  - Output is collected through files, not pipes, so a command that leaves a daemon behind (a restart)
    returns when it exits itself.
options:
  cmd: {description: "Command line, split like a shell would but run without one.", type: str}
  argv: {description: The command as a list of arguments (instead of O(cmd))., type: list, elements: str}
  status_cmd:
    description:
      - A read-only command that reports the state the command changes (a migration tool's current revision),
        split like O(cmd). It runs, tracked the same way, in the same directory and environment, before the
        command and after it (also after a failed one), in the same module call; its output is returned as
        RV(status_before) and RV(status_after), and the task is changed when they differ.
      - With no O(cmd) or O(argv), only the status is read.
    type: str
  status_argv: {description: O(status_cmd) as a list of arguments., type: list, elements: str}
  chdir: {description: Directory to run the command in., type: path}
  app_root: {description: Root of the app; the registry is C(<app_root>/.deployctl/processes)., type: path, required: true}
  deployment_id: {description: "Deployment the command belongs to, kept in the record.", type: str, default: ""}
  label: {description: "What the command is for (migrate, restart, ...), kept in the record.", type: str, default: command}
  timeout: {description: Seconds after which the whole group is killed and the task fails (0 for none)., type: int, default: 0}
  scrub:
    description: Secret values masked in the output returned (the command may print a password it was given).
    type: list
    elements: str
    default: []
notes:
  - In check mode the command does not run (the task is skipped), unless the task sets C(check_mode) to V(false);
    O(status_cmd) still runs, once (RV(status_after) is RV(status_before)).
author:
  - deployctl maintainers (@deployctl)
"""

EXAMPLES = r"""
- name: Run the migrations
  deployctl.core.tracked_command:
    cmd: bin/migrate
    chdir: /srv/app/current
    app_root: /srv/app
    deployment_id: DEP-20261201-093000
    label: migrate

- name: Run the migrations, reading the revision before and after
  deployctl.core.tracked_command:
    cmd: alembic upgrade head
    status_cmd: alembic current
    chdir: /srv/app/releases/v1.4.0
    app_root: /srv/app
    label: migrate
"""

RETURN = r"""
rc: {description: Exit status of the command., type: int, returned: when it ran}
stdout: {description: Standard output (its last 256 KiB)., type: str, returned: when it ran}
stderr: {description: Standard error (its last 256 KiB)., type: str, returned: when it ran}
seconds: {description: How long it ran., type: float, returned: when it ran}
ran:
  description: Whether the command itself ran (not in check mode, nor with only a status to read).
  type: bool
  returned: always
status_before: {description: "Output of O(status_cmd) before the command, stripped.", type: str, returned: with O(status_cmd)}
status_after: {description: "Output of O(status_cmd) after the command, stripped.", type: str, returned: "with O(status_cmd), once it ran"}
"""

import os
import shlex

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.deployctl.core.plugins.module_utils import processes


def run_tracked(argv, params):
    return processes.run_command(argv, cwd=params["chdir"], timeout=params["timeout"], scrub=params["scrub"])


def read_status(argv, params):
    """The status command's output, stripped; CommandFailed when it fails."""
    result = run_tracked(argv, params)
    if result["rc"] != 0:
        raise processes.CommandFailed(f"the status command {processes.failure(argv, result)}")
    return result["stdout"].strip()


def main():
    module = AnsibleModule(
        argument_spec={
            "cmd": {"type": "str"},
            "argv": {"type": "list", "elements": "str"},
            "status_cmd": {"type": "str"},
            "status_argv": {"type": "list", "elements": "str"},
            "chdir": {"type": "path"},
            "app_root": {"type": "path", "required": True},
            "deployment_id": {"type": "str", "default": ""},
            "label": {"type": "str", "default": "command"},
            "timeout": {"type": "int", "default": 0},
            "scrub": {"type": "list", "elements": "str", "default": [], "no_log": True},
        },
        required_one_of=[("cmd", "argv", "status_cmd", "status_argv")],
        mutually_exclusive=[("cmd", "argv"), ("status_cmd", "status_argv")],
        supports_check_mode=True,
    )
    params = module.params
    argv = params["argv"] or shlex.split(params["cmd"] or "")
    status = params["status_argv"] or shlex.split(params["status_cmd"] or "")
    if not argv and not status:
        module.fail_json(msg="the command is empty")
    if module.check_mode and not status:
        # as ansible.builtin.command does: reported as skipped, with empty output for changed_when and friends
        module.exit_json(changed=False, skipped=True, msg="not run in check mode", rc=0, stdout="", stderr="",
                         ran=False)
    if params["chdir"] and not os.path.isdir(params["chdir"]):
        module.fail_json(msg=f"cannot run {(argv or status)[0]}: {params['chdir']} is not a directory")
    processes.configure(processes.registry_dir(params["app_root"]), params["deployment_id"], params["label"])
    result = {"ran": False}
    try:
        if status:
            result["status_before"] = read_status(status, params)
        if not argv or module.check_mode:
            module.exit_json(changed=False, skipped=module.check_mode and bool(argv), rc=0, stdout="", stderr="",
                             status_after=result.get("status_before"), **result)
        result.update(run_tracked(argv, params), ran=True)
    except processes.CommandFailed as exc:
        module.fail_json(msg=str(exc), **{**result, **exc.result})
    try:
        if status:
            result["status_after"] = read_status(status, params)
    except processes.CommandFailed as exc:
        if result["rc"] == 0:
            module.fail_json(msg=str(exc), **result)
    result["changed"] = result["status_before"] != result.get("status_after") if status else True
    if result["rc"] != 0:
        module.fail_json(msg=processes.failure(argv, result), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
