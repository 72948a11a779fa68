"""Releases of the demo app to localhost through the real CLI, playbooks and ansible-runner."""

import json
import os
import signal
import threading
import time

from tests.support.project import http_get


class FlagAndWorkerWatch:
    """Samples, in a thread, whether the maintenance flag is up and the demo worker runs: `states` is the set
    of (flag up, worker running) pairs seen."""

    def __init__(self, project, interval: float = 0.002):
        self.project, self.interval = project, interval
        self.states: set[tuple[bool, bool]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        flag = self.project.app_root / "shared" / "maintenance.json"
        while not self._stop.is_set():
            self.states.add((flag.exists(), self.project.running("worker")))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def test_release_upgrade_and_rollback(demo_project):
    secret = "s3cr3t-Value-9f2c"
    project = demo_project()
    project.group_vars["deployctl_env"]["API_TOKEN"] = secret
    project.write()
    project.build("v1")
    project.build("v2", migrations=["add_price:ALTER TABLE items ADD COLUMN price INTEGER"])

    first = project.run("release", "v1")
    assert first.code == 0, first
    assert first.outcome == "live"
    assert project.served_version() == "v1"
    assert project.running("worker"), "maintenance off starts the workers again"
    assert not (project.app_root / "shared" / "maintenance.json").exists()
    phases = [p["name"] for p in first.data["deployment"]["phases"]]
    assert phases == ["lock", "preflight", "backup", "stage", "maintenance on", "migrate", "deploy", "verify",
                      "data state", "maintenance off", "unlock"]
    assert first.data["deployment"]["details"]["before"] == {"localhost": None}
    # the whole release is one ansible-playbook run (ansible-runner makes one artifacts directory per run)
    runs = project.root / ".deployctl" / "runs" / first.data["deployment"]["id"] / "artifacts"
    assert sorted(p.name for p in runs.iterdir()) == ["01-release"]

    started = time.monotonic()
    with FlagAndWorkerWatch(project) as watch:
        second = project.run("release", "v2")
    wall = time.monotonic() - started
    assert second.code == 0, second
    # the worker stops before the page goes up and starts after it came down: never both, and never the
    # worker's stop or start inside the downtime
    assert (True, False) in watch.states, watch.states
    assert (True, True) not in watch.states, watch.states
    assert project.served_version() == "v2"
    assert "price" in [row[1] for row in project.sqlite("PRAGMA table_info(items)")]
    assert second.data["deployment"]["details"]["schema"]["localhost"] == {
        "before": "0001_create_items", "after": "0002_add_price"}
    # the downtime is how long the flag was up: from inside maintenance on to inside maintenance off, so
    # at least the phases between them (the gates between phases are not in the phases' seconds)
    flag = second.data["deployment"]["details"]["maintenance_flag"]
    seconds = [p["seconds"] for p in second.data["deployment"]["phases"]]
    names = [p["name"] for p in second.data["deployment"]["phases"]]
    inside = sum(seconds[names.index("maintenance on") + 1:names.index("maintenance off")])
    assert inside < flag["off"]["localhost"] - flag["on"]["localhost"] < wall, (flag, inside, wall)
    # v2 migrated from its staged directory with a copy of .env; the switch put the shared one in its place
    assert os.readlink(project.app_root / "releases" / "v2" / ".env") == str(project.app_root / "shared" / ".env")

    status = project.run("status")
    assert status.code == 0, status
    assert status.data["hosts"]["localhost"]["live"] == "v2"
    assert status.data["hosts"]["localhost"]["previous"] == "v1"
    assert status.data["last_deployment"]["id"] == second.data["deployment"]["id"]

    back = project.run("rollback")
    assert back.code == 0, back
    assert project.served_version() == "v1"
    # v2 ran a migration, so the database set taken before v2 comes back with v1
    assert back.data["deployment"]["details"]["restored_set"] == second.data["deployment"]["details"]["backup_set"]
    assert "price" not in [row[1] for row in project.sqlite("PRAGMA table_info(items)")]

    history = project.run("history")
    assert [d["action"] for d in history.data] == ["rollback", "release", "release"]
    assert all(d["outcome"] in ("live", "rolled-back") for d in history.data)

    # the app gets its secret; the history, ansible-runner's artifacts and the output never see it
    env_file = project.app_root / "shared" / ".env"
    assert secret in env_file.read_text() and env_file.stat().st_mode & 0o777 == 0o600
    state = project.root / ".deployctl"
    assert [str(p) for p in state.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()] == []
    assert all(secret not in r.stdout + r.stderr for r in (first, second, back, status, history))
    assert {p.stat().st_mode & 0o777 for p in (state / "runs").iterdir()} == {0o700}


def test_failed_verify_rolls_back_code_and_database(demo_project):
    project = demo_project()
    project.build("v1")
    project.build("v2", broken="health",
                  migrations=["add_note:CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"])
    assert project.run("release", "v1").code == 0
    project.sqlite("INSERT INTO items (id, name) VALUES (10, 'kept')")

    failed = project.run("release", "v2")
    assert failed.code == 4, failed
    assert failed.outcome == "rolled-back"
    assert "verify failed" in failed.data["message"]
    assert project.served_version() == "v1"
    assert project.live() == "v1"
    tables = {row[0] for row in project.sqlite("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "notes" not in tables, "the migration of the failed release is undone"
    assert (10, "kept") in project.sqlite("SELECT id, name FROM items")
    assert project.running("worker")
    assert not (project.app_root / "shared" / "maintenance.json").exists()
    names = [p["name"] for p in failed.data["deployment"]["phases"]]
    assert names[-6:] == ["stop commands", "rollback", "verify", "data state", "maintenance off", "unlock"]


def test_half_applied_migration_is_undone(demo_project):
    project = demo_project()
    project.build("v1")
    project.build("v2", broken="migration")
    assert project.run("release", "v1").code == 0
    before = project.sqlite("SELECT id, name FROM items ORDER BY id")

    failed = project.run("release", "v2")
    assert failed.code == 4, failed
    assert "migrate failed" in failed.data["message"]
    tables = {row[0] for row in project.sqlite("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "broken_half" not in tables
    assert project.sqlite("SELECT id, name FROM items ORDER BY id") == before
    assert project.served_version() == "v1"


def test_failed_first_release_leaves_nothing_live(demo_project):
    project = demo_project()
    project.build("v1", broken="start")
    failed = project.run("release", "v1")
    assert failed.code == 4, failed
    assert project.live() is None
    assert not project.running("app")
    assert project.run("status").data["hosts"]["localhost"]["live"] is None


def test_bad_input_is_refused_before_anything_runs(demo_project):
    project = demo_project()
    for version in ("v1;rm -rf /", "../v1", "", "v1\nv2", "x" * 200):
        result = project.run("release", version)
        assert result.code == 2, (version, result)
        assert result.data["error"].startswith("invalid version")
        assert result.stderr.count("\n") == 1, result.stderr
    assert project.run("-e", "nowhere", "release", "v1").code == 2
    assert not project.app_root.exists()

    missing = project.run("release", "v9")
    assert missing.code == 3, missing
    assert "does not exist on the control node" in missing.data["message"]
    assert not (project.app_root / "releases").exists()

    (project.root / "deployctl.yml").write_text("environments: [unclosed\n")
    broken = project.run("status")
    assert broken.code == 2 and "not valid YAML" in broken.data["error"]


def test_lock_held_by_another_deployment(demo_project):
    project = demo_project()
    project.build("v1")
    lock = project.app_root / ".deployctl" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"token": "someone-else", "since": "2026-01-01T00:00:00Z",
                                "holder": {"deployment_id": "DEP-OTHER", "user": "ada", "control_node": "ci"}}))
    refused = project.run("release", "v1")
    assert refused.code == 6, refused
    assert "DEP-OTHER" in refused.data["message"] and "ada@ci" in refused.data["message"]
    assert lock.exists(), "someone else's lock is never released by a refused release"
    assert project.live() is None

    # another control node's lock: only with --force, and the refusal names the holder and since when
    careful = project.run("unlock")
    assert careful.code == 6, careful
    assert "ada@ci" in careful.data["message"] and "2026-01-01T00:00:00Z" in careful.data["message"]
    assert lock.exists()
    assert project.run("unlock", "--force").code == 0
    assert not lock.exists()
    assert project.run("release", "v1").code == 0
    assert not lock.exists()


def test_interrupt_rolls_back(demo_project):
    project = demo_project(group_vars={"deployctl_restart_command": "sh -c 'sleep 20; bin/restart'"})
    project.build("v1")
    project.build("v2")
    # the slow restart is only for v2: release v1 with a fast one first
    project.group_vars["deployctl_restart_command"] = "bin/restart"
    project.write()
    assert project.run("release", "v1").code == 0
    project.group_vars["deployctl_restart_command"] = "sh -c 'sleep 20; bin/restart'"
    project.write()

    proc = project.start("release", "v2")
    deadline = time.time() + 120
    while project.live() != "v2" and time.time() < deadline:
        time.sleep(0.2)
    assert project.live() == "v2"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert json.loads(stdout)["outcome"] == "interrupted"
    assert project.live() == "v1"
    assert http_get(project.url("/version"))[1].strip() == "v1"
    assert not (project.app_root / ".deployctl" / "lock").exists()


def test_signals_during_the_automatic_rollback_do_not_stop_it(demo_project):
    """Ctrl-C, then SIGTERM, while a failed release rolls back (a run of its own): the rollback finishes."""
    project = demo_project()
    project.build("v1")
    project.build("v2", broken="health")
    assert project.run("release", "v1").code == 0

    runs = project.root / ".deployctl" / "runs"
    earlier = set(runs.iterdir())
    proc = project.start("release", "v2")
    deadline = time.time() + 120
    # the release's own run, then the recovery's: ansible-runner makes an artifacts directory per run
    while len([run for deployment in set(runs.iterdir()) - earlier for run in deployment.glob("artifacts/*")]) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 4, stderr
    outcome = json.loads(stdout)
    assert outcome["outcome"] == "rolled-back" and "verify failed" in outcome["message"], outcome
    assert "recovering; wait for it to finish" in stderr
    assert project.live() == "v1" and project.served_version() == "v1"
    assert project.running("worker")
    assert not (project.app_root / "shared" / "maintenance.json").exists()
    assert not (project.app_root / ".deployctl" / "lock").exists()
    assert project.run("status").data["last_deployment"]["outcome"] == "rolled-back"
