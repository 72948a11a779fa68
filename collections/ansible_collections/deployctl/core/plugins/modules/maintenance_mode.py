#!/usr/bin/python
"""Maintenance mode on one host: the flag file and the app's background workers, in one call."""

from __future__ import annotations

DOCUMENTATION = r"""
module: maintenance_mode
short_description: Put up or take down the maintenance flag and stop or start the app's workers
description:
  - C(state=on) stops every worker whose status command says it runs, then writes
    C(<app_root>/shared/maintenance.json) (message, until). C(state=off) removes the flag, then starts every
    worker that does not run. The workers need the old version stopped, not the users, so they stop before the
    page goes up and start after it came down, outside the downtime.
  - Worker commands run in C(<app_root>/current); without a live release there are no workers to touch.
  - One module call instead of a task per step, because maintenance mode sits inside the release's downtime.
options:
  app_root: {description: Root of the app (holds shared/ and current)., type: path, required: true}
  state: {description: Wanted state., type: str, choices: ["on", "off"], required: true}
  page_message: {description: Shown to users while maintenance is on (the flag's C(message))., type: str, default: ""}
  until: {description: When maintenance is expected to end., type: str, default: ""}
  workers:
    description: Workers, each with C(name), C(status) (exit 0 when running), C(stop) and C(start) commands.
    type: list
    elements: dict
    default: []
  deployment_id:
    description:
      - Deployment the worker commands belong to, kept in the record of the commands the module runs
        (C(<app_root>/.deployctl/processes), see M(deployctl.core.tracked_processes)).
    type: str
    default: ""
author:
  - deployctl maintainers (@deployctl)
"""

EXAMPLES = r"""
- name: Maintenance on
  deployctl.core.maintenance_mode:
    app_root: /srv/app
    state: "on"
    page_message: Back in five minutes
    workers:
      - {name: jobs, status: bin/worker status, stop: bin/worker stop, start: bin/worker start}
"""

RETURN = r"""
stopped: {description: Workers stopped., type: list, returned: always}
started: {description: Workers started., type: list, returned: always}
flag_at:
  description:
    - When the maintenance flag went up (C(on), the flag file's time when it was up already) or came down
      (C(off)), in seconds since the epoch on the host's clock; null when C(off) found no flag, and in check
      mode. The time between the two is how long the host answered with the maintenance page.
  type: float
  returned: always
"""

import json
import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.deployctl.core.plugins.module_utils import processes
from ansible_collections.deployctl.core.plugins.module_utils.files import write_atomic


def _run(command, cwd, label):
    rc, out, err = processes.run_text(processes.argv_of(command), timeout=300, label=label, cwd=cwd)
    return rc, (err or out).strip()


def main():
    module = AnsibleModule(
        argument_spec={
            "app_root": {"type": "path", "required": True},
            "state": {"type": "str", "required": True, "choices": ["on", "off"]},
            "page_message": {"type": "str", "default": ""},
            "until": {"type": "str", "default": ""},
            "workers": {"type": "list", "elements": "dict", "default": []},
            "deployment_id": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    params = module.params
    shared = os.path.join(params["app_root"], "shared")
    flag = os.path.join(shared, "maintenance.json")
    current = os.path.join(params["app_root"], "current")
    check = module.check_mode
    turning_on = params["state"] == "on"
    changed = False
    stopped, started = [], []
    flag_at = None

    processes.configure(processes.registry_dir(params["app_root"]), params["deployment_id"])
    workers = params["workers"] if os.path.isdir(current) else []

    def switch_workers():
        nonlocal changed
        for worker in workers:
            running = _run(worker["status"], current, "worker status")[0] == 0
            if running != turning_on:
                continue
            changed = True
            (stopped if turning_on else started).append(worker["name"])
            if check:
                continue
            verb = "stop" if turning_on else "start"
            rc, output = _run(worker[verb], current, "worker " + verb)
            if rc != 0:
                module.fail_json(msg=f"could not {verb} worker {worker['name']}: {output[-500:]}",
                                 stopped=stopped, started=started, flag_at=flag_at)

    if turning_on:
        switch_workers()
        content = json.dumps({"message": params["page_message"], "until": params["until"]}, indent=2) + "\n"
        try:
            with open(flag) as handle:
                same = handle.read() == content
        except FileNotFoundError:
            same = False
        if not same:
            changed = True
            if not check:
                write_atomic(flag, content)
        if not check:
            flag_at = os.stat(flag).st_mtime
    else:
        if os.path.exists(flag):
            changed = True
            if not check:
                os.unlink(flag)
                flag_at = time.time()
        switch_workers()

    module.exit_json(changed=changed, stopped=stopped, started=started, flag_at=flag_at)


if __name__ == "__main__":
    main()
