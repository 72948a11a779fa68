"""A stand-in for AnsibleRunner, for unit tests of the pipeline's decisions only.

Each phase answers what the test scripted for it: passed (the default), failed on some hosts,
unreachable hosts, timed out, or with reports (what the roles send through set_stats). Every call is
recorded, so a test can assert which phases ran, in which order, with which variables. Integration and
fault tests use the real runner against real hosts; this one never starts a process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deployctl.runner import PhaseResult


@dataclass
class Answer:
    """How a phase ends: per-host reports, failed and unreachable hosts, or a status like timeout."""

    reports: dict[str, dict] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)
    status: str = "successful"
    changed: list[str] = field(default_factory=list)
    hosts: list[str] | None = None  # the hosts the phase ran on (default: all of the runner's)


@dataclass
class Call:
    phase: str
    playbook: str
    variables: dict
    limit: str | None


class StubRunner:
    def __init__(self, hosts: list[str] | None = None, runs_dir: Path | None = None):
        self.hosts = hosts or ["localhost"]
        self.runs_dir = runs_dir or Path("/nonexistent")
        self.cancel = threading.Event()
        self.calls: list[Call] = []
        self.answers: dict[str, list[Answer | Callable[[dict], Answer]]] = {}
        self.streams: list[list[str]] = []  # the phases of every one-process run started
        self.streamed: list[str] = []  # the phases that ran in one of them

    def answer(self, phase: str, *answers: Answer | Callable[[dict], Answer]) -> None:
        """Script the next runs of `phase` (its name as the history knows it, e.g. "maintenance on")."""
        self.answers.setdefault(phase, []).extend(answers)

    def interrupt(self, phase: str) -> None:
        """The next run of `phase` is cut short by Ctrl-C (or SIGTERM): cancelled, and the cancel stays set."""

        def interrupted(_):
            self.cancel.set()
            return Answer(status="canceled")

        self.answer(phase, interrupted)

    @property
    def phases(self) -> list[str]:
        return [call.phase for call in self.calls]

    def variables(self, phase: str) -> dict:
        return next(call.variables for call in reversed(self.calls) if call.phase == phase)

    def run(self, deployment_id, seq, phase, playbook, extravars, limit=None) -> PhaseResult:
        name = phase.replace("-", " ")
        self.calls.append(Call(name, playbook, extravars, limit))
        queued = self.answers.get(name) or []
        answer = queued.pop(0) if queued else Answer()
        if callable(answer):
            answer = answer(extravars)
        return self._result(name, answer)

    def stream(self, deployment_id, seq, name, phases, extravars) -> StubStream:
        self.streams.append([phase for phase, _ in phases])
        return StubStream(self, deployment_id, seq, phases, extravars)

    def read(self, playbook, extravars) -> PhaseResult:
        return self.run("read", 1, playbook.removesuffix(".yml"), playbook, extravars)

    def _result(self, name: str, answer: Answer) -> PhaseResult:
        if answer.status in ("timeout", "canceled"):
            return PhaseResult(name, answer.status, 254, None, {}, {}, {}, 0.1)
        hosts = self.hosts if answer.hosts is None else answer.hosts
        stats = {
            "ok": {h: 1 for h in hosts}, "changed": {h: 1 for h in answer.changed},
            "failures": {h: 1 for h in answer.failed}, "dark": {h: 1 for h in answer.unreachable},
            "skipped": {}, "ignored": {}, "rescued": {}, "processed": {h: 1 for h in hosts},
        }
        status = "failed" if answer.failed or answer.unreachable else "successful"
        rc = 2 if answer.failed else (4 if answer.unreachable else 0)
        return PhaseResult(name, status, rc, stats, dict(answer.failed), dict(answer.unreachable),
                           answer.reports, 0.1, changes={h: [f"a task of {name}"] for h in answer.changed})


class StubStream:
    """Runner.stream's stand-in: the same calls, recorded one per phase, as if each phase had a run of its own."""

    def __init__(self, runner: StubRunner, deployment_id, seq, phases, extravars):
        self.runner, self.deployment_id, self.seq, self.extravars = runner, deployment_id, seq, extravars
        self.phases = [phase for phase, _ in phases]
        self.playbooks = dict(phases)
        self.position = 0
        self.stopped = False

    def expects(self, phase: str) -> bool:
        return not self.stopped and phase in self.phases[self.position:]

    def next(self, phase: str, variables: dict) -> PhaseResult:
        assert self.expects(phase), f"the stream waits for {self.phases[self.position:]}, not {phase}"
        self.position = self.phases.index(phase, self.position) + 1
        self.runner.streamed.append(phase.replace("-", " "))
        self.stopped = self.position == len(self.phases)
        return self.runner.run(self.deployment_id, self.seq, phase, self.playbooks[phase],
                               {**self.extravars, **variables})

    def stop(self) -> None:
        self.stopped = True
