"""The read commands' views: status, history, report, backups and verify's Prometheus metrics, from a
history in a temporary directory and a scripted runner. No server, no ansible-playbook."""

import io
import json
import os
import socket
import stat

import pytest
from rich.console import Console

from deployctl import processes, reading
from deployctl.console import Output
from deployctl.errors import ExitCode
from deployctl.pipeline import Outcome, Pipeline
from deployctl.project import Environment, Project
from tests.support.stub_runner import Answer, StubRunner

DEAD = {"control_node": socket.gethostname(), "pid": 999999999, "start_ticks": 1}
FAILED_HEALTH = {"web1": [{"host": "web1", "check": "health", "status": "fail"}]}


@pytest.fixture
def pipeline(tmp_path):
    env = Environment(name="local", inventory=tmp_path, backup=True)
    project = Project(root=tmp_path, app="demo", environments={"local": env})
    return Pipeline(project, env, Output(as_json=True), runner=StubRunner(hosts=["web1"]))


def hosts_answer(**state):
    return Answer(reports={"web1": {"state": {"live": "v2", "previous": "v1", "maintenance": False, **state}}})


def column(view, header):
    [found] = [c for c in view.table.columns if c.header == header]
    return list(found.cells)


# ---------------------------------------------------------------- status


def test_status_shows_the_hosts_the_last_deployment_the_last_verification_and_what_is_unfinished(pipeline):
    history = pipeline.history
    done = history.start("local", "release", "v2")
    history.finish(done, "live", 0)
    history.record_verification(done.id, "local", False, 7, FAILED_HEALTH, "checks-failed", 1.0)
    dead = history.start("local", "release", "v3", {"process": DEAD})
    pipeline.runner.answer("state", hosts_answer(lock={"deployment_id": dead.id}))

    view = reading.status(pipeline)

    assert view.exit_code == ExitCode.OK and view.error is None
    assert set(view.data) == {"environment", "hosts", "unreachable", "last_verification", "last_deployment",
                              "unfinished"}
    assert view.data["environment"] == "local" and view.data["hosts"]["web1"]["live"] == "v2"
    assert view.data["last_deployment"]["id"] == dead.id, "the newest deployment, finished or not"
    assert [d["id"] for d in view.data["unfinished"]] == [dead.id]
    assert view.data["last_verification"]["exit_code"] == 7
    lines = view.text.splitlines()
    assert lines[0] == f"last: {dead.id} release v3 → running"
    assert lines[1].startswith("last verification: ") and "FAILING" in lines[1] and "health@web1" in lines[1]
    assert lines[2].startswith(f"UNFINISHED: {dead.id} release v3 ") and "deployctl recover" in lines[2]
    assert [c.header for c in view.table.columns] == ["host", "live", "app says", "previous", "maintenance",
                                                      "locked by", "unfinished"]
    assert column(view, "locked by") == [dead.id] and column(view, "maintenance") == ["off"]


def test_status_without_deployments_says_so(pipeline):
    pipeline.runner.answer("state", hosts_answer())
    view = reading.status(pipeline)
    assert view.text.splitlines() == ["no deployments yet", "last verification: none yet (deployctl verify, "
                                                            "deployctl schedule install)"]
    assert view.data["last_deployment"] is None and view.data["unfinished"] == []


def test_status_reads_the_hosts_when_the_history_is_unusable(pipeline, tmp_path):
    (tmp_path / ".deployctl").mkdir()
    (tmp_path / ".deployctl" / "history.db").write_bytes(b"not a database" * 100)
    pipeline.runner.answer("state", hosts_answer())
    view = reading.status(pipeline)
    assert view.exit_code == ExitCode.OK
    assert view.data["hosts"]["web1"]["live"] == "v2" and "mv " in view.data["history_error"]
    assert view.text.startswith("history: ") and "last_verification" not in view.data
    assert view.data["last_deployment"] is None and view.data["unfinished"] == []


def test_status_of_an_unreachable_host_could_not_run(pipeline):
    pipeline.runner.answer("state", Answer(unreachable={"web2": "no route"},
                                           reports=hosts_answer().reports))
    view = reading.status(pipeline)
    assert view.exit_code == ExitCode.COULD_NOT_RUN
    assert view.data["unreachable"] == {"web2": "no route"}
    assert column(view, "host") == ["web1", "web2"] and column(view, "live") == ["v2", "UNREACHABLE"]


def test_status_of_compose_hosts_lists_their_containers(pipeline):
    containers = [{"service": "web", "tag": "v2", "health": "healthy"}, {"service": "worker", "tag": "v2",
                                                                         "state": "running"}]
    pipeline.runner.answer("state", hosts_answer(containers=containers))
    view = reading.status(pipeline)
    assert column(view, "containers") == ["web v2 healthy, worker v2 running"]


# ---------------------------------------------------------------- history, report, backups


