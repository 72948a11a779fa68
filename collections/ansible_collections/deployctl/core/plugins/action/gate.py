"""The boundary between two phases of one ansible-playbook run: wait for the control node's answer.

deployctl runs a release as one playbook (one process) and still decides after every phase whether the
next one may start. Before each phase a gate play runs this action on the controller: it waits until
deployctl has read the previous phase's results from the event stream and written its answer, a file in
the run's private directory: `<index>-<phase>.json` (go, with the variables of the phase, which the next
task includes), `<index>-<phase>.skip` (the command does not need this phase after all: its tasks are
skipped) or `<index>-<phase>.stop` (stop here: the task fails for every host and the run ends).

It never touches a host. If the control node's deployctl process is gone, nobody will answer: the run
stops at the boundary instead of going on unsupervised.
"""

from __future__ import annotations

import os
import time

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

POLL_SECONDS = 0.02


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _REQUIRED_ARGS = ("answers", "index", "phase", "controller_pid")
    _VALID_ARGS = frozenset((*_REQUIRED_ARGS, "hosts"))
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        missing = sorted(name for name in self._REQUIRED_ARGS if name not in args)
        if missing:
            raise AnsibleActionFail(f"gate needs {', '.join(missing)}")
        base = os.path.join(str(args["answers"]), f"{int(args['index']):02d}-{args['phase']}")
        controller = int(args["controller_pid"])
        # told to deployctl through the task's result: what its progress display counts the phase's hosts against
        if "hosts" in args:
            result.update(phase=str(args["phase"]), hosts=list(args["hosts"] or []))
        checked = 0.0
        while True:
            if os.path.exists(base + ".stop"):
                result.update(failed=True, msg=f"deployctl stopped the run before {args['phase']}")
                return result
            if os.path.exists(base + ".json"):
                result.update(changed=False, skip=False, variables_file=base + ".json")
                return result
            if os.path.exists(base + ".skip"):
                result.update(changed=False, skip=True)
                return result
            now = time.monotonic()
            if now - checked > 1:
                checked = now
                if not _alive(controller):
                    result.update(failed=True, msg=f"the deployctl process (pid {controller}) that runs this "
                                                   f"playbook is gone: stopped before {args['phase']}")
                    return result
            time.sleep(POLL_SECONDS)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
