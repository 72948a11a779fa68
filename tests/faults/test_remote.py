"""Over SSH: a remote migration outlives its Ansible worker, its connection and the control node; recovery
stops it on its host before the data comes back."""

import itertools
import json
import signal
import subprocess
import time

import pytest

from tests.support.faults import kill_tree, long_migration, processes_matching, sqlite_state, wait_for
from tests.support.project import DEPLOYCTL, DemoProject, http_get
from tests.support.sshhosts import ssh_hosts_fixture

fleet = ssh_hosts_fixture(2)
ports = itertools.count(18400)


@pytest.fixture
def remote(fleet, tmp_path, request):
    """v1 live on h1 and h2 (db: h1, which also runs the migrations), v2 with a schema change built."""
    port = next(ports)
    app_root = f"/srv/{request.node.name[:40]}/app"
    inventory = fleet.inventory(group="app")
    inventory["all"]["children"]["db"] = {"hosts": {"h1": None}}
    project = DemoProject(tmp_path / "control", hosts=inventory,
                          group_vars={"deployctl_app_root": app_root,
                                      "deployctl_env": {"DEMO_PORT": port, "DEMO_HOST": "0.0.0.0"},
                                      "deployctl_backup_dir": f"{app_root}/../backups"})
    project.port = port
    project.group_vars["deployctl_verify_checks"] = [
        {"name": "health", "type": "http", "status": 200, "url": f"http://127.0.0.1:{port}/health"}]
    project.write()
    project.fleet = fleet
    project.database_file = fleet.hosts[0].srv_dir / app_root.removeprefix("/srv/") / "shared" / "data" / "demo.db"
    project.build("v1")
    project.build("v2", migrations=["add_price:ALTER TABLE items ADD COLUMN price INTEGER"])
    assert project.run("release", "v1").code == 0
    project.before = sqlite_state(project.database_file)
    yield project
    for host in fleet.hosts:
        if fleet.run(host, "true", connect_timeout=2).returncode != 0:
            fleet.restore(host)
        fleet.run(host, f"for p in {app_root}/shared/run/*.pid; do kill -9 $(cat $p) 2>/dev/null; done; true")
    subprocess.run(["pkill", "-f", str(project.root / "long-migrate")], check=False)


def served(project) -> dict[str, str]:
    return {h.name: http_get(f"http://{h.address}:{project.port}/version")[1].strip() for h in project.fleet.hosts}


def assert_v1_with_its_data(project) -> None:
    assert sqlite_state(project.database_file) == project.before
    time.sleep(8)
    assert processes_matching(str(project.root / "long-migrate")) == []
    assert sqlite_state(project.database_file) == project.before, "something wrote into the restored database"
    assert served(project) == {"h1": "v1", "h2": "v1"}


def test_sigterm_during_a_remote_migration(remote):
    marker = long_migration(remote, 6)
    proc = remote.start("release", "v2")
    wait_for(marker.exists, what="the remote migration to start")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert json.loads(stdout)["deployment"]["details"]["restored_set"]
    assert_v1_with_its_data(remote)


def test_phase_timeout_during_a_remote_migration(remote):
    remote.environment["phase_timeout"] = 60  # the other phases, on three SSH hosts of a busy machine, fit in it
    remote.write()
    long_migration(remote, 180)
    result = remote.run("release", "v2")
    assert result.code == 4, result
    assert "migrate failed: timed out" in result.data["message"]
    assert_v1_with_its_data(remote)


def test_control_node_killed_during_a_remote_migration_then_recover(remote):
    marker = long_migration(remote, 120)  # it outlasts recover's first phases: stop commands kills it
    proc = subprocess.Popen([DEPLOYCTL, "--project-dir", str(remote.root), "release", "v2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(marker.exists, what="the remote migration to start")
    kill_tree(proc.pid)
    proc.wait()
    assert processes_matching(str(remote.root / "long-migrate")), "the migration outlives the control node"

    recovered = remote.run("recover")
    assert recovered.code == 0, recovered
    stopped = [p for p in recovered.data["deployment"]["phases"] if p["name"] == "stop commands"]
    assert stopped and stopped[0]["changed_hosts"] == ["h1"], "the migration was killed on its host"
    assert_v1_with_its_data(remote)


def test_connection_lost_during_a_remote_migration(remote):
    """h1 drops off the network mid-migration: nothing is restored while its migration may still run."""
    remote.environment["phase_timeout"] = 120
    remote.write()
    marker = long_migration(remote, 45)
    proc = remote.start("release", "v2")
    wait_for(marker.exists, what="the remote migration to start")
    remote.fleet.cut(remote.fleet.hosts[0])
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 5, stderr
    outcome = json.loads(stdout)
    assert "h1" in outcome["message"] and "nothing was restored" in outcome["message"]
    assert processes_matching(str(remote.root / "long-migrate")), "the migration outlived its connection"
    # it migrated before the switch: v1 still runs everywhere, only the data needs putting back
    pre_release = outcome["deployment"]["details"]["backup_set"]
    assert f"`deployctl rollback` (it restores {pre_release}" in outcome["message"]

    remote.fleet.restore(remote.fleet.hosts[0])
    back = remote.run("rollback")
    assert back.code == 0, back
    assert back.data["deployment"]["details"]["restored_set"] == pre_release
    assert [p["name"] for p in back.data["deployment"]["phases"]].count("stop commands") == 1
    assert_v1_with_its_data(remote)
