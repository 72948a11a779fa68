"""`deployctl report`: the checklist's metrics table from a history database built by hand."""

import json
import re
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from deployctl import reading, report  # noqa: E402
from deployctl.errors import BadInput  # noqa: E402
from deployctl.history import SCHEMA, History  # noqa: E402
from deployctl.project import Project  # noqa: E402

RELEASE_PHASES = [("lock", 1.0), ("preflight", 4.0), ("backup", 20.0), ("maintenance on", 2.0),
                  ("deploy", 60.0), ("migrate", 30.0), ("verify", 25.0), ("maintenance off", 3.0),
                  ("unlock", 1.0)]


def add(db_path: Path, ident: str, started: str, finished: str | None, phases, details: dict,
        action="release", version="v2", outcome="live", exit_code=0, environment="production"):
    """One deployment written straight into the database, as `History` would have."""
    History(db_path)  # creates the schema
    with sqlite3.connect(db_path) as db:
        db.execute("INSERT INTO deployments VALUES (?,?,?,?,?,?,?,?,?,?)",
                   (ident, environment, action, version, "alice", started, finished, outcome, exit_code,
                    json.dumps(details)))
        for seq, (name, seconds, *status) in enumerate(phases, 1):
            db.execute("INSERT INTO phases (deployment_id, seq, name, status, seconds, changed_hosts, failed_hosts, "
                       "unreachable_hosts) VALUES (?,?,?,?,?,?,?,?)",
                       (ident, seq, name, status[0] if status else "passed", seconds, "[]", "{}", "{}"))


CHECKS = {
    "web1": [
        {"host": "web1", "check": "health", "type": "http", "status": "pass",
         "value": {"status": 200, "latency_ms": 12}, "threshold": {"status": [200]}, "message": "HTTP 200"},
        {"host": "web1", "check": "errors", "type": "error_rate", "status": "pass", "value": 0.4,
         "threshold": 1, "message": "0.4 %"},
        {"host": "web1", "check": "p95", "type": "latency", "status": "pass",
         "value": {"p50_ms": 80, "p95_ms": 320}, "threshold": {"p95_ms": 1000}, "message": "p95 320 ms"},
    ],
    "web2": [
        {"host": "web2", "check": "errors", "type": "error_rate", "status": "pass", "value": 0.7,
         "threshold": 1, "message": "0.7 %"},
        {"host": "web2", "check": "p95", "type": "latency", "status": "pass",
         "value": {"p50_ms": 90, "p95_ms": 410}, "threshold": {"p95_ms": 1000}, "message": "p95 410 ms"},
    ],
}


@pytest.fixture
def db(tmp_path):
    return tmp_path / ".deployctl" / "history.db"


def project(db: Path) -> Project:
    """The project whose history `db` is (its state directory's history.db)."""
    return Project(root=db.parent.parent, app="demo", environments={})


def metrics(built: dict) -> dict:
    return {m["key"]: m for m in built["metrics"]}


