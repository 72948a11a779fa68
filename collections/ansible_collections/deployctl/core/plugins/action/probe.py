"""The probe module's action: checking the checks' configuration needs no host.

With validate_only the configuration is checked here, on the control node, against the same argument
spec and per-type rules the module applies (module_utils/health_checks.py), so that preflight's check of
the verification checks costs no module call on each host. Running the checks goes to the host as usual.
Either way the result carries its report to deployctl (plugin_utils/reports.py): one structured result
per check, or the configuration the checks cannot run with, failed or not.
"""

from __future__ import annotations

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase
from ansible_collections.deployctl.core.plugins.module_utils.health_checks import PROBE_OPTIONS, invalid_checks
from ansible_collections.deployctl.core.plugins.plugin_utils.reports import add_report


class ActionModule(ActionBase):
    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        host = task_vars["inventory_hostname"]
        if not self._task.args.get("validate_only"):
            result.update(self._execute_module(module_name="deployctl.core.probe", task_vars=task_vars))
            return add_report(result, host, {"checks": result.get("checks") or []})
        validation = ArgumentSpecValidator(PROBE_OPTIONS).validate(self._task.args)
        problems = [str(error) for error in validation.errors] or invalid_checks(validation.validated_parameters)
        if problems:
            invalid = "; ".join(problems)
            result.update(failed=True, invalid=True, msg=f"deployctl_verify_checks: {invalid}", checks=[],
                          failed_checks=[])
            return add_report(result, host, {"invalid_checks": invalid})
        count = len(validation.validated_parameters["checks"])
        result.update(changed=False, invalid=False, checks=[], failed_checks=[], msg=f"{count} checks are valid")
        return result
