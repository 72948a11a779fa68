"""Running Ansible with ansible-runner, and reading what happened: one phase playbook in a run of its own
(`AnsibleRunner.run`), or a command's phases as the plays of one run with a gate before each (`Stream`).

This is the only module that talks to ansible-runner. It owns the private data directory of every run,
keeps secrets out of what a run leaves on disk, and turns each phase's events into a `PhaseResult` that
the pipeline's gate can judge.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ansible_runner
import yaml

from deployctl.ansible_config import merged
from deployctl.processes import MARK, RUN_ID

# Ansible hands values to deployctl through `ansible.builtin.set_stats` under this key, per host (or an action
# puts the same `ansible_stats` into its own result: the collection's plugin_utils/reports.py).
REPORT_KEY = "deployctl"


def content_dir() -> Path:
    """Where the playbooks, roles and collections are: inside the wheel, or in a source checkout."""
    packaged = Path(__file__).parent / "_content"
    if (packaged / "playbooks").is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent


@dataclass
class PhaseResult:
    phase: str
    status: str  # ansible-runner's: successful, failed, timeout, canceled, or "error"
    rc: int | None
    stats: dict | None
    failed: dict[str, str] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)
    reports: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    output: dict[str, dict] = field(default_factory=dict)  # host -> the failed task and the end of its output
    changes: dict[str, list[str]] = field(default_factory=dict)  # host -> the tasks that changed it (or would)

    @property
    def changed_hosts(self) -> list[str]:
        return sorted(h for h, n in (self.stats or {}).get("changed", {}).items() if n)

    @property
    def processed_hosts(self) -> list[str]:
        return sorted((self.stats or {}).get("processed", {}))

    def report(self, name: str) -> dict:
        """One report (set by the playbook) for every host that sent it."""
        return {host: values[name] for host, values in self.reports.items() if name in values}

    def problem(self) -> str:
        if self.error:
            return self.error
        hosts = {**self.failed, **{h: f"unreachable: {m}" for h, m in self.unreachable.items()}}
        if hosts:
            return "; ".join(f"{h}: {m}" for h, m in sorted(hosts.items()))
        if self.status == "timeout":
            return "timed out"
        if self.status == "canceled":
            return "interrupted"
        if self.stats is None:
            return f"ansible-playbook ended without a result (status {self.status}, rc {self.rc})"
        if not self.stats["processed"]:
            return "no host of the inventory is in the group this phase runs on"
        return f"ansible-playbook ended with status {self.status}, rc {self.rc}"


# The caller's settings that make Ansible print module arguments (secrets included) or keep them on the hosts;
# ansible-runner passes the caller's environment through, so they are taken out of it (cli.py says so).
UNSAFE_ENVIRONMENT = ("ANSIBLE_DEBUG", "ANSIBLE_KEEP_REMOTE_FILES", "ANSIBLE_VERBOSITY",
                      "ANSIBLE_DISPLAY_ARGS_TO_STDOUT")
CANCEL_POLL_SECONDS = 0.2  # how soon a cancel (Ctrl-C, SIGTERM, a phase timeout) reaches ansible-runner
OUTPUT_TAIL = 4000  # characters of a failed task's stdout and stderr kept for the outcome


def strip_unsafe_environment() -> list[str]:
    """Remove the unsafe settings from this process's environment; returns the names removed."""
    removed = [name for name in UNSAFE_ENVIRONMENT if os.environ.get(name)]
    for name in removed:
        del os.environ[name]
    return removed