def test_release_that_met_every_target(db):
    add(db, "DEP-20250101-120000", "2025-01-01T12:00:00+00:00", "2025-01-01T12:12:30+00:00", RELEASE_PHASES,
        {"before": {"web1": "v1", "web2": "v1"}, "after": {"web1": "v2", "web2": "v2"},
         "backup_set": "20250101T120004-v1", "message": "v2 is live", "checks": CHECKS})
    history = History(db)
    built = report.build(history.get("DEP-20250101-120000"))
    by_key = metrics(built)
    assert by_key["deployment_time"]["value"] == 750 and by_key["deployment_time"]["status"] == "met"
    assert by_key["deployment_time"]["display"] == "12 min 30 s"
    # from the end of maintenance on to the end of maintenance off: deploy + migrate + verify + off
    assert by_key["downtime"]["value"] == 118 and by_key["downtime"]["status"] == "met"
    assert by_key["error_rate"]["value"] == 0.7 and by_key["error_rate"]["status"] == "met"
    assert "web2" in by_key["error_rate"]["note"]
    assert by_key["response_time"]["value"] == 410 and by_key["response_time"]["status"] == "met"
    assert built["hosts"] == {"web1": {"before": "v1", "after": "v2"},
                              "web2": {"before": "v1", "after": "v2"}}
    assert built["backup_set"] == "20250101T120004-v1"
    assert [p["name"] for p in built["phases"]] == [name for name, _ in RELEASE_PHASES]

    text = reading.report(project(db), "DEP-20250101-120000")
    assert "| Deployment time | < 30 min | 12 min 30 s | met |" in text
    assert "| Downtime | < 5 min | 1 min 58 s | met |" in text
    assert "| Error rate after deploy | < 1 % | 0.70 % | met |" in text
    assert "| Response time (p95) | < 500 ms | 410 ms | met |" in text
    assert "| 5 | deploy | passed | 60.0 s |" in text
    assert "| web1 | v1 | v2 |" in text
    assert "20250101T120004-v1" in text
    as_json = json.loads(reading.report(project(db), "DEP-20250101-120000", "json"))
    assert as_json["outcome"] == "live" and len(as_json["metrics"]) == 4


def test_targets_missed(db):
    slow = [(name, seconds * 10) for name, seconds in RELEASE_PHASES]
    bad = {"web1": [{"host": "web1", "check": "errors", "type": "error_rate", "status": "fail", "value": 2.5},
                    {"host": "web1", "check": "p95", "type": "latency", "status": "fail",
                     "value": {"p50_ms": 300, "p95_ms": 900}}]}
    add(db, "DEP-2", "2025-01-01T12:00:00+00:00", "2025-01-01T12:45:00+00:00", slow,
        {"before": {"web1": "v1"}, "after": {"web1": "v2"}, "checks": bad})
    by_key = metrics(report.build(History(db).get("DEP-2")))
    assert {k: m["status"] for k, m in by_key.items()} == {
        "deployment_time": "missed", "downtime": "missed", "error_rate": "missed", "response_time": "missed"}


def test_unknown_without_data_and_maintenance_left_on(db):
    phases = [("lock", 1.0), ("preflight", 2.0), ("maintenance on", 1.0), ("deploy", 5.0),
              ("rollback", 3.0, "failed")]
    add(db, "DEP-3", "2025-01-01T12:00:00+00:00", "2025-01-01T12:00:12+00:00", phases,
        {"before": {"web1": "v1"}, "targets": {"web1": "v1"}, "message": "rollback failed"},
        outcome="needs-human", exit_code=5)
    built = report.build(History(db).get("DEP-3"))
    by_key = metrics(built)
    assert by_key["deployment_time"]["value"] == 12
    assert by_key["downtime"]["status"] == "missed" and "not turned off" in by_key["downtime"]["note"]
    assert by_key["error_rate"]["status"] == "unknown" and by_key["response_time"]["status"] == "unknown"
    assert built["hosts"] == {"web1": {"before": "v1", "after": "v1"}}


def test_rolled_back_release_lists_the_versions_put_back(db):
    add(db, "DEP-4", "2025-01-01T12:00:00+00:00", "2025-01-01T12:03:00+00:00",
        RELEASE_PHASES[:7] + [("rollback", 5.0), ("verify", 5.0), ("maintenance off", 1.0), ("unlock", 1.0)],
        {"before": {"web1": "v1", "web2": None}, "targets": {"web1": "v1", "web2": ""}},
        outcome="rolled-back", exit_code=4)
    built = report.build(History(db).get("DEP-4"))
    assert built["hosts"] == {"web1": {"before": "v1", "after": "v1"},
                              "web2": {"before": None, "after": None}}
    assert metrics(built)["downtime"]["value"] == 60 + 30 + 25 + 5 + 5 + 1


