"""`deployctl init` on the demo compose file, and on the seed stack's, produces a project that releases it, on the
real Docker engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from demo.compose.build import build_image, remove_images
from demo.stack.build import migrations
from tests.support.project import free_port, http_get
from tests.support.seed_stack import SeedStack, redis_command

REPO = Path(__file__).resolve().parents[2]
DEPLOYCTL = str(Path(sys.executable).parent / "deployctl")
MIGRATIONS = migrations()


def deployctl(*args: str, cwd: Path) -> tuple[int, dict, str]:
    proc = subprocess.run([DEPLOYCTL, "--json", *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    return proc.returncode, json.loads(proc.stdout or "{}"), proc.stderr


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True).stdout


@pytest.fixture
def demo_stack(tmp_path):
    """The demo compose file in a directory of its own (its name is the compose project's), with a .env."""
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode:
        pytest.skip("a running Docker engine is needed")
    name = f"dcinit-{uuid.uuid4().hex[:8]}"
    stack = tmp_path / name
    stack.mkdir()
    shutil.copy2(REPO / "demo" / "compose" / "docker-compose.yml", stack)
    port = free_port()
    (stack / ".env").write_text(f"APP_IMAGE={name}\nAPP_PORT={port}\n")
    yield stack, name, port
    containers = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={name}").split()
    if containers:
        docker("rm", "-f", *containers)
    docker("network", "rm", f"{name}_default")
    remove_images(name)


def test_init_on_the_demo_compose_file_releases_it(demo_stack, tmp_path):
    stack, name, port = demo_stack
    project = tmp_path / "project"
    project.mkdir()
    code, made, err = deployctl("init", f"../{name}/docker-compose.yml", cwd=project)
    assert code == 0, err
    assert made["detected"]["app_services"] == ["app"] and made["detected"]["worker_services"] == ["worker"]
    assert made["compose_patch"] is None, "the demo's image already takes its tag from ${APP_TAG}"
    assert made["next"][-1] == "deployctl release v1"
    variables = yaml.safe_load((project / "inventory/local/group_vars/all/deployctl.yml").read_text())
    assert variables["deployctl_compose_http_port"] == port

    build_image("v1", name)
    code, first, err = deployctl("release", "v1", cwd=project)
    assert code == 0, (first, err[-3000:])
    assert http_get(f"http://127.0.0.1:{port}/version") == (200, "v1\n")
    running = docker("ps", "--filter", f"label=com.docker.compose.project={name}", "--format", "{{.Image}}")
    assert sorted(running.split()) == [f"{name}:v1", f"{name}:v1"], "app and worker run the tag released"
    assert "APP_TAG=v1" in (stack / ".env").read_text()
    code, status, err = deployctl("status", cwd=project)
    assert code == 0 and status["hosts"]["localhost"]["live"] == "v1", (status, err[-2000:])


def test_secrets_that_look_like_templates_reach_ansible_as_they_are(tmp_path):
    """Passwords may hold {{, {% or {#; Ansible would template them (a syntax error, or another value)."""
    stack = tmp_path / "shop"
    stack.mkdir()
    secrets = {"SECRET_KEY": "a{#b", "API_TOKEN": "t{{ 7 * 6 }}", "MARIADB_PASSWORD": "p{% if true %}w"}
    (stack / "docker-compose.yml").write_text(yaml.safe_dump({"services": {
        "app": {"build": ".", "ports": ["8080:8080"],
                "environment": {"SECRET_KEY": secrets["SECRET_KEY"], "API_TOKEN": secrets["API_TOKEN"]}},
        "db": {"image": "mariadb:11", "environment": {"MARIADB_USER": "shop", "MARIADB_DATABASE": "shop",
                                                      "MARIADB_PASSWORD": secrets["MARIADB_PASSWORD"]}}}}))
    project = tmp_path / "project"
    project.mkdir()
    code, made, err = deployctl("init", str(stack / "docker-compose.yml"), cwd=project)
    assert code == 0, err
    seen = tmp_path / "seen.json"
    (project / "show.yml").write_text(yaml.safe_dump([{
        "hosts": "app", "gather_facts": False, "tasks": [{"ansible.builtin.copy": {
            "dest": str(seen), "mode": "0600",
            "content": "{{ {'SECRET_KEY': vault_secret_key, 'API_TOKEN': vault_api_token,"
                       " 'MARIADB_PASSWORD': deployctl_database.password} | to_json }}"}}]}]))
    shown = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "inventory/local",
                            "show.yml"], cwd=project, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stdout[-3000:]
    assert json.loads(seen.read_text()) == secrets


