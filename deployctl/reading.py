"""The read commands: what `status`, `history`, `report`, `backups` and `verify --prometheus-textfile`
show, computed from the history and the hosts' state, ready to print.

Nothing here changes a host or writes the history. The command line only parses, calls one of these and
prints the `View` it gets back: the data (what --json prints), the table and the text under it, the exit code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from deployctl import report as reports
from deployctl.console import table
from deployctl.errors import BadInput, ExitCode, StateError
from deployctl.files import write_atomically
from deployctl.history import History
from deployctl.pipeline import Outcome, Pipeline, gate
from deployctl.project import Project
from deployctl.report import flatten_checks


@dataclass
class View:
    data: object  # what --json prints
    table: Table | None = None
    text: str | None = None
    exit_code: ExitCode = ExitCode.OK
    error: str | None = None  # instead of a result: what could not be read


def _history(project: Project) -> History:
    return History(project.state_dir / "history.db")


# ---------------------------------------------------------------- status


def status(pipeline: Pipeline) -> View:
    """What is live on each host, the maintenance flag, the lock holder, unfinished and last deployments.

    The hosts answer even when the history cannot be read: then `history_error` says why."""
    result, hosts = pipeline.state()
    data = {"environment": pipeline.env.name, "hosts": hosts, "unreachable": result.unreachable}
    rows = [[h, s.get("live") or "-", s.get("reported_version") or "-", s.get("previous") or "-",
             "on" if s.get("maintenance") else "off", (s.get("lock") or {}).get("deployment_id", ""),
             (s.get("pending") or {}).get("deployment_id", "")] for h, s in sorted(hosts.items())]
    rows += [[h, "UNREACHABLE", "", "", "", "", ""] for h in sorted(result.unreachable)]
    headers = ["host", "live", "app says", "previous", "maintenance", "locked by", "unfinished"]
    if any("containers" in s for s in hosts.values()):  # compose strategy: what each container runs, its health
        headers.append("containers")
        for row in rows:
            row.append(", ".join(f"{c.get('service')} {c.get('tag')} {c.get('health') or c.get('state')}"
                                 for c in hosts.get(row[0], {}).get("containers", [])))
    try:
        last = pipeline.history.recent(pipeline.env.name, limit=1)
        unfinished = pipeline.unfinished()
        data["last_verification"] = pipeline.history.last_verification(pipeline.env.name)
        summary = (f"last: {last[0].id} {last[0].action} {last[0].version or ''} → {last[0].outcome}"
                   if last else "no deployments yet")
        summary += "\n" + verification_line(data["last_verification"])
    except StateError as exc:
        last, unfinished, summary = [], [], f"history: {exc}"
        data["history_error"] = str(exc)
    data["last_deployment"] = last[0].as_dict() if last else None
    data["unfinished"] = [d.as_dict() for d in unfinished]
    for dead in unfinished:
        summary += (f"\nUNFINISHED: {dead.id} {dead.action} {dead.version or ''} (started {dead.started_at} by "
                    f"{dead.user}): its deployctl is gone; run `deployctl recover`")
    return View(data, table(f"{pipeline.env.name}", headers, rows, whole=("live", "previous", "locked by",
                                                                          "unfinished"), shorten=("containers",)),
                summary,
                ExitCode.OK if gate(result) else ExitCode.COULD_NOT_RUN)


def verification_line(verification: dict | None) -> str:
    """The last verification, in one line for `deployctl status`."""
    if not verification:
        return "last verification: none yet (deployctl verify, deployctl schedule install)"
    state = "healthy" if verification["healthy"] else \
        f"FAILING ({verification.get('outcome') or 'failed'}, exit {verification['exit_code']})"
    failed = sorted({f"{c.get('check')}@{c.get('host')}" for c in flatten_checks(verification.get("checks"))
                     if str(c.get("status", "")).lower() not in ("pass", "passed", "ok")})
    return (f"last verification: {verification['at']} {state} ({verification['deployment_id']})"
            + (f": {escape(', '.join(failed))}" if failed and not verification["healthy"] else ""))


# ---------------------------------------------------------------- history, report, backups


def history(project: Project, environment: str, limit: int) -> View:
    """Past deployments of the environment, newest first; a running one whose deployctl is gone shows as
    unfinished (`deployctl recover` finishes it)."""
    deployments = _history(project).recent(environment, limit=limit)
    for deployment in deployments:
        if deployment.abandoned:
            deployment.outcome = "unfinished"
    # no "started" column: the id is the time it started (DEP-20261201-093000); --json has both
    rows = [[d.id, d.action, d.version or "", d.user, d.outcome, d.details.get("message", "")] for d in deployments]
    return View([d.as_dict() for d in deployments],
                table(f"History of {environment}", ["id", "action", "version", "user", "outcome", "message"], rows,
                      whole=("version",), shorten=("message",)))


def report(project: Project, deployment_id: str, fmt: str = "markdown") -> str:
    """One deployment against the checklist's targets (deployctl.report), as markdown, JSON or a web page."""
    history_db = _history(project)
    deployment = history_db.get(deployment_id)
    if deployment is None:
        raise BadInput(f"unknown deployment {deployment_id!r} (see deployctl history)")
    built = reports.build(deployment, history_db.verification_of(deployment_id))
    if fmt == "json":
        return json.dumps(built, indent=2, default=str)
    if fmt == "html":
        return reports.html(built)
    return reports.markdown(built)


