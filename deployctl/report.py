"""`deployctl report`: one deployment's record in the shape of the checklist's metrics table.

| Metric                  | Target   | Where it comes from                                                 |
|-------------------------|----------|---------------------------------------------------------------------|
| Deployment time         | < 30 min | started → finished                                                  |
| Downtime                | < 5 min  | end of the `maintenance on` phase → end of the `maintenance off` one |
| Error rate after deploy | < 1 %    | the verify phase's `error_rate` checks (worst host)                 |
| Response time (p95)     | < 500 ms | the verify phase's `latency` checks, p95_ms (worst host)            |

A metric without data (no maintenance window, no such check) is `unknown`, never guessed. This module
only builds and renders; deployctl.reading reads the deployment from the history.
"""

from __future__ import annotations

from datetime import datetime

from deployctl.history import Deployment
from deployctl.phases import Phase

TARGETS = {
    "deployment_time": ("Deployment time", 30 * 60, "s", "< 30 min"),
    "downtime": ("Downtime", 5 * 60, "s", "< 5 min"),
    "error_rate": ("Error rate after deploy", 1.0, "%", "< 1 %"),
    "response_time": ("Response time (p95)", 500.0, "ms", "< 500 ms"),
}


def flatten_checks(checks: object) -> list[dict]:
    """Check results as a flat list, from {host: [result, ...]} or already a list."""
    if isinstance(checks, dict):
        items = [dict(item, host=item.get("host") or host) for host, results in sorted(checks.items())
                 if isinstance(results, list) for item in results if isinstance(item, dict)]
    elif isinstance(checks, list):
        items = [item for item in checks if isinstance(item, dict)]
    else:
        items = []
    return items


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _metric(key: str, value: float | None, note: str = "", missed: bool = False) -> dict:
    label, limit, unit, target = TARGETS[key]
    status = "met" if value is not None and value < limit else "unknown"
    if (value is None and missed) or (value is not None and value >= limit):
        status = "missed"
    return {"key": key, "metric": label, "value": None if value is None else round(value, 3), "unit": unit,
            "target": target, "status": status, "display": _display(value, unit), "note": note}