def test_init_on_the_seed_stack_and_its_own_next_commands_release_it_and_roll_it_back(tmp_path, bot_api):
    """The checklist's stack (demo/stack: app, worker, polling bot, MariaDB and Redis with their data, secrets in
    files): `init`, each command it prints run as printed, the two settings init says it could not know (the
    migrate command, the health URL) set by hand; then a release, one with a migration, and one that migrates
    the database and Redis and fails, rolled back with both as they were."""
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode:
        pytest.skip("a running Docker engine is needed")
    stack = SeedStack(tmp_path / "seed", bot_api, telegram_mode="polling")
    try:
        # the compose project is the directory's name unless .env says otherwise: its own, beside other tests
        with (stack.stack / ".env").open("a") as dotenv:
            dotenv.write(f"COMPOSE_PROJECT_NAME={stack.name}\n")
        project = tmp_path / "deploy"
        project.mkdir()
        code, made, err = deployctl("init", str(stack.stack / "docker-compose.yml"), cwd=project)
        assert code == 0, err
        assert made["detected"]["worker_services"] == ["worker", "bot"], made["detected"]
        path = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        for step in made["next"][:-1]:
            if step.startswith("build or tag"):
                stack.build("v1", 2)
                continue
            done = subprocess.run(["bash", "-c", step], cwd=project, env=path, capture_output=True, text=True)
            assert done.returncode == 0, (step, done.stdout, done.stderr)
        assert made["next"][-1] == "deployctl release v1"
        assert (project / "inventory/local/group_vars/all/vault.yml").read_text().startswith("$ANSIBLE_VAULT")
        settings = project / "inventory/local/group_vars/all/deployctl.yml"
        text = settings.read_text()
        bot_check = [c for c in yaml.safe_load(text)["deployctl_verify_checks"] if c["type"] == "telegram"]
        assert bot_check and bot_check[0]["api_url"] == bot_api.url, "the bot's own Bot API, for the telegram check"
        for line, value in (("deployctl_compose_migrate_command: []", "[node, migrate.js, up]"),
                            ("deployctl_compose_health_path: ''", "/health")):
            assert line in text, text
            text = text.replace(line, f"{line.split(':')[0]}: {value}")
        settings.write_text(text)

        # a secret's file that is not on the host: compose v1 says so only when it starts the container
        token = stack.stack / "secrets" / "telegram_token"
        token.rename(token.with_name("elsewhere"))
        code, refused, err = deployctl("release", "v1", cwd=project)
        assert code == 3, (refused, err[-3000:])
        assert f"missing on localhost: {token}" in refused["message"], refused["message"]
        assert not [c for c in stack.containers() if c["service"] in ("app", "worker", "bot")]
        token.with_name("elsewhere").rename(token)

        code, first, err = deployctl("release", "v1", cwd=project)
        assert code == 0, (first, err[-3000:])
        assert stack.served_version() == "v1" and stack.schema() == MIGRATIONS[:2]
        job = stack.job_result(stack.submit_job("init"))
        assert job and job["worker_version"] == "v1", job

        stack.build("v2", 3)
        code, second, err = deployctl("release", "v2", cwd=project)
        assert code == 0, (second, err[-3000:])
        assert stack.served_version() == "v2" and stack.schema() == MIGRATIONS[:3]

        stack.build("v3", 5, healthy=False)
        redis_command(stack.redis_port, "SET", "session:1", "kept")
        before = stack.database_state(), stack.redis_state()
        code, failed, err = deployctl("release", "v3", cwd=project)
        assert code == 4 and failed["outcome"] == "rolled-back", (failed, err[-3000:])
        assert stack.served_version() == "v2"
        assert (stack.database_state(), stack.redis_state()) == before
        assert stack.bot_api.token not in err + json.dumps(failed)
    finally:
        stack.cleanup()