def test_history_shows_a_running_deployment_whose_deployctl_is_gone_as_unfinished(pipeline):
    history = pipeline.history
    done = history.start("local", "release", "v1")
    done.details["message"] = "v1 is live"
    history.finish(done, "live", 0)
    dead = history.start("local", "release", "v2", {"process": DEAD})
    running = history.start("local", "verify", None, {"process": processes.identity()})
    history.start("staging", "release", "v9")

    view = reading.history(pipeline.project, "local", limit=20)

    assert view.exit_code == ExitCode.OK and view.table.title == "History of local"
    assert [(d["id"], d["outcome"]) for d in view.data] == [(running.id, "running"), (dead.id, "unfinished"),
                                                            (done.id, "live")]
    assert column(view, "message") == ["", "", "v1 is live"]
    assert pipeline.history.get(dead.id).outcome == "running", "reading changes nothing"
    assert len(reading.history(pipeline.project, "local", limit=1).data) == 1


def test_report_reads_the_deployment_and_its_verification(pipeline):
    run = pipeline.history.start("local", "verify", None)
    pipeline.history.add_phase(run, "verify", "failed", 2.0, [], {"web1": "503"}, {})
    pipeline.history.finish(run, "checks-failed", 7)
    pipeline.history.record_verification(run.id, "local", False, 7, FAILED_HEALTH, "checks-failed", 2.0)
    built = json.loads(reading.report(pipeline.project, run.id, "json"))
    assert built["deployment_id"] == run.id and built["checks"][0]["check"] == "health"
    assert reading.report(pipeline.project, run.id).startswith(f"# {run.id}: verify on local\n")


def test_backups_lists_the_sets_newest_first(pipeline):
    pipeline.runner.answer("backups", Answer(reports={"web1": {"backups": [
        {"set_id": "S1", "created_at": "1", "verified": True},
        {"set_id": "S3", "created_at": "3", "purpose": "safety", "verified": False},
        {"set_id": "S2", "created_at": "2", "verified": True, "broken": "checksum mismatch"}]}}))
    view = reading.backups(pipeline)
    assert view.exit_code == ExitCode.OK and [s["set_id"] for s in view.data["sets"]] == ["S3", "S2", "S1"]
    assert column(view, "verified") == ["NO", "BROKEN: checksum mismatch", "yes"]
    assert column(view, "purpose") == ["safety", "", ""]


def test_backups_that_cannot_be_listed_are_an_error_with_exit_8(pipeline):
    pipeline.runner.answer("backups", Answer(unreachable={"web1": "no route"}))
    view = reading.backups(pipeline)
    assert view.exit_code == ExitCode.COULD_NOT_RUN and view.data is None and view.table is None
    assert view.error.startswith("could not list the backup sets: ")


# ---------------------------------------------------------------- verify: status line and metrics


def test_status_line():
    assert "none yet" in reading.verification_line(None)
    line = reading.verification_line({"healthy": False, "outcome": "checks-failed", "exit_code": 7,
                                      "at": "2025-01-01T00:00:00+00:00", "deployment_id": "DEP-1",
                                      "checks": FAILED_HEALTH})
    assert "FAILING" in line and "exit 7" in line and "health@web1" in line and "\n" not in line
    healthy = reading.verification_line({"healthy": True, "exit_code": 0, "at": "t", "deployment_id": "DEP-2",
                                         "checks": FAILED_HEALTH})
    assert healthy == "last verification: t healthy (DEP-2)"


def test_metrics(tmp_path):
    checks = {"web1": [{"host": "web1", "check": "health", "status": "pass"},
                       {"host": "web1", "check": 'odd "name"', "status": "fail"}]}
    text = reading.render_metrics("prod", False, 7, 1700000000.5, 3.25, checks)
    assert 'deployctl_verify_healthy{environment="prod"} 0\n' in text
    assert 'deployctl_verify_last_run_timestamp_seconds{environment="prod"} 1700000000.500\n' in text
    assert 'deployctl_verify_duration_seconds{environment="prod"} 3.250\n' in text
    assert 'deployctl_check_ok{environment="prod",host="web1",check="health"} 1\n' in text
    assert 'deployctl_check_ok{environment="prod",host="web1",check="odd \\"name\\""} 0\n' in text
    # a flat list (the shape of `verify --json`) gives the same lines
    flat = reading.render_metrics("prod", False, 7, 1700000000.5, 3.25, checks["web1"])
    assert flat == text
    healthy = reading.render_metrics("prod", True, 0, 1.0, 1.0, None)
    assert 'deployctl_verify_healthy{environment="prod"} 1' in healthy and "deployctl_check_ok" not in healthy


