"""Releases and rollbacks through the real CLI with the database and Redis (its data) in containers of a compose
project: every backup phase takes them with the containers' own tools, a failed release and a rollback bring
both back byte for byte, a rollback refuses to lose what was written to Redis, and no password shows in
the process list, docker inspect, the run artifacts or the history."""

from __future__ import annotations

import secrets
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.support.data_services import DataServices
from tests.support.leaks import ProcessWatch, files_containing

REPO = Path(__file__).resolve().parents[2]

# The migrate command: the release's migrations, then a mark in Redis that the release migrated (Redis data a
# rollback has to take back). The Redis password comes from a 0600 file, never a command line.
MIGRATE = """#!/bin/sh
bin/migrate "$@" || exit $?
exec python3 - "$(basename "$PWD")" <<'PY'
import socket, sys
password = open("{password_file}").read()
def command(*args):
    return b"*%d\\r\\n" % len(args) + b"".join(b"$%d\\r\\n%s\\r\\n" % (len(a.encode()), a.encode()) for a in args)
with socket.create_connection(("127.0.0.1", {port})) as sock:
    sock.sendall(command("AUTH", password) + command("SET", "migrated:" + sys.argv[1], "yes"))
    answer = b""
    while answer.count(b"\\r\\n") < 2:
        answer += sock.recv(100)
    assert answer == b"+OK\\r\\n+OK\\r\\n", answer
PY
"""


@pytest.fixture(scope="module")
def stack():
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        started = subprocess.run([str(REPO / "scripts" / "start-docker")], capture_output=True, text=True)
        if started.returncode != 0:
            pytest.skip(f"no Docker engine: {started.stderr.strip()}")
    services = DataServices(Path("/tmp") / f"dcdata-{uuid.uuid4().hex[:8]}", "db", "postgres", "redis")
    try:
        services.up()
        yield services
    finally:
        services.down()


def test_what_cannot_work_is_refused_before_anything_is_touched(stack, demo_project):
    database, redis = stack.database_config("mysql"), stack.redis_config()
    project = demo_project(group_vars={"deployctl_database": database, "deployctl_compose_project": stack.project,
                                       "deployctl_redis": redis})
    project.build("v1")
    before = (stack.state(), stack.redis_keys())
    cases = [
        ({"deployctl_database": dict(database, service="nosuch")},
         f"compose project {stack.project} has no container of service nosuch"),
        ({"deployctl_database": dict(database, password="wrong-password")}, "Access denied for user 'app'"),
        ({"deployctl_redis": dict(redis, password="wrong-password")}, "refused the credentials"),
        ({"deployctl_redis": dict(redis, port=1)}, "redis at 127.0.0.1:1 cannot be reached"),
        ({"deployctl_redis": dict(redis, service="nosuch")}, "has no container of service nosuch"),
        ({"deployctl_redis": dict(redis, prot=1)}, "deployctl_redis.prot (did you mean deployctl_redis.port?)"),
        ({"deployctl_database": {"engine": "none"}}, "deployctl_redis with role data goes into the database's"),
    ]
    for change, words in cases:
        project.group_vars.update({"deployctl_database": database, "deployctl_redis": redis, **change})
        project.write()
        result = project.run("release", "v1")
        assert result.code == 3, (change, result)
        message = result.data["message"]
        assert words in message and "\n" not in message, message
        phases = [p["name"] for p in result.data["deployment"]["phases"]]
        assert "backup" not in phases and "maintenance on" not in phases, phases
    assert project.live() is None and not project.backups.exists()
    assert (stack.state(), stack.redis_keys()) == before


def containers_project(stack, demo_project, tmp_path, database):
    """The demo app on the stack's database (`database`: deployctl_database) and Redis as data, v1 to v3 built:
    v2 migrates, v3 migrates further and fails its health check. Its migrate command also marks in Redis that
    the release migrated."""
    password_file = tmp_path / "redis-password"
    password_file.write_text(stack.redis_password)
    password_file.chmod(0o600)
    migrate = tmp_path / "migrate-and-mark"
    migrate.write_text(MIGRATE.format(password_file=password_file, port=stack.ports["redis"]))
    migrate.chmod(0o755)
    project = demo_project(group_vars={
        "deployctl_database": database,
        "deployctl_compose_project": stack.project,
        "deployctl_redis": stack.redis_config(),
        "deployctl_migrate_command": str(migrate),
    })
    scheme = database["engine"]
    project.group_vars["deployctl_env"].update(
        DEMO_DATABASE_URL=f"{scheme}://app@127.0.0.1:{database['port']}/app", DEMO_DATABASE_PASSWORD=stack.password)
    project.write()
    project.build("v1")
    add_price = "add_price:ALTER TABLE items ADD COLUMN price INTEGER"
    project.build("v2", migrations=[add_price])
    project.build("v3", broken="health", migrations=[add_price, "add_note:ALTER TABLE items ADD COLUMN note TEXT"])
    return project


