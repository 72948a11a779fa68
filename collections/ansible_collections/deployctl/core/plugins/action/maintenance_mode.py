"""The maintenance_mode module's action: when the flag went up or came down goes to deployctl with the answer.

That time is the downtime `deployctl report` shows (plugin_utils/reports.py).
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.deployctl.core.plugins.plugin_utils.reports import add_report


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        result.update(self._execute_module(module_name="deployctl.core.maintenance_mode",
                                           module_args=dict(self._task.args), task_vars=task_vars))
        state = self._task.args.get("state")
        return add_report(result, task_vars["inventory_hostname"],
                          {"maintenance_flag": {state: result.get("flag_at")}})
