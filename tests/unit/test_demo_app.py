"""Tests of the bundled demo app (demo/app) and its release builder (demo/build.py)."""

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from demo.build import build, build_git  # noqa: E402

MYSQL_HOST, MYSQL_PORT = "127.0.0.1", 3306
PG_HOST, PG_PORT = "127.0.0.1", 5432


# --------------------------------------------------------------------------- helpers


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DEMO_") and k not in ("MYSQL_PWD", "PGPASSWORD")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return True


class AppRoot:
    """An application root laid out like deployctl does: releases/, shared/, current."""

    def __init__(self, root, artifacts):
        self.root = root
        self.artifacts = artifacts
        self.shared = root / "shared"
        self.port = free_port()
        self.releases = []
        for name in ("data", "run", "log"):
            (self.shared / name).mkdir(parents=True, exist_ok=True)
        self.write_env()

    def write_env(self, **extra):
        lines = ["# written by the test", "DEMO_HOST=127.0.0.1", f"DEMO_PORT={self.port}",
                 "DEMO_WORKER_INTERVAL=0.2"]
        lines += ["{}={}".format(*item) for item in extra.items()]
        (self.shared / ".env").write_text("\n".join(lines) + "\n")

    def deploy(self, version, broken=None, migrations=(), activate=True):
        artifact = build(version, self.artifacts, broken=broken, migrations=migrations)
        release = self.root / "releases" / version
        release.mkdir(parents=True)
        with tarfile.open(artifact) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(release, filter="data")
            else:
                tar.extractall(release)
        for name in ("data", "run", "log", ".env"):
            (release / name).symlink_to(Path("..", "..", "shared", name))
        if activate:
            tmp = self.root / "current.tmp"
            tmp.symlink_to(Path("releases", version))
            os.replace(tmp, self.root / "current")
        self.releases.append(release)
        return release

    def run(self, script, *args, release=None, check=False, timeout=30):
        base = release or (self.root / "current")
        proc = subprocess.run([str(base / "bin" / script)] + list(args), env=clean_env(),
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError("{} {} failed ({}):\n{}\n{}".format(script, " ".join(args), proc.returncode,
                                                              proc.stdout, proc.stderr))
        return proc

    def get(self, path):
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()

    def pid(self, name="app"):
        try:
            return int((self.shared / "run" / (f"{name}.pid")).read_text().strip())
        except (OSError, ValueError):
            return 0

    def cleanup(self):
        for release in reversed(self.releases):
            for args in (("worker", "stop"), ("stop",)):
                with contextlib.suppress(Exception):
                    self.run(*args, release=release, timeout=20)
        for name in ("app", "worker"):
            pid = self.pid(name)
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def app_root(tmp_path):
    root = AppRoot(tmp_path / "srv" / "demo", tmp_path / "artifacts")
    try:
        yield root
    finally:
        root.cleanup()


def sqlite_db(app_root):
    conn = sqlite3.connect(str(app_root.shared / "data" / "demo.db"))
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
        items = conn.execute("SELECT id, name FROM items ORDER BY id").fetchall()
    finally:
        conn.close()
    return tables, versions, items


def load_app_module():
    path = REPO_ROOT / "demo" / "app" / "app.py"
    spec = importlib.util.spec_from_file_location("demo_app_under_test", path)
    module = importlib.util.module_from_spec(spec)
    previous, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = previous
    return module


# ----------------------------------------------------------------------------- build


def test_build_is_deterministic_with_expected_layout(tmp_path):
    first = build("1.0.0", tmp_path / "a")
    second = build("1.0.0", tmp_path / "b")
    assert first == tmp_path / "a" / "demo-1.0.0.tar.gz"
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes()[4:8] == b"\0\0\0\0"  # gzip header mtime does not follow the clock

    with tarfile.open(first) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert {"app.py", "VERSION", "bin", "bin/start", "bin/stop", "bin/restart", "bin/status",
                "bin/worker", "bin/migrate", "migrations", "migrations/0001_create_items.sql"} <= set(names)
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
        assert not {"HEALTH_BROKEN", "START_BROKEN", "migrations/0099_broken.sql"} & set(names)
        assert tar.extractfile("VERSION").read() == b"1.0.0\n"
        for m in members:
            assert (m.uid, m.gid, m.mtime) == (0, 0, 946684800)
            if m.name.startswith("bin/"):
                assert m.mode & 0o111 == 0o111, m.name

    broken = build("1.0.1", tmp_path / "c", broken="migration",
                   migrations=["add_price:ALTER TABLE items ADD COLUMN price INTEGER",
                               ("0005_more", "INSERT INTO items (id, name) VALUES (3, 'gamma');")])
    with tarfile.open(broken) as tar:
        names = set(tar.getnames())
        assert {"migrations/0002_add_price.sql", "migrations/0005_more.sql",
                "migrations/0099_broken.sql"} <= names
        assert tar.extractfile("migrations/0002_add_price.sql").read() == \
            b"ALTER TABLE items ADD COLUMN price INTEGER;\n"
    with tarfile.open(build("1.0.2", tmp_path / "d", broken=["health", "start"])) as tar:
        assert {"HEALTH_BROKEN", "START_BROKEN"} <= set(tar.getnames())

    with pytest.raises(ValueError):
        build("../evil", tmp_path / "e")
    with pytest.raises(ValueError):
        build("1.0.3", tmp_path / "e", broken="nope")


def test_build_cli(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "demo" / "build.py"), "v7", "--out", str(tmp_path),
                           "--broken", "health", "--migration", "0002_x:SELECT 1"],
                          capture_output=True, text=True, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "demo-v7.tar.gz")
    with tarfile.open(tmp_path / "demo-v7.tar.gz") as tar:
        assert {"HEALTH_BROKEN", "migrations/0002_x.sql"} <= set(tar.getnames())


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_build_git_tags_versions(tmp_path):
    repo = tmp_path / "repo"
    first = build_git("v1", repo)
    second = build_git("v2", repo, migrations=["add_price:ALTER TABLE items ADD COLUMN price INTEGER"])
    assert first != second

    def git(*args):
        return subprocess.run(["git", "-C", str(repo)] + list(args), check=True, text=True,
                              stdout=subprocess.PIPE).stdout

    assert set(git("tag").split()) == {"v1", "v2"}
    assert git("show", "v1:VERSION") == "v1\n"
    assert git("show", "v2:VERSION") == "v2\n"
    assert "migrations/0002_add_price.sql" in git("ls-tree", "-r", "--name-only", "v2")
    assert "migrations/0002_add_price.sql" not in git("ls-tree", "-r", "--name-only", "v1")
    modes = {}
    for line in git("ls-files", "-s").splitlines():
        meta, path = line.split("\t", 1)
        modes[path] = meta.split()[0]
    assert modes["bin/start"] == "100755"
    assert modes["VERSION"] == "100644"
    assert git("status", "--porcelain") == ""