def backups(pipeline: Pipeline) -> View:
    """The backup sets on the database host, newest first."""
    result, sets = pipeline.backups()
    if not gate(result):
        return View(None, exit_code=ExitCode.COULD_NOT_RUN,
                    error=f"could not list the backup sets: {result.problem()}")
    rows = [[s.get("set_id"), s.get("created_at"), s.get("purpose") or "", s.get("live_version"), s.get("size_bytes"),
             f"BROKEN: {s['broken']}" if s.get("broken") else ("yes" if s.get("verified") else "NO")] for s in sets]
    return View({"sets": sets}, table("Backup sets", ["id", "taken", "purpose", "live version", "bytes",
                                                      "verified"], rows, whole=("live version",),
                                      shorten=("verified",)))


# ---------------------------------------------------------------- release --plan


def plan(outcome: Outcome) -> View:
    """What `release --plan` found (Pipeline.plan): what each phase would do on each host, then what the
    control node knows: the rollback target, the backup set, the migrations."""
    facts = outcome.data["plan"]
    rows = []
    for phase in facts["phases"]:
        for host, done in phase["hosts"].items():
            would = (f"FAILS: {done['problem']}" if done["problem"] else
                     "; ".join(dict.fromkeys(done["changes"])) or "no change")
            rows.append([phase["phase"], host, would])
    lines = []
    # what the release would leave behind, told only when it would go through
    targets = (facts.get("rollback_target") or {}) if outcome.exit_code == ExitCode.OK else {}
    if targets:
        lines.append("rollback target afterwards: " + ", ".join(
            f"{target or 'none (nothing to go back to)'} ({host})" for host, target in targets.items()))
    backup = facts.get("backup") if outcome.exit_code == ExitCode.OK else None
    if backup:
        pruned = ", ".join(backup.get("pruned") or []) or "none"
        kept = ", ".join(backup.get("kept_for_rollback") or []) or "none"
        lines.append(f"backup: a new set on {backup['host']}; retention would delete: {pruned}; kept for a "
                     f"rollback: {kept}")
    migrations = facts.get("migrations")
    if migrations:
        pending = migrations.get("pending")
        listed = (f"could not be listed: {migrations['problem']}" if migrations.get("problem") else
                  "not listed (set deployctl_migrate_pending_command)" if pending is None else
                  ", ".join(pending) or "none")
        lines.append(f"migrations on {migrations['host']}: database at {migrations.get('status') or 'unknown'}; "
                     f"pending: {listed}")
    if facts.get("stale_locks"):
        lines.append(f"stale locks of {', '.join(facts['stale_locks'])} would be cleared first")
    lines.append(f"{outcome.outcome}: {outcome.message}")
    return View(outcome.as_dict(), table(f"Plan: release {facts['version']}", ["phase", "host", "would"], rows,
                                         shorten=("would",)),
                "\n".join(escape(line) for line in lines), outcome.exit_code)


# ---------------------------------------------------------------- Prometheus textfile collector


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_metrics(environment: str, healthy: bool, exit_code: int, started: float, seconds: float,
                   checks: dict | list | None) -> str:
    """The textfile-collector metrics of one verify run; `checks` as {host: [result]} or a flat list."""
    env = f'environment="{_label(environment)}"'
    lines = [
        "# HELP deployctl_verify_healthy 1 when the last deployctl verify passed every check, else 0.",
        "# TYPE deployctl_verify_healthy gauge",
        f"deployctl_verify_healthy{{{env}}} {1 if healthy else 0}",
        "# HELP deployctl_verify_exit_code Exit code of the last deployctl verify (0, 7 or 8).",
        "# TYPE deployctl_verify_exit_code gauge",
        f"deployctl_verify_exit_code{{{env}}} {int(exit_code)}",
        "# HELP deployctl_verify_last_run_timestamp_seconds When the last deployctl verify ran (Unix time).",
        "# TYPE deployctl_verify_last_run_timestamp_seconds gauge",
        f"deployctl_verify_last_run_timestamp_seconds{{{env}}} {started:.3f}",
        "# HELP deployctl_verify_duration_seconds How long the last deployctl verify took.",
        "# TYPE deployctl_verify_duration_seconds gauge",
        f"deployctl_verify_duration_seconds{{{env}}} {seconds:.3f}",
    ]
    results = flatten_checks(checks)
    if results:
        lines += ["# HELP deployctl_check_ok 1 when the check passed on the host at the last verify, else 0.",
                  "# TYPE deployctl_check_ok gauge"]
        seen = set()
        for item in results:
            key = (item.get("host") or "", item.get("check") or item.get("name") or "unnamed")
            if key in seen:
                continue
            seen.add(key)
            ok = 1 if str(item.get("status", "")).lower() in ("pass", "passed", "ok") else 0
            lines.append(f'deployctl_check_ok{{{env},host="{_label(key[0])}",check="{_label(key[1])}"}} {ok}')
    return "\n".join(lines) + "\n"


def export_metrics(path: Path, history_db: History, outcome: Outcome, environment: str, started: float,
                   seconds: float, progress=None) -> bool:
    """Write a verify run's metrics; a write failure is reported, never changes the verify's exit code."""
    checks = outcome.data.get("checks")
    if not checks and outcome.deployment is not None:
        checks = (history_db.verification_of(outcome.deployment.id) or {}).get("checks")
    text = render_metrics(environment, int(outcome.exit_code) == 0, int(outcome.exit_code), started, seconds,
                          checks)
    try:
        write_atomically(path, text)
        return True
    except OSError as exc:
        if progress:
            progress(f"[red]could not write the metrics to {path}: {exc.strerror or exc}[/red]")
        return False
