"""deployctl_compose_image_source: ship, to a real SSH host that has a Docker engine of its own.

The SSH test hosts share this machine's filesystem, so the host here gets a second dockerd (its own data
root and socket, started in its network namespace: tests/support/dockerd.py) and its sshd points every
session at it. The control node's images are built in the machine's engine; shipping them is the only way
they reach the host's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from demo.compose.build import build_image, remove_images
from tests.support.dockerd import HostDockerd
from tests.support.sshhosts import SSHHosts, unavailable_reason

try:
    import ansible_mitogen
except ImportError:
    ansible_mitogen = None

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STRATEGY_PLUGINS = Path(ansible_mitogen.__file__).parent / "plugins" / "strategy" if ansible_mitogen else None

APP_PORT = 18180  # inside the host's own network namespace: nothing else listens there


def docker(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def local_id(reference: str) -> str:
    return docker("image", "inspect", "--format", "{{.Id}}", reference).strip()


@pytest.fixture(scope="module")
def host_engine():
    """One SSH host (h1) whose sessions use a Docker engine of its own."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    if shutil.which("dockerd") is None or subprocess.run(["docker", "info"], capture_output=True).returncode:
        pytest.skip("a running Docker engine and dockerd are needed")
    with (SSHHosts(1, session_environment=HostDockerd.SESSION_ENVIRONMENT) as fleet,
          HostDockerd(fleet, "h1") as engine):
        yield engine


@pytest.fixture
def image(host_engine):
    """An image repository of this test's own, removed from both engines afterwards."""
    name = f"dcship-{uuid.uuid4().hex[:8]}"
    yield name
    for container in host_engine.docker("ps", "-aq", check=False).stdout.split():
        host_engine.docker("rm", "-f", container, check=False)
    tags = host_engine.docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", name, check=False).stdout.split()
    if tags:
        host_engine.docker("image", "rm", "-f", *tags, check=False)
    remove_images(name)


def ship(host_engine, tmp_path: Path, image: str, tag: str, *, check: bool = False,
         strategy: str | None = None, become: str | None = None, local: bool = False) -> tuple[int, dict, str]:
    """Run the compose role's image step with source ship on h1 (a real ansible-playbook over SSH; with local,
    on localhost with the local connection and DOCKER_HOST naming h1's engine in the task's environment); the
    image_ship result as the play registered it, or {} when the task did not finish."""
    inventory = tmp_path / "inventory.json"
    host_engine.fleet.write_inventory(inventory)
    result_file = tmp_path / f"result-{uuid.uuid4().hex[:6]}.json"
    play = [{
        "name": "Ship", "hosts": "localhost" if local else "h1", "gather_facts": False,
        **({"connection": "local", "environment": {"DOCKER_HOST": host_engine.docker_host}} if local else {}),
        # su (to root: the same user, or to nobody): the stream's command goes through become, as a deploy
        # user's `sudo docker` would
        **({"become": True, "become_method": "su", "become_user": become, "become_flags": "-s /bin/sh"}
           if become else {}),
        "vars": {"deployctl_app_root": "/srv/stack", "deployctl_compose_image": image,
                 "deployctl_compose_image_source": "ship", "deployctl_compose_tag": tag,
                 **({"ansible_python_interpreter": sys.executable} if local else {})},
        "tasks": [
            {"name": "Ship", "deployctl.core.image_ship": {"image": image, "tag": tag}, "register": "shipped"},
            {"name": "The image step of the compose role (ship asks the host once more and changes nothing)",
             "ansible.builtin.include_role": {"name": "compose", "tasks_from": "image"}},
            {"name": "Keep the result", "delegate_to": "localhost",
             "ansible.builtin.copy": {"content": "{{ shipped | to_json }}", "dest": str(result_file),
                                      "mode": "0600"},
             "check_mode": False, "changed_when": False}]}]
    playbook = tmp_path / "ship.yml"
    playbook.write_text(yaml.safe_dump(play))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_ROLES_PATH=str(REPO / "roles"),
               ANSIBLE_COLLECTIONS_PATH=str(REPO / "collections"))
    if strategy:
        env.update(ANSIBLE_STRATEGY_PLUGINS=str(STRATEGY_PLUGINS), ANSIBLE_STRATEGY=strategy)
    if become:
        env.update(ANSIBLE_BECOME_ALLOW_SAME_USER="True")
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook),
                           *(["--check"] if check else [])],
                          capture_output=True, text=True, env=env, timeout=300)
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    return proc.returncode, result, proc.stdout


