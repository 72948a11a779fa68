"""A rollback restores data only when that loses nothing; otherwise it refuses before touching anything."""

import pytest

from tests.support.faults import SETTLED, settled, sqlite_state

ADD_PRICE = ["add_price:ALTER TABLE items ADD COLUMN price INTEGER"]


def database(project):
    return project.app_root / "shared" / "data" / "demo.db"


def phase_names(result) -> list[str]:
    return [p["name"] for p in result.data["deployment"]["phases"]]


@pytest.fixture
def v2_migrated(demo_project):
    """v1 live with a user's row, then v2 (which adds a column) live."""
    project = demo_project()
    project.build("v1")
    project.build("v2", migrations=ADD_PRICE)
    assert project.run("release", "v1").code == 0
    project.sqlite("INSERT INTO items (id, name) VALUES (10, 'before v2')")
    project.before_v2 = sqlite_state(database(project))
    second = project.run("release", "v2")
    assert second.code == 0, second
    project.v2 = second
    return project


def test_nothing_written_since_the_release_restores_the_schema(v2_migrated):
    project = v2_migrated
    back = project.run("rollback")
    assert back.code == 0, back
    details = back.data["deployment"]["details"]
    assert details["restored_set"] == project.v2.data["deployment"]["details"]["backup_set"]
    assert details["safety_set"] and details["safety_set"] != details["restored_set"]
    assert "nothing was written since" in back.data["message"]
    assert sqlite_state(database(project)) == project.before_v2
    assert project.served_version() == "v1" and settled(project.app_root) == SETTLED


def test_writes_since_the_release_refuse_then_choose(v2_migrated):
    project = v2_migrated
    project.sqlite("INSERT INTO items (id, name, price) VALUES (11, 'written under v2', 5)")
    written = sqlite_state(database(project))

    refused = project.run("rollback")
    assert refused.code == 3, refused
    message = refused.data["message"]
    assert "items changed" in message and "--restore-data" in message and "--keep-data" in message
    assert "maintenance on" not in phase_names(refused), "refused before maintenance"
    assert project.live() == "v2" and sqlite_state(database(project)) == written
    assert settled(project.app_root) == SETTLED

    # --to follows the same rule
    refused_to = project.run("rollback", "--to", "v1")
    assert refused_to.code == 3 and "items changed" in refused_to.data["message"], refused_to

    kept = project.run("rollback", "--keep-data")
    assert kept.code == 0, kept
    assert project.live() == "v1" and sqlite_state(database(project)) == written
    assert kept.data["deployment"]["details"]["restored_set"] is None


def test_restore_data_loses_the_writes_but_keeps_a_safety_set(v2_migrated):
    project = v2_migrated
    project.sqlite("INSERT INTO items (id, name, price) VALUES (11, 'written under v2', 5)")
    back = project.run("rollback", "--restore-data")
    assert back.code == 0, back
    details = back.data["deployment"]["details"]
    assert sqlite_state(database(project)) == project.before_v2
    sets = {s["set_id"]: s for s in project.run("backups").data["sets"]}
    safety = sets[details["safety_set"]]
    assert safety["purpose"] == "safety" and safety["verified"] and safety["label"] == back.data["deployment"]["id"]
    assert safety["live_version"] == "v2"

    # the writes are in the safety set: restoring it brings them back
    again = project.run("--yes", "restore", details["safety_set"])
    assert again.code == 0, again
    assert (11, "written under v2") in project.sqlite("SELECT id, name FROM items")


def test_no_schema_change_keeps_the_data(demo_project):
    project = demo_project()
    project.build("v1")
    project.build("v2")
    assert project.run("release", "v1").code == 0
    assert project.run("release", "v2").code == 0
    project.sqlite("INSERT INTO items (id, name) VALUES (12, 'written under v2')")
    written = sqlite_state(database(project))
    back = project.run("rollback")
    assert back.code == 0, back
    assert "data kept" in back.data["message"] and back.data["deployment"]["details"]["restored_set"] is None
    assert sqlite_state(database(project)) == written, "nothing a user wrote is lost"
    assert project.served_version() == "v1"


def test_rollback_to_an_older_release_checks_every_release_undone(demo_project):
    project = demo_project()
    project.build("v1")
    project.build("v2", migrations=ADD_PRICE)
    project.build("v3", migrations=ADD_PRICE)  # v3 adds no migration of its own
    assert project.run("release", "v1").code == 0
    before_v2 = sqlite_state(database(project))
    assert project.run("release", "v2").code == 0
    assert project.run("release", "v3").code == 0
    back = project.run("rollback", "--to", "v1")
    assert back.code == 0, back
    assert sqlite_state(database(project)) == before_v2
    assert project.served_version() == "v1"


def test_writes_between_two_releases_undone_refuse(demo_project):
    project = demo_project()
    project.build("v1")
    project.build("v2", migrations=ADD_PRICE)
    project.build("v3", migrations=ADD_PRICE)
    assert project.run("release", "v1").code == 0
    assert project.run("release", "v2").code == 0
    project.sqlite("INSERT INTO items (id, name) VALUES (13, 'written under v2')")
    assert project.run("release", "v3").code == 0
    refused = project.run("rollback", "--to", "v1")
    assert refused.code == 3, refused
    assert "items changed" in refused.data["message"]
    assert project.live() == "v3"


def test_no_rollback_then_rollback_goes_to_the_release_before(demo_project):
    project = demo_project()
    project.build("v0")
    project.build("v1")
    project.build("v2", broken="health", migrations=ADD_PRICE)
    assert project.run("release", "v0").code == 0
    assert project.run("release", "v1").code == 0
    before_v2 = sqlite_state(database(project))

    stopped = project.run("release", "v2", "--no-rollback")
    assert stopped.code == 5, stopped
    assert "not rolled back" in stopped.data["message"]
    assert project.live() == "v2"
    status = project.run("status").data["hosts"]["localhost"]
    assert (status["live"], status["previous"]) == ("v2", "v1")

    back = project.run("rollback")
    assert back.code == 0, back
    assert project.live() == "v1" and project.served_version() == "v1"
    # the release ended inside maintenance, which still held writes off: its set comes back
    assert back.data["deployment"]["details"]["restored_set"] == stopped.data["deployment"]["details"]["backup_set"]
    assert sqlite_state(database(project)) == before_v2
    assert settled(project.app_root) == SETTLED