def _display(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        minutes, seconds = divmod(round(value), 60)
        return f"{minutes} min {seconds} s" if minutes else f"{value:.1f} s"
    if unit == "%":
        return f"{value:.2f} %"
    return f"{value:.0f} ms"


def _seconds_between(start: str | None, end: str | None) -> float | None:
    try:
        return (datetime.fromisoformat(str(end)) - datetime.fromisoformat(str(start))).total_seconds()
    except (TypeError, ValueError):
        return None


def deployment_time(deployment: Deployment) -> dict:
    elapsed = _seconds_between(deployment.started_at, deployment.finished_at)
    if elapsed is None:
        return _metric("deployment_time", None, "not finished")
    # the timestamps are whole seconds: the phases' own durations are finer for short runs
    return _metric("deployment_time", max(elapsed, sum(p.get("seconds") or 0 for p in deployment.phases)))


def flag_downtime(details: dict) -> float | None:
    """Seconds the maintenance flag was up on the slowest host (each host's clock against itself), from a
    deployment's details; None when no host reported it both up and down."""
    flag = details.get("maintenance_flag") or {}
    up, down = flag.get("on") or {}, flag.get("off") or {}
    spans = [down[host] - up[host] for host in up if host in down and down[host] >= up[host]]
    return round(max(spans), 3) if spans else None


def downtime(deployment: Deployment) -> dict:
    names = [p.get("name") for p in deployment.phases]
    if Phase.MAINTENANCE_ON not in names:
        return _metric("downtime", None, "no maintenance window in this deployment")
    start = names.index(Phase.MAINTENANCE_ON)
    ends = [i for i, p in enumerate(deployment.phases)
            if i > start and p.get("name") == Phase.MAINTENANCE_OFF and p.get("status") == "passed"]
    if not ends:
        return _metric("downtime", None, "maintenance mode was not turned off", missed=True)
    predicted = deployment.details.get("predicted_window")
    against = f"; predicted {_display(predicted, 's')} by the rehearsal" if predicted is not None else ""
    flag_up = flag_downtime(deployment.details)
    if flag_up is not None:
        return _metric("downtime", flag_up, f"the maintenance flag up (the longest host){against}")
    seconds = sum(p.get("seconds") or 0 for p in deployment.phases[start + 1:ends[-1] + 1])
    return _metric("downtime", seconds, f"end of {Phase.MAINTENANCE_ON} → end of {Phase.MAINTENANCE_OFF}{against}")


def predicted_window(previous: Deployment | None, migration_seconds: float) -> float:
    """The maintenance window a release should take, from its rehearsed migrations: the last release's window
    with its own migrations replaced by these (only the migrations, when no release came before)."""
    window = downtime(previous)["value"] if previous is not None else None
    if window is None:
        return migration_seconds
    migrated = sum(p.get("seconds") or 0 for p in previous.phases if p.get("name") == Phase.MIGRATE)
    return max(window - migrated, 0.0) + migration_seconds


def _checks_of(checks: list[dict], kind: str, name_hint: str) -> list[dict]:
    return [c for c in checks
            if c.get("type") == kind or (not c.get("type") and name_hint in str(c.get("check", "")).lower())]


def error_rate(checks: list[dict]) -> dict:
    values = [(v, c) for c in _checks_of(checks, "error_rate", "error")
              if (v := _number(c.get("value"))) is not None]
    if not values:
        return _metric("error_rate", None, "no error_rate check in the verify results")
    value, worst = max(values, key=lambda pair: pair[0])
    return _metric("error_rate", value,
                   f"worst of {len(values)}: {worst.get('check')} on {worst.get('host')}")


def _p95(check: dict) -> float | None:
    value = check.get("value")
    return _number(value.get("p95_ms") if isinstance(value, dict) else value)


def response_time(checks: list[dict]) -> dict:
    values = [(v, c) for c in _checks_of(checks, "latency", "p95") if (v := _p95(c)) is not None]
    if not values:
        return _metric("response_time", None, "no latency check in the verify results")
    value, worst = max(values, key=lambda pair: pair[0])
    return _metric("response_time", value,
                   f"p95, worst of {len(values)}: {worst.get('check')} on {worst.get('host')}")


def _hosts(deployment: Deployment) -> dict[str, dict]:
    details = deployment.details
    before = details.get("before") or {}
    if "after" in details:
        after = dict(details["after"])
    elif "targets" in details:
        after = {**before, **{h: v or None for h, v in (details.get("targets") or {}).items()}}
    elif deployment.outcome in ("unchanged", "locked"):
        after = dict(before)
    else:
        after = {}
    hosts = sorted({*before, *after})
    return {host: {"before": before.get(host), "after": after.get(host)} for host in hosts}


def build(deployment: Deployment, verification: dict | None = None) -> dict:
    details = deployment.details
    checks = flatten_checks(details.get("checks") or (verification or {}).get("checks"))
    return {
        "deployment_id": deployment.id,
        "environment": deployment.environment,
        "action": deployment.action,
        "version": deployment.version,
        "user": deployment.user,
        "started_at": deployment.started_at,
        "finished_at": deployment.finished_at,
        "outcome": deployment.outcome,
        "exit_code": deployment.exit_code,
        "message": details.get("message", ""),
        "metrics": [deployment_time(deployment), downtime(deployment), error_rate(checks),
                    response_time(checks)],
        "phases": [{"name": p.get("name"), "status": p.get("status"), "seconds": p.get("seconds")}
                   for p in deployment.phases],
        "hosts": _hosts(deployment),
        "backup_set": details.get("backup_set"),
        "restored_set": details.get("restored_set"),
        "checks": checks,
        "notifications": details.get("notifications", []),
    }


def _cell(value: object) -> str:
    text = "-" if value is None or value == "" else str(value)
    return " ".join(text.replace("|", "\\|").split())


def markdown(report: dict) -> str:
    what = " ".join(x for x in (report["action"], report["version"] or "") if x)
    lines = [
        f"# {report['deployment_id']}: {what} on {report['environment']}",
        "",
        "| | |",
        "|---|---|",
        f"| Outcome | {_cell(report['outcome'])} (exit {_cell(report['exit_code'])}) |",
        f"| Message | {_cell(report['message'])} |",
        f"| Started | {_cell(report['started_at'])} by {_cell(report['user'])} |",
        f"| Finished | {_cell(report['finished_at'])} |",
        f"| Backup set | {_cell(report['backup_set'])} |",
    ]
    if report.get("restored_set"):
        lines.append(f"| Restored set | {_cell(report['restored_set'])} |")
    lines += ["", "## Deployment metrics", "", "| Metric | Target | Actual | Status | Note |",
              "|--------|--------|--------|--------|------|"]
    lines += [f"| {m['metric']} | {m['target']} | {m['display']} | {m['status']} | {_cell(m['note'])} |"
              for m in report["metrics"]]
    lines += ["", "## Phases", "", "| # | Phase | Status | Duration |", "|---|-------|--------|----------|"]
    lines += [f"| {i} | {_cell(p['name'])} | {_cell(p['status'])} | {(p['seconds'] or 0):.1f} s |"
              for i, p in enumerate(report["phases"], 1)]
    if report["hosts"]:
        lines += ["", "## Hosts", "", "| Host | Before | After |", "|------|--------|-------|"]
        lines += [f"| {_cell(h)} | {_cell(v['before'])} | {_cell(v['after'])} |"
                  for h, v in report["hosts"].items()]
    if report["checks"]:
        lines += ["", "## Checks", "", "| Host | Check | Status | Message |",
                  "|------|-------|--------|---------|"]
        lines += [f"| {_cell(c.get('host'))} | {_cell(c.get('check'))} | {_cell(c.get('status'))} | "
                  f"{_cell(c.get('message'))} |" for c in report["checks"]]
    if report["notifications"]:
        lines += ["", "## Notifications", "", "| Channel | Event | Delivered | Error |",
                  "|---------|-------|-----------|-------|"]
        lines += [f"| {_cell(n.get('channel'))} | {_cell(n.get('event'))} | "
                  f"{'yes' if n.get('delivered') else 'NO'} | {_cell(n.get('error'))} |"
                  for n in report["notifications"]]
    return "\n".join(lines) + "\n"
