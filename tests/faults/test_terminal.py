"""The reader of deployctl's output goes away mid-release: the release goes on to its end."""

import subprocess

from tests.support.faults import SETTLED, settled
from tests.support.project import DEPLOYCTL


def test_a_pipe_closed_by_its_reader_does_not_stop_a_release(demo_project):
    project = demo_project()
    project.build("v1")
    project.build("v2")
    assert project.run("release", "v1").code == 0
    # `deployctl release v2 2>&1 | head -c 100`: head exits after the first lines, the pipe breaks
    command = f"'{DEPLOYCTL}' --project-dir '{project.root}' release v2 2>&1 | head -c 100"
    subprocess.run(["bash", "-c", command], check=True, capture_output=True, timeout=600)
    status = project.run("status")
    assert status.data["unfinished"] == [] and status.data["last_deployment"]["outcome"] == "live", status
    assert project.served_version() == "v2" and settled(project.app_root) == SETTLED