def test_an_image_is_streamed_over_ssh_only_to_a_host_that_lacks_it_and_checked_by_id(host_engine, tmp_path, image):
    build_image("v1", image)
    build_image("v2", image)
    assert host_engine.image_id(f"{image}:v1") is None, "the host has an engine of its own"

    rc, result, out = ship(host_engine, tmp_path, image, "v1", check=True)
    assert rc == 0, out[-3000:]
    assert result["changed"] and not result["shipped"], result
    assert result["msg"].startswith(f"would ship {image}:v1 (") and result["msg"].endswith("to h1 (stream)"), result
    assert host_engine.image_id(f"{image}:v1") is None, "check mode ships nothing"

    rc, result, out = ship(host_engine, tmp_path, image, "v1")
    assert rc == 0, out[-3000:]
    assert result["shipped"] and result["transport"] == "stream", result
    assert host_engine.image_id(f"{image}:v1") == local_id(f"{image}:v1") == result["image_id"]
    assert result["bytes"] > 1_000_000, "busybox and more went over the wire"
    assert "changed=1 " in out, "the role's own step found the image there and did nothing more"
    leftovers = subprocess.run(["find", "/tmp", "/root/.ansible/tmp", str(host_engine.host.srv_dir), "-name",
                                "*.tar", "-newer", str(tmp_path / "ship.yml")], capture_output=True, text=True)
    assert leftovers.stdout.split() == [], "nothing the size of the image was written on either side"

    rc, result, out = ship(host_engine, tmp_path, image, "v1")
    assert rc == 0 and not result["changed"] and not result["shipped"], result
    assert "changed=0 " in out
    assert result["msg"] == f"h1 has {image}:v1 ({local_id(f'{image}:v1').split(':')[1][:12]})"

    # the host's v2 is another image than the control node's v2: a tag names one image, nothing is replaced
    host_engine.docker("tag", f"{image}:v1", f"{image}:v2")
    rc, result, out = ship(host_engine, tmp_path, image, "v2")
    assert rc != 0
    assert "a tag names one image" in result.get("msg", out), out[-3000:]
    assert host_engine.image_id(f"{image}:v2") == local_id(f"{image}:v1")

    build_image("v3", image)
    rc, result, out = ship(host_engine, tmp_path, image, "v3", become="nobody")
    assert rc != 0 and "permission denied" in result.get("msg", out), out[-3000:]
    assert host_engine.image_id(f"{image}:v3") is None, "docker load ran as nobody, who may not use the engine"
    rc, result, out = ship(host_engine, tmp_path, image, "v3", become="root")
    assert rc == 0, out[-3000:]
    assert result["shipped"] and result["transport"] == "stream", result
    assert host_engine.image_id(f"{image}:v3") == local_id(f"{image}:v3")

    rc, result, out = ship(host_engine, tmp_path, image, "v9")
    assert rc != 0
    assert f"image {image}:v9 is not in the control node's Docker engine, and h1 does not have it" in out, out[-3000:]


@pytest.mark.skipif(STRATEGY_PLUGINS is None, reason="mitogen is not installed")
def test_a_connection_that_cannot_stream_gets_the_archive_copied(host_engine, tmp_path, image):
    """mitogen's connection has no ssh command line to feed: the image goes as Ansible copies files."""
    build_image("v1", image)
    rc, result, out = ship(host_engine, tmp_path, image, "v1", strategy="mitogen_linear")
    assert rc == 0, out[-3000:]
    assert result["shipped"] and result["transport"] == "copy", result
    assert host_engine.image_id(f"{image}:v1") == local_id(f"{image}:v1")


