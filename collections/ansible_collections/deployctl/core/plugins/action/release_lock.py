"""The release_lock module's action: the holder goes to deployctl with the module's answer, refused or not.

The module fails on its own when the lock is someone else's; deployctl still needs to know whose it is
(plugin_utils/reports.py).
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.deployctl.core.plugins.plugin_utils.reports import add_report


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        result.update(self._execute_module(module_name="deployctl.core.release_lock",
                                           module_args=dict(self._task.args), task_vars=task_vars))
        return add_report(result, task_vars["inventory_hostname"],
                          {"lock": result.get("holder"), "held_by_other": bool(result.get("held_by_other"))})
