"""The compose strategy against a real Docker engine, through the real CLI, playbooks and ansible-runner.

The images are built here, FROM scratch with the host's static busybox (demo/compose): busybox httpd serves
/version and the /health file the Docker healthcheck fetches, a worker writes heartbeats. Containers use host
networking on free 127.0.0.1 ports, and every test has its own compose project, image and directories, and
removes them at the end. docker-compose v1 is what this machine has; `docker compose` is used where it exists.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from demo.compose.build import build_image, remove_images  # noqa: E402
from tests.support.compose import containers, remove_containers  # noqa: E402
from tests.support.prober import Prober  # noqa: E402

DEPLOYCTL = [str(Path(sys.executable).parent / "deployctl")]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 3) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def docker(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def run_playbook(path: Path, plays: list, env: dict | None = None) -> subprocess.CompletedProcess:
    """ansible-playbook with deployctl's roles and collection, on localhost."""
    path.write_text(yaml.safe_dump(plays))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_ROLES_PATH=str(REPO / "roles"),
               ANSIBLE_COLLECTIONS_PATH=str(REPO / "collections"), **(env or {}))
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
               "-e", f"ansible_python_interpreter={sys.executable}", str(path)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def docker_engine():
    """The Docker engine, started by scripts/start-docker when it is not running yet."""
    if shutil.which("docker") is None or (shutil.which("docker-compose") is None and
                                          subprocess.run(["docker", "compose", "version"],
                                                         capture_output=True).returncode != 0):
        pytest.skip("docker and a compose command are needed")
    started = subprocess.run([str(REPO / "scripts" / "start-docker")], capture_output=True, text=True)
    if started.returncode != 0:
        pytest.skip(f"no Docker engine: {started.stderr.strip()}")


@dataclass
class Result:
    code: int
    data: dict
    stdout: str
    stderr: str

    @property
    def outcome(self):
        return self.data.get("outcome")

    def __str__(self):
        return f"exit {self.code}: {self.data.get('message') or self.data.get('error')}\n{self.stderr[-3000:]}"


class ComposeProject:
    """A deployctl project whose `compose` environment is a compose stack on this machine."""

    def __init__(self, root: Path, **group_vars):
        self.root = root
        self.name = f"dctest-{uuid.uuid4().hex[:8]}"  # compose project and image repository
        self.stack = root / "stack"
        self.port = free_port()
        self.stack.mkdir(parents=True)
        shutil.copy2(REPO / "demo" / "compose" / "docker-compose.yml", self.stack / "docker-compose.yml")
        (self.stack / ".env").write_text(f"# the user's own settings\nAPP_IMAGE={self.name}\nAPP_PORT={self.port}\n")
        inventory = root / "inventory" / "compose"
        (inventory / "group_vars").mkdir(parents=True)
        (root / "deployctl.yml").write_text(yaml.safe_dump(
            {"environments": {"compose": {"inventory": "inventory/compose", "backup": False}}}))
        (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {
            "children": {"app": {"hosts": {"localhost": None}}, "db": {"hosts": {"localhost": None}}},
            "vars": {"ansible_connection": "local",
                     "ansible_python_interpreter": "{{ ansible_playbook_python }}"}}}))
        self.group_vars = {
            "deployctl_strategy": "compose",
            "deployctl_app_root": str(self.stack),
            "deployctl_compose_project": self.name,
            "deployctl_compose_image": self.name,
            "deployctl_compose_app_services": ["app"],
            "deployctl_compose_worker_services": ["worker"],
            "deployctl_compose_http_port": self.port,
            "deployctl_compose_health_timeout": 25,
            "deployctl_compose_migrate_command": [
                "/bin/sh", "-c", "echo migrated $(cat /www/version) >> /data/migrations.log; echo migrated"],
            "deployctl_verify_checks": [{"name": "version", "type": "http", "url": self.url("/version")}],
            "deployctl_verify_retries": 10,
            "deployctl_verify_delay": 1,
            "deployctl_preflight_min_free_mb": 50,
            **group_vars,
        }
        self.write()

    def write(self):
        (self.root / "inventory" / "compose" / "group_vars" / "all.yml").write_text(yaml.safe_dump(self.group_vars))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def build(self, version: str, unhealthy: bool = False) -> None:
        build_image(version, self.name, unhealthy=unhealthy)

    def run(self, *args: str) -> Result:
        proc = subprocess.run([*DEPLOYCTL, "--project-dir", str(self.root), "-e", "compose", "--json", *args],
                              capture_output=True, text=True, timeout=600)
        try:
            data = json.loads(proc.stdout) if proc.stdout.strip() else {}
        except ValueError:
            data = {"error": proc.stdout[-2000:]}
        return Result(proc.returncode, data, proc.stdout, proc.stderr)

    def projects(self) -> list[str]:
        return [self.name, f"{self.name}-blue", f"{self.name}-green", f"{self.name}-migrate"]

    def containers(self) -> list[dict]:
        """Every container of the stack: {project, service, tag, running, health}."""
        return containers(self.projects())

    def running(self, service: str) -> list[dict]:
        return [c for c in self.containers() if c["service"] == service and c["running"]]

    def served_version(self) -> str:
        status, body = http_get(self.url("/version"))
        assert status == 200, status
        return body.strip()

    def heartbeat(self, version: str, within: float = 15) -> bool:
        """Whether a worker of `version` writes heartbeats (a fresh one appears within `within` seconds)."""
        beat = self.stack / "data" / "heartbeat"
        deadline = time.time() + within
        while time.time() < deadline:
            try:
                words = beat.read_text().split()
                if words and words[0] == version and time.time() - beat.stat().st_mtime < 3:
                    return True
            except OSError:
                pass
            time.sleep(0.3)
        return False

    def record(self) -> dict:
        return json.loads((self.stack / ".deployctl" / "release.json").read_text())

    def images(self) -> list[str]:
        return sorted(t for t in docker("image", "ls", "--format", "{{.Tag}}", self.name).split() if t != "<none>")

    def cleanup(self) -> None:
        remove_containers(self.projects())
        for project in self.projects():
            docker("network", "rm", f"{project}_default", check=False)
        remove_images(self.name)


