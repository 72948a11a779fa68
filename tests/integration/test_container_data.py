"""The database and Redis inside containers of a compose project (deployctl.core.backup_set with
database_service and redis.service), against the real engine: the containers' own tools dump, verify and
restore, no password shows anywhere, and what cannot work is refused before anything is touched.

One compose project of data services (MariaDB, PostgreSQL, Redis: demo/stack's data image) serves the
whole module; each test sets the app database's and Redis's contents it needs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from ansible_collections.deployctl.core.plugins.module_utils import processes
from ansible_collections.deployctl.core.plugins.module_utils.backup_common import BackupError
from ansible_collections.deployctl.core.plugins.module_utils.compose_containers import ContainerError, service_container
from ansible_collections.deployctl.core.plugins.module_utils.set_operations import run
from ansible_collections.deployctl.core.plugins.module_utils.tool_runners import ContainerTools

from demo.stack.build import data_image
from tests.support.data_services import DataServices
from tests.support.leaks import ProcessWatch, files_containing

REPO = Path(__file__).resolve().parents[2]
ENGINES = ["mysql", "postgresql"]
SCHEMA = {
    "mysql": """DROP TABLE IF EXISTS items; DROP VIEW IF EXISTS named;
CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(200), body LONGBLOB);
CREATE DEFINER = 'app'@'127.0.0.1' VIEW named AS SELECT id, name FROM items;
INSERT INTO items (id, name, body) VALUES (1, 'one', 0x00ff), (2, 'tw\\'o', NULL);
INSERT INTO items (id, name, body) SELECT seq + 10, CONCAT('row ', seq), REPEAT(MD5(RAND()), 60)
  FROM seq_1_to_{rows};""",
    "postgresql": """DROP VIEW IF EXISTS named; DROP TABLE IF EXISTS items;
CREATE TABLE items (id INT PRIMARY KEY, name TEXT, body BYTEA);
CREATE VIEW named AS SELECT id, name FROM items;
INSERT INTO items (id, name, body) VALUES (1, 'one', '\\x00ff'), (2, 'tw''o', NULL);
INSERT INTO items (id, name, body) SELECT g + 10, 'row ' || g,
  convert_to((SELECT string_agg(md5(random()::text || g || i), '') FROM generate_series(1, 60) i), 'UTF8')
  FROM generate_series(1, {rows}) g;
ALTER TABLE items OWNER TO app; ALTER VIEW named OWNER TO app;""",
}


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        started = subprocess.run([str(REPO / "scripts" / "start-docker")], capture_output=True, text=True)
        if started.returncode != 0:
            pytest.skip(f"no Docker engine: {started.stderr.strip()}")
    stack = DataServices(tmp_path_factory.mktemp("data-services"), "db", "postgres", "redis")
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


def params(services, tmp_path, engine, **extra):
    config = services.database_config(engine)
    return {"engine": engine, "database": config["name"], "login_host": config["host"], "login_port": config["port"],
            "login_user": config["user"], "login_password": config["password"], "database_service": config["service"],
            "compose_project": services.project, "backup_dir": str(tmp_path / "sets"), **extra}


def fill(services, engine, rows=1000):
    services.sql(SCHEMA[engine].replace("{rows}", str(rows)), engine)


def running(services, service, program):
    """Whether `program` runs in the service's container (by its own name: a wrapper's script also names it)."""
    return any(os.path.basename(command.split()[0]) == program for command in services.processes(service))


def leftovers(services, service):
    """Credential directories a wrapper left in the container."""
    return services.exec(service, "sh", "-c", "ls -d /tmp/deployctl-secrets.* 2>/dev/null || true").decode().split()


@pytest.mark.parametrize("engine", ENGINES)
def test_the_containers_own_tools_take_verify_and_restore_a_set(services, tmp_path, engine, monkeypatch):
    fill(services, engine)
    before = services.state(engine)
    service = "db" if engine == "mysql" else "postgres"
    # this host's client tools cannot be found: only the container's can have run
    real_which = shutil.which
    client = ("mariadb", "mysql", "pg_", "psql")
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name.startswith(client)
                        else real_which(name, *a, **k))
    with ProcessWatch(services.password) as watch:
        taken = run(dict(params(services, tmp_path, engine), encryption_key="e" * 32, process_registry=str(
            tmp_path / "registry")))
    assert taken["verified"], taken
    assert taken["manifest"]["tables"][("public." if engine == "postgresql" else "") + "items"]["rows"] == 1002
    assert watch.seen > 5 and watch.found == [], watch.found
    assert leftovers(services, service) == []
    assert services.password not in services.inspect()

    services.sql("DELETE FROM items WHERE id < 100; INSERT INTO items (id, name) VALUES (99999, 'written after');",
                 engine)
    assert services.state(engine) != before
    if engine == "postgresql":
        services.wait_sessions_gone()
    with ProcessWatch(services.password) as watch:
        restored = run(dict(params(services, tmp_path, engine), encryption_key="e" * 32, state="restored",
                            set_id=taken["set_id"]))
    assert restored["set_id"] == taken["set_id"]
    assert services.state(engine) == before
    assert watch.found == [] and leftovers(services, service) == []
    assert files_containing(tmp_path, services.password) == []
    assert run(dict(params(services, tmp_path, engine), state="inspected"))["data"]["tables"] == \
        {k: v for k, v in taken["data"]["tables"].items()}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_dump_stops_in_the_container_when_recovery_kills_its_docker_exec(services, tmp_path, engine):
    """Recovery kills the process groups it recorded on the host: docker exec's. The dump inside the container
    is no child of it, and must stop too."""
    # more than the pipes between the dump and the module hold: 4 MB for mariadb-dump; pg_dump compresses the
    # hex text to about half, and what Docker's exec stream buffers took the whole of 4 MB (the dump ended)
    fill(services, engine, rows=2000 if engine == "mysql" else 20000)
    service, tool = ("db", "mariadb-dump") if engine == "mysql" else ("postgres", "pg_dump")
    registry = tmp_path / "registry"
    # the module stops reading after the first chunk (its host lost, say): the dump waits on a full pipe
    script = (f"import sys, json, time; sys.path.insert(0, {str(REPO / 'collections')!r}); "
              "from ansible_collections.deployctl.core.plugins.module_utils import processes, sealed_streams; "
              "from ansible_collections.deployctl.core.plugins.module_utils.set_operations import run; "
              "sealed_streams.Sink.write = lambda self, data: time.sleep(3600); "
              f"processes.configure({str(registry)!r}, 'DEP-test', 'backup'); "
              "run(json.loads(sys.argv[1]))")
    module = subprocess.Popen([sys.executable, "-c", script, json.dumps(params(services, tmp_path, engine))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not running(services, service, tool):
            assert module.poll() is None and time.time() < deadline, module.communicate()
            time.sleep(0.2)
        time.sleep(2)
        assert running(services, service, tool), "the dump did not wait"
        stopped, survivors = processes.stop(str(registry), "DEP-test", grace=2)
        assert survivors == [] and any(r["program"] == "docker" for r in stopped), stopped
        deadline = time.time() + 15
        while running(services, service, tool):
            assert time.time() < deadline, f"{tool} still runs in the container"
            time.sleep(0.2)
        assert leftovers(services, service) == []
        assert "<defunct>" not in services.processes(service), "a process left unreaped"
    finally:
        os.killpg(module.pid, signal.SIGKILL)
        module.wait()


# quotes, backslashes, a colon (pgpass), shell and printf metacharacters, a literal \n and \c
AWKWARD = "p'a\"ss\\w:$rd %s `x` \\n\\c é"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_password_of_any_characters_reaches_the_containers_tools(services, tmp_path, engine):
    fill(services, engine, rows=10)
    services.sql("DROP VIEW named;", engine)  # its definer is the app's user, whom another may not restore
    quoted = AWKWARD.replace("\\", "\\\\").replace("'", "''") if engine == "mysql" else AWKWARD.replace("'", "''")
    if engine == "mysql":
        services.sql(f"CREATE USER IF NOT EXISTS 'odd'@'127.0.0.1' IDENTIFIED BY '{quoted}'; "
                     "GRANT ALL ON app.* TO 'odd'@'127.0.0.1'; "
                     "GRANT ALL ON `deployctl\\_verify\\_%`.* TO 'odd'@'127.0.0.1';", engine)
    else:
        services.sql(f"DROP ROLE IF EXISTS odd; CREATE ROLE odd LOGIN CREATEDB PASSWORD '{quoted}'; "
                     "GRANT ALL ON ALL TABLES IN SCHEMA public TO odd;", engine)
    odd = dict(params(services, tmp_path, engine), login_user="odd", login_password=AWKWARD)
    assert run(dict(odd, state="checked")) == {"changed": False}
    with ProcessWatch(AWKWARD) as watch:
        taken = run(odd)
    assert taken["verified"] and watch.found == []


class Collected:
    """A sink that keeps what it is given."""

    def __init__(self):
        self.data = b""

    def write(self, data):
        self.data += data


def docker_exec_of(text):
    """The pid of the `docker exec` (a process group of its own) whose command line has `text`."""
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
            if argv[1:3] == [b"exec", b"-i"] and any(text.encode() in a for a in argv) and \
                    os.getpgid(int(name)) == int(name):
                found.append(int(name))
    assert len(found) == 1, found
    return found[0]


def test_a_writer_in_the_container_outlives_its_docker_exec_but_not_under_the_watcher(services, tmp_path):
    """Why a dump runs under the wrapper's watcher: docker keeps a command that writes steadily (not blocked on
    a full pipe) running when its `docker exec` is killed; the watcher stops it."""
    tools = ContainerTools(services.project, "db")
    writer = ["perl", "-e", '$| = 1; $0 = "deployctl-test-writer"; '
              'while (1) { print "x\\n"; select(undef, undef, undef, 0.1) }']

    def alive():
        return "deployctl-test-writer" in services.exec("db", "ps", "-eo", "args").decode()

    # without the watcher: the writer goes on
    bare = processes.popen(tools.argv("stream", writer), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert bare.stdout.readline() == b"x\n"
    os.killpg(bare.pid, signal.SIGKILL)  # as recovery kills a recorded group
    bare.wait()
    time.sleep(3)
    assert alive(), "docker stopped the writer by itself: the watcher would not be needed"
    services.exec("db", "pkill", "-f", "deployctl-test-writer")

    # under the watcher (a dump's way): it stops
    sink = Collected()

    def pump():
        with contextlib.suppress(BackupError):  # it fails, killed
            tools.pump(writer, sink, "writer")

    pumping = threading.Thread(target=pump, daemon=True)
    pumping.start()
    deadline = time.time() + 30
    while not alive():
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(docker_exec_of("deployctl-test-writer"), signal.SIGKILL)
    deadline = time.time() + 15
    while alive():
        assert time.time() < deadline, "the writer still runs in the container"
        time.sleep(0.2)
    pumping.join(30)
    assert sink.data.startswith(b"x\n")


def test_refusals_before_anything_is_touched(services, tmp_path):
    fill(services, "mysql")
    base = params(services, tmp_path, "mysql")
    assert run(dict(base, state="checked")) == {"changed": False}
    cases = {
        "has no container of service nosuch": dict(base, database_service="nosuch"),
        "Access denied": dict(base, login_password="wrong-" + uuid.uuid4().hex),
        "compose project dcdata-none has no container": dict(base, compose_project="dcdata-none"),
        "not for sqlite": dict(base, engine="sqlite", database=str(tmp_path / "x.db")),
    }
    for message, case in cases.items():
        with pytest.raises(BackupError) as refused:
            run(dict(case, state="checked"))
        assert message in refused.value.msg and "\n" not in refused.value.msg.strip(), refused.value.msg
        with pytest.raises(BackupError):
            run(case)
    assert not (tmp_path / "sets").exists() or os.listdir(tmp_path / "sets") == []


def test_a_stopped_database_container_is_refused(services, tmp_path):
    services.compose("stop", "postgres")
    try:
        with pytest.raises(BackupError) as refused:
            run(dict(params(services, tmp_path, "postgresql"), state="checked"))
        assert "of compose service postgres is exited, not running: start it first" in refused.value.msg
    finally:
        services.up("postgres")


def redis_params(services, tmp_path, **redis):
    return dict(params(services, tmp_path, "mysql"), redis=services.redis_config(**redis))


def fill_redis(services):
    with services.redis() as conn:
        conn.command("FLUSHALL")
        conn.pipeline([["SET", f"session:{i}", f"user {i}"] for i in range(500)])
        conn.command("HSET", "settings", "mode", "live", "limit", 10)
        conn.command("RPUSH", "bull:jobs", *[f"job{i}" for i in range(100)])
        conn.command("SET", "lock", "x", "EX", 600)
        conn.command("SELECT", 1)
        conn.command("SADD", "other", "a", "b")


def test_redis_in_its_container_is_snapshotted_verified_and_put_back(services, tmp_path):
    fill(services, "mysql")
    fill_redis(services)
    before = services.redis_keys()
    owner = services.exec("redis", "stat", "-c", "%U:%G %a", "/data").decode().split()[0]
    since = subprocess.run(["date", "+%s"], capture_output=True, text=True, check=True).stdout.strip()
    with ProcessWatch(services.redis_password) as watch:
        taken = run(redis_params(services, tmp_path))
    assert taken["verified"] and taken["redis"]["keys"] == 504
    assert taken["manifest"]["redis"]["appendonly"] is True and taken["manifest"]["redis"]["service"] == "redis"
    rdb = (Path(taken["path"]) / "redis.rdb").read_bytes()
    assert rdb == services.redis_file("dump.rdb")

    with services.redis() as conn:
        conn.command("FLUSHALL")
        conn.command("SET", "written-after", "1")
    container = services.container("redis")
    with ProcessWatch(services.redis_password) as watch2:
        run(dict(redis_params(services, tmp_path), state="restored", set_id=taken["set_id"]))
    services.wait_redis()
    assert services.container("redis") == container, "the service's own container runs again"
    assert services.redis_keys() == before
    assert services.redis_file("dump.rdb") == rdb
    assert services.redis_file("appendonlydir/appendonly.aof.1.base.rdb") == rdb
    listing = services.exec("redis", "sh", "-c", "stat -c '%U:%G %a %n' /data/dump.rdb /data/appendonlydir "
                            "/data/appendonlydir/*").decode()
    assert all(line.startswith(owner) for line in listing.splitlines()), listing
    assert watch.found == [] and watch2.found == []
    assert services.redis_password not in services.inspect()
    assert files_containing(tmp_path, services.redis_password) == []
    # the scratch Redis and the put-back ran in one-off containers of the service's image, and none is left
    label = f"label=org.deployctl.oneoff={services.project}/redis"
    events = subprocess.run(["docker", "events", "--since", since, "--until", str(int(time.time()) + 1), "--filter",
                             label, "--filter", "event=start", "--format", "{{.From}}"],
                            capture_output=True, text=True, check=True).stdout.split()
    image = subprocess.run(["docker", "inspect", "--format", "{{.Image}}", services.container("redis")],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert events == [image, image], (events, image)
    left = subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True, check=True)
    assert left.stdout.strip() == ""


def test_redis_refusals_before_anything_is_touched(services, tmp_path):
    fill(services, "mysql")
    fill_redis(services)
    before = services.redis_keys()
    cases = {
        "refused the credentials": {"password": "wrong-" + uuid.uuid4().hex},
        "cannot be reached": {"port": 1},
        "has no container of service nosuch": {"service": "nosuch"},
    }
    for message, redis in cases.items():
        with pytest.raises(BackupError) as refused:
            run(dict(redis_params(services, tmp_path, **redis), state="checked"))
        assert message in refused.value.msg, refused.value.msg
    assert services.redis_keys() == before


def test_a_container_whose_healthcheck_still_says_starting_is_waited_for():
    """Just after `up -d`, a database initialising its data directory runs but answers nothing yet: its
    healthcheck's verdict is waited for, and one that never comes is a clear refusal."""
    project = f"dcstarting-{uuid.uuid4().hex[:8]}"
    started = subprocess.run(
        ["docker", "run", "-d", "--network", "none", "--label", f"com.docker.compose.project={project}",
         "--label", "com.docker.compose.service=db", "--health-cmd", "test -e /tmp/ready", "--health-interval", "1s",
         "--health-start-period", "120s", data_image(), "sleep", "600"], capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    container = started.stdout.strip()
    try:
        with pytest.raises(ContainerError, match=r"is still starting after 2 s"):
            service_container(project, "db", starting_wait=2)
        ready = threading.Timer(3, lambda: subprocess.run(["docker", "exec", container, "touch", "/tmp/ready"]))
        ready.start()
        began = time.monotonic()
        found = service_container(project, "db")
        waited = time.monotonic() - began
        ready.join()
        assert found["id"] == container and found["image"].startswith("sha256:")
        assert 3 <= waited < 30, waited
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)