def test_downtime_is_how_long_the_maintenance_flag_was_up_on_the_slowest_host(db):
    """The flag's own times (each host's clock against itself), not the phases around it: Ansible's start
    of "maintenance on" before the flag and its end after "maintenance off" are no downtime."""
    flag = {"on": {"web1": 1000.0, "web2": 1000.5}, "off": {"web1": 1004.25, "web2": 1003.0}}
    add(db, "DEP-6", "2025-01-01T12:00:00+00:00", "2025-01-01T12:03:00+00:00", RELEASE_PHASES,
        {"maintenance_flag": flag, "predicted_window": 5.0})
    downtime = metrics(report.build(History(db).get("DEP-6")))["downtime"]
    assert downtime["value"] == 4.25
    assert "flag" in downtime["note"] and "predicted 5" in downtime["note"]


def test_downtime_falls_back_to_the_phases_when_a_host_never_reported_its_flag_down(db):
    add(db, "DEP-7", "2025-01-01T12:00:00+00:00", "2025-01-01T12:03:00+00:00", RELEASE_PHASES,
        {"maintenance_flag": {"on": {"web1": 1000.0}, "off": {}}})
    assert metrics(report.build(History(db).get("DEP-7")))["downtime"]["value"] == 60 + 30 + 25 + 3


def test_verify_run_takes_checks_from_its_verification(db):
    add(db, "DEP-5", "2025-01-01T12:00:00+00:00", "2025-01-01T12:00:05+00:00", [("verify", 4.5)], {},
        action="verify", version=None, outcome="healthy")
    History(db).record_verification("DEP-5", "production", True, 0, CHECKS, "healthy", 4.5)
    built = report.build(History(db).get("DEP-5"), History(db).verification_of("DEP-5"))
    by_key = metrics(built)
    assert by_key["downtime"]["status"] == "unknown"
    assert by_key["response_time"]["value"] == 410
    assert len(built["checks"]) == 5


def test_checks_as_a_flat_list():
    flat = report.flatten_checks(CHECKS)
    assert len(flat) == 5 and report.flatten_checks(flat) == flat
    assert report.flatten_checks(None) == [] and report.flatten_checks("x") == []


