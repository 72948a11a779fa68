"""The release_lock module's action: the holder goes to deployctl with the module's answer, refused or not.

The module fails on its own when the lock is someone else's; deployctl still needs to know whose it is
(plugin_utils/reports.py).
"""

from __future__ import annotations

from ansible_collections.deployctl.core.plugins.plugin_utils.reports import ReportingAction


class ActionModule(ReportingAction):
    MODULE = "deployctl.core.release_lock"

    def report(self, result: dict) -> dict:
        return {"lock": result.get("holder"), "held_by_other": bool(result.get("held_by_other"))}