def test_export_metrics_writes_atomically_with_the_checks_of_the_run(pipeline, tmp_path):
    run = pipeline.history.start("local", "verify", None)
    pipeline.history.record_verification(run.id, "local", False, 7, FAILED_HEALTH, "checks-failed", 1.0)
    outcome = Outcome(ExitCode.CHECKS_FAILED, "checks-failed", "x", run)  # no checks in its data
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    target = metrics_dir / "deployctl.prom"
    assert reading.export_metrics(target, pipeline.history, outcome, "local", 1.0, 2.0)
    text = target.read_text()
    assert 'deployctl_verify_exit_code{environment="local"} 7\n' in text
    assert 'deployctl_check_ok{environment="local",host="web1",check="health"} 0\n' in text, "from the history"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644
    assert [p.name for p in metrics_dir.iterdir()] == ["deployctl.prom"]


def test_a_metrics_file_that_cannot_be_written_is_reported_not_raised(pipeline, tmp_path):
    said = []
    outcome = Outcome(ExitCode.OK, "healthy", "all checks passed", data={"checks": []})
    target = tmp_path / "missing" / "deployctl.prom"
    assert reading.export_metrics(target, pipeline.history, outcome, "local", 1.0, 2.0, said.append) is False
    assert said and "could not write the metrics to" in said[0] and not target.exists()


def rendered(view, width=80) -> list[str]:
    console = Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False)
    console.print(view.table)
    return console.file.getvalue().splitlines()


def test_tables_fit_80_columns_and_never_cut_an_id(pipeline, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    history = pipeline.history
    for n in range(3):
        done = history.start("local", "release", f"v1.{n}.0-rc.{n}")
        done.details["message"] = "verify failed on web1: health: HTTP 503 from http://127.0.0.1:8080/health " * 3
        history.finish(done, "rolled-back", 4)
    view = reading.history(pipeline.project, "local", limit=20)
    lines = rendered(view)
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    for deployment in view.data:
        assert any(deployment["id"] in line and deployment["version"] in line for line in lines), \
            f"{deployment['id']} cut:\n" + "\n".join(lines)
    assert sum("…" in line for line in lines) == 3, "each message on one line, shortened"
    assert view.data[0]["details"]["message"].endswith("/health "), "--json keeps the whole message"


def test_backup_set_ids_are_never_cut(pipeline, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    long_id = "20261201T093000Z-pre-release-DEP-20261201-093000-2"
    pipeline.runner.answer("backups", Answer(reports={"web1": {"backups": [
        {"set_id": long_id, "created_at": "2026-12-01T09:30:00.123456Z", "purpose": "pre-release",
         "live_version": "v1.4.0", "size_bytes": 123456789, "verified": False, "broken": "x" * 200}]}}))
    lines = rendered(reading.backups(pipeline))
    assert all(len(line) <= 80 for line in lines) and any(long_id in line for line in lines), "\n".join(lines)


def test_a_plan_as_text_a_row_per_phase_and_host_then_what_the_control_node_knows(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    phase = {"phase": "deploy", "passed": True, "problem": None,
             "hosts": {"web1": {"changes": ["Switch", "Switch"], "problem": None, "report": {}},
                       "web2": {"changes": [], "problem": None, "report": {}}}}
    failed = {"phase": "verify", "passed": False, "problem": "web1: HTTP 503",
              "hosts": {"web1": {"changes": [], "problem": "HTTP 503", "report": {}}}}
    plan = {"version": "v2", "phases": [phase, failed], "already_live": None, "stale_locks": [],
            "rollback_target": {"web1": "v1", "web2": None},
            "backup": {"host": "db1", "set_id": "S", "pruned": ["S0"], "kept_for_rollback": ["S1"]},
            "migrations": {"host": "web1", "status": "0001", "pending": ["0002_add_price"], "problem": ""}}
    view = reading.plan(Outcome(ExitCode.OK, "planned", "release v2 would run 2 phases on web1, web2",
                                data={"plan": plan}))
    assert view.exit_code == ExitCode.OK and view.data["plan"] == plan
    assert [line.split() for line in rendered(view)[3:]] == [["deploy", "web1", "Switch"], ["deploy", "web2", "no",
                                                                                           "change"],
                                                            ["verify", "web1", "FAILS:", "HTTP", "503"]]
    assert view.text.splitlines() == [
        "rollback target afterwards: v1 (web1), none (nothing to go back to) (web2)",
        "backup: a new set on db1; retention would delete: S0; kept for a rollback: S1",
        "migrations on web1: database at 0001; pending: 0002_add_price",
        "planned: release v2 would run 2 phases on web1, web2"]
    stopped = reading.plan(Outcome(ExitCode.ROLLED_BACK, "would-roll-back", "the release would stop: verify failed",
                                   data={"plan": plan}))
    assert stopped.exit_code == ExitCode.ROLLED_BACK
    assert stopped.text.splitlines() == ["migrations on web1: database at 0001; pending: 0002_add_price",
                                         "would-roll-back: the release would stop: verify failed"]
