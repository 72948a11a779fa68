"""The probe module's action: checking the checks' configuration needs no host.

With validate_only the configuration is checked here, on the control node, against the same argument
spec and per-type rules the module applies (module_utils/health_checks.py), so that preflight's check of
the verification checks costs no module call on each host. Running the checks goes to the host as usual.
"""

from __future__ import annotations

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase
from ansible_collections.deployctl.core.plugins.module_utils.health_checks import PROBE_OPTIONS, invalid_checks


class ActionModule(ActionBase):
    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        if not self._task.args.get("validate_only"):
            result.update(self._execute_module(module_name="deployctl.core.probe", task_vars=task_vars))
            return result
        validation = ArgumentSpecValidator(PROBE_OPTIONS).validate(self._task.args)
        problems = [str(error) for error in validation.errors] or invalid_checks(validation.validated_parameters)
        if problems:
            result.update(failed=True, invalid=True, msg="; ".join(problems), checks=[], failed_checks=[])
        else:
            count = len(validation.validated_parameters["checks"])
            result.update(changed=False, invalid=False, checks=[], failed_checks=[], msg=f"{count} checks are valid")
        return result
