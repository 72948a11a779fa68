"""deployctl's own state fails: the release goes on, commands say what to do in one line, nothing is lost."""

import subprocess

from tests.support.faults import SETTLED, settled, wait_for


def test_the_history_breaks_mid_release(demo_project):
    project = demo_project()
    project.build("v1")
    project.build("v2")
    assert project.run("release", "v1").code == 0
    project.group_vars["deployctl_restart_command"] = "sh -c 'sleep 3; bin/restart'"
    project.write()
    history = project.root / ".deployctl" / "history.db"

    release = project.start("release", "v2")
    wait_for(lambda: project.live() == "v2", what="the deploy")
    history.write_bytes(b"\0garbage" * 512)  # the disk under the history goes bad mid-release
    stdout, stderr = release.communicate(timeout=300)
    assert release.returncode == 0, stderr
    assert "the history could not be written" in stdout
    assert project.served_version() == "v2" and settled(project.app_root) == SETTLED
    assert "Traceback" not in stderr

    # reads of the history: one line and exit 9, saying how to go on
    broken = project.run("history")
    assert broken.code == 9 and broken.stderr.count("\n") == 1, broken
    assert f"mv {history} {history}.broken" in broken.data["error"]
    assert project.run("release", "v2").code == 9

    # the hosts still know the release went live: rollback goes to v1 (the data choice is the user's,
    # since no history says whether v2 changed the schema)
    subprocess.run(["mv", str(history), f"{history}.broken"], check=True)
    asked = project.run("rollback")
    assert asked.code == 3 and "--keep-data" in asked.data["message"], asked
    back = project.run("rollback", "--keep-data")
    assert back.code == 0, back
    assert project.served_version() == "v1"


def test_a_read_only_state_directory_is_refused_before_anything_changes(demo_project):
    project = demo_project()
    project.build("v1")
    state = project.root / ".deployctl"
    state.mkdir()
    subprocess.run(["mount", "--bind", str(state), str(state)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)
    try:
        refused = project.run("release", "v1")
        assert refused.code == 9, refused
        assert "not writable" in refused.data["error"] and refused.stderr.count("\n") == 1
        assert not project.app_root.exists(), "nothing was touched"
    finally:
        subprocess.run(["umount", str(state)], check=False)