@dataclass
class AnsibleRunner:
    inventory: Path
    runs_dir: Path  # one private data dir per deployment under here
    project_root: Path | None = None  # whose ansible.cfg the runs honour
    forks: int = 5
    timeout: int = 900  # seconds one phase may take
    on_event: Callable[[str, dict], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    check: bool = False  # Ansible's check mode: every phase says what it would change, and changes nothing

    def run(self, deployment_id: str, seq: int, phase: str, playbook: str, extravars: dict,
            limit: str | None = None) -> PhaseResult:
        """One phase playbook in an ansible-playbook process of its own."""
        private = self._private(deployment_id)
        ident = f"{seq:02d}-{phase}"
        events = PhaseEvents(phase, self.on_event)
        started = time.monotonic()
        status, rc, error = "error", None, None
        try:
            try:
                runner = ansible_runner.run(**self._arguments(private, ident,
                                                              str(content_dir() / "playbooks" / playbook),
                                                              extravars, limit, self.timeout),
                                            event_handler=events.add, cancel_callback=self.cancel.is_set)
                status, rc = runner.status, runner.rc
            except Exception as exc:  # pexpect timeouts and the like: a phase that did not end cleanly failed
                error = f"ansible-runner failed: {exc.__class__.__name__}: {exc}"
            return events.ended(status, rc, time.monotonic() - started, error, private / "artifacts" / ident / "stdout")
        finally:
            _scrub(private, ident)

    def stream(self, deployment_id: str, seq: int, name: str, phases: list[tuple[str, str]],
               extravars: dict) -> Stream:
        """Several phases as the plays of one ansible-playbook run, with a gate before each (see Stream)."""
        return Stream(self, self._private(deployment_id), f"{seq:02d}-{name}", phases, extravars)

    def read(self, playbook: str, extravars: dict) -> PhaseResult:
        """A read-only run that leaves nothing behind in the runs directory."""
        ident = f"read-{uuid.uuid4().hex[:12]}"
        try:
            return self.run(ident, 1, "read", playbook, extravars)
        finally:
            shutil.rmtree(self.runs_dir / ident, ignore_errors=True)

    def _private(self, deployment_id: str) -> Path:
        private = self.runs_dir / deployment_id
        private.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(private, 0o700)
        return private

    def _arguments(self, private: Path, ident: str, playbook: str, extravars: dict, limit: str | None,
                   timeout: int) -> dict:
        content = content_dir()
        config = private / "ansible.cfg"
        if not config.exists():
            config.write_text(merged(self.project_root or Path.cwd(), content)[0])
        settings = private / "env" / "settings"
        if not settings.exists():
            # ansible-runner asks whether to cancel only between waits for Ansible's output, 5 s by default: a
            # Ctrl-C let the running phase finish and the next begin. (It reads these from this file alone: a
            # settings argument is dropped when the file is missing.)
            settings.parent.mkdir(exist_ok=True)
            settings.write_text(json.dumps({"pexpect_timeout": CANCEL_POLL_SECONDS}))
        envvars = {
            "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
            "ANSIBLE_CONFIG": str(config),
            "ANSIBLE_LOCAL_TEMP": str(private / "tmp"),
            "ANSIBLE_NOCOLOR": "1",
            # marks every process of the run, so that what outlives a dead control node can be found
            MARK: RUN_ID,
        }
        return dict(private_data_dir=str(private), ident=ident, project_dir=str(content / "playbooks"),
                    playbook=playbook, inventory=str(self.inventory), extravars=extravars, limit=limit,
                    forks=self.forks, timeout=timeout, envvars=envvars, quiet=True, suppress_env_files=True,
                    fact_cache_type="jsonfile", cmdline="--check" if self.check else None)


class PhaseEvents:
    """What the events of one phase say, as they arrive: failed and unreachable hosts (with the failed task's
    output), the reports the roles send through set_stats, and Ansible's per-host counts."""

    COUNTS = ("ok", "changed", "failures", "dark", "skipped", "ignored", "rescued", "processed")

    def __init__(self, phase: str, forward: Callable[[str, dict], None] | None = None):
        self.phase = phase
        self.forward = forward
        self.failed: dict[str, str] = {}
        self.output: dict[str, dict] = {}
        self.unreachable: dict[str, str] = {}
        self.reports: dict[str, dict] = {}
        self.counts: dict[str, dict[str, int]] = {name: {} for name in self.COUNTS}
        self.changes: dict[str, list[str]] = {}
        self.final: dict | None = None  # playbook_on_stats, when the run ended with this phase

    def add(self, event: dict) -> bool:
        kind = event.get("event")
        data = event.get("event_data", {})
        host = data.get("host")
        result = data.get("res") or {}
        if kind in ("runner_on_ok", "runner_on_failed"):
            # set_stats' report, or an action's report in its own result: a failed task's too (Ansible drops it)
            report = ((result.get("ansible_stats") or {}).get("data") or {}).get(REPORT_KEY)
            if isinstance(report, dict):
                _merge(self.reports, report)
        if kind == "runner_on_failed" and not data.get("ignore_errors"):
            self.failed[host] = _message(result)
            self.output[host] = {"task": data.get("task"), "message": self.failed[host],
                                 **{key: str(result[key])[-OUTPUT_TAIL:] for key in ("stdout", "stderr")
                                    if result.get(key)}}
            self._count(host, "failures")
        elif kind == "runner_on_failed":
            self._count(host, "ok", "ignored")
        elif kind == "runner_on_ok":
            self._count(host, "ok", *(["changed"] if result.get("changed") else []))
            if result.get("changed") and host is not None:
                self.changes.setdefault(host, []).append(str(data.get("task") or ""))
        elif kind == "runner_on_skipped":
            self._count(host, "skipped")
        elif kind == "runner_on_unreachable":
            self.unreachable[host] = _message(result)
            self._count(host, "dark")
        elif kind == "playbook_on_stats":
            self.final = data
        if self.forward:
            self.forward(kind, data)
        return True  # ansible-runner drops events (and stats) unless the handler says True

    def _count(self, host: str | None, *names: str) -> None:
        if host is None:
            return
        for name in (*names, "processed"):
            self.counts[name][host] = self.counts[name].get(host, 0) + 1

    def ended(self, status: str, rc: int | None, seconds: float, error: str | None,
              stdout: Path | None = None) -> PhaseResult:
        """The phase's result. When the run ended with this phase, its final stats say which failures a rescue
        caught (a rescued task still emits runner_on_failed); earlier phases of a stream had none. `stdout` is
        the run's output when the run ended with this phase: its last error explains a run without final stats."""
        if stdout is not None and self.final is None and error is None and status not in ("timeout", "canceled"):
            error = _tail(stdout, status, rc)
        failed, unreachable = dict(self.failed), dict(self.unreachable)
        stats: dict | None = {name: dict(hosts) for name, hosts in self.counts.items()}
        reports = self.reports
        if self.final is not None:
            for name in ("failures", "dark", "rescued"):
                stats[name] = dict(self.final.get(name) or {})
            failed = {h: m for h, m in failed.items() if h in stats["failures"]}
            for host in stats["failures"]:
                failed.setdefault(host, "failed")
            for host in stats["dark"]:
                unreachable.setdefault(host, "unreachable")
        elif error is not None or status in ("timeout", "canceled", "error"):
            stats = None
        output = {h: o for h, o in self.output.items() if h in failed}
        changes = {h: list(tasks) for h, tasks in self.changes.items()}
        return PhaseResult(self.phase, status, rc, stats, failed, unreachable, reports, seconds, error, output,
                           changes)


GATE_PLAY = "deployctl gate before "
# The event a Stream adds to Ansible's own for `AnsibleRunner.on_event`: {"phase", "hosts"}, before each phase
PHASE_HOSTS = "deployctl_phase_hosts"


class Stream:
    """Phases run as the plays of one ansible-playbook run, each behind a gate that waits for deployctl.

    The generated playbook imports each phase's own playbook, unchanged, after a gate play (the
    deployctl.core.gate action, on the controller). deployctl reads the phase's events as they arrive;
    when the next gate play starts, the phase is over and its result is known: `next` returns it. The
    pipeline judges it and either asks for the next phase (its variables are written where the gate
    waits for them, and included for every host) or stops the run there (`stop`). A run that ends early,
    is cancelled (signals) or outlasts the phase timeout ends the phase it was in.

    Variables of the run as a whole are extra vars; each phase's own variables come through its gate,
    at include_vars precedence, and stay set for the later phases: a phase's own variables are read by
    its own role only.
    """

    def __init__(self, runner: AnsibleRunner, private: Path, ident: str, phases: list[tuple[str, str]],
                 extravars: dict):
        self.runner = runner
        self.ident = ident
        self.phases = [name for name, _ in phases]
        self.position = 0  # the phase the run is waiting to start
        self.answers = private / f"{ident}-gates"
        self.answers.mkdir(mode=0o700, exist_ok=True)
        self._lock = threading.Condition()
        self._events: PhaseEvents | None = None
        self._current: int | None = None  # the phase the run is in (or waits before)
        self._results: dict[int, PhaseResult] = {}
        self._aborted: str | None = None
        self._started = time.monotonic()
        self._ended = threading.Event()
        playbook = private / f"{ident}.yml"
        playbook.write_text(_stream_playbook(phases, self.answers))
        arguments = runner._arguments(private, ident, str(playbook), extravars, None,
                                      runner.timeout * (len(phases) + 1))
        self._private = private
        self._thread = threading.Thread(target=self._run, args=(arguments,), name=f"ansible {ident}", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return not self._ended.is_set()

    def expects(self, phase: str) -> bool:
        """Whether `phase` is still ahead in the run (the phases before it would be skipped)."""
        return self.running and phase in self.phases[self.position:]

    def next(self, phase: str, variables: dict) -> PhaseResult:
        """Skip the phases before `phase`, open its gate with its variables, and wait for its result."""
        if not self.expects(phase):
            raise ValueError(f"the run does not wait for {phase}")
        while self.phases[self.position] != phase:
            (self.answers / f"{self.position:02d}-{self.phases[self.position]}.skip").write_text("")
            self.position += 1
        index = self.position
        target = self.answers / f"{index:02d}-{phase}.json"
        partial = target.with_suffix(".partial")
        partial.write_text(json.dumps(variables, default=str))
        os.replace(partial, target)
        deadline = time.monotonic() + self.runner.timeout
        with self._lock:
            while index not in self._results:
                if time.monotonic() > deadline and self._aborted is None:
                    self._aborted = "timeout"
                # short waits: signal handlers run in the main thread between them
                self._lock.wait(0.2)
            self.position = index + 1
            return self._results[index]

    def stop(self) -> None:
        """End the run at the gate it waits at (nothing runs there), or cut it short when it is not there."""
        if not self.running:
            return
        if self.position < len(self.phases):
            (self.answers / f"{self.position:02d}-{self.phases[self.position]}.stop").write_text("")
        if not self._ended.wait(60):
            self._aborted = "canceled"
            self._ended.wait()

    # ------------------------------------------------------------ the run's thread

    def _run(self, arguments: dict) -> None:
        status, rc, error = "error", None, None
        try:
            runner = ansible_runner.run(**arguments, event_handler=self._on_event, cancel_callback=self._cancelled)
            status, rc = runner.status, runner.rc
        except Exception as exc:
            error = f"ansible-runner failed: {exc.__class__.__name__}: {exc}"
        finally:
            # before the last result is told: the command may exit as soon as it has it, and this thread with it
            _scrub(self._private, self.ident)
            shutil.rmtree(self.answers, ignore_errors=True)
            with self._lock:
                if self._aborted == "timeout":
                    status = "timeout"
                events = self._events
                if events is not None and self._current not in self._results:
                    self._results[self._current] = events.ended(status, rc, time.monotonic() - self._started, error,
                                                                self._private / "artifacts" / self.ident / "stdout")
                    error = self._results[self._current].error
                # a phase whose gate the run never reached ends with the run, unstarted
                for index in range(len(self.phases)):
                    if index not in self._results:
                        self._results[index] = PhaseResult(self.phases[index], status if status != "successful"
                                                           else "error", rc, None, seconds=0.0,
                                                           error=error or "the run ended before this phase")
                self._ended.set()
                self._lock.notify_all()

    def _cancelled(self) -> bool:
        return self.runner.cancel.is_set() or self._aborted is not None

    def _on_event(self, event: dict) -> bool:
        kind = event.get("event")
        data = event.get("event_data", {})
        if kind == "playbook_on_play_start" and str(data.get("play", "")).startswith(GATE_PLAY):
            index = int(str(data["play"])[len(GATE_PLAY):].split(":", 1)[0])
            with self._lock:
                if self._events is not None:
                    clean = not (self._events.failed or self._events.unreachable)
                    self._results[self._current] = self._events.ended(
                        "successful" if clean else "failed", 0 if clean else 2, time.monotonic() - self._started, None)
                    self._lock.notify_all()
                self._events = None
                self._current = index
            return True
        with self._lock:
            if kind == "playbook_on_play_start" and self._events is None and self._current is not None:
                self._events = PhaseEvents(self.phases[self._current], self.runner.on_event)
                self._started = time.monotonic()
            events = self._events
        if events is None:
            gate = (data.get("res") or {}) if kind == "runner_on_ok" else {}
            if "hosts" in gate and self.runner.on_event:
                # the hosts the phase after the gate runs on, as Ansible resolved its plays' patterns
                self.runner.on_event(PHASE_HOSTS, {"phase": gate.get("phase"), "hosts": gate["hosts"]})
            return True  # the gate plays' own events, and the run's start
        return events.add(event)


def _stream_playbook(phases: list[tuple[str, str]], answers: Path) -> str:
    plays: list[dict] = []
    for index, (name, playbook) in enumerate(phases):
        plays.append({
            "name": f"{GATE_PLAY}{index}: {name}",
            "hosts": "all",
            "gather_facts": False,
            "tasks": [
                {"name": "Wait for deployctl's answer", "run_once": True,
                 "deployctl.core.gate": {"answers": str(answers), "index": index, "phase": name,
                                         "controller_pid": os.getpid(), "hosts": _hosts_of(playbook)},
                 "register": "_deployctl_gate"},
                {"name": "Take the phase's variables", "run_once": True, "no_log": True,
                 "ansible.builtin.include_vars": {"file": "{{ _deployctl_gate.variables_file }}"},
                 "when": "not _deployctl_gate.skip"},
            ],
        })
        plays.append({"name": f"Phase {name}", "when": "not _deployctl_gate.skip",
                      "ansible.builtin.import_playbook": str(content_dir() / "playbooks" / playbook)})
    return json.dumps(plays, indent=1)


def _hosts_of(playbook: str) -> str:
    """The hosts a phase playbook's plays run on (limit applied), as Ansible resolves their patterns."""
    plays = yaml.safe_load((content_dir() / "playbooks" / playbook).read_text()) or []
    pattern = ":".join(str(play["hosts"]) for play in plays if isinstance(play, dict) and play.get("hosts"))
    return (f"{{{{ query('ansible.builtin.inventory_hostnames', {pattern!r}) "
            "| intersect(ansible_play_hosts_all) }}")


def _merge(into: dict, new: dict) -> None:
    """set_stats' aggregation of dictionaries (Ansible's merge_hash): nested dicts merge, other values replace."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _message(result: dict) -> str:
    msg = result.get("msg") or result.get("stderr") or result.get("reason") or "failed"
    if isinstance(msg, list):
        msg = " ".join(map(str, msg))
    return " ".join(str(msg).split())[:500]


def _tail(stdout: Path, status: str, rc: int | None) -> str:
    """Why a run produced no result: the last meaningful line ansible-playbook printed."""
    try:
        lines = [line.strip() for line in stdout.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    errors = [line for line in lines if "ERROR" in line or "rror" in line]
    last = (errors or lines or [""])[-1][:300]
    return f"ansible-playbook ended without a result (status {status}, rc {rc}){': ' + last if last else ''}"


def _scrub(private: Path, ident: str) -> None:
    """Remove what could hold secrets: argv and environment, raw events, facts, env files."""
    artifacts = private / "artifacts" / ident
    for name in ("command", "job_events", "fact_cache"):
        target = artifacts / name
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        elif target.exists():
            target.unlink()
    shutil.rmtree(private / "env", ignore_errors=True)
    shutil.rmtree(private / "tmp", ignore_errors=True)
