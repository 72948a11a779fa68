"""The maintenance page for real: the maintenance role drives an nginx the test starts, through the CLI.

Each test gets its own project (deployctl.yml, inventory, app root) and its own nginx (prefix, nginx.conf,
127.0.0.1 port, pid file) under tmp_path. The nginx includes the role's two snippets, so what the role
installs, tests and reloads is what answers the requests below.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.nginx import NGINX, Nginx
from tests.support.project import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOYCTL = str(Path(sys.executable).parent / "deployctl")
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
ALLOWED = "127.0.0.2"  # the allow-listed "control node": a second loopback address
APP = 'default_type text/plain; return 200 "the app\\n";'  # stands in for the app behind nginx

pytestmark = pytest.mark.skipif(not os.access(NGINX, os.X_OK), reason="nginx is not installed")


class Site:
    """One project directory and the nginx that serves its app."""

    def __init__(self, root: Path):
        self.root = root
        self.nginx = Nginx(root / "nginx")
        self.app_root = root / "app"
        self.page = self.app_root / "shared" / "maintenance.html"
        self.flag = self.app_root / "shared" / "maintenance.json"
        self.project = root / "project"
        self.group_vars = self.project / "inventory" / "local" / "group_vars" / "all.yml"

    # ------------------------------------------------------------------ setup

    def write_project(self) -> None:
        inventory = self.project / "inventory" / "local"
        (inventory / "group_vars").mkdir(parents=True)
        (self.project / "deployctl.yml").write_text(yaml.safe_dump(
            {"app": "maint", "environments": {"local": {"inventory": "inventory/local", "backup": False}}}))
        (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {
            "children": {"app": {"hosts": {"localhost": None}}, "db": {"hosts": {"localhost": None}}},
            "vars": {"ansible_connection": "local",
                     "ansible_python_interpreter": "{{ ansible_playbook_python }}"}}}))
        self.set_vars()

    def set_vars(self, **extra) -> None:
        variables = {
            "deployctl_app_root": str(self.app_root),
            "deployctl_env": {"DEMO_PORT": free_port(), "DEMO_HOST": "127.0.0.1"},
            **self.nginx.group_vars(),
            "deployctl_maintenance_allow": [ALLOWED],
            "deployctl_maintenance_retry_after": 120,
        }
        variables.update(extra)
        self.group_vars.write_text(yaml.safe_dump(variables))

    # ------------------------------------------------------------------ use

    def get(self, source: str = "127.0.0.1") -> tuple[int, dict, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.nginx.port, timeout=5, source_address=(source, 0))
        try:
            conn.request("GET", "/some/page")
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read().decode()
        finally:
            conn.close()

    def wait_for(self, status: int, source: str = "127.0.0.1") -> tuple[int, dict, str]:
        """nginx reloads in the background: give the new workers a moment."""
        deadline = time.monotonic() + 10
        while True:
            try:
                answer = self.get(source)
            except OSError:
                answer = (0, {}, "")
            if answer[0] == status or time.monotonic() > deadline:
                return answer
            time.sleep(0.05)

    def deployctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([DEPLOYCTL, "--json", "--project-dir", str(self.project), *args],
                              capture_output=True, text=True, timeout=120)

    def check_mode(self, *extra: str) -> subprocess.Popen:
        """ansible-playbook --check of the maintenance playbook (the CLI has no check mode), started."""
        env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_ROLES_PATH=str(REPO / "roles"), ANSIBLE_COLLECTIONS_PATH=str(REPO / "collections"),
                   ANSIBLE_LOCAL_TEMP=str(self.root / "ansible-tmp"))
        return subprocess.Popen([ANSIBLE_PLAYBOOK, "--check", "-i", str(self.project / "inventory" / "local"),
                                 str(REPO / "playbooks" / "maintenance.yml"), *extra],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

    def snippets(self) -> dict[str, bytes]:
        return {path.name: path.read_bytes() for path in self.nginx.prefix.iterdir() if "maintenance" in path.name}


def changed_hosts(run: subprocess.CompletedProcess) -> list[str]:
    """Hosts the maintenance phase changed (the lock around it always changes them)."""
    outcome = json.loads(run.stdout)
    return [host for phase in outcome["deployment"]["phases"] if phase["name"].startswith("maintenance")
            for host in phase["changed_hosts"]]


@pytest.fixture
def site(tmp_path):
    site = Site(tmp_path)
    site.write_project()
    try:
        site.nginx.start(APP)
        site.wait_for(200)
        yield site
    finally:
        site.nginx.stop()


def test_maintenance_page_with_retry_after_allow_list_and_back(site):
    on = site.deployctl("maintenance", "on", "--message", "Back soon", "--until", "12:00 UTC")
    assert on.returncode == 0, on.stdout + on.stderr

    status, headers, body = site.wait_for(503)
    assert status == 503
    assert headers.get("Retry-After") == "120"
    assert "Back soon" in body and "12:00 UTC" in body and "Down for maintenance" in body
    assert headers.get("Content-Type", "").startswith("text/html")

    status, _, body = site.get(source=ALLOWED)  # the control node's health checks get through
    assert (status, body) == (200, "the app\n")

    # a second run changes nothing, and a check-mode run that would change things writes nothing; both at
    # once (neither may write), to keep the test short
    before = site.snippets(), site.page.read_bytes(), site.flag.read_bytes()
    check = site.check_mode("-e", "deployctl_maintenance_state=on", "-e", "deployctl_maintenance_message=Other",
                            "-e", "deployctl_maintenance_retry_after=60")
    try:
        again = site.deployctl("maintenance", "on", "--message", "Back soon", "--until", "12:00 UTC")
        check_output, _ = check.communicate(timeout=120)
    finally:
        if check.poll() is None:
            check.kill()
            check.wait()
    assert again.returncode == 0, again.stdout + again.stderr
    assert changed_hosts(again) == []  # idempotent: the same maintenance twice changes nothing
    assert check.returncode == 0, check_output
    assert "changed=" in check_output and "changed=0" not in check_output  # it would change things...
    assert (site.snippets(), site.page.read_bytes(), site.flag.read_bytes()) == before  # ...but did not
    assert site.get()[1].get("Retry-After") == "120"  # and nginx was not reloaded

    off = site.deployctl("maintenance", "off")
    assert off.returncode == 0, off.stdout + off.stderr
    status, _, body = site.wait_for(200)
    assert (status, body) == (200, "the app\n")
    assert not site.flag.exists()


def test_rejected_configuration_leaves_the_working_one_in_place(site):
    good = site.snippets()
    site.set_vars(deployctl_maintenance_nginx_directives=["this_is_not_a_directive on;"])

    broken = site.deployctl("maintenance", "on", "--message", "Never shown")
    assert broken.returncode != 0
    assert "this_is_not_a_directive" in broken.stdout, broken.stdout + broken.stderr

    assert site.snippets() == good  # the rejected snippets were taken back, no backup copies left behind
    assert not site.page.exists() and not site.flag.exists()  # the run stopped before the page and the flag
    test = subprocess.run([*site.nginx.argv, "-t", "-q"], capture_output=True, text=True)
    assert test.returncode == 0, test.stderr
    status, _, body = site.get()  # nginx kept serving, with the configuration it had
    assert (status, body) == (200, "the app\n")