def test_over_the_local_connection_the_image_is_streamed_into_the_engine_the_task_names(host_engine, tmp_path,
                                                                                        image):
    """With the local connection the host's engine is usually the control node's own (nothing to ship); when the
    task's environment names another one, the image is streamed into a local `docker load` there."""
    build_image("v1", image)
    rc, result, out = ship(host_engine, tmp_path, image, "v1", local=True)
    assert rc == 0, out[-3000:]
    assert result["shipped"] and result["transport"] == "stream", result
    assert host_engine.image_id(f"{image}:v1") == local_id(f"{image}:v1")


def ship_project(host_engine, tmp_path: Path, image: str) -> list[str]:
    """A project releasing the demo compose stack to h1 with source ship; the deployctl command for it."""
    fleet = host_engine.fleet
    stack = fleet.host("h1").srv_dir / image
    stack.mkdir()
    shutil.copy2(REPO / "demo" / "compose" / "docker-compose.yml", stack / "docker-compose.yml")
    (stack / ".env").write_text(f"APP_IMAGE={image}\nAPP_PORT={APP_PORT}\n")
    inventory = tmp_path / "inventory" / "ssh"
    (inventory / "group_vars").mkdir(parents=True)
    hosts = fleet.inventory(group="app")
    hosts["all"]["children"]["db"] = {"hosts": {"h1": None}}
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    (inventory / "group_vars" / "all.yml").write_text(yaml.safe_dump({
        "deployctl_strategy": "compose",
        "deployctl_app_root": f"/srv/{image}",
        "deployctl_compose_project": image,
        "deployctl_compose_image": image,
        "deployctl_compose_image_source": "ship",
        "deployctl_compose_worker_services": ["worker"],
        "deployctl_compose_http_port": APP_PORT,
        "deployctl_compose_health_timeout": 30,
        "deployctl_verify_checks": [{"name": "version", "type": "http", "url": f"http://127.0.0.1:{APP_PORT}/version",
                                     "body": "v[12]"}],
        "deployctl_verify_retries": 10,
        "deployctl_verify_delay": 1,
        "deployctl_preflight_min_free_mb": 50,
    }))
    (tmp_path / "deployctl.yml").write_text(yaml.safe_dump(
        {"app": "shipped", "environments": {"ssh": {"inventory": "inventory/ssh", "backup": False}}}))
    return [str(BIN / "deployctl"), "--project-dir", str(tmp_path), "-e", "ssh", "--json"]


def test_a_release_ships_its_image_and_runs_it_on_the_host(host_engine, tmp_path, image):
    fleet = host_engine.fleet
    stack = fleet.host("h1").srv_dir / image
    command = ship_project(host_engine, tmp_path, image)

    def deployctl(*args: str):
        proc = subprocess.run([*command, *args], capture_output=True, text=True, timeout=600)
        return proc.returncode, json.loads(proc.stdout or "{}"), proc.stderr

    def served() -> str:
        return fleet.run("h1", f"busybox wget -q -O- http://127.0.0.1:{APP_PORT}/version").stdout.strip()

    build_image("v1", image)
    build_image("v2", image)
    missing = deployctl("release", "v9")
    assert missing[0] == 3, missing
    message = missing[1]["message"]
    assert f"image {image}:v9 is not in the control node's Docker engine" in message and "\n" not in message, message
    assert not (stack / ".deployctl" / "release.json").exists() or json.loads(
        (stack / ".deployctl" / "release.json").read_text()).get("live") is None
    assert host_engine.docker("ps", "-aq").stdout.split() == [], "nothing ran on the host"

    first = deployctl("release", "v1")
    assert first[0] == 0, first
    assert served() == "v1"
    assert host_engine.image_id(f"{image}:v1") == local_id(f"{image}:v1")
    assert host_engine.image_id(f"{image}:v2") is None, "only the version released is shipped"

    second = deployctl("release", "v2")
    assert second[0] == 0, second
    assert served() == "v2"
    assert host_engine.image_id(f"{image}:v2") == local_id(f"{image}:v2")
    # the control node's engine ran nothing: the host's engine did
    assert docker("ps", "-q", "--filter", f"label=com.docker.compose.project={image}").split() == []


