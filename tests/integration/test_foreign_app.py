"""A project deployctl was not written for, set up from the README alone, released for real.

The app (tests/integration/foreign_app/) is a plain node:http server with no npm dependencies that
reads the operator's own shared/.env and refuses to start without DATABASE_URL and APP_PORT; its
PostgreSQL schema is managed by alembic. The project around it (deployctl.yml, an inventory for this
machine) is written here the way the README describes one, not with the demo's helpers, and every
command goes through deployctl's CLI. The tests run in order on one live project:

    v1 (creates notes) → v2 (adds notes.author, moves data) → v3 (a migration failing halfway: rolled
    back) → careless operators → v4 (a slow migration: a second release refused, then Ctrl-C) →
    rollback refused (users wrote) → rollback --restore-data → v2 again → rollback --keep-data →
    the rehearsal on: v3 refused with no downtime → v2 with a predicted window
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.support.project import free_port, http_get

# one operator's trial, test after test on the same environment: the suite runs each file on one worker
# (scripts/test: --dist loadfile), so they run in order
pytestmark = [pytest.mark.integration, pytest.mark.slow]

APP = Path(__file__).resolve().parent / "foreign_app"
BIN = Path(sys.executable).parent
DEPLOYCTL = str(BIN / "deployctl")
ALEMBIC = str(BIN / "alembic")
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}

# the alembic revisions each release tarball carries
REVISIONS = {
    "v1": ["0001_create_notes"],
    "v2": ["0001_create_notes", "0002_note_authors"],
    "v3": ["0001_create_notes", "0002_note_authors", "0003_tags", "0004_broken"],
    "v4": ["0001_create_notes", "0002_note_authors", "0003_slow_backfill", "0004_slow_rewrite"],
}

# what the operator writes before the first release (APP_PORT is filled in per run)
OPERATOR_ENV = """\
# notes: the operator's own settings
DATABASE_URL=postgresql://postgres@127.0.0.1:5432/{database}
APP_PORT={port}
SESSION_SECRET="correct horse battery staple"
export SMTP_HOST=mail.internal
"""
DEPLOYCTL_ENV = {"RELEASE_CHANNEL": "staging", "NODE_ENV": "production", "GREETING": "hello, world #1"}
BEGIN = "# BEGIN deployctl"
END = "# END deployctl"


def build(version: str, dist: Path) -> Path:
    """notes-VERSION.tar.gz with the app at the archive root, as `tar -C app -czf ... .` would make it."""
    dist.mkdir(parents=True, exist_ok=True)
    path = dist / f"notes-{version}.tar.gz"
    files = {"VERSION": (f"{version}\n".encode(), 0o644)}
    for name in ("server.js", "alembic.ini", "migrations/env.py", "migrations/script.py.mako"):
        files[name] = ((APP / name).read_bytes(), 0o644)
    for name in ("bin/restart", "bin/stop"):
        files[name] = ((APP / name).read_bytes(), 0o755)
    for revision in REVISIONS[version]:
        name = f"migrations/versions/{revision}.py"
        files[name] = ((APP / name).read_bytes(), 0o644)
    with tarfile.open(path, "w:gz") as tar:
        for name, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return path


def psql(database: str, sql: str) -> str:
    done = subprocess.run(["psql", "-h", PG["host"], "-p", str(PG["port"]), "-U", PG["user"], "-d", database,
                           "-v", "ON_ERROR_STOP=1", "-X", "-A", "-t", "-c", sql],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class Trial:
    """The operator's project: a deployctl.yml, inventory/staging for this machine, the app's root."""

    def __init__(self, root: Path):
        self.root = root
        self.project = root / "project"
        self.app_root = root / "srv" / "notes"
        self.dist = root / "dist"
        self.backups = root / "backups"
        self.database = f"deployctl_foreign_{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.group_vars = self.project / "inventory" / "staging" / "group_vars" / "all.yml"
        self.env_file = self.app_root / "shared" / ".env"

    # ------------------------------------------------------------------ the project, as the README says

    def write(self) -> None:
        (self.project / "deployctl.yml").parent.mkdir(parents=True, exist_ok=True)
        (self.project / "deployctl.yml").write_text(yaml.safe_dump({
            "app": "notes",
            "environments": {"staging": {"inventory": "inventory/staging", "phase_timeout": 300, "backup": True}},
        }, sort_keys=False))
        hosts = {"all": {
            "children": {"app": {"hosts": {"localhost": None}}, "db": {"hosts": {"localhost": None}}},
            "vars": {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"},
        }}
        self.group_vars.parent.mkdir(parents=True)
        (self.group_vars.parent.parent / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
        self.group_vars.write_text(yaml.safe_dump({
            "deployctl_app_root": str(self.app_root),
            "deployctl_artifact": str(self.dist) + "/notes-{{ deployctl_version }}.tar.gz",
            "deployctl_env": DEPLOYCTL_ENV,
            "deployctl_restart_command": "bin/restart",
            "deployctl_stop_command": "bin/stop",
            "deployctl_migrate_command": f"{ALEMBIC} upgrade head",
            "deployctl_migrate_status_command": f"{ALEMBIC} current",
            "deployctl_verify_checks": [
                {"name": "health", "type": "http", "url": f"http://127.0.0.1:{self.port}/health", "status": 200,
                 "body": '"status": ?"ok"'},
            ],
            "deployctl_verify_retries": 5,
            "deployctl_verify_delay": 1,
            "deployctl_database": {"engine": "postgresql", "name": self.database, **PG},
            "deployctl_backup_dir": str(self.backups),
            "deployctl_backup_files": [str(self.env_file)],
        }, sort_keys=False))
        for version in REVISIONS:
            build(version, self.dist)
        # the operator's own .env, written before the first release
        self.env_file.parent.mkdir(parents=True)
        self.env_file.write_text(self.operator_env)
        self.env_file.chmod(0o600)

    @property
    def operator_env(self) -> str:
        return OPERATOR_ENV.format(database=self.database, port=self.port)

    # ------------------------------------------------------------------ driving it

    def command(self, *args: str) -> list[str]:
        return [DEPLOYCTL, "--project-dir", str(self.project), "-e", "staging", "--json", *args]

    def run(self, *args: str, timeout: float = 600) -> SimpleNamespace:
        done = subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout)
        return self.result(done.returncode, done.stdout, done.stderr)

    @staticmethod
    def result(rc: int, stdout: str, stderr: str) -> SimpleNamespace:
        try:
            doc = json.loads(stdout)
        except ValueError:
            doc = {}
        message = (doc.get("message") or doc.get("error") or "") if isinstance(doc, dict) else ""
        return SimpleNamespace(rc=rc, doc=doc, message=message, stderr=stderr,
                               text=f"exit {rc}: {message}\n{stderr[-3000:]}")

    def status(self) -> dict:
        result = self.run("status")
        assert result.rc == 0, result.text
        return result.doc["hosts"]["localhost"]

    def history(self) -> list[dict]:
        result = self.run("history")
        assert result.rc == 0, result.text
        return result.doc

    def backup_sets(self) -> list[dict]:
        result = self.run("backups")
        assert result.rc == 0, result.text
        return result.doc["sets"]

    def served(self) -> str | None:
        status, body = http_get(f"http://127.0.0.1:{self.port}/health")
        return json.loads(body)["version"] if status == 200 else None

    def sql(self, query: str) -> str:
        return psql(self.database, query)

    def schema_version(self) -> str:
        return self.sql("SELECT version_num FROM alembic_version")

    def db_hash(self) -> dict[str, str]:
        """Per table of the public schema: md5 of its columns and of its rows (sorted)."""
        hashes = {}
        tables = self.sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
                          "ORDER BY 1").split()
        for table in tables:
            hashes[table] = self.sql(
                f"SELECT md5((SELECT string_agg(column_name || ' ' || data_type, ',' ORDER BY ordinal_position) "
                f"FROM information_schema.columns WHERE table_schema = 'public' AND table_name = '{table}') "
                f"|| '|' || coalesce((SELECT string_agg(t::text, E'\\n' ORDER BY t::text) FROM \"{table}\" t), ''))")
        return hashes

    def env_text(self) -> str:
        return self.env_file.read_text()

    def block(self) -> dict[str, str]:
        """deployctl's block of shared/.env, as KEY -> raw value text."""
        lines = self.env_text().splitlines()
        begin = [i for i, line in enumerate(lines) if line.startswith(BEGIN)]
        end = [i for i, line in enumerate(lines) if line == END]
        assert len(begin) == 1 and len(end) == 1 and begin[0] < end[0], self.env_text()
        return dict(line.split("=", 1) for line in lines[begin[0] + 1:end[0]])

    def outside_block(self) -> str:
        text = self.env_text()
        return re.sub(rf"(?ms)^{re.escape(BEGIN)}.*?^{re.escape(END)}\n", "", text)

    def app_processes(self) -> list[int]:
        """Processes (other than this test's) running from the app's root: the app, a migration."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if str(self.app_root) in cwd or str(self.app_root) in cmdline:
                found.append(int(entry.name))
        return found

    def migrations_running(self) -> list[int]:
        pids = []
        for pid in self.app_processes():
            try:
                if b"alembic" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(pid)
            except OSError:
                pass
        return pids

    def stop(self) -> None:
        for pid in self.app_processes():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    trial = Trial(tmp_path_factory.mktemp("foreign"))
    psql("postgres", f"CREATE DATABASE {trial.database}")
    try:
        trial.write()
        yield trial
    finally:
        trial.stop()
        psql("postgres", f"DROP DATABASE IF EXISTS {trial.database} WITH (FORCE)")


def assert_settled(trial: Trial, live: str, previous: str | None) -> None:
    """The environment is at rest: `live` live and served, maintenance off, lock free, nothing unfinished."""
    state = trial.status()
    assert state["live"] == live, state
    assert state["previous"] == previous, state
    assert state["maintenance"] is False, state
    assert state["lock"] is None, state
    assert state["pending"] is None, state
    assert trial.served() == live
    assert not (trial.app_root / "shared" / "maintenance.json").exists()


V1_NOTES = [("alice: hello",), ("bob: hi",), ("carol: hey",), ("dave: yo",)]


# ---------------------------------------------------------------------------------------------- releases


def test_first_release_keeps_the_operators_env(trial):
    result = trial.run("release", "v1")
    assert result.rc == 0, result.text
    assert result.doc["outcome"] == "live"

    # every line the operator wrote is kept, in order; deployctl's values are only inside its block
    assert trial.outside_block() == trial.operator_env
    block = trial.block()
    assert sorted(block) == sorted(DEPLOYCTL_ENV)
    assert block["GREETING"] == "'hello, world #1'"
    for key in DEPLOYCTL_ENV:
        assert not re.search(rf"(?m)^(export )?{key}=", trial.outside_block())
    assert trial.env_file.stat().st_mode & 0o777 == 0o600  # an existing file keeps its mode

    # the app read both halves with Node's own .env parser and serves v1
    assert trial.served() == "v1"
    status, body = http_get(f"http://127.0.0.1:{trial.port}/config")
    assert status == 200
    assert {"DATABASE_URL", "APP_PORT", "SESSION_SECRET", "SMTP_HOST", *DEPLOYCTL_ENV} <= set(json.loads(body)["keys"])
    assert trial.schema_version() == "0001"
    assert_settled(trial, "v1", None)


def test_second_release_migrates_and_keeps_the_rows(trial):
    trial.sql("INSERT INTO notes (body) VALUES " + ", ".join(f"('{body}')" for (body,) in V1_NOTES))
    result = trial.run("release", "v2")
    assert result.rc == 0, result.text
    assert result.doc["outcome"] == "live"

    # the rows written under v1 survived and were moved into the new column
    assert trial.sql("SELECT author || '|' || body FROM notes ORDER BY id").splitlines() == [
        "alice|hello", "bob|hi", "carol|hey", "dave|yo"]
    assert trial.schema_version() == "0002"
    assert_settled(trial, "v2", "v1")

    history = trial.history()
    assert [(d["action"], d["version"], d["outcome"]) for d in history[:2]] == [
        ("release", "v2", "live"), ("release", "v1", "live")]
    # the schema before and after, as `alembic current` of the new release printed it (to v2's code,
    # 0001 is no longer the head)
    assert history[0]["details"]["schema"]["localhost"] == {"before": "0001", "after": "0002 (head)"}


def test_migration_failing_halfway_rolls_back_code_and_database(trial):
    before, env_before = trial.db_hash(), trial.env_text()
    result = trial.run("release", "v3")
    assert result.rc == 4, result.text
    assert result.doc["outcome"] == "rolled-back"
    assert "no_such_column" in result.message  # the reason alembic gave

    assert trial.db_hash() == before
    assert trial.env_text() == env_before
    assert trial.schema_version() == "0002"
    assert_settled(trial, "v2", "v1")  # v3 never went live, so it is no rollback target

    # the first half of v3 really was committed before the failure: the safety set taken before the
    # restore holds its tags table
    deployment = result.doc["deployment"]["id"]
    safety = [s for s in trial.backup_sets() if s["label"] == deployment and s["purpose"] == "safety"]
    assert len(safety) == 1, trial.backup_sets()
    manifest = json.loads((Path(safety[0]["path"]) / "manifest.json").read_text())
    assert "public.tags" in manifest["tables"]
    assert trial.history()[0]["outcome"] == "rolled-back"


# ------------------------------------------------------------------------------------ careless operators


def test_typo_in_the_environment_name(trial):
    count = len(trial.history())
    done = subprocess.run([DEPLOYCTL, "--project-dir", str(trial.project), "-e", "stagign", "--json", "release",
                           "v2"], capture_output=True, text=True, timeout=60)
    result = trial.result(done.returncode, done.stdout, done.stderr)
    assert result.rc == 2, result.text
    assert "stagign" in result.text and "staging" in result.text
    assert len(trial.history()) == count


@contextlib.contextmanager
def edited(path: Path, old: str, new: str):
    """`path` with `old` replaced by `new`, put back afterwards."""
    original = path.read_text()
    assert old in original
    path.write_text(original.replace(old, new, 1))
    try:
        yield
    finally:
        path.write_text(original)


def test_typo_in_a_variable_name(trial):
    before = trial.db_hash()
    with edited(trial.group_vars, "deployctl_migrate_command:", "deployctl_migrate_comand:"):
        result = trial.run("release", "v2")
    assert result.rc == 3, result.text
    assert "deployctl_migrate_comand" in result.message
    assert "did you mean deployctl_migrate_command" in result.message
    assert trial.db_hash() == before
    assert_settled(trial, "v2", "v1")


def test_typo_in_a_database_setting(trial):
    # v9 does not exist either, so nothing can go live whatever deployctl does with the typo
    with edited(trial.group_vars, "  host: 127.0.0.1", "  hots: 127.0.0.1"):
        result = trial.run("release", "v9")
    assert result.rc in (2, 3), result.text
    assert "hots" in result.message


def test_release_of_a_version_that_was_never_built(trial):
    result = trial.run("release", "v9")
    assert result.rc == 3, result.text
    assert result.doc["outcome"] == "unchanged"
    assert str(trial.dist / "notes-v9.tar.gz") in result.message
    assert not (trial.app_root / "releases" / "v9").exists()
    assert_settled(trial, "v2", "v1")


def test_operator_sets_a_variable_deployctl_owns(trial):
    original = trial.env_text()
    clash = original.replace("APP_PORT=", "RELEASE_CHANNEL=mine\nAPP_PORT=", 1)
    trial.env_file.write_text(clash)
    try:
        result = trial.run("release", "v2")
        assert result.rc == 3, result.text
        assert "RELEASE_CHANNEL" in result.message
        assert trial.env_text() == clash  # refused, not "fixed"
    finally:
        trial.env_file.write_text(original)
    assert_settled(trial, "v2", "v1")


def test_second_release_refused_then_ctrl_c_during_the_migration(trial):
    before, env_before = trial.db_hash(), trial.env_text()
    # a terminal's Ctrl-C goes to the whole foreground process group: start deployctl as the leader of one
    first = subprocess.Popen(trial.command("release", "v4"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        # 0003s (deletes half the notes) is committed once alembic_version says so; 0004s then sleeps
        while trial.schema_version() != "0003s":
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the slow migration never started"
            time.sleep(0.3)
        assert trial.db_hash() != before  # the database really is half-migrated now
        assert trial.migrations_running()

        second = trial.run("release", "v2")
        assert second.rc == 6, second.text
        assert trial.schema_version() == "0003s"  # the second did not touch anything either

        os.killpg(first.pid, signal.SIGINT)
        stdout, stderr = first.communicate(timeout=400)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    result = trial.result(first.returncode, stdout, stderr)
    assert result.rc == 130, result.text
    assert result.doc["outcome"] == "interrupted"

    assert trial.db_hash() == before
    assert not trial.migrations_running()
    assert trial.env_text() == env_before
    assert_settled(trial, "v2", "v1")
    time.sleep(5)  # a migration left running would rewrite every note about now
    assert trial.db_hash() == before


# ------------------------------------------------------------------------------------- rollback and data


def test_rollback_refuses_when_users_wrote_since(trial):
    trial.sql("INSERT INTO notes (body, author) VALUES ('written under v2', 'erin')")
    before = trial.db_hash()
    result = trial.run("rollback")
    assert result.rc == 3, result.text
    assert "notes" in result.message
    assert "--keep-data" in result.message and "--restore-data" in result.message
    assert trial.db_hash() == before
    assert_settled(trial, "v2", "v1")


def test_rollback_restore_data_goes_back_to_before_v2(trial):
    result = trial.run("rollback", "--restore-data")
    assert result.rc == 0, result.text
    assert trial.served() == "v1"
    assert trial.schema_version() == "0001"
    # the database is the one v2 started from: v1's bodies, no author column, erin's row gone ...
    assert trial.sql("SELECT body FROM notes ORDER BY id").splitlines() == [body for (body,) in V1_NOTES]
    assert "author" not in trial.sql("SELECT string_agg(column_name, ',') FROM information_schema.columns "
                                     "WHERE table_name = 'notes'")
    # ... and erin's row is kept in the safety set taken first
    deployment = result.doc["deployment"]["id"]
    safety = [s for s in trial.backup_sets() if s["label"] == deployment and s["purpose"] == "safety"]
    assert len(safety) == 1, trial.backup_sets()
    manifest = json.loads((Path(safety[0]["path"]) / "manifest.json").read_text())
    assert manifest["tables"]["public.notes"]["rows"] == len(V1_NOTES) + 1
    state = trial.status()
    assert (state["live"], state["maintenance"], state["lock"]) == ("v1", False, None)


def test_rollback_keep_data_rolls_back_the_code_only(trial):
    result = trial.run("release", "v2")
    assert result.rc == 0, result.text
    assert trial.sql("SELECT author FROM notes ORDER BY id").splitlines() == ["alice", "bob", "carol", "dave"]
    trial.sql("INSERT INTO notes (body, author) VALUES ('written under v2 again', 'frank')")
    before = trial.db_hash()

    result = trial.run("rollback", "--keep-data")
    assert result.rc == 0, result.text
    assert trial.served() == "v1"
    assert trial.db_hash() == before
    assert trial.schema_version() == "0002"
    state = trial.status()
    assert (state["live"], state["maintenance"], state["lock"]) == ("v1", False, None)


# ------------------------------------------------------------------------------- rehearsing the migrations


def test_with_the_rehearsal_on_a_failing_migration_costs_no_downtime(trial):
    """The operator turns on the rehearsal as the README shows; alembic reads DATABASE_URL from .env only."""
    settings = yaml.safe_load(trial.group_vars.read_text())
    settings["deployctl_migrate_rehearse"] = True
    settings["deployctl_migrate_rehearsal_env"] = {
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/{{ deployctl_scratch_database }}"}
    trial.group_vars.write_text(yaml.safe_dump(settings, sort_keys=False))
    before, env_before = trial.db_hash(), trial.env_text()

    result = trial.run("release", "v3")
    assert result.rc == 3, result.text
    assert "failed their rehearsal" in result.message and "no_such_column" in result.message
    phases = [p["name"] for p in result.doc["deployment"]["phases"]]
    assert "rehearse" in phases and "maintenance on" not in phases
    assert trial.db_hash() == before, "the live database was not touched"
    assert trial.env_text() == env_before, "the operator's .env was not touched"
    state = trial.status()
    assert (state["live"], state["maintenance"], state["lock"], state["pending"]) == ("v1", False, None, None)
    assert trial.served() == "v1"
    assert psql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'deployctl_verify_%'") == "0"


def test_with_the_rehearsal_on_a_release_predicts_its_window(trial):
    result = trial.run("release", "v2")
    assert result.rc == 0, result.text
    details = result.doc["deployment"]["details"]
    rehearsed = details["rehearsal"]["schema"]
    assert rehearsed["before"] == rehearsed["after"] and "0002" in rehearsed["after"]  # v2's migrations ran already
    assert details["predicted_window"] > 0
    assert (trial.app_root / "releases" / "v2" / ".env").is_symlink(), "the rehearsal's copy is gone at the switch"
    assert "DATABASE_URL=postgresql://postgres@127.0.0.1:5432/" + trial.database in trial.outside_block()
    assert psql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'deployctl_verify_%'") == "0"