@pytest.fixture
def compose_project(tmp_path, docker_engine):
    projects = []

    def make(**group_vars) -> ComposeProject:
        project = ComposeProject(tmp_path / f"project{len(projects)}", **group_vars)
        projects.append(project)
        return project

    yield make
    for project in projects:
        project.cleanup()


class Nginx:
    """A real nginx on a free 127.0.0.1 port with its own prefix, proxying to the upstream deployctl writes."""

    def __init__(self, prefix: Path, upstream_port: int):
        self.prefix = prefix
        self.port = free_port()
        self.upstream = prefix / "upstream.conf"
        self.conf = prefix / "nginx.conf"
        prefix.mkdir(parents=True)
        # deployctl rewrites this file; until the first release it points at the first slot
        self.upstream.write_text(f"upstream app {{\n    server 127.0.0.1:{upstream_port};\n}}\n")
        self.conf.write_text(f"""
user root;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {self.upstream};
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://app;
        }}
    }}
}}
""")
        self.base = [NGINX, "-p", str(prefix), "-c", str(self.conf), "-e", str(prefix / "error.log")]
        self.proc = subprocess.Popen([*self.base, "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise AssertionError(f"nginx did not start: {(prefix / 'error.log').read_text()}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --------------------------------------------------------------------------- tests


def test_release_unhealthy_release_and_rollback(compose_project):
    project = compose_project(deployctl_compose_keep_images=2)
    project.build("v1")
    project.build("v2")
    project.build("v3", unhealthy=True)

    missing = project.run("release", "v9")
    assert missing.code == 3, missing
    assert f"image {project.name}:v9 is not on localhost" in missing.data["message"]
    assert project.containers() == [], "preflight fails before anything changes"
    # exec mode migrates in the running container: before the switch that is the old release
    project.group_vars["deployctl_compose_migrate_mode"] = "exec"
    project.write()
    wrong_order = project.run("release", "v1")
    assert wrong_order.code == 3 and "deployctl_migrate_order: after_restart" in wrong_order.data["message"]
    assert project.containers() == []
    del project.group_vars["deployctl_compose_migrate_mode"]
    project.write()

    first = project.run("release", "v1")
    assert first.code == 0, first
    assert project.served_version() == "v1"
    assert project.heartbeat("v1"), "maintenance off starts the workers on the new tag"
    assert "APP_TAG=v1" in (project.stack / ".env").read_text()
    assert "APP_IMAGE=" in (project.stack / ".env").read_text(), "the user's lines of .env stay"
    assert (project.stack / "data" / "migrations.log").read_text() == "migrated v1\n"
    assert sorted(c["service"] for c in project.containers()) == ["app", "worker"], "the one-off container is gone"

    second = project.run("release", "v2")
    assert second.code == 0, second
    assert project.served_version() == "v2"
    assert project.heartbeat("v2")
    assert (project.stack / "data" / "migrations.log").read_text() == "migrated v1\nmigrated v2\n"

    status = project.run("status")
    assert status.code == 0, status
    host = status.data["hosts"]["localhost"]
    assert (host["live"], host["previous"]) == ("v2", "v1")
    assert {(c["service"], c["tag"], c["state"]) for c in host["containers"]} == {
        ("app", "v2", "running"), ("worker", "v2", "running")}
    assert [c["health"] for c in host["containers"] if c["service"] == "app"] == ["healthy"]
    assert set(host["releases"]) == {"v1", "v2", "v3"}

    started = time.monotonic()
    failed = project.run("release", "v3")
    assert failed.code == 4, failed
    assert failed.outcome == "rolled-back"
    assert "deploy failed" in failed.data["message"] and "unhealthy" in failed.data["message"], failed
    assert time.monotonic() - started < 240
    assert project.served_version() == "v2"
    assert failed.data["deployment"]["details"]["targets"] == {"localhost": "v2"}
    assert [c["tag"] for c in project.running("app")] == ["v2"]
    assert [c["tag"] for c in project.running("worker")] == ["v2"], "the workers run again"
    assert project.heartbeat("v2")
    assert project.record()["live"] == "v2"
    assert not (project.stack / "shared" / "maintenance.json").exists()
    assert "APP_TAG=v2" in (project.stack / ".env").read_text()

    back = project.run("rollback", "--to", "v1")
    assert back.code == 0, back
    assert project.served_version() == "v1"
    assert [c["tag"] for c in project.running("worker")] == ["v1"]
    assert project.heartbeat("v1")
    record = project.record()
    assert record["live"] == "v1"
    # v3 never went live (its release failed), v2 is undone by the rollback: neither is a rollback target now
    assert [(e["version"], e["status"]) for e in record["history"]] == [
        ("v1", "live"), ("v2", "undone"), ("v3", "undone")]
    assert project.run("status").data["hosts"]["localhost"]["previous"] is None
    # no release succeeded since v2, so nothing was pruned: v3 only went live for the failed release
    assert project.images() == ["v1", "v2", "v3"]


def test_image_retention_keeps_the_last_releases_and_the_rollback_target(compose_project, tmp_path):
    """The compose role's pruning on its own: a record with five releases, keep two."""
    project = compose_project()
    project.build("v1")
    for tag in ("v2", "v3", "v4", "v5", "next"):
        docker("tag", f"{project.name}:v1", f"{project.name}:{tag}")
    record = {"live": "v4", "previous": "v5", "history": ["v1", "v2", "v5", "v3", "v5", "v4"]}
    plays = [{
        "name": "Prune", "hosts": "localhost", "gather_facts": False,
        "vars": {"deployctl_compose_image": project.name, "deployctl_compose_keep_images": 2,
                 "deployctl_compose_record": record},
        "tasks": [{"name": "Find the images", "deployctl.core.compose_status": {"image": project.name},
                   "register": "deployctl_compose_found"},
                  {"name": "Prune", "ansible.builtin.include_role": {
                      "name": "compose", "tasks_from": "prune"}}]}]
    first = run_playbook(tmp_path / "prune.yml", plays)
    assert first.returncode == 0, first.stdout[-3000:]
    # newest first: v4, v5 (kept: the last two, and live v4, previous v5); v3, v2, v1 go; never live: stays
    assert project.images() == ["next", "v4", "v5"]
    again = run_playbook(tmp_path / "prune.yml", plays)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]


def test_image_loaded_from_an_archive_and_compose_command_detected(compose_project, tmp_path):
    """deployctl_compose_image_source: load, and `docker compose` (v2 plugin) preferred over docker-compose."""
    project = compose_project()
    project.build("v7")
    archive = tmp_path / f"{project.name}-v7.tar"
    docker("save", "-o", str(archive), f"{project.name}:v7")
    docker("image", "rm", f"{project.name}:v7")
    # a v2 plugin that answers `version` itself and hands everything else to docker-compose
    plugins = tmp_path / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True)
    (plugins / "docker-compose").write_text(
        "#!/bin/sh\n"
        "if [ \"$1\" = docker-cli-plugin-metadata ]; then\n"
        "  echo '{\"SchemaVersion\": \"0.1.0\", \"Vendor\": \"tests\", \"Version\": \"v2.99.0\"}'; exit 0\n"
        "fi\n"
        "shift\n"
        "[ \"$1 $2\" = 'version --short' ] && { echo 2.99.0; exit 0; }\n"
        "exec docker-compose \"$@\"\n")
    (plugins / "docker-compose").chmod(0o755)
    plays = [{
        "name": "Load and detect", "hosts": "localhost", "gather_facts": False,
        "vars": {"deployctl_app_root": str(project.stack), "deployctl_compose_image": project.name,
                 "deployctl_compose_image_source": "load", "deployctl_compose_tag": "v7",
                 "deployctl_compose_image_archive": str(tmp_path / "{{ deployctl_compose_image }}-"
                                                        "{{ deployctl_compose_tag }}.tar")},
        "tasks": [
            {"name": "Load", "ansible.builtin.include_role": {"name": "compose", "tasks_from": "image"}},
            {"name": "Detect", "deployctl.core.compose_status": {}, "register": "found"},
            {"name": "Show", "ansible.builtin.debug": {"msg": "DETECTED {{ found.compose_command | to_json }} "
                                                              "{{ found.compose_version }}"}}]}]
    with_plugin = run_playbook(tmp_path / "load.yml", plays, {"DOCKER_CONFIG": str(plugins.parent)})
    assert with_plugin.returncode == 0, with_plugin.stdout[-3000:]
    assert project.images() == ["v7"]
    assert not list((project.stack / ".deployctl").glob("*.tar")), "the copy of the archive is removed"
    assert 'DETECTED [\\"' in with_plugin.stdout and '\\"compose\\"] 2.99.0' in with_plugin.stdout, \
        with_plugin.stdout[-2000:]

    without = run_playbook(tmp_path / "load.yml", plays, {"DOCKER_CONFIG": str(tmp_path / "empty")})
    assert without.returncode == 0, without.stdout[-3000:]
    assert "changed=0" in without.stdout, "the image is there: nothing is loaded again"
    assert 'docker-compose\\"] "' in without.stdout, without.stdout[-2000:]  # v1: no version asked


