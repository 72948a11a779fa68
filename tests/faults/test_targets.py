"""The right target: the configuration comes back with the code, and no failed release becomes a target."""

from tests.support.faults import SETTLED, settled
from tests.support.project import free_port, http_get


def test_a_failed_release_that_changed_the_env_comes_back_on_the_old_env(demo_project):
    """v2 changes deployctl_env (the port) and fails: v1 must restart with the .env it ran with."""
    project = demo_project()
    project.build("v1")
    project.build("v2")
    assert project.run("release", "v1").code == 0
    old_env = (project.app_root / "shared" / ".env").read_text()
    old_port = project.port

    project.group_vars["deployctl_env"]["DEMO_PORT"] = free_port()  # the checks still look at the old port
    project.write()
    failed = project.run("release", "v2")
    assert failed.code == 4, failed  # v2 listens elsewhere: verify fails, and the rollback verifies v1
    assert failed.outcome == "rolled-back"
    assert (project.app_root / "shared" / ".env").read_text() == old_env
    assert http_get(f"http://127.0.0.1:{old_port}/version")[1].strip() == "v1"
    assert settled(project.app_root) == SETTLED


def test_five_rolled_back_releases_never_prune_the_rollback_target(demo_project):
    project = demo_project(group_vars={"deployctl_keep_releases": 2})
    for version in ("v1", "v2"):
        project.build(version)
        assert project.run("release", version).code == 0
    for version in ("v3", "v4", "v5", "v6", "v7"):
        project.build(version, broken="health")
        failed = project.run("release", version)
        assert failed.code == 4, failed
        assert project.live() == "v2"
    host = project.run("status").data["hosts"]["localhost"]
    assert (host["live"], host["previous"]) == ("v2", "v1"), "a failed release is never the previous one"
    assert "v1" in host["releases"]

    back = project.run("rollback")
    assert back.code == 0, back
    assert back.data["deployment"]["details"]["targets"] == {"localhost": "v1"}
    assert project.served_version() == "v1"