def test_releases_and_rollbacks_bring_back_the_database_in_its_container_and_redis(stack, demo_project, tmp_path):
    # deployctl's own database user, so that its password is deployctl's alone (the app has its own)
    deploy_password = "deploy-" + secrets.token_hex(12)
    stack.sql(f"""CREATE USER 'deploy'@'127.0.0.1' IDENTIFIED BY '{deploy_password}';
GRANT ALL ON app.* TO 'deploy'@'127.0.0.1';
GRANT ALL ON `deployctl\\_verify\\_%`.* TO 'deploy'@'127.0.0.1';""")
    project = containers_project(stack, demo_project, tmp_path,
                                 stack.database_config("mysql", user="deploy", password=deploy_password))
    secrets_ = (deploy_password, stack.redis_password)

    first = project.run("release", "v1")
    assert first.code == 0, first
    assert "redis: " in first.stderr and " keys in the set" in first.stderr
    stack.sql("INSERT INTO items (id, name) VALUES (10, 'written by a user')")
    with stack.redis() as conn:
        conn.pipeline([["SET", f"session:{i}", f"user {i}"] for i in range(100)])
        conn.command("RPUSH", "bull:jobs", "a", "b", "c")
        conn.command("HSET", "settings", "mode", "live")
    before_v2 = (stack.state(), stack.redis_keys())

    second = project.run("release", "v2")
    assert second.code == 0, second
    assert stack.redis_keys()[(0, b"migrated:v2")] == ("string", b"yes", False)
    before_v3 = (stack.state(), stack.redis_keys())

    with ProcessWatch(*secrets_) as watch:
        third = project.run("release", "v3")
    assert third.code == 4, third  # health failed after the migration: rolled back, data restored
    details = third.data["deployment"]["details"]
    assert details["restored_set"] == details["backup_set"]
    stack.wait_redis()
    assert (stack.state(), stack.redis_keys()) == before_v3
    assert stack.redis_file("dump.rdb") == (project.backups / details["backup_set"] / "redis.rdb").read_bytes()
    assert project.served_version() == "v2"
    assert watch.seen > 50 and watch.found == [], watch.found

    # a write to Redis under v2: undoing v2's migration would lose it
    stack.redis().command("SET", "written-under-v2", "1")
    refused = project.run("rollback")
    assert refused.code == 3, refused
    assert "redis db0 changed" in refused.data["message"], refused.data["message"]
    assert project.live() == "v2" and stack.redis_keys()[(0, b"written-under-v2")][1] == b"1"

    with ProcessWatch(*secrets_) as watch:
        back = project.run("rollback", "--restore-data")
    assert back.code == 0, back
    stack.wait_redis()
    assert (stack.state(), stack.redis_keys()) == before_v2
    assert project.served_version() == "v1"
    assert watch.found == [], watch.found

    # nowhere deployctl keeps anything, nor in the containers' configuration
    kept = [project.root / ".deployctl", project.backups, project.app_root / ".deployctl"]
    assert [f for place in kept for f in files_containing(place, *secrets_)] == []
    for secret in secrets_:
        assert secret not in stack.inspect()
        assert secret not in first.stdout + first.stderr + third.stdout + third.stderr + back.stdout + back.stderr


def test_a_failed_release_brings_back_postgresql_in_its_container_and_redis(stack, demo_project, tmp_path):
    """The same with PostgreSQL (deployctl as the app's user, the owner a restore recreates the database as;
    its password's absence from the process list is proven in test_container_data)."""
    project = containers_project(stack, demo_project, tmp_path, stack.database_config("postgresql"))
    assert project.run("release", "v1").code == 0
    stack.sql("INSERT INTO items (id, name) VALUES (10, 'written by a user')", "postgresql")
    stack.redis().command("SET", "written-by-a-user", "1")
    second = project.run("release", "v2")
    assert second.code == 0, second
    stack.wait_sessions_gone()
    before_v3 = (stack.state("postgresql"), stack.redis_keys())

    third = project.run("release", "v3")
    assert third.code == 4, third
    details = third.data["deployment"]["details"]
    assert details["restored_set"] == details["backup_set"]
    stack.wait_redis()
    assert (stack.state("postgresql"), stack.redis_keys()) == before_v3
    assert project.served_version() == "v2"
