"""What an action hands deployctl from its own result, instead of a set_stats task after it.

deployctl reads what a phase found from the `ansible_stats` of the phase's task results, under the
"deployctl" key, per host: what ansible.builtin.set_stats returns. An action whose module's answer is the
report puts it there itself, failed or not: a set_stats task after the module (in an `always:` or behind
`failed_when: false` and an assert) is one more task on every host, a worker and a round of variables on
the control node. Ansible keeps the stats of a task that passed (AWX shows them); deployctl reads a failed
task's too.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase

REPORT_KEY = "deployctl"  # deployctl/runner.py reads this key


def add_report(result: dict, host: str, report: dict) -> dict:
    """The result with `report` as this host's, the way set_stats (per_host false, aggregate true) hands it."""
    result["ansible_stats"] = {"data": {REPORT_KEY: {host: report}}, "per_host": False, "aggregate": True}
    return result


class ReportingAction(ActionBase):
    """The action of a module whose answer is its report: runs MODULE on the host, adds `report(result)`."""

    TRANSFERS_FILES = False
    MODULE = ""

    def report(self, result: dict) -> dict:
        raise NotImplementedError

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        result.update(self._execute_module(module_name=self.MODULE, module_args=dict(self._task.args),
                                           task_vars=task_vars))
        return add_report(result, task_vars["inventory_hostname"], self.report(result))
