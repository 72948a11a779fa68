"""Where the data is the point: the same faults on the machine's MariaDB and PostgreSQL."""

import json
import signal
import time

import pytest

from tests.support.databases import database, mariadb, psql, state_of, use_database
from tests.support.faults import SETTLED, long_migration, processes_matching, settled, wait_for

ENGINES = ["mysql", "postgresql"]


def write(project, sql: str) -> None:
    engine = project.group_vars["deployctl_database"]["engine"]
    (mariadb if engine == "mysql" else psql)(sql, project.database)


@pytest.fixture(params=ENGINES)
def db_project(demo_project, request):
    project = demo_project()
    with database(request.param) as (name, password):
        use_database(project, request.param, name, password)
        project.build("v1")
        project.build("v2", migrations=["add_price:ALTER TABLE items ADD COLUMN price INTEGER"])
        assert project.run("release", "v1").code == 0
        write(project, "INSERT INTO items (id, name) VALUES (10, 'written by a user')")
        try:
            yield project
        finally:
            project.stop()


def test_sigterm_during_a_long_migration(db_project):
    project = db_project
    before = state_of(project)
    marker = long_migration(project, 6)
    proc = project.start("release", "v2")
    wait_for(marker.exists, what="the migration to start")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    details = json.loads(stdout)["deployment"]["details"]
    assert details["restored_set"] == details["backup_set"]
    assert state_of(project) == before
    time.sleep(8)
    assert processes_matching(str(project.root / "long-migrate")) == []
    assert state_of(project) == before, "something wrote into the restored database"
    assert project.served_version() == "v1" and settled(project.app_root) == SETTLED
    # the database password reached the dump tools and the app, nothing deployctl keeps or prints
    state = project.root / ".deployctl"
    assert [str(p) for p in state.rglob("*") if p.is_file() and project.password.encode() in p.read_bytes()] == []
    assert project.password not in stdout + stderr


def test_rollback_refuses_to_lose_writes_then_restores_when_told(db_project):
    project = db_project
    before_v2 = state_of(project)
    assert project.run("release", "v2").code == 0
    write(project, "INSERT INTO items (id, name, price) VALUES (11, 'written under v2', 3)")
    written = state_of(project)

    refused = project.run("rollback")
    assert refused.code == 3, refused
    assert "items changed" in refused.data["message"]
    assert state_of(project) == written and project.live() == "v2"

    back = project.run("rollback", "--restore-data")
    assert back.code == 0, back
    assert state_of(project) == before_v2
    assert project.served_version() == "v1" and settled(project.app_root) == SETTLED