def test_zero_downtime_release_and_rollback_fail_no_request(compose_project, tmp_path):
    blue, green = free_port(), free_port()
    nginx = Nginx(tmp_path / "nginx", blue)
    try:
        project = compose_project(
            deployctl_compose_zero_downtime=True,
            deployctl_compose_zero_downtime_ports=[blue, green],
            deployctl_compose_nginx_upstream_file=str(nginx.upstream),
            deployctl_compose_nginx_check_command=[*nginx.base, "-t", "-q"],
            deployctl_compose_nginx_reload_command=[*nginx.base, "-s", "reload"],
            deployctl_compose_drain_seconds=2,
            deployctl_compose_migrate_mode="exec",
            deployctl_migrate_order="after_restart",
            deployctl_verify_checks=[{"name": "version", "type": "http", "url": nginx.url("/version")}],
        )
        project.build("v1")
        project.build("v2")
        project.build("v3", unhealthy=True)
        first = project.run("release", "v1")
        assert first.code == 0, first
        assert http_get(nginx.url("/version"))[1].strip() == "v1"

        prober = Prober(nginx.url("/version"), {"v1", "v2"})
        prober.start()
        try:
            second = project.run("release", "v2")
            assert second.code == 0, second
            assert http_get(nginx.url("/version"))[1].strip() == "v2"
            during_release = (prober.requests, len(prober.failures))
            # v3 never gets healthy in its slot: nginx never sees it, v2 goes on answering
            failed = project.run("release", "v3")
            assert failed.code == 4 and "unhealthy" in failed.data["message"], failed
            assert http_get(nginx.url("/version"))[1].strip() == "v2"
            assert [(c["project"], c["tag"]) for c in project.running("app")] == [(f"{project.name}-green", "v2")]
            during_failure = (prober.requests - during_release[0], len(prober.failures) - during_release[1])
            back = project.run("rollback")
            assert back.code == 0, back
            assert http_get(nginx.url("/version"))[1].strip() == "v1"
        finally:
            prober.stop()
        print(f"\nzero-downtime prober: {prober.requests} requests, {len(prober.failures)} failed "
              f"(release v2: {during_release[0]} requests, {during_release[1]} failed; failed release v3: "
              f"{during_failure[0]} requests, {during_failure[1]} failed; answers seen: {prober.seen})")
        assert prober.failures == [], prober.failures[:10]
        assert prober.requests > 100 and prober.seen.get("v2", 0) > 0 and prober.seen.get("v1", 0) > 0

        apps = project.running("app")
        assert [(c["project"], c["tag"]) for c in apps] == [(f"{project.name}-blue", "v1")], apps
        assert (project.stack / ".deployctl" / "compose-slot").read_text().strip() == "blue"
        assert [c["tag"] for c in project.running("worker")] == ["v1"]
        assert project.heartbeat("v1")
        # exec mode: the migrations ran in the new slot's app container, once per release
        assert (project.stack / "data" / "migrations.log").read_text() == "migrated v1\nmigrated v2\n"
        assert "v3" not in prober.seen
    finally:
        nginx.stop()
