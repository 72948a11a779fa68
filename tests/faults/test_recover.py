"""The control node dies mid-release: everything refuses, naming the deployment, until `recover` finishes it."""

import contextlib
import json
import os
import signal
import subprocess

from tests.support.faults import (
    SETTLED,
    kill_tree,
    long_migration,
    processes_matching,
    settled,
    sqlite_state,
    wait_for,
)
from tests.support.project import DEPLOYCTL
from tests.support.telegram import HOOK, SECRET, FakeBotAPI, configure


def start_detached(project, *args) -> subprocess.Popen:
    """deployctl in a session of its own, so that its whole tree can be killed like a dying machine's."""
    return subprocess.Popen([DEPLOYCTL, "--project-dir", str(project.root), "--json", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def recorded_labels(registry) -> list[str]:
    """What the commands recorded on the host are for (tracked_command's registry)."""
    labels = []
    for record in registry.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            labels.append(json.loads(record.read_text()).get("label"))
    return labels


def killed_mid_deploy(demo_project):
    """v1 live, then the release of v2 (with a migration) killed, whole tree, after v2 went live."""
    project = demo_project()
    project.build("v1")
    project.build("v2", migrations=["add_price:ALTER TABLE items ADD COLUMN price INTEGER"])
    assert project.run("release", "v1").code == 0
    project.sqlite("INSERT INTO items (id, name) VALUES (10, 'written by a user')")
    before = sqlite_state(project.app_root / "shared" / "data" / "demo.db")
    project.group_vars["deployctl_restart_command"] = "sh -c 'sleep 30; bin/restart'"
    project.write()

    proc = start_detached(project, "release", "v2")
    wait_for(lambda: project.live() == "v2", what="v2 to be switched to")
    kill_tree(proc.pid)
    proc.wait()
    project.group_vars["deployctl_restart_command"] = "bin/restart"
    project.write()
    return project, before


def test_sigkill_mid_deploy_then_recover(demo_project):
    project, before = killed_mid_deploy(demo_project)

    status = project.run("status")
    assert status.code == 0, status
    [unfinished] = status.data["unfinished"]
    ident = unfinished["id"]
    assert unfinished["action"] == "release" and unfinished["version"] == "v2"
    assert status.data["hosts"]["localhost"]["pending"]["deployment_id"] == ident
    assert status.data["hosts"]["localhost"]["maintenance"] is True
    assert "UNFINISHED" in project.run("status", as_json=False).stdout

    # every command that changes the environment refuses, naming it, before it touches anything
    for args in (("release", "v2"), ("rollback",), ("backup",), ("maintenance", "off"), ("--yes", "restore", "x")):
        refused = project.run(*args)
        assert refused.code == 6, (args, refused)
        assert ident in refused.data["error"] and "deployctl recover" in refused.data["error"], refused
    assert project.live() == "v2"

    recovered = project.run("recover")
    assert recovered.code == 0, recovered
    assert recovered.outcome == "rolled-back"
    assert ident in recovered.data["message"] and "v1" in recovered.data["message"]
    assert recovered.data["deployment"]["details"]["recovering"] == ident
    assert project.live() == "v1" and project.served_version() == "v1"
    assert sqlite_state(project.app_root / "shared" / "data" / "demo.db") == before
    assert settled(project.app_root) == SETTLED
    assert project.running("worker")

    dead = next(d for d in project.run("history").data if d["id"] == ident)
    assert dead["outcome"] == "recovered" and dead["details"]["recovered_by"] == recovered.data["deployment"]["id"]
    after = project.run("status")
    assert after.data["unfinished"] == [] and after.data["hosts"]["localhost"]["pending"] is None
    # the failed release never went live: it is no rollback target, and the next release just works
    assert after.data["hosts"]["localhost"]["previous"] is None
    assert project.run("release", "v2").code == 0
    assert project.run("status").data["hosts"]["localhost"]["previous"] == "v1"


def test_recover_resolve_accepts_the_hosts_as_they_are(demo_project):
    project, _ = killed_mid_deploy(demo_project)
    resolved = project.run("recover", "--resolve")
    assert resolved.code == 0, resolved
    assert resolved.outcome == "resolved"
    assert "maintenance mode is still on" in resolved.data["message"]
    assert project.live() == "v2"
    assert not (project.app_root / ".deployctl" / "lock").exists()
    assert project.run("maintenance", "off").code == 0
    assert project.run("status").data["hosts"]["localhost"]["previous"] == "v1"


def test_recover_from_the_hosts_records_when_the_history_is_lost(demo_project):
    project, before = killed_mid_deploy(demo_project)
    history = project.root / ".deployctl" / "history.db"
    history.write_bytes(b"this is not a database" * 100)

    broken = project.run("history")
    assert broken.code == 9, broken
    assert "mv " in broken.data["error"] and broken.stderr.count("\n") == 1
    assert project.run("release", "v2").code == 9
    status = project.run("status")
    assert status.code == 0, status
    assert "history_error" in status.data and status.data["hosts"]["localhost"]["pending"]

    recovered = project.run("recover")
    assert recovered.code == 0, recovered
    assert project.live() == "v1" and project.served_version() == "v1"
    assert sqlite_state(project.app_root / "shared" / "data" / "demo.db") == before
    assert settled(project.app_root) == SETTLED
    assert "Traceback" not in broken.stderr + status.stderr + recovered.stderr


def test_unlock_never_breaks_a_running_release(demo_project):
    project = demo_project(group_vars={"deployctl_restart_command": "sh -c 'sleep 15; bin/restart'"})
    project.build("v1")
    proc = project.start("release", "v1")
    lock = project.app_root / ".deployctl" / "lock"
    wait_for(lock.exists, what="the lock")
    refused = project.run("unlock")
    assert refused.code == 6, refused
    assert "still running" in refused.data["message"]
    refused = project.run("unlock", "--force")
    assert refused.code == 6, refused
    assert lock.exists()
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=300)
    assert json.loads(stdout)["outcome"] == "interrupted"
    assert settled(project.app_root) == SETTLED
    assert os.path.lexists(project.app_root / "current") is False


def test_unlock_refuses_while_a_dead_deployctls_ansible_still_runs(demo_project):
    project = demo_project()
    project.build("v1")
    project.build("v2")
    assert project.run("release", "v1").code == 0
    project.group_vars["deployctl_restart_command"] = "sh -c 'sleep 20; bin/restart'"
    project.write()
    proc = start_detached(project, "release", "v2")
    registry = project.app_root / ".deployctl" / "processes"
    wait_for(lambda: "restart" in recorded_labels(registry), what="the restart to start")
    os.kill(proc.pid, signal.SIGKILL)  # deployctl only: the Ansible it started goes on with the restart
    proc.wait()
    refused = project.run("unlock")
    assert refused.code == 6, refused
    assert "Ansible still runs" in refused.data["message"] and "deployctl recover" in refused.data["message"]
    project.group_vars["deployctl_restart_command"] = "bin/restart"
    project.write()
    recovered = project.run("recover")
    assert recovered.code == 0, recovered
    assert project.live() == "v1" and project.served_version() == "v1"
    assert settled(project.app_root) == SETTLED


def migrating_v2(project, seconds: int):
    """v1 live (a user's row written after it), then the release of v2 started, detached, with a migration
    that takes `seconds`; returned once it migrates: (the release's process, the database, its state before)."""
    project.build("v1")
    project.build("v2", migrations=["add_price:ALTER TABLE items ADD COLUMN price INTEGER"])
    assert project.run("release", "v1").code == 0
    project.sqlite("INSERT INTO items (id, name) VALUES (10, 'written by a user')")
    database = project.app_root / "shared" / "data" / "demo.db"
    before = sqlite_state(database)
    marker = long_migration(project, seconds)
    proc = start_detached(project, "release", "v2")
    wait_for(marker.exists, what="the migration to start")
    return proc, database, before


def recovered_to_v1(project, database, before) -> None:
    """`deployctl recover` (with the migrate command put right) leaves v1 live on its data, nothing running."""
    project.group_vars["deployctl_migrate_command"] = "bin/migrate"
    project.write()
    recovered = project.run("recover")
    assert recovered.code == 0, recovered
    assert project.live() == "v1" and project.served_version() == "v1"
    assert sqlite_state(database) == before
    assert settled(project.app_root) == SETTLED


def test_a_dead_deployctls_release_goes_no_further_than_the_phase_it_was_in(demo_project):
    """The release is one Ansible run that waits for deployctl at every phase boundary: with deployctl
    gone, it ends the phase it is in (the migration, which ends by deleting every item) and stops there,
    before the switch: the new code never goes live."""
    project = demo_project()
    proc, database, before = migrating_v2(project, 4)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    runs = str(project.root / ".deployctl" / "runs")
    wait_for(lambda: not processes_matching(runs), timeout=120, what="the dead deployctl's Ansible run to end")
    assert sqlite_state(database) != before, "the migration finished"
    assert project.live() == "v1", "the run stopped before the switch"
    recovered_to_v1(project, database, before)


def test_a_control_node_dying_while_the_bot_is_paused_then_recover_resumes_it(demo_project):
    """The webhook is deleted inside the window; the whole control node dies mid-migration. Until `recover`
    the bot stays paused (Telegram keeps its updates); recover rolls back and sets the webhook again."""
    api = FakeBotAPI()
    try:
        project = demo_project()
        configure(project, api)
        api.set_webhook_directly(HOOK)
        proc, database, before = migrating_v2(project, 30)
        kill_tree(proc.pid)
        proc.wait()
        assert api.webhook["url"] == "", "the webhook is paused inside the window"
        api.webhook["pending_update_count"] = 7

        recovered_to_v1(project, database, before)
        assert api.webhook["url"] == HOOK and api.secret_token == SECRET
        assert api.webhook["pending_update_count"] == 7, "the updates that came meanwhile are still delivered"
    finally:
        api.close()
