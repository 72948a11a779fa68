"""A long migration interrupted by a signal or the phase timeout: it is stopped before the data comes back.

The migration applies the release's schema change, then keeps running and finally deletes every item.
If recovery restored the database under it, the rows would vanish seconds after deployctl reported a
clean rollback: each test checks the data when deployctl exits and again after the migration would
have written.
"""

import json
import os
import pty
import signal
import threading
import time

import pytest

from tests.support.faults import SETTLED, long_migration, processes_matching, settled, sqlite_state, wait_for
from tests.support.project import DEPLOYCTL

MIGRATION_SECONDS = 6


def released_v1(demo_project, **environment):
    project = demo_project(environment=environment or None)
    project.build("v1")
    project.build("v2", migrations=["add_price:ALTER TABLE items ADD COLUMN price INTEGER"])
    assert project.run("release", "v1").code == 0
    project.sqlite("INSERT INTO items (id, name) VALUES (10, 'written by a user')")
    return project


def assert_nothing_lost(project, before: str, script: str) -> None:
    database = project.app_root / "shared" / "data" / "demo.db"
    assert sqlite_state(database) == before, "the database is not what it was before the release"
    # the migration would have deleted every item by now, had it survived
    time.sleep(MIGRATION_SECONDS + 2)
    assert processes_matching(script) == []
    assert sqlite_state(database) == before, "something wrote into the restored database"
    assert project.live() == "v1" and project.served_version() == "v1"
    assert settled(project.app_root) == SETTLED
    assert project.running("worker")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_a_long_migration(demo_project, signum):
    project = released_v1(demo_project)
    before = sqlite_state(project.app_root / "shared" / "data" / "demo.db")
    marker = long_migration(project, MIGRATION_SECONDS)

    proc = project.start("release", "v2")
    wait_for(marker.exists, what="the migration to start")
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    outcome = json.loads(stdout)
    assert outcome["outcome"] == "interrupted"
    details = outcome["deployment"]["details"]
    assert details["restored_set"] == details["backup_set"] and details["safety_set"]
    phases = [p["name"] for p in outcome["deployment"]["phases"]]
    assert phases.index("stop commands") < phases.index("rollback")
    assert_nothing_lost(project, before, str(project.root / "long-migrate"))


def test_hangup_during_a_long_migration(demo_project):
    """The operator's SSH session to the control node drops: the terminal goes, SIGHUP arrives."""
    project = released_v1(demo_project)
    before = sqlite_state(project.app_root / "shared" / "data" / "demo.db")
    marker = long_migration(project, MIGRATION_SECONDS)

    pid, terminal = pty.fork()
    if pid == 0:  # the child: deployctl in a terminal of its own, as in an interactive SSH session
        os.execv(DEPLOYCTL, [DEPLOYCTL, "--project-dir", str(project.root), "release", "v2"])
    drained = threading.Thread(target=_drain, args=(terminal,), daemon=True)
    drained.start()
    wait_for(marker.exists, what="the migration to start")
    os.close(terminal)  # the terminal hangs up: the kernel sends SIGHUP to deployctl
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 130

    last = project.run("history", "--limit", "1").data[0]
    assert last["outcome"] == "interrupted" and last["details"]["restored_set"] == last["details"]["backup_set"]
    assert_nothing_lost(project, before, str(project.root / "long-migrate"))


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass


def test_phase_timeout_during_a_long_migration(demo_project):
    project = released_v1(demo_project)
    # set after the first release: on a busy machine its deploy alone may take longer than this
    project.environment["phase_timeout"] = 25
    before = sqlite_state(project.app_root / "shared" / "data" / "demo.db")
    long_migration(project, 40)

    result = project.run("release", "v2")
    assert result.code == 4, result
    assert "migrate failed: timed out" in result.data["message"]
    assert result.data["deployment"]["details"]["restored_set"] == result.data["deployment"]["details"]["backup_set"]
    assert_nothing_lost(project, before, str(project.root / "long-migrate"))


def test_a_migration_that_ignores_sigterm_is_killed_before_the_restore(demo_project):
    """SIGTERM first, SIGKILL after the grace period: the restore waits until the group is gone."""
    project = released_v1(demo_project)
    marker = project.root / "stubborn.started"
    script = project.root / "stubborn-migrate"
    # traps TERM and keeps going: only SIGKILL stops it, which recovery sends after the grace period
    script.write_text(f"#!/bin/sh\ntrap '' TERM\nbin/migrate || exit 1\ntouch {marker}\nsleep 30\n")
    script.chmod(0o755)
    project.group_vars.update(deployctl_migrate_command=str(script), deployctl_stop_grace=2)
    project.write()
    before = sqlite_state(project.app_root / "shared" / "data" / "demo.db")

    proc = project.start("release", "v2")
    wait_for(marker.exists, what="the migration to start")
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130
    assert json.loads(stdout)["deployment"]["details"]["restored_set"]
    assert processes_matching(str(script)) == []
    assert sqlite_state(project.app_root / "shared" / "data" / "demo.db") == before
