"""Releases of the demo app backed by the machine's MariaDB: the database comes back on rollback."""

import subprocess

from tests.support.databases import mariadb


def test_half_applied_migration_on_mariadb_is_undone(mariadb_project):
    project = mariadb_project
    project.build("v1")
    project.build("v2", broken="migration")
    assert project.run("release", "v1").code == 0
    mariadb("INSERT INTO items (id, name) VALUES (7, 'kept')", project.database)
    before = mariadb("CHECKSUM TABLE items; SHOW TABLES", project.database)

    failed = project.run("release", "v2")
    assert failed.code == 4, failed
    details = failed.data["deployment"]["details"]
    assert details["backup_set"] and details["restored_set"] == details["backup_set"]
    assert mariadb("CHECKSUM TABLE items; SHOW TABLES", project.database) == before
    assert "broken_half" not in mariadb("SHOW TABLES", project.database)
    assert project.served_version() == "v1"

    sets = project.run("backups")
    assert sets.code == 0, sets
    # newest first: the safety set of the database as the failed migration left it, then the pre-release set
    assert [s["set_id"] for s in sets.data["sets"][:2]] == [details["safety_set"], details["backup_set"]]
    assert [s["purpose"] for s in sets.data["sets"][:2]] == ["safety", "pre-release"]
    assert all(s["verified"] for s in sets.data["sets"][:2])
    assert sets.data["sets"][1]["live_version"] == "v1"

    # the password reached the app and the dump tools, and nothing deployctl keeps or prints
    state = project.root / ".deployctl"
    assert [str(p) for p in state.rglob("*") if p.is_file() and project.password.encode() in p.read_bytes()] == []
    assert project.password not in failed.stdout + failed.stderr + sets.stdout + sets.stderr


def test_full_backup_disk_stops_the_release_before_maintenance(mariadb_project, tmp_path):
    project = mariadb_project
    project.build("v1")
    project.build("v2")
    assert project.run("release", "v1").code == 0
    mariadb("CREATE TABLE filler (id INT PRIMARY KEY AUTO_INCREMENT, pad LONGTEXT) ENGINE=InnoDB;"
            "INSERT INTO filler (pad) SELECT REPEAT(MD5(seq), 4096) FROM seq_1_to_40", project.database)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        project.group_vars["deployctl_backup_dir"] = str(small)
        project.write()
        stopped = project.run("release", "v2")
        assert stopped.code == 3, stopped
        assert "not enough space" in stopped.data["message"]
        names = [p["name"] for p in stopped.data["deployment"]["phases"]]
        assert "maintenance on" not in names and "deploy" not in names
        assert project.live() == "v1" and project.served_version() == "v1"
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)