# ----------------------------------------------------------------------- app runtime


def test_release_lifecycle_with_sqlite(app_root):
    v1 = app_root.deploy("v1")

    migrate = app_root.run("migrate", check=True)
    assert "applied 0001_create_items" in migrate.stdout
    assert app_root.run("migrate", check=True).stdout.startswith("nothing to apply")
    assert app_root.run("migrate", "--status", check=True).stdout.strip() == "0001_create_items"
    tables, versions, items = sqlite_db(app_root)
    assert versions == ["0001_create_items"]
    assert items == [(1, "alpha"), (2, "beta")]

    assert app_root.run("status").returncode == 3
    start = app_root.run("start", check=True)
    assert "started" in start.stdout
    pid1 = app_root.pid()
    assert pid1 and pid_alive(pid1)

    assert app_root.get("/") == (200, "text/plain; charset=utf-8", "demo v1\n")
    assert app_root.get("/version")[2].strip() == "v1"
    status, ctype, body = app_root.get("/health")
    assert (status, ctype) == (200, "application/json")
    assert json.loads(body) == {"status": "ok", "version": "v1", "database": "ok"}
    status, _, body = app_root.get("/items")
    assert status == 200
    assert json.loads(body) == [{"id": 1, "name": "alpha"}, {"id": 2, "name": "beta"}]
    assert app_root.get("/nope")[0] == 404

    status_proc = app_root.run("status")
    assert status_proc.returncode == 0
    assert f"pid={pid1}" in status_proc.stdout and "version=v1" in status_proc.stdout

    # background worker
    assert app_root.run("worker", "status").returncode == 3
    app_root.run("worker", "start", check=True)
    wpid = app_root.pid("worker")
    assert wpid and pid_alive(wpid)
    worker_status = app_root.run("worker", "status")
    assert worker_status.returncode == 0 and f"pid={wpid}" in worker_status.stdout
    log = app_root.shared / "log" / "worker.log"
    deadline = time.time() + 5
    while time.time() < deadline and "heartbeat 2" not in log.read_text():
        time.sleep(0.1)
    assert "heartbeat 2" in log.read_text()
    assert f"worker stopped (pid {wpid})" in app_root.run("worker", "stop", check=True).stdout
    assert not pid_alive(wpid)
    assert app_root.run("worker", "status").returncode == 3
    assert app_root.run("worker", "stop").returncode == 0

    # a new release started through `current` replaces the running instance
    v2 = app_root.deploy("v2")
    assert (app_root.root / "current").resolve() == v2.resolve()
    app_root.run("start", check=True)
    pid2 = app_root.pid()
    assert pid2 != pid1 and not pid_alive(pid1)
    assert app_root.get("/version")[2].strip() == "v2"
    assert "version=v2" in app_root.run("status").stdout
    # the old release's scripts act on the same shared pid file
    app_root.run("restart", release=v1, check=True)
    assert app_root.get("/version")[2].strip() == "v1"
    pid3 = app_root.pid()
    assert pid3 not in (pid1, pid2) and not pid_alive(pid2)

    assert "stopped" in app_root.run("stop", check=True).stdout
    assert not pid_alive(pid3)
    assert not (app_root.shared / "run" / "app.pid").exists()
    assert app_root.run("status").returncode == 3
    assert app_root.run("stop").returncode == 0
    app_log = (app_root.shared / "log" / "app.log").read_text()
    assert "GET /health" in app_log and "demo v2 listening" in app_log
    assert not list(app_root.root.rglob("__pycache__"))


