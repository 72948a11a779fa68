#!/usr/bin/python
# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""Stop the commands deployctl started on a host (recorded by tracked_command and the other modules)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: tracked_processes
short_description: List or stop the process groups deployctl recorded on a host
version_added: "0.2.0"
description:
  - Every command deployctl's modules start runs in a process group of its own, recorded under
    C(<app_root>/.deployctl/processes/). C(state=stopped) sends each recorded group SIGTERM, then SIGKILL
    after O(grace) seconds, and confirms that no process of the group is left. It fails, naming the pids,
    when one survives; nothing may be restored under a command that still runs.
  - C(state=listed) reports the recorded groups and whether they still run.
options:
  app_root: {description: Root of the app; the registry is C(<app_root>/.deployctl/processes)., type: path, required: true}
  state: {description: What to do., type: str, choices: [stopped, listed], default: listed}
  deployment_id: {description: Only the commands of this deployment (all when empty)., type: str, default: ""}
  grace: {description: Seconds between SIGTERM and SIGKILL., type: float, default: 10}
author:
  - deployctl maintainers (@deployctl)
"""

EXAMPLES = r"""
- name: Stop what a cancelled deployment started, and wait until it is gone
  deployctl.core.tracked_processes:
    app_root: /srv/app
    deployment_id: DEP-20261201-093000
    state: stopped
    grace: 10

- name: List what runs for deployctl on the host
  deployctl.core.tracked_processes:
    app_root: /srv/app
  register: deployctl_running
"""

RETURN = r"""
processes: {description: "With C(state=listed), every recorded group (pid, label, program, alive pids).", type: list, returned: always}
stopped: {description: "Groups that were killed or had already ended (pid, label, program, was_running).", type: list, returned: always}
survivors: {description: "Groups still alive (pid, label, program, alive pids).", type: list, returned: always}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.deployctl.core.plugins.module_utils import processes


def main():
    module = AnsibleModule(
        argument_spec={
            "app_root": {"type": "path", "required": True},
            "state": {"type": "str", "choices": ["stopped", "listed"], "default": "listed"},
            "deployment_id": {"type": "str", "default": ""},
            "grace": {"type": "float", "default": 10.0},
        },
        supports_check_mode=True,
    )
    params = module.params
    directory = processes.registry_dir(params["app_root"])
    only = params["deployment_id"] or None
    if params["state"] == "listed" or module.check_mode:
        ended, running = processes.stop(directory, only, check_mode=True)
        listed = running + ended
        if params["state"] == "listed":
            module.exit_json(changed=False, processes=listed, stopped=[], survivors=running)
        # check mode: what stopping would do
        module.exit_json(changed=bool(listed), processes=listed, stopped=[], survivors=[])
    stopped, survivors = processes.stop(directory, only, params["grace"])
    if survivors:
        named = ", ".join(f"pid {s['pid']} ({s.get('label')}, still running: {s['alive']})"
                          for s in survivors)
        module.fail_json(msg="could not stop " + named, stopped=stopped, survivors=survivors)
    module.exit_json(changed=bool(stopped), stopped=stopped, survivors=survivors)


if __name__ == "__main__":
    main()
