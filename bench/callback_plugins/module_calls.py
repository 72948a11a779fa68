"""Counts, for every host, the module calls a playbook run made on it, and writes them out at the end.

Enabled by bench/benchlib.py (ANSIBLE_CALLBACKS_ENABLED=module_calls) for the runs it measures; the
counts go, as JSON, to the file named by DEPLOYCTL_BENCH_MODULE_CALLS:
{"host": {"remote": N, "controller": N, "skipped": N, "tasks": {task: N}}, ...}. "remote" are the module
executions on the host itself (each loop item counts; "tasks" has them by task name), the per-host cost on
any machine; "controller" are actions that run on the control node only (set_stats, assert, the gates) or
tasks delegated to localhost.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: module_calls
type: aggregate
short_description: count module calls per host
description: Counts the module calls of a run per host and writes them as JSON to a file.
requirements:
  - DEPLOYCTL_BENCH_MODULE_CALLS names the file to write
"""

# actions whose work happens in the action plugin on the control node, with no module sent to the host
CONTROLLER_ACTIONS = {"add_host", "assert", "debug", "fail", "gate", "group_by", "include_role", "include_tasks",
                      "include_vars", "import_role", "import_tasks", "meta", "pause", "set_fact", "set_stats",
                      "validate_argument_spec"}


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "module_calls"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.counts: defaultdict[str, Counter] = defaultdict(Counter)
        self.tasks: defaultdict[str, Counter] = defaultdict(Counter)

    def _count(self, result, skipped: bool = False) -> None:
        task, host = result._task, result._host.get_name()
        if skipped:
            self.counts[host]["skipped"] += 1
            return
        action = task.action.rsplit(".", 1)[-1]
        on_controller = action in CONTROLLER_ACTIONS or task.delegate_to in ("localhost", "127.0.0.1") or (
            action == "probe" and bool(task.args.get("validate_only")))  # plugins/action/probe.py
        items = result._result.get("results") if task.loop is not None else None
        calls = sum(1 for item in items if not item.get("skipped")) if isinstance(items, list) else 1
        self.counts[host]["controller" if on_controller else "remote"] += calls
        if not on_controller:
            self.tasks[host][task.get_name()] += calls

    def v2_runner_on_ok(self, result):
        self._count(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._count(result)

    def v2_runner_on_unreachable(self, result):
        self._count(result)

    def v2_runner_on_skipped(self, result):
        self._count(result, skipped=True)

    def v2_playbook_on_stats(self, stats):
        target = os.environ.get("DEPLOYCTL_BENCH_MODULE_CALLS")
        if target:
            with open(target, "w", encoding="utf-8") as out:
                json.dump({host: {**counts, "tasks": dict(self.tasks[host])} for host, counts in self.counts.items()},
                          out)
