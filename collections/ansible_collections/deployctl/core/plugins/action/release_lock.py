"""The release_lock module's action: the module's answer goes to deployctl with it, refused or not.

deployctl reads what a phase found from the `ansible_stats` of its task results (what
ansible.builtin.set_stats returns), under the "deployctl" key, per host. A lock the module could not change
fails the task, and deployctl still needs to know who holds it: the module's holder is added here to its
own result, failed or not, instead of a set_stats task and an assert after a module told not to fail. That
was two more tasks on every host of every lock and unlock, each a worker and a round of variables on the
control node. Ansible itself takes the stats of a task that passed (AWX sees them too); deployctl reads
them from a failed one as well.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        result.update(self._execute_module(module_name="deployctl.core.release_lock",
                                           module_args=dict(self._task.args), task_vars=task_vars))
        host = task_vars["inventory_hostname"]
        report = {"lock": result.get("holder"), "held_by_other": bool(result.get("held_by_other"))}
        result["ansible_stats"] = {"data": {"deployctl": {host: report}}, "per_host": False, "aggregate": True}
        return result