def test_start_fails_when_port_is_taken(app_root):
    app_root.deploy("v1")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", app_root.port))
        sock.listen(1)
        started = time.time()
        proc = app_root.run("start")
    assert proc.returncode != 0
    assert time.time() - started < 10
    assert "failed to start" in proc.stderr
    assert "cannot listen" in proc.stderr  # the log tail
    assert not (app_root.shared / "run" / "app.pid").exists()
    assert app_root.run("status").returncode == 3


def test_broken_start_release_fails_to_start(app_root):
    app_root.deploy("v1", broken="start")
    proc = app_root.run("start")
    assert proc.returncode != 0
    assert "START_BROKEN" in proc.stderr
    assert app_root.run("status").returncode == 3


def test_broken_health_release_answers_500(app_root):
    app_root.deploy("v1", broken="health")
    app_root.run("migrate", check=True)
    app_root.run("start", check=True)
    status, _, body = app_root.get("/health")
    assert status == 500
    assert json.loads(body)["version"] == "v1"
    assert app_root.get("/")[0] == 200
    app_root.run("stop", check=True)


def test_health_reports_unreachable_database(app_root):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    app_root.write_env(DEMO_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{dead_port}/nothing")
    app_root.deploy("v1")
    app_root.run("start", check=True)
    status, _, body = app_root.get("/health")
    assert status == 503
    payload = json.loads(body)
    assert payload["status"] == "error" and payload["database"] == "error" and payload["error"]
    app_root.run("stop", check=True)


def test_broken_migration_is_half_applied(app_root):
    app_root.deploy("v1", broken="migration")
    proc = app_root.run("migrate")
    assert proc.returncode == 1
    assert "0099_broken" in proc.stderr and "statement 3" in proc.stderr
    tables, versions, items = sqlite_db(app_root)
    assert "broken_half" in tables
    assert versions == ["0001_create_items"]
    assert (99, "half-applied") in items
    assert app_root.run("migrate", "--status", check=True).stdout.strip() == "0001_create_items"


def test_database_password_never_on_command_line(monkeypatch):
    app = load_app_module()
    monkeypatch.setenv("DEMO_DATABASE_PASSWORD", "s3cret-pw")
    for url, var in (("mysql://u@db:3307/x", "MYSQL_PWD"), ("postgresql://u@db:5433/x", "PGPASSWORD")):
        db = app.Database(url)
        try:
            cmd = db._client_command("SELECT 1")
        except app.DatabaseError:  # client not installed
            cmd = []
        assert not any("s3cret-pw" in arg for arg in cmd)
        env = db._client_env()
        assert env[var] == "s3cret-pw" and "DEMO_DATABASE_PASSWORD" not in env
    assert app.Database("sqlite:////tmp/x/demo.db").path == "/tmp/x/demo.db"
    assert app.Database("sqlite:///tmp/y.db").path == "/tmp/y.db"


# ------------------------------------------------------------------ real databases


def _mysql(sql, database=None):
    client = shutil.which("mariadb") or shutil.which("mysql")
    cmd = [client, "--batch", "--skip-column-names", "-h", MYSQL_HOST, "-P", str(MYSQL_PORT), "-u", "root"]
    if database:
        cmd += ["-D", database]
    return subprocess.run(cmd + ["-e", sql], capture_output=True, text=True,
                          timeout=20, env=clean_env())


def _psql(sql, database="postgres"):
    cmd = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", PG_HOST, "-p", str(PG_PORT),
           "-U", "postgres", "-d", database, "-c", sql]
    env = clean_env()
    env["PGCONNECT_TIMEOUT"] = "5"
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, env=env)


