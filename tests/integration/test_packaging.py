"""Installed from a wheel, deployctl finds its own playbooks, roles and collection, and so does ansible-doc.

Both tests run Ansible (ansible-playbook --syntax-check, ansible-doc): integration, though they need no server.
"""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULES = sorted(p.stem for p in (REPO / "collections/ansible_collections/deployctl/core/plugins/modules").glob("*.py")
                 if p.stem != "__init__")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(dist), str(REPO)], check=True, capture_output=True)
    return next(dist.glob("deployctl-*.whl"))


def bare_environment(home: Path, bin_dir: Path) -> dict:
    """No ANSIBLE_* settings, no checkout's ansible.cfg: what a user's shell has after `pip install deployctl`."""
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "LANG": os.environ.get("LANG", "C.UTF-8")}


def test_wheel_carries_the_content_and_finds_it(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(site)
    for wanted in ("deployctl/_content/playbooks/release.yml", "deployctl/_content/roles/deploy/tasks/main.yml",
                   "deployctl/_content/roles/deploy/meta/argument_specs.yml", "deployctl/_content/ansible.cfg",
                   "deployctl/_content/collections/ansible_collections/deployctl/core/plugins/modules/"
                   "release_record.py"):
        assert wanted in names
    for module in MODULES:  # where ansible-core finds collections by itself: ansible_collections/ on sys.path
        assert f"ansible_collections/deployctl/core/plugins/modules/{module}.py" in names
    assert "ansible_collections/deployctl/core/galaxy.yml" in names
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


def test_ansible_doc_of_every_module_in_a_fresh_venv(wheel, tmp_path):
    """`pip install deployctl`, then `ansible-doc deployctl.core.<module>` with no configuration at all."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    installed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    env = bare_environment(tmp_path / "home", venv / "bin")

    def ansible_doc(*args):
        return subprocess.run([str(venv / "bin" / "ansible-doc"), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)

    listed = ansible_doc("-l", "deployctl.core")
    assert listed.returncode == 0, listed.stderr
    assert sorted(re.findall(r"^deployctl\.core\.(\w+)", listed.stdout, re.M)) == MODULES, listed.stdout

    unreadable = {}
    for module in MODULES:
        doc = ansible_doc("-t", "module", f"deployctl.core.{module}")
        site_packages = f"/site-packages/ansible_collections/deployctl/core/plugins/modules/{module}.py"
        if doc.returncode != 0 or site_packages not in doc.stdout:
            unreadable[module] = (doc.stderr or doc.stdout).strip()[:400]
    assert not unreadable, "\n".join(f"{m}: {e}" for m, e in sorted(unreadable.items()))
