"""Running one phase playbook with ansible-runner, and reading what happened.

This is the only module that talks to ansible-runner. It owns the private data directory of every run,
keeps secrets out of what a run leaves on disk, and turns the run into a `PhaseResult` that the
pipeline's gate can judge.
"""

from __future__ import annotations

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

from deployctl.ansible_config import merged
from deployctl.processes import MARK, RUN_ID

# Ansible hands values to deployctl through `ansible.builtin.set_stats` under this key, per host.
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
    timeout: int = 900
    on_event: Callable[[str, dict], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def run(self, deployment_id: str, seq: int, phase: str, playbook: str, extravars: dict,
            limit: str | None = None) -> PhaseResult:
        private = self.runs_dir / deployment_id
        private.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(private, 0o700)
        ident = f"{seq:02d}-{phase}"
        content = content_dir()
        failed: dict[str, str] = {}
        output: dict[str, dict] = {}
        unreachable: dict[str, str] = {}
        stats_event: dict | None = None

        def on_event(event: dict) -> bool:
            nonlocal stats_event
            kind = event.get("event")
            data = event.get("event_data", {})
            host = data.get("host")
            result = data.get("res") or {}
            if kind == "runner_on_failed" and not data.get("ignore_errors"):
                failed[host] = _message(result)
                output[host] = {"task": data.get("task"), "message": failed[host],
                                **{key: str(result[key])[-OUTPUT_TAIL:] for key in ("stdout", "stderr")
                                   if result.get(key)}}
            elif kind == "runner_on_unreachable":
                unreachable[host] = _message(result)
            elif kind == "playbook_on_stats":
                stats_event = data
            if self.on_event:
                self.on_event(kind, data)
            return True  # ansible-runner drops events (and stats) unless the handler says True

        bin_dir = str(Path(sys.executable).parent)
        config = private / "ansible.cfg"
        if not config.exists():
            config.write_text(merged(self.project_root or Path.cwd(), content)[0])
        envvars = {
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "ANSIBLE_CONFIG": str(config),
            "ANSIBLE_LOCAL_TEMP": str(private / "tmp"),
            "ANSIBLE_NOCOLOR": "1",
            # marks every process of the run, so that what outlives a dead control node can be found
            MARK: RUN_ID,
        }
        started = time.monotonic()
        status, rc, error = "error", None, None
        try:
            runner = ansible_runner.run(
                private_data_dir=str(private),
                ident=ident,
                project_dir=str(content / "playbooks"),
                playbook=str(content / "playbooks" / playbook),
                inventory=str(self.inventory),
                extravars=extravars,
                limit=limit,
                forks=self.forks,
                timeout=self.timeout,
                envvars=envvars,
                quiet=True,
                event_handler=on_event,
                cancel_callback=self.cancel.is_set,
                suppress_env_files=True,
                fact_cache_type="jsonfile",
            )
            status, rc = runner.status, runner.rc
        except Exception as exc:  # pexpect timeouts and the like: a phase that did not end cleanly failed
            error = f"ansible-runner failed: {exc.__class__.__name__}: {exc}"
        finally:
            if stats_event is None and error is None and status not in ("timeout", "canceled"):
                error = _tail(private / "artifacts" / ident / "stdout", status, rc)
            _scrub(private, ident)
        stats = None
        reports: dict[str, dict] = {}
        if stats_event is not None:
            stats = {k: stats_event.get(k) or {} for k in
                     ("ok", "changed", "failures", "dark", "skipped", "ignored", "rescued", "processed")}
            reports = (stats_event.get("artifact_data") or {}).get(REPORT_KEY) or {}
        # a rescued task still emits runner_on_failed; the stats say which hosts really failed
        if stats is not None:
            failed = {h: m for h, m in failed.items() if h in stats["failures"]}
            for host in stats["failures"]:
                failed.setdefault(host, "failed")
            for host in stats["dark"]:
                unreachable.setdefault(host, "unreachable")
        output = {h: o for h, o in output.items() if h in failed}
        return PhaseResult(phase, status, rc, stats, failed, unreachable, reports,
                           time.monotonic() - started, error, output)

    def read(self, playbook: str, extravars: dict) -> PhaseResult:
        """A read-only run that leaves nothing behind in the runs directory."""
        ident = f"read-{uuid.uuid4().hex[:12]}"
        try:
            return self.run(ident, 1, "read", playbook, extravars)
        finally:
            shutil.rmtree(self.runs_dir / ident, ignore_errors=True)


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
