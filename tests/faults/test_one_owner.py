"""One owner at a time: a second terminal cannot touch an environment a release is changing."""

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

from tests.support.faults import SETTLED, settled, wait_for
from tests.support.project import DEPLOYCTL

ADD_PRICE = ["add_price:ALTER TABLE items ADD COLUMN price INTEGER"]


def test_a_second_terminal_is_refused_during_a_release(demo_project):
    project = demo_project()
    project.build("v1")
    project.build("v2")
    assert project.run("release", "v1").code == 0
    sets_before = {s["set_id"] for s in project.run("backups").data["sets"]}
    go_on = project.root / "restart-may-go-on"
    project.group_vars["deployctl_restart_command"] = f"sh -c 'while [ ! -e {go_on} ]; do sleep 0.2; done; bin/restart'"
    project.write()

    release = project.start("release", "v2")
    wait_for(lambda: project.live() == "v2", what="the release to deploy")
    for args in (("maintenance", "off"), ("maintenance", "on"), ("backup",), ("release", "v1"), ("rollback",),
                 ("unlock",), ("unlock", "--force"), ("--yes", "restore", "anything")):
        refused = project.run(*args)
        assert refused.code == 6, (args, refused)
        assert release.poll() is None, "the release still runs"
    assert (project.app_root / "shared" / "maintenance.json").exists(), "maintenance stayed on"
    go_on.touch()

    stdout, stderr = release.communicate(timeout=300)
    assert release.returncode == 0, stderr
    assert json.loads(stdout)["outcome"] == "live"
    assert project.served_version() == "v2"
    assert settled(project.app_root) == SETTLED
    # nothing the refused commands did reached the backups
    sets_after = {s["set_id"] for s in project.run("backups").data["sets"]}
    assert sets_before <= sets_after and len(sets_after - sets_before) == 1


def test_deployment_ids_are_unique_when_commands_start_in_the_same_second(demo_project):
    project = demo_project()
    command = [DEPLOYCTL, "--project-dir", str(project.root), "--json", "history"]
    # `verify` takes no lock: many at once, all recorded
    project.group_vars["deployctl_verify_checks"] = [{"name": "disk", "type": "disk", "path": "/", "threshold": 100}]
    project.write()
    verify = [DEPLOYCTL, "--project-dir", str(project.root), "--json", "verify"]
    with ThreadPoolExecutor(6) as pool:
        runs = list(pool.map(lambda _: subprocess.run(verify, capture_output=True, text=True), range(6)))
    assert [r.returncode for r in runs] == [0] * 6, [r.stderr[-500:] for r in runs]
    ids = [json.loads(r.stdout)["deployment"]["id"] for r in runs]
    assert len(set(ids)) == 6, ids
    listed = json.loads(subprocess.run(command, capture_output=True, text=True).stdout)
    assert {d["id"] for d in listed} == set(ids)


def test_backups_never_push_out_the_set_a_rollback_needs(demo_project):
    project = demo_project(group_vars={"deployctl_backup_keep": 1})
    project.build("v1")
    project.build("v2", migrations=ADD_PRICE)
    assert project.run("release", "v1").code == 0
    second = project.run("release", "v2")
    assert second.code == 0, second
    needed = second.data["deployment"]["details"]["backup_set"]
    for _ in range(3):
        assert project.run("backup").code == 0
    assert needed in {s["set_id"] for s in project.run("backups").data["sets"]}
    back = project.run("rollback")
    assert back.code == 0, back
    assert back.data["deployment"]["details"]["restored_set"] == needed
    assert "price" not in [row[1] for row in project.sqlite("PRAGMA table_info(items)")]
