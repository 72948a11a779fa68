"""`deployctl report`: one deployment's record in the shape of the checklist's metrics table.

| Metric                  | Target   | Where it comes from                                                 |
|-------------------------|----------|---------------------------------------------------------------------|
| Deployment time         | < 30 min | started → finished                                                  |
| Downtime                | < 5 min  | end of the `maintenance on` phase → end of the `maintenance off` one |
| Error rate after deploy | < 1 %    | the verify phase's `error_rate` checks (worst host)                 |
| Response time (p95)     | < 500 ms | the verify phase's `latency` checks, p95_ms (worst host)            |

A metric without data (no maintenance window, no such check) is `unknown`, never guessed. The report renders
as Markdown, JSON, or one self-contained web page with the deployment's timeline drawn in it. This module
only builds and renders; deployctl.reading reads the deployment from the history.
"""

from __future__ import annotations

from datetime import datetime
from html import escape

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
        "phases": [{"name": p.get("name"), "status": p.get("status"), "seconds": p.get("seconds"),
                    "started_at": p.get("started_at")} for p in deployment.phases],
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


# ---------------------------------------------------------------- the timeline, and the report as a web page

# phases that put back what a deployment changed; in a release, every phase after the first failed one recovers
ROLLBACK_PHASES = {Phase.ROLLBACK, Phase.RESTORE, Phase.STOP_COMMANDS}
COLOURS = {"passed": "#2e7d32", "failed": "#c62828", "rollback": "#ef6c00", "window": "#fde68a"}


def _instant(stamp: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(stamp))
    except (TypeError, ValueError):
        return None


def timeline(report: dict) -> dict:
    """The deployment on one time axis, in seconds from its start: each phase as a bar (`kind` passed,
    failed or rollback), the maintenance window (from `maintenance on` to the `maintenance off` that passed
    after it; `open` when maintenance was never turned off), and per host the verify checks' results at the
    first verify phase. Phases recorded without a start time follow each other from the last known end."""
    started = _instant(report["started_at"])
    bars, clock = [], 0.0
    for phase in report["phases"]:
        at = _instant(phase.get("started_at"))
        start = (at - started).total_seconds() if at is not None and started is not None else clock
        start = max(start, 0.0)
        clock = start + float(phase.get("seconds") or 0)
        bars.append({"name": phase["name"], "status": phase["status"], "start": round(start, 3),
                     "end": round(clock, 3)})
    failed = next((i for i, bar in enumerate(bars) if bar["status"] != "passed"), None)
    for index, bar in enumerate(bars):
        recovering = report["action"] == "release" and failed is not None and index > failed
        bar["kind"] = ("failed" if bar["status"] != "passed" else
                       "rollback" if bar["name"] in ROLLBACK_PHASES or recovering else "passed")
    finished = _instant(report["finished_at"])
    total = max([bar["end"] for bar in bars] + [(finished - started).total_seconds()
                                                if finished is not None and started is not None else 0.0])
    window = None
    names = [bar["name"] for bar in bars]
    if Phase.MAINTENANCE_ON in names:
        on = names.index(Phase.MAINTENANCE_ON)
        off = [bar for bar in bars[on + 1:] if bar["name"] == Phase.MAINTENANCE_OFF and bar["status"] == "passed"]
        window = {"start": bars[on]["start"], "end": off[-1]["end"] if off else total, "open": not off}
    verify = next((bar for bar in bars if bar["name"] == Phase.VERIFY), None)
    hosts: dict[str, dict] = {}
    for check in report["checks"]:
        host = hosts.setdefault(str(check.get("host") or "?"), {"passed": 0, "failed": 0})
        host["passed" if str(check.get("status", "")).lower() in ("pass", "passed", "ok") else "failed"] += 1
    return {"total": round(max(total, 1.0), 3), "phases": bars, "window": window,
            "verify": {"at": verify, "hosts": dict(sorted(hosts.items()))} if hosts else None}


def _step(total: float) -> int:
    """Seconds between two ticks of the time axis: about eight of them."""
    return next((s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600) if total / s <= 8), 7200)


