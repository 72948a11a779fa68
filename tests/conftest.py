import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the repository (tests.support, demo) and the collection's module_utils, as the modules import them
for path in (REPO, REPO / "collections"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from tests.support.project import DemoProject  # noqa: E402


@pytest.fixture
def demo_project(tmp_path):
    """A fresh demo project; call it with settings to change them before the first run."""
    projects = []

    def make(**kwargs) -> DemoProject:
        project = DemoProject(tmp_path / f"project{len(projects)}", **kwargs)
        projects.append(project)
        return project

    yield make
    for project in projects:
        project.stop()
