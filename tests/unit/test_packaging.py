"""Installed from a wheel, deployctl finds its own playbooks, roles and collection."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_wheel_carries_the_content_and_finds_it(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("deployctl-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(site)
    for wanted in ("deployctl/_content/playbooks/release.yml", "deployctl/_content/roles/deploy/tasks/main.yml",
                   "deployctl/_content/roles/deploy/meta/argument_specs.yml", "deployctl/_content/ansible.cfg",
                   "deployctl/_content/collections/ansible_collections/deployctl/core/plugins/modules/"
                   "release_record.py"):
        assert wanted in names
    assert not [n for n in names if n.startswith(("tests/", "demo/", ".venv"))]

    found = subprocess.run([sys.executable, "-c", "from deployctl.runner import content_dir; print(content_dir())"],
                           cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, check=True).stdout.strip()
    content = site / "deployctl" / "_content"
    assert Path(found) == content

    bin_dir = Path(sys.executable).parent
    syntax = subprocess.run(
        [str(bin_dir / "ansible-playbook"), "--syntax-check", "-i", "localhost,",
         str(content / "playbooks" / "release.yml")],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "ANSIBLE_CONFIG": str(content / "ansible.cfg"),
             "ANSIBLE_ROLES_PATH": str(content / "roles"), "ANSIBLE_COLLECTIONS_PATH": str(content / "collections"),
             "HOME": str(tmp_path)},
        capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