def _svg(line: dict) -> str:
    """The timeline as an SVG drawing: a row per phase, the window shaded behind them, a row per verified host."""
    left, plot, row, top = 150, 790, 22, 28
    hosts = (line["verify"] or {}).get("hosts", {})
    phases_bottom = top + row * len(line["phases"])
    height = phases_bottom + (12 + row * len(hosts) if hosts else 0) + 12

    def x(seconds: float) -> float:
        return round(left + plot * seconds / line["total"], 1)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="timeline" width="{left + plot + 20}" height="{height}" '
             f'viewBox="0 0 {left + plot + 20} {height}" role="img" aria-label="Deployment timeline">']
    window = line["window"]
    if window:
        parts.append(f'<rect class="window" x="{x(window["start"])}" y="{top - 6}" '
                     f'width="{max(x(window["end"]) - x(window["start"]), 2)}" height="{phases_bottom - top + 6}" '
                     f'fill="{COLOURS["window"]}" data-start="{window["start"]}" data-end="{window["end"]}">'
                     f'<title>maintenance window{" (never turned off)" if window["open"] else ""}</title></rect>')
    step = _step(line["total"])
    for tick in range(0, int(line["total"]) + 1, step):
        parts.append(f'<line x1="{x(tick)}" x2="{x(tick)}" y1="{top - 8}" y2="{height - 10}" stroke="#d0d0d0"/>'
                     f'<text x="{x(tick)}" y="{top - 12}" class="tick">{tick // 60}:{tick % 60:02d}</text>')
    for index, bar in enumerate(line["phases"]):
        y = top + index * row
        width = max(x(bar["end"]) - x(bar["start"]), 3)
        parts.append(f'<text x="{left - 8}" y="{y + 15}" class="label">{escape(bar["name"])}</text>'
                     f'<rect class="phase {bar["kind"]}" x="{x(bar["start"])}" y="{y + 4}" width="{width}" '
                     f'height="14" fill="{COLOURS[bar["kind"]]}" data-phase="{escape(bar["name"])}" '
                     f'data-start="{bar["start"]}" data-end="{bar["end"]}"><title>{escape(bar["name"])}: '
                     f'{escape(bar["status"])}, {bar["end"] - bar["start"]:.1f} s</title></rect>')
    at = (line["verify"] or {}).get("at")
    for index, (host, result) in enumerate(hosts.items()):
        y = phases_bottom + 12 + index * row
        kind = "passed" if not result["failed"] else "failed"
        middle = x((at["start"] + at["end"]) / 2) if at else left + 8
        parts.append(f'<text x="{left - 8}" y="{y + 15}" class="label">{escape(host)}</text>'
                     f'<circle class="verify {kind}" cx="{middle}" cy="{y + 11}" r="7" fill="{COLOURS[kind]}" '
                     f'data-host="{escape(host)}"/>'
                     f'<text x="{middle + 12}" y="{y + 15}" class="note">{result["passed"]} of '
                     f'{result["passed"] + result["failed"]} checks passed</text>')
    parts.append("</svg>")
    return "".join(parts)


STYLE = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; margin: 24px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; } td, th { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; }
th { background: #f6f8fa; } .met { color: #2e7d32; font-weight: 600; } .missed { color: #c62828; font-weight: 600; }
.unknown { color: #6e7781; } .fail { color: #c62828; } .pass { color: #2e7d32; }
svg text { font: 12px system-ui, sans-serif; fill: #1f2328; } svg .label { text-anchor: end; }
svg .tick { text-anchor: middle; fill: #6e7781; } .legend span { display: inline-block; margin-right: 16px; }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -1px; }
"""


def _rows(rows: list[list], header: list[str] | None = None) -> str:
    head = f"<tr>{''.join(f'<th>{escape(column)}</th>' for column in header)}</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{escape('-' if cell is None or cell == '' else str(cell))}</td>"
                                    for cell in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def html(report: dict) -> str:
    """The report as one self-contained web page: the metrics table with its targets, the timeline drawn
    inline (SVG), the phases, the verify results and the hosts. Nothing is fetched: no script, no font, no
    image from anywhere, and the page's own Content-Security-Policy forbids the browser any request."""
    what = " ".join(x for x in (report["action"], report["version"] or "") if x)
    title = f"{report['deployment_id']}: {what} on {report['environment']}"
    line = timeline(report)
    summary = _rows([["Outcome", f"{report['outcome']} (exit {report['exit_code']})"],
                     ["Message", report["message"]], ["Started", f"{report['started_at']} by {report['user']}"],
                     ["Finished", report["finished_at"]], ["Backup set", report["backup_set"]],
                     *([["Restored set", report["restored_set"]]] if report.get("restored_set") else [])])
    metrics = "".join(
        f"<tr><td>{escape(m['metric'])}</td><td>{escape(m['target'])}</td><td>{escape(m['display'])}</td>"
        f"<td class=\"{escape(m['status'])}\">{escape(m['status'])}</td><td>{escape(m['note'] or '')}</td></tr>"
        for m in report["metrics"])
    legend = "".join(f'<span><i class="swatch" style="background:{COLOURS[kind]}"></i>{label}</span>'
                     for kind, label in (("passed", "phase passed"), ("failed", "phase failed"),
                                         ("rollback", "rollback"), ("window", "maintenance window")))
    phases = _rows([[i, p["name"], p["status"], f"{p['start']:.1f} s", f"{p['end'] - p['start']:.1f} s"]
                    for i, p in enumerate(line["phases"], 1)], ["#", "Phase", "Status", "Start", "Duration"])
    checks = _rows([[c.get("host"), c.get("check"), c.get("status"), c.get("message")] for c in report["checks"]],
                   ["Host", "Check", "Status", "Message"]) if report["checks"] else "<p>No verify results.</p>"
    hosts = _rows([[h, v["before"], v["after"]] for h, v in report["hosts"].items()], ["Host", "Before", "After"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{escape(title)}</h1>
{summary}
<h2>Deployment metrics</h2>
<table><tr><th>Metric</th><th>Target</th><th>Actual</th><th>Status</th><th>Note</th></tr>{metrics}</table>
<h2>Timeline</h2>
{_svg(line)}
<p class="legend">{legend}</p>
<h2>Phases</h2>
{phases}
<h2>Verify results</h2>
{checks}
<h2>Hosts</h2>
{hosts}
</body></html>
"""
