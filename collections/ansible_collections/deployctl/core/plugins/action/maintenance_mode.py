"""The maintenance_mode module's action: when the flag went up or came down goes to deployctl with the answer.

That time is the downtime `deployctl report` shows (plugin_utils/reports.py).
"""

from __future__ import annotations

from ansible_collections.deployctl.core.plugins.plugin_utils.reports import ReportingAction


class ActionModule(ReportingAction):
    MODULE = "deployctl.core.maintenance_mode"

    def report(self, result: dict) -> dict:
        return {"maintenance_flag": {self._task.args.get("state"): result.get("flag_at")}}
