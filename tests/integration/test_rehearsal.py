"""The migrations rehearsed on the scratch copy of the pre-release set, before maintenance goes up.

Real releases of the demo app (SQLite, and MariaDB with its own user) through the CLI: a migration that fails
its rehearsal stops the release with no downtime, a rehearsal not pointed at the scratch copy is refused
before anything or, when the app reads other variables than the operator set, caught, and no scratch copy
outlives its release.
"""

import pytest

from tests.support.databases import mariadb
from tests.support.faults import sqlite_state

REHEARSAL = {"deployctl_migrate_rehearse": True,
             "deployctl_migrate_rehearsal_env": {"DEMO_DATABASE_URL": "{{ deployctl_scratch_database_url }}"}}


def names(result) -> list[str]:
    return [p["name"] for p in result.data["deployment"]["phases"]]


def rehearsing(project, **group_vars):
    project.group_vars.update(REHEARSAL, **group_vars)
    project.write()
    return project


def live_db(project):
    return project.app_root / "shared" / "data" / "demo.db"


def scratch_copies(project) -> list[str]:
    return sorted(p.name for p in project.backups.glob("*.sqlite")) if project.backups.exists() else []


def test_a_release_rehearses_its_migrations_and_predicts_the_window(demo_project):
    project = rehearsing(demo_project())
    project.build("v1")
    project.build("v2", migrations=["add_price:ALTER TABLE items ADD COLUMN price INTEGER"])
    assert project.run("release", "v1").code == 0

    result = project.run("release", "v2")
    assert result.code == 0, result
    assert names(result).index("rehearse") < names(result).index("maintenance on")
    details = result.data["deployment"]["details"]
    assert details["rehearsal"]["seconds"] > 0 and details["predicted_window"] > 0
    assert details["rehearsal"]["schema"]["before"] != details["rehearsal"]["schema"]["after"]
    assert project.served_version() == "v2"
    assert scratch_copies(project) == [], "the scratch copy is dropped after the rehearsal"

    report = project.run("report", result.data["deployment"]["id"])
    assert report.code == 0
    downtime = next(m for m in report.data["metrics"] if m["key"] == "downtime")
    assert "predicted" in downtime["note"] and "flag up" in downtime["note"]
    assert 0 < downtime["value"] < sum(p["seconds"] for p in result.data["deployment"]["phases"])


def test_a_migration_that_fails_its_rehearsal_stops_the_release_with_no_downtime(demo_project):
    project = rehearsing(demo_project())
    project.build("v1")
    project.build("v2", broken="migration")
    assert project.run("release", "v1").code == 0
    before = sqlite_state(live_db(project))

    result = project.run("release", "v2")
    assert result.code == 3, result
    assert "failed their rehearsal" in result.data["message"] and "no downtime" in result.data["message"]
    assert "maintenance on" not in names(result) and "deploy" not in names(result)
    assert sqlite_state(live_db(project)) == before
    assert project.served_version() == "v1"
    assert scratch_copies(project) == []


def test_a_rehearsal_whose_variables_the_app_does_not_read_is_caught(demo_project):
    """The operator's mistake: the app reads DEMO_DATABASE_URL, the rehearsal sets another variable, so the
    rehearsal's migrations run on the live database."""
    project = rehearsing(demo_project(), deployctl_migrate_rehearsal_env={
        "DATABASE_URL": "{{ deployctl_scratch_database_url }}"})
    project.build("v1")
    project.build("v2", migrations=["add_price:ALTER TABLE items ADD COLUMN price INTEGER"])
    assert project.run("release", "v1").code == 0

    result = project.run("release", "v2")
    assert result.code == 5, result
    message = result.data["message"]
    assert "changed during the rehearsal" in message and "maintenance never went up" in message
    assert "maintenance on" not in names(result)
    assert project.served_version() == "v1"


@pytest.mark.parametrize("rehearsal_env", [
    None,  # forgotten
    {"DEMO_DATABASE_URL": "sqlite:///{{ deployctl_app_root }}/shared/data/demo.db"},  # the live database
])
def test_a_rehearsal_not_pointed_at_the_scratch_copy_is_refused_before_anything(demo_project, rehearsal_env):
    project = demo_project()
    project.group_vars["deployctl_migrate_rehearse"] = True
    if rehearsal_env is not None:
        project.group_vars["deployctl_migrate_rehearsal_env"] = rehearsal_env
    project.write()
    project.build("v1")

    result = project.run("release", "v1")
    assert result.code == 3, result
    assert "deployctl_migrate_rehearsal_env" in result.data["message"]
    assert names(result) == ["lock", "preflight", "unlock"]


def test_mariadb_a_failing_migration_is_rehearsed_on_a_copy_and_the_live_database_is_untouched(mariadb_project):
    project = rehearsing(mariadb_project)
    project.build("v1")
    project.build("v2", broken="migration")
    assert project.run("release", "v1").code == 0
    mariadb("INSERT INTO items (id, name) VALUES (7, 'kept')", project.database)
    before = mariadb("CHECKSUM TABLE items; SHOW TABLES", project.database)

    result = project.run("release", "v2")
    assert result.code == 3, result
    assert "failed their rehearsal" in result.data["message"]
    assert mariadb("CHECKSUM TABLE items; SHOW TABLES", project.database) == before
    assert "broken_half" not in mariadb("SHOW TABLES", project.database)
    assert project.served_version() == "v1"
    assert "deployctl_verify_keep" not in mariadb("SHOW DATABASES")
