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
  - In check mode the command does not run (the task is skipped), unless the task sets C(check_mode) to V(false).
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
"""

RETURN = r"""
rc: {description: Exit status of the command., type: int, returned: when it ran}
stdout: {description: Standard output (its last 256 KiB)., type: str, returned: when it ran}
stderr: {description: Standard error (its last 256 KiB)., type: str, returned: when it ran}
seconds: {description: How long it ran., type: float, returned: when it ran}
"""

import os
import shlex
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.deployctl.core.plugins.module_utils import processes


def main():
    module = AnsibleModule(
        argument_spec={
            "cmd": {"type": "str"},
            "argv": {"type": "list", "elements": "str"},
            "chdir": {"type": "path"},
            "app_root": {"type": "path", "required": True},
            "deployment_id": {"type": "str", "default": ""},
            "label": {"type": "str", "default": "command"},
            "timeout": {"type": "int", "default": 0},
            "scrub": {"type": "list", "elements": "str", "default": [], "no_log": True},
        },
        required_one_of=[("cmd", "argv")],
        mutually_exclusive=[("cmd", "argv")],
        supports_check_mode=True,
    )
    params = module.params
    argv = params["argv"] or shlex.split(params["cmd"] or "")
    if not argv:
        module.fail_json(msg="the command is empty")
    if module.check_mode:
        # as ansible.builtin.command does: reported as skipped, with empty output for changed_when and friends
        module.exit_json(changed=False, skipped=True, msg="not run in check mode", rc=0, stdout="", stderr="")
    if params["chdir"] and not os.path.isdir(params["chdir"]):
        module.fail_json(msg=f"cannot run {argv[0]}: {params['chdir']} is not a directory")
    processes.configure(processes.registry_dir(params["app_root"]), params["deployment_id"], params["label"])
    started = time.monotonic()
    try:
        done = processes.run(argv, cwd=params["chdir"], timeout=params["timeout"] or None)
    except subprocess.TimeoutExpired:
        module.fail_json(msg=f"{argv[0]} ran longer than {params['timeout']} s and was stopped", rc=-1)
    except OSError as exc:
        module.fail_json(msg=f"cannot run {argv[0]}: {exc.strerror or exc}", rc=127)
    stdout = processes.scrubbed(done.stdout.decode("utf-8", "replace"), params["scrub"])
    stderr = processes.scrubbed(done.stderr.decode("utf-8", "replace"), params["scrub"])
    result = {"rc": done.returncode, "stdout": stdout, "stderr": stderr,
              "seconds": round(time.monotonic() - started, 3), "changed": True}
    if done.returncode != 0:
        why = (stderr.strip() or stdout.strip()).splitlines()[-5:]
        reason = (": " + " / ".join(why)) if why else ""
        module.fail_json(msg=f"{argv[0]} exited with {done.returncode}{reason}",
                         **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
