"""Rolling releases over real SSH to three test hosts (network namespaces with their own sshd and /srv)."""

import itertools
import json
import time

import pytest

from tests.support.project import DemoProject, http_get
from tests.support.sshhosts import ssh_hosts_fixture

fleet = ssh_hosts_fixture(3)
ports = itertools.count(18300)


@pytest.fixture
def fleet_project(fleet, tmp_path, request):
    """A project whose `local` environment is the three SSH hosts: app h1..h3, db h1."""
    port = next(ports)
    app_root = f"/srv/{request.node.name[:40]}/app"
    inventory = fleet.inventory(group="app")
    inventory["all"]["children"]["db"] = {"hosts": {"h1": None}}

    def make(**environment) -> DemoProject:
        project = DemoProject(tmp_path / f"control{len(made)}", environment=environment, hosts=inventory,
                              group_vars={"deployctl_app_root": app_root,
                                          "deployctl_env": {"DEMO_PORT": port, "DEMO_HOST": "0.0.0.0"},
                                          "deployctl_backup_dir": f"{app_root}/../backups"})
        project.port = port
        for key in ("deployctl_verify_checks",):
            project.group_vars[key] = [{"name": "health", "type": "http", "status": 200,
                                        "url": f"http://127.0.0.1:{port}/health"}]
        project.write()
        made.append(project)
        return project

    made = []
    make.fleet = fleet
    make.app_root = app_root
    make.port = port
    yield make
    for host in fleet.hosts:
        if fleet.run(host, "true", connect_timeout=2).returncode != 0:
            fleet.restore(host)
        fleet.run(host, f"for p in {app_root}/shared/run/*.pid; do kill -9 $(cat $p) 2>/dev/null; done; true")


def live_versions(make) -> dict[str, str | None]:
    versions = {}
    for host in make.fleet.hosts:
        link = host.srv_dir / make.app_root.removeprefix("/srv/") / "current"
        versions[host.name] = link.resolve().name if link.is_symlink() else None
    return versions


def served(make) -> dict[str, str]:
    return {h.name: http_get(f"http://{h.address}:{make.port}/version")[1].strip() for h in make.fleet.hosts}


def test_rolling_release_in_batches_and_failed_second_batch(fleet_project):
    project = fleet_project(serial="1")
    project.build("v1")
    project.build("v2")
    first = project.run("release", "v1")
    assert first.code == 0, first
    assert live_versions(fleet_project) == {"h1": "v1", "h2": "v1", "h3": "v1"}
    assert served(fleet_project) == {"h1": "v1", "h2": "v1", "h3": "v1"}

    # v2 cannot start on h2 only: the second batch fails after the first was changed and verified
    project.hosts["all"]["children"]["app"]["hosts"]["h2"]["deployctl_restart_command"] = \
        "sh -c 'test \"$(cat VERSION)\" != v2 && bin/restart'"
    project.write()
    failed = project.run("release", "v2")
    assert failed.code == 4, failed
    assert "deploy failed" in failed.data["message"] and "h2" in failed.data["message"]
    details = failed.data["deployment"]["details"]
    assert sorted(details["targets"]) == ["h1", "h2"], "only the hosts already changed are rolled back"
    assert details["targets"] == {"h1": "v1", "h2": "v1"}
    assert live_versions(fleet_project) == {"h1": "v1", "h2": "v1", "h3": "v1"}
    assert served(fleet_project) == {"h1": "v1", "h2": "v1", "h3": "v1"}
    # the backup ran once, on the db host
    assert list(fleet_project.fleet.hosts[0].srv_dir.glob("*/backups/*/manifest.json"))
    assert not list(fleet_project.fleet.hosts[1].srv_dir.glob("*/backups"))
    deploy = next(p for p in failed.data["deployment"]["phases"] if p["name"] == "deploy")
    assert "h3" not in deploy["changed_hosts"], "the third batch never started"


def test_unreachable_host_mid_release(fleet_project):
    project = fleet_project(serial="1", phase_timeout=240)
    project.build("v1")
    project.build("v2")
    assert project.run("release", "v1").code == 0
    project.group_vars["deployctl_restart_command"] = "sh -c 'sleep 2; bin/restart'"
    project.write()
    h3 = fleet_project.fleet.hosts[2]

    proc = project.start("release", "v2")
    deadline = time.time() + 180
    while live_versions(fleet_project)["h1"] != "v2" and time.time() < deadline:
        time.sleep(0.2)
    fleet_project.fleet.cut(h3)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 5, stderr
    outcome = json.loads(stdout)
    assert outcome["deployment"]["details"]["needs_attention"] == ["h3"]
    assert "h3" in outcome["message"]
    assert live_versions(fleet_project)["h1"] == "v1"
    assert live_versions(fleet_project)["h2"] == "v1"

    fleet_project.fleet.restore(h3)
    status = project.run("status")
    assert status.code == 0, status
    assert status.data["hosts"]["h3"]["live"] == "v1"
    again = project.run("release", "v2")
    assert again.code == 0, again
    assert live_versions(fleet_project) == {"h1": "v2", "h2": "v2", "h3": "v2"}


def test_two_control_nodes_race_for_the_lock(fleet_project):
    first = fleet_project()
    second = fleet_project()
    first.build("v1")
    second.build("v1")
    procs = [first.start("release", "v1"), second.start("release", "v1")]
    codes = sorted(p.wait(timeout=600) for p in procs)
    assert codes == [0, 6], [p.stderr.read() for p in procs]
    assert live_versions(fleet_project) == {"h1": "v1", "h2": "v1", "h3": "v1"}
    for host in fleet_project.fleet.hosts:
        lock = host.srv_dir / fleet_project.app_root.removeprefix("/srv/") / ".deployctl" / "lock"
        assert not lock.exists()