def _loads_into(docker_host: str) -> list[int]:
    """The `docker load` processes (on any host of this machine) that write into the engine at docker_host."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (Path(argv[0].decode(errors="replace")).name == "docker" and b"load" in argv
                and f"DOCKER_HOST={docker_host}".encode() in environ):
            found.append(int(entry.name))
    return found


def _descendants(pid: int) -> list[int]:
    """The processes started by pid, and by them, ... (Ansible's workers run in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        started = children.get(todo.pop(), [])
        found += started
        todo += started
    return found


def _archive_written(pid: int) -> bool:
    """Whether a process under pid holds a file in /tmp larger than 50 MB open: the image's archive."""
    for process in _descendants(pid):
        for fd in Path(f"/proc/{process}/fd").glob("*"):
            try:
                if os.readlink(fd).startswith("/tmp/") and fd.stat().st_size > 50_000_000:
                    return True
            except OSError:
                continue
    return False


def big_image(image: str, tmp_path: Path) -> str:
    """{image}:big, 300 MB more than v1 and incompressible (ssh -C): shipping it takes seconds."""
    build_image("v1", image)
    context = tmp_path / "big"
    context.mkdir()
    with open(context / "blob", "wb") as blob:
        for _ in range(300):
            blob.write(os.urandom(1_000_000))
    (context / "Dockerfile").write_text(f"FROM {image}:v1\nCOPY blob /blob\n")
    docker("build", "-q", "-t", f"{image}:big", str(context))
    return "big"


def interrupt_release(command: list[str], version: str, shipping) -> dict:
    """Release version, send SIGINT once shipping(pid) says the image is on its way; deployctl's result."""
    release = subprocess.Popen([*command, "release", version], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 120
    while not shipping(release.pid):
        assert release.poll() is None and time.monotonic() < deadline, "the image was never shipped"
        time.sleep(0.1)
    time.sleep(1)
    release.send_signal(signal.SIGINT)
    out, err = release.communicate(timeout=300)
    assert release.returncode == 130, (out, err[-3000:])
    return json.loads(out)


def test_an_interrupted_release_stops_the_stream_it_started(host_engine, tmp_path, image):
    """Ctrl-C while preflight streams the image. Ansible's workers run in sessions of their own, so the one
    streaming would go on after deployctl said that nothing was changed, and the host would load the image."""
    command = ship_project(host_engine, tmp_path, image)
    version = big_image(image, tmp_path)
    result = interrupt_release(command, version, lambda pid: _loads_into(host_engine.docker_host))
    assert result["message"] == "interrupted; nothing was changed"
    deadline = time.monotonic() + 5
    while _loads_into(host_engine.docker_host) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _loads_into(host_engine.docker_host) == [], "the stream went on after deployctl had finished"
    assert host_engine.image_id(f"{image}:{version}") is None


@pytest.mark.skipif(STRATEGY_PLUGINS is None, reason="mitogen is not installed")
def test_an_interrupted_copy_leaves_no_archive_on_the_control_node(host_engine, tmp_path, image):
    """The same through mitogen, whose connection takes the image as a file: the worker that held it is killed,
    and a named temporary file would stay in /tmp, the size of the image."""
    command = ship_project(host_engine, tmp_path, image)
    (tmp_path / "ansible.cfg").write_text(f"[defaults]\nstrategy_plugins = {STRATEGY_PLUGINS}\n"
                                          "strategy = mitogen_linear\n")
    version = big_image(image, tmp_path)
    before = set(Path("/tmp").glob("deployctl-image-*"))
    result = interrupt_release(command, version, _archive_written)
    assert result["message"] == "interrupted; nothing was changed"
    assert set(Path("/tmp").glob("deployctl-image-*")) <= before
    assert host_engine.image_id(f"{image}:{version}") is None