@pytest.fixture(params=["mysql", "postgresql"])
def real_database(request):
    """Create dctest_<uuid8> on the local server; yields (kind, url, password, query)."""
    kind = request.param
    name = f"dctest_{uuid.uuid4().hex[:8]}"
    if kind == "mysql":
        if not (shutil.which("mariadb") or shutil.which("mysql")):
            pytest.skip("mariadb client not installed")
        if _mysql("SELECT 1").returncode != 0:
            pytest.skip(f"MariaDB not reachable at {MYSQL_HOST}:{MYSQL_PORT}")
        password = f"pw-{uuid.uuid4().hex[:8]}"
        setup = (f"CREATE DATABASE {name}; CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'; "
                 f"GRANT ALL PRIVILEGES ON {name}.* TO '{name}'@'%'")
        result = _mysql(setup)
        assert result.returncode == 0, result.stderr
        url = f"mysql://{name}@{MYSQL_HOST}:{MYSQL_PORT}/{name}"

        def query(sql):
            res = _mysql(sql, name)
            assert res.returncode == 0, res.stderr
            return [tuple(line.split("\t")) for line in res.stdout.splitlines()]

        try:
            yield kind, url, password, query
        finally:
            _mysql(f"DROP DATABASE IF EXISTS {name}; DROP USER IF EXISTS '{name}'@'%'")
    else:
        if not shutil.which("psql"):
            pytest.skip("psql not installed")
        if _psql("SELECT 1").returncode != 0:
            pytest.skip(f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT}")
        result = _psql(f"CREATE DATABASE {name}")
        assert result.returncode == 0, result.stderr
        url = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"

        def query(sql):
            res = _psql(sql, name)
            assert res.returncode == 0, res.stderr
            return [tuple(line.split("|")) for line in res.stdout.splitlines() if line]

        try:
            yield kind, url, None, query
        finally:
            _psql(f"DROP DATABASE IF EXISTS {name}")


@pytest.mark.integration  # the machine's MariaDB and PostgreSQL
def test_migrate_against_real_database(app_root, real_database):
    kind, url, password, query = real_database
    if password:
        app_root.write_env(DEMO_DATABASE_URL=url, DEMO_DATABASE_PASSWORD=password)
    else:
        app_root.write_env(DEMO_DATABASE_URL=url)
    app_root.deploy("v1", broken="migration",
                    migrations=["add_price:ALTER TABLE items ADD COLUMN price INTEGER"])

    proc = app_root.run("migrate")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "applied 0001_create_items" in proc.stdout and "applied 0002_add_price" in proc.stdout
    assert "0099_broken" in proc.stderr
    if password:
        assert password not in proc.stdout + proc.stderr

    versions = sorted(row[0] for row in query("SELECT version FROM schema_migrations"))
    assert versions == ["0001_create_items", "0002_add_price"]
    assert query("SELECT COUNT(*) FROM broken_half") == [("0",)]  # created by the half-applied migration
    assert query("SELECT id, name FROM items ORDER BY id") == [("1", "alpha"), ("2", "beta"),
                                                               ("99", "half-applied")]
    assert app_root.run("migrate", "--status", check=True).stdout.strip() == "0002_add_price"

    app_root.run("start", check=True)
    status, _, body = app_root.get("/health")
    assert status == 200, body
    assert json.loads(body)["database"] == "ok"
    status, _, body = app_root.get("/items")
    assert status == 200
    assert [item["id"] for item in json.loads(body)] == [1, 2, 99]
    app_root.run("stop", check=True)