def test_unknown_deployment(db, tmp_path):
    History(db)
    with pytest.raises(BadInput, match="unknown deployment 'DEP-nope'"):
        reading.report(project(db), "DEP-nope")
    (tmp_path / "inventory").mkdir()
    (tmp_path / "deployctl.yml").write_text("environments:\n  local: {inventory: inventory}\n")
    command = [sys.executable, "-m", "deployctl", "--project-dir", str(tmp_path), "report", "DEP-nope"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 2
    assert done.stdout == "" and done.stderr.strip().count("\n") == 0
    assert "unknown deployment 'DEP-nope'" in done.stderr


def timed(phases, start="2025-01-01T12:00:00+00:00", gap=0.5):
    """Phases with the start times the pipeline records: each `gap` seconds after the one before ended."""
    at, timed_phases = datetime.fromisoformat(start) + timedelta(seconds=1), []
    for name, seconds, *status in phases:
        timed_phases.append((name, seconds, status[0] if status else "passed", at.isoformat(timespec="milliseconds")))
        at += timedelta(seconds=seconds + gap)
    return timed_phases


def add_timed(db_path, ident, phases, details, **kwargs):
    add(db_path, ident, "2025-01-01T12:00:00+00:00", "2025-01-01T12:01:00+00:00", [], details, **kwargs)
    with sqlite3.connect(db_path) as db:
        for seq, (name, seconds, status, started) in enumerate(phases, 1):
            db.execute("INSERT INTO phases (deployment_id, seq, name, status, seconds, changed_hosts, failed_hosts, "
                       "unreachable_hosts, started_at) VALUES (?,?,?,?,?,?,?,?,?)",
                       (ident, seq, name, status, seconds, "[]", "{}", "{}", started))


FAILED_RELEASE = [("lock", 1.0), ("preflight", 4.0), ("backup", 3.0), ("stage", 2.0), ("maintenance on", 2.0),
                  ("migrate", 3.0), ("deploy", 4.0), ("verify", 5.0, "failed"), ("stop commands", 1.0),
                  ("rollback", 4.0), ("verify", 3.0), ("data state", 1.0), ("maintenance off", 2.0), ("unlock", 1.0)]


def test_the_timeline_puts_each_phase_where_it_ran_and_marks_the_rollback(db):
    add_timed(db, "DEP-T", timed(FAILED_RELEASE),
              {"checks": {"web1": [{"check": "health", "status": "fail"}, {"check": "tcp", "status": "pass"}],
                          "web2": [{"check": "health", "status": "pass"}]}}, outcome="rolled-back", exit_code=4)
    line = report.timeline(report.build(History(db).get("DEP-T")))
    bars = line["phases"]
    assert [(b["start"], b["end"]) for b in bars[:3]] == [(1.0, 2.0), (2.5, 6.5), (7.0, 10.0)]
    assert [b["kind"] for b in bars] == ["passed"] * 7 + ["failed"] + ["rollback"] * 6
    on, off = bars[4], bars[12]
    assert line["window"] == {"start": on["start"], "end": off["end"], "open": False}
    assert line["total"] == 60.0, "the deployment's end, after the last phase"
    assert line["verify"]["at"] is bars[7] and line["verify"]["hosts"] == {
        "web1": {"passed": 1, "failed": 1}, "web2": {"passed": 1, "failed": 0}}


def test_a_timeline_without_start_times_lays_the_phases_end_to_end_and_an_open_window_runs_to_the_end(db):
    phases = [("lock", 1.0), ("maintenance on", 2.0), ("deploy", 5.0), ("rollback", 3.0, "failed")]
    add(db, "DEP-O", "2025-01-01T12:00:00+00:00", "2025-01-01T12:00:12+00:00", phases, {},
        outcome="needs-human", exit_code=5)
    line = report.timeline(report.build(History(db).get("DEP-O")))
    assert [(b["start"], b["end"], b["kind"]) for b in line["phases"]] == [
        (0.0, 1.0, "passed"), (1.0, 3.0, "passed"), (3.0, 8.0, "passed"), (8.0, 11.0, "failed")]
    assert line["window"] == {"start": 1.0, "end": 12.0, "open": True} and line["verify"] is None


def test_the_web_page_fetches_nothing_and_escapes_what_it_shows(db):
    add_timed(db, "DEP-H", timed(FAILED_RELEASE), {"message": "<script>alert(1)</script> & more",
                                                   "checks": CHECKS}, outcome="rolled-back", exit_code=4)
    page = report.html(report.build(History(db).get("DEP-H")))
    assert "default-src 'none'" in page and "<script" not in page and "&lt;script&gt;alert(1)" in page
    assert not re.search(r"(src|href)\s*=|url\(|@import|https?://(?!www\.w3\.org/2000/svg)", page)
    assert page.count('class="phase ') == len(FAILED_RELEASE) and page.count('class="window"') == 1
    assert page.count('class="verify ') == 2 and "Response time (p95)" in page and "&lt; 500 ms" in page


def test_a_history_from_before_phase_start_times_is_upgraded_in_place(tmp_path):
    path = tmp_path / "history.db"
    with sqlite3.connect(path) as old:
        old.executescript(SCHEMA.replace("    started_at TEXT,\n", ""))
        old.execute("INSERT INTO deployments (id, environment, action, user, started_at) "
                    "VALUES ('DEP-OLD', 'local', 'release', 'ada', '2025-01-01T12:00:00+00:00')")
        old.execute("INSERT INTO phases VALUES ('DEP-OLD', 1, 'lock', 'passed', 1.0, '[]', '{}', '{}')")
    history = History(path)
    assert history.get("DEP-OLD").phases[0]["started_at"] is None
    new = history.start("local", "release", "v2")
    history.add_phase(new, "lock", "passed", 1.0, [], {}, {}, "2025-01-02T12:00:00.123+00:00")
    assert history.get(new.id).phases[0]["started_at"] == "2025-01-02T12:00:00.123+00:00"
