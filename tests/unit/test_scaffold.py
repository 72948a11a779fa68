"""`deployctl init`'s detection on compose files of different shapes, and the project it writes."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deployctl import scaffold
from deployctl.errors import BadInput

REPO = Path(__file__).resolve().parents[2]


class VaultLoader(yaml.SafeLoader):
    """Reads the vault file as Ansible does: a value tagged !unsafe is a string never templated."""


VaultLoader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))

# the stack of the checklist: app on 3000, worker, a polling Telegram bot, MySQL, Redis with persistence, nginx;
# every service of the app built from the project, secrets written straight into the file
CHECKLIST_STACK = """\
services:
  app:
    build: .
    container_name: appointment-scheduler-app
    ports: ["3000:3000"]
    environment:
      NODE_ENV: production
      DATABASE_URL: mysql://scheduler:s3cret-db@mysql:3306/scheduler
      REDIS_URL: redis://redis:6379
      TELEGRAM_BOT_TOKEN: "123456:ABC-token"
    healthcheck:
      test: ["CMD", "curl", "-f", "http://localhost:3000/health"]
      interval: 10s
    depends_on: [mysql, redis]
  worker:
    build: .
    command: npm run worker
    environment:
      DATABASE_URL: mysql://scheduler:s3cret-db@mysql:3306/scheduler
  bot:
    build: .
    command: ["node", "bot.js"]
    environment:
      TELEGRAM_BOT_TOKEN: "123456:ABC-token"
  mysql:
    image: mysql:8.0
    environment:
      MYSQL_ROOT_PASSWORD: r00t-pw
      MYSQL_DATABASE: scheduler
      MYSQL_USER: scheduler
      MYSQL_PASSWORD: s3cret-db
    volumes: [mysql-data:/var/lib/mysql]
  redis:
    image: redis:7-alpine
    command: redis-server --appendonly yes
    ports: ["127.0.0.1:6379:6379"]
  nginx:
    image: nginx:alpine
    ports: ["80:80", "443:443"]
volumes:
  mysql-data:
"""

# Django-style: a registry image with its own tag variable in an extension field merged into each service,
# list-form environment, values from .env, a celery worker known by its command, a migration service, a
# webhook bot, PostgreSQL with a password default in the file, a cache-only Redis
REGISTRY_STACK = """\
x-app: &app
  image: registry.example.com/acme/shop:${SHOP_TAG:-latest}
  environment:
    - DJANGO_SETTINGS_MODULE=shop.settings
    - DATABASE_URL=postgres://shop:${POSTGRES_PASSWORD}@db/shop
services:
  web:
    <<: *app
    command: gunicorn --workers 4 shop.wsgi
    ports: ["8000:8000"]
  celery:
    <<: *app
    command: celery -A shop worker
  migrate:
    <<: *app
    command: ["python", "manage.py", "migrate"]
    profiles: [tools]
  telegram:
    <<: *app
    command: python -m shop.bot
    ports: ["8443:8443"]
    environment:
      - TELEGRAM_TOKEN=${TELEGRAM_TOKEN}
      - TELEGRAM_WEBHOOK_URL=https://shop.example.com/tg
      - TELEGRAM_API_BASE=http://botapi.internal:8081/
  db:
    image: postgres:16
    environment:
      POSTGRES_USER: shop
      POSTGRES_DB: shop
      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:-changeme}
  cache:
    image: redis:7
"""

# someone else's app (Gitea's own example): a third-party image released by its tag, list environment
FOREIGN_STACK = """\
version: "3"
networks:
  gitea:
    external: false
services:
  server:
    image: gitea/gitea:1.21.4
    container_name: gitea
    environment:
      - USER_UID=1000
      - GITEA__database__DB_TYPE=postgres
      - GITEA__database__HOST=db:5432
      - GITEA__database__NAME=gitea
      - GITEA__database__USER=gitea
      - GITEA__database__PASSWD=gitea
    restart: always
    networks: [gitea]
    volumes: [./gitea:/data]
    ports: ["3000:3000", "222:22"]
    depends_on: [db]
  db:
    image: postgres:14
    restart: always
    environment:
      - POSTGRES_USER=gitea
      - POSTGRES_PASSWORD=gitea
      - POSTGRES_DB=gitea
    networks: [gitea]
"""


# the shape of the checklist's stack built in-house: one data image runs MariaDB, Redis and (in a profile)
# PostgreSQL, known by their names and commands; host networking with ports from .env; passwords in compose
# secrets (files), never in the environment; a webhook bot whose URL the file does not give
IN_HOUSE_STACK = """\
x-app: &app
  image: "${APP_IMAGE:-seed-app}:${APP_TAG:-latest}"
  network_mode: host
  environment:
    APP_PORT: "${APP_PORT:-3000}"
    DB_PASSWORD_FILE: /run/secrets/db_password
    TELEGRAM_MODE: "${TELEGRAM_MODE:-webhook}"
    TELEGRAM_TOKEN_FILE: /run/secrets/telegram_token
  secrets: [db_password, telegram_token]
services:
  app:
    <<: *app
    command: ["node", "server.js"]
    healthcheck:
      test: ["CMD", "node", "healthcheck.js"]
  worker:
    <<: *app
    command: ["node", "worker.js"]
  bot:
    <<: *app
    command: ["node", "bot.js"]
  db:
    image: "${DATA_IMAGE:-stack-data}"
    network_mode: host
    command: ["stack-mariadb"]
    environment:
      DB_NAME: app
      DB_USER: app
      DB_PASSWORD_FILE: /run/secrets/db_password
    secrets: [db_password]
  postgres:
    image: "${DATA_IMAGE:-stack-data}"
    profiles: [postgres]
    command: ["stack-postgres"]
  kv:
    image: "${DATA_IMAGE:-stack-data}"
    network_mode: host
    command: ["stack-redis"]
    environment:
      REDIS_PORT: "${REDIS_PORT:-6379}"
    volumes:
      - ./data/redis:/data
secrets:
  db_password:
    file: ./secrets/db_password
  telegram_token:
    file: ./secrets/telegram_token
"""


def stack(tmp_path: Path, text: str, env: str = "", name: str = "scheduler") -> Path:
    directory = tmp_path / name
    directory.mkdir(parents=True)
    (directory / "docker-compose.yml").write_text(text)
    if env:
        (directory / ".env").write_text(env)
    return directory / "docker-compose.yml"


def environments(text: str, env: dict[str, str]) -> dict[str, dict[str, str]]:
    """Each service's environment as compose would hand it to the container."""
    services = yaml.safe_load(text)["services"]
    found = {}
    for name, spec in services.items():
        raw = spec.get("environment") or {}
        pairs = raw.items() if isinstance(raw, dict) else (item.split("=", 1) for item in raw)
        found[name] = {key: scaffold.interpolate(str(value), env) for key, value in pairs}
    return found


def test_the_checklist_stack(tmp_path):
    found = scaffold.detect(stack(tmp_path, CHECKLIST_STACK))
    kinds = {name: service.kind for name, service in found.services.items()}
    assert kinds == {"app": "app", "worker": "worker", "bot": "bot", "mysql": "database", "redis": "redis",
                     "nginx": "proxy"}
    assert (found.project, found.image, found.tag_variable) == ("scheduler", "scheduler", "APP_TAG")
    assert found.app_services == ["app"]
    assert found.worker_services == ["worker", "bot"], "a polling bot stops and starts with the workers"
    assert found.bot.webhook_url is None and found.bot.token_variable == "vault_telegram_bot_token"
    assert found.bot.api_url is None, "Telegram's own Bot API: nothing to say"
    assert (found.health_port, found.health_path, found.health_source) == (3000, "/health", "healthcheck")
    db = found.database
    assert (db.service, db.engine, db.name, db.user, db.password_variable) == (
        "mysql", "mysql", "scheduler", "scheduler", "vault_mysql_password")
    assert (found.redis.service, found.redis.port, found.redis.persistent, found.redis.reachable) == (
        "redis", 6379, True, True)
    assert {s.variable: s.value for s in found.secrets} == {
        "vault_mysql_password": "s3cret-db", "vault_telegram_bot_token": "123456:ABC-token",
        "vault_mysql_root_password": "r00t-pw"}
    assert sorted(next(s for s in found.secrets if s.value == "s3cret-db").found) == [
        "app DATABASE_URL", "mysql MYSQL_PASSWORD", "worker DATABASE_URL"]
    assert found.built and found.migrate_command == []
    assert any("nginx" in note for note in found.notes)

    # the edits: each service of the app gets the image with the tag variable, each secret becomes ${VAR}
    edited = yaml.safe_load(found.edited)["services"]
    assert {edited[s]["image"] for s in ("app", "worker", "bot")} == {"scheduler:${APP_TAG:-latest}"}
    assert edited["app"]["environment"]["DATABASE_URL"] == "mysql://scheduler:${MYSQL_PASSWORD}@mysql:3306/scheduler"
    assert edited["mysql"]["environment"]["MYSQL_ROOT_PASSWORD"] == "${MYSQL_ROOT_PASSWORD}"
    assert "s3cret-db" not in found.edited and "r00t-pw" not in found.edited and "ABC-token" not in found.edited


def test_a_registry_image_with_its_own_tag_variable_merged_from_an_extension_field(tmp_path):
    compose = stack(tmp_path, REGISTRY_STACK, "COMPOSE_PROJECT_NAME=acme\nPOSTGRES_PASSWORD=pg-secret\n"
                                              "TELEGRAM_TOKEN='999:tok'\n")
    found = scaffold.detect(compose)
    assert (found.project, found.image, found.tag_variable) == ("acme", "registry.example.com/acme/shop", "SHOP_TAG")
    assert {name: s.kind for name, s in found.services.items()} == {
        "web": "app", "celery": "worker", "migrate": "migrate", "telegram": "bot", "db": "database",
        "cache": "redis"}
    assert found.app_services == ["web", "telegram"], "a webhook bot serves: it is health-gated like the app"
    assert found.worker_services == ["celery"]
    assert found.migrate_command == ["python", "manage.py", "migrate"]
    assert found.bot.webhook_url == "https://shop.example.com/tg"
    assert (found.database.engine, found.database.name, found.database.user) == ("postgresql", "shop", "shop")
    assert found.database.password_variable == "vault_postgres_password"
    assert {s.variable: s.value for s in found.secrets} == {"vault_postgres_password": "pg-secret",
                                                            "vault_telegram_token": "999:tok"}
    assert (found.redis.persistent, found.redis.reachable) == (False, False)
    assert (found.health_port, found.health_path, found.health_source) == (8000, "/", "published port")
    # the image already has the tag variable; only the password's default leaves the file
    assert found.edits == ["db: POSTGRES_PASSWORD -> ${POSTGRES_PASSWORD}"]
    assert yaml.safe_load(found.edited)["services"]["db"]["environment"]["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD}"

    project = scaffold.plan(found, tmp_path, "production", ["web1.example.com", "web2.example.com"], None)
    variables = yaml.safe_load(project.files["inventory/production/group_vars/all/deployctl.yml"])
    assert variables["deployctl_compose_image_source"] == "pull", "a registry's image is pulled"
    assert variables["deployctl_compose_dir"] == "/srv/acme"
    # its own Bot API server (telegram-bot-api), which the pause, the restart and the check talk to
    assert variables["deployctl_telegram_bot"] == {"token": "{{ vault_telegram_token }}",
                                                   "webhook_url": "https://shop.example.com/tg",
                                                   "api_url": "http://botapi.internal:8081"}
    assert variables["deployctl_database"] == {"engine": "postgresql", "service": "db", "name": "shop",
                                               "user": "shop", "password": "{{ vault_postgres_password }}"}
    assert [c["type"] for c in variables["deployctl_verify_checks"]] == ["http", "telegram"]
    assert variables["deployctl_verify_checks"][1]["api_url"] == "http://botapi.internal:8081"
    assert variables["deployctl_redis"] == {"role": "cache", "service": "cache"}
    hosts = yaml.safe_load(project.files["inventory/production/hosts.yml"])["all"]["children"]
    assert list(hosts["app"]["hosts"]) == ["web1.example.com", "web2.example.com"]
    assert list(hosts["db"]["hosts"]) == ["web1.example.com"]
    config = yaml.safe_load(project.files["deployctl.yml"])
    assert config == {"app": "acme", "environments": {"production": {
        "inventory": "inventory/production", "production": True, "backup": True}}}
    assert "deployctl -e production release v1" in project.next_steps
    assert any(step.startswith("copy docker-compose.yml") for step in project.next_steps)


def test_an_in_house_data_image_file_secrets_and_host_networking(tmp_path):
    compose = stack(tmp_path, IN_HOUSE_STACK, "APP_IMAGE=shop\nAPP_PORT=3100\nREDIS_PORT=6380\n")
    (compose.parent / "secrets").mkdir()
    (compose.parent / "secrets" / "db_password").write_text("from-a-file\n")
    (compose.parent / "secrets" / "telegram_token").write_text("42:token\n")
    found = scaffold.detect(compose)
    assert {name: s.kind for name, s in found.services.items()} == {
        "app": "app", "worker": "worker", "bot": "bot", "db": "database", "postgres": "database", "kv": "redis"}
    assert found.image == "shop", "the image whose tag is a variable is the app's, not the data image"
    db = found.database
    assert (db.service, db.engine, db.name, db.user) == ("db", "mysql", "app", "app"), "not the one in a profile"
    assert {s.variable: s.value for s in found.secrets} == {"vault_db_password": "from-a-file",
                                                            "vault_telegram_token": "42:token"}
    assert found.edits == [], "the secrets are files already: nothing to take out of the compose file"
    assert (found.redis.service, found.redis.port, found.redis.persistent) == ("kv", 6380, True)
    assert (found.health_port, found.health_path) == (3100, ""), "the healthcheck names no URL: container health"
    assert found.worker_services == ["worker", "bot"], "the bot takes the updates the app's webhook queued"
    assert found.bot.webhook and found.bot.webhook_url is None

    written = scaffold.plan(found, tmp_path / "project", "local", [], None).files[
        "inventory/local/group_vars/all/deployctl.yml"]
    variables = yaml.safe_load(written)
    assert variables["deployctl_verify_checks"] == [{"name": "port", "type": "tcp", "host": "127.0.0.1", "port": 3100},
                                                    {"name": "redis", "type": "redis", "host": "127.0.0.1",
                                                     "port": 6380}]
    assert variables["deployctl_redis"] == {"role": "data", "service": "kv", "host": "127.0.0.1", "port": 6380}, (
        "backups reach it where the host does, not on 6379")
    assert "deployctl_telegram_bot" not in variables, "a webhook bot without its URL is written commented out"
    assert "# deployctl_telegram_bot: {token: '{{ vault_telegram_token }}', webhook_url:" in written
    assert "from-a-file" not in written and "42:token" not in written


def test_the_demo_compose_file(tmp_path):
    directory = tmp_path / "demo"
    directory.mkdir()
    shutil.copy2(REPO / "demo" / "compose" / "docker-compose.yml", directory)
    (directory / ".env").write_text("APP_IMAGE=demo-shop\nAPP_PORT=18444\n")
    found = scaffold.detect(directory / "docker-compose.yml")
    assert (found.image, found.tag_variable, found.app_services, found.worker_services) == (
        "demo-shop", "APP_TAG", ["app"], ["worker"])
    assert (found.health_port, found.health_path) == (18444, "/health"), "host networking: the port as is"
    assert found.database is None and found.redis is None and found.bot is None
    assert found.edits == [] and found.patch == "" and found.secrets == []

    project = scaffold.plan(found, tmp_path / "project", "local", [], None)
    assert sorted(project.files) == ["deployctl.yml", "inventory/local/group_vars/all/deployctl.yml",
                                     "inventory/local/hosts.yml"]
    variables = yaml.safe_load(project.files["inventory/local/group_vars/all/deployctl.yml"])
    assert variables["deployctl_compose_dir"] == variables["deployctl_app_root"] == str(directory)
    assert variables["deployctl_compose_image_source"] == "local"
    assert variables["deployctl_verify_checks"] == [
        {"name": "health", "type": "http", "url": "http://127.0.0.1:18444/health"}]
    assert yaml.safe_load(project.files["deployctl.yml"])["environments"]["local"]["backup"] is False


def test_a_foreign_app_released_by_the_tag_of_its_own_image(tmp_path):
    found = scaffold.detect(stack(tmp_path, FOREIGN_STACK, name="gitea"))
    assert (found.image, found.app_services, found.worker_services) == ("gitea/gitea", ["server"], [])
    assert found.database.engine == "postgresql" and found.database.name == "gitea"
    assert found.edits[0] == "server: image gitea/gitea:1.21.4 -> gitea/gitea:${APP_TAG:-1.21.4}"
    assert [s.variable for s in found.secrets] == ["vault_postgres_password"], "one value, one vault variable"
    edited = yaml.safe_load(found.edited)["services"]
    assert "GITEA__database__PASSWD=${POSTGRES_PASSWORD}" in edited["server"]["environment"]
    assert "POSTGRES_PASSWORD=${POSTGRES_PASSWORD}" in edited["db"]["environment"]
    assert "USER_UID=1000" in edited["server"]["environment"]
    assert (found.health_port, found.health_path) == (3000, "/")

    project = scaffold.plan(found, tmp_path / "project", "staging", ["git.example.com"], "/opt/gitea")
    variables = yaml.safe_load(project.files["inventory/staging/group_vars/all/deployctl.yml"])
    assert variables["deployctl_compose_image_source"] == "ship", "no registry of ours: shipped from here"
    assert variables["deployctl_app_root"] == "/opt/gitea"


@pytest.mark.parametrize("dotenv", [None, "COMPOSE_PROJECT_NAME=scheduler\nPORT=3000"])
def test_the_patch_moves_the_secrets_into_the_env_file_and_every_container_sees_the_same(tmp_path, dotenv):
    compose = stack(tmp_path, CHECKLIST_STACK, dotenv or "")
    found = scaffold.detect(compose)
    assert found.env_additions == {"MYSQL_PASSWORD": "s3cret-db", "TELEGRAM_BOT_TOKEN": "123456:ABC-token",
                                   "MYSQL_ROOT_PASSWORD": "r00t-pw"}
    patch = tmp_path / "compose-edits.patch"
    patch.write_text(found.patch)
    if shutil.which("patch") is None:
        pytest.skip("patch is not installed (scripts/install-test-deps installs it)")
    applied = subprocess.run(["patch", "-p1", "-d", str(compose.parent), "-i", str(patch)], capture_output=True,
                             text=True)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert compose.read_text() == found.edited
    dotenv_after = scaffold.read_dotenv(compose.parent / ".env")
    assert dotenv_after == {**scaffold.read_dotenv(tmp_path / "none"), **({"COMPOSE_PROJECT_NAME": "scheduler",
                                                                             "PORT": "3000"} if dotenv else {}),
                            **found.env_additions}
    assert environments(compose.read_text(), dotenv_after) == environments(CHECKLIST_STACK, {})
    assert "s3cret-db" not in compose.read_text()


def test_edits_that_cannot_be_made_in_place_are_described(tmp_path):
    found = scaffold.detect(stack(tmp_path, "services:\n  web: {build: ., ports: ['8080:80']}\n"
                                            "  jobs:\n    build: .\n    command: bin/jobs\n"))
    assert found.app_services == ["web"] and found.worker_services == ["jobs"]
    assert 'web: add `image: "scheduler:${APP_TAG:-latest}"`' in found.edits, "a flow mapping is not patched"
    assert yaml.safe_load(found.edited)["services"]["jobs"]["image"] == "scheduler:${APP_TAG:-latest}"
    assert "image" not in yaml.safe_load(found.edited)["services"]["web"]


def test_names_decide_before_commands(tmp_path):
    found = scaffold.detect(stack(tmp_path, """\
services:
  api:
    image: shop:1
    command: gunicorn --workers 4 --worker-class gevent app
  start:
    image: shop:1
    command: sh -c "bin/migrate && bin/queue-runner"
"""))
    assert found.services["api"].kind == "app", "gunicorn's --workers does not make the app a worker"
    assert found.services["start"].kind == "migrate" and found.migrate_command[:2] == ["sh", "-c"]


@pytest.mark.parametrize(("text", "error"), [
    ("services:\n  db: {image: 'mariadb:11'}\n  adminer: {image: adminer}\n", "no service runs an image of your app"),
    ("services: [\n", "not valid YAML"),
    ("version: '3'\n", "not a compose file"),
])
def test_files_init_cannot_use_are_refused(tmp_path, text, error):
    with pytest.raises(BadInput, match=error):
        scaffold.detect(stack(tmp_path, text))


def deployctl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deployctl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize(("environment", "hosts", "error"), [
    ("../evil", [], "invalid environment name"),
    ("production", ["web1", "deploy@web2"], "invalid host 'deploy@web2'"),
    ("production", ["a b"], "invalid host 'a b'"),
    ("production", ["-oProxyCommand=x"], "invalid host"),
])
def test_names_init_cannot_use_are_refused(tmp_path, environment, hosts, error):
    found = scaffold.detect(stack(tmp_path, FOREIGN_STACK))
    with pytest.raises(BadInput, match=error):
        scaffold.plan(found, tmp_path / "project", environment, hosts, None)


def test_init_writes_nothing_over_an_existing_file(tmp_path):
    compose = stack(tmp_path, CHECKLIST_STACK)
    project = tmp_path / "project"
    (project / "inventory" / "local").mkdir(parents=True)
    (project / "inventory" / "local" / "hosts.yml").write_text("mine\n")
    refused = deployctl("init", str(compose), cwd=project)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1 and "inventory/local/hosts.yml" in refused.stderr, refused.stderr
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()) == [
        "inventory/local/hosts.yml"], "nothing else was written"
    assert (project / "inventory" / "local" / "hosts.yml").read_text() == "mine\n"

    (project / "inventory" / "local" / "hosts.yml").unlink()
    made = deployctl("--json", "init", str(compose), cwd=project)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["files"] == [
        "compose-edits.patch", "deployctl.yml", "inventory/local/group_vars/all/deployctl.yml",
        "inventory/local/group_vars/all/vault.yml", "inventory/local/hosts.yml"]
    vault = project / "inventory" / "local" / "group_vars" / "all" / "vault.yml"
    assert stat.S_IMODE(os.stat(vault).st_mode) == 0o600
    assert yaml.load(vault.read_text(), VaultLoader)["vault_mysql_password"] == "s3cret-db"
    patch = project / "compose-edits.patch"
    assert patch.read_text().startswith("--- a/docker-compose.yml") and "s3cret-db" in patch.read_text()
    assert stat.S_IMODE(os.stat(patch).st_mode) == 0o600, "the lines it takes out hold the secrets"
    written = (project / "inventory/local/group_vars/all/deployctl.yml").read_text()
    assert "s3cret-db" not in written and "s3cret-db" not in made.stdout
    variables = yaml.safe_load(written)
    assert variables["deployctl_database"] == {"engine": "mysql", "service": "mysql", "name": "scheduler",
                                               "user": "scheduler", "password": "{{ vault_mysql_password }}"}
    assert variables["deployctl_redis"] == {"role": "data", "service": "redis", "host": "127.0.0.1", "port": 6379}
    assert variables["deployctl_verify_checks"] == [
        {"name": "health", "type": "http", "url": "http://127.0.0.1:3000/health"},
        {"name": "redis", "type": "redis", "host": "127.0.0.1", "port": 6379},
        {"name": "bot", "type": "telegram", "token": "{{ vault_telegram_bot_token }}"}]
    assert compose.read_text() == CHECKLIST_STACK, "the compose file is never changed"
    again = deployctl("--project-dir", str(project), "init", str(compose), cwd=tmp_path)
    assert again.returncode == 2 and "deployctl.yml" in again.stderr


def test_the_text_output_shows_the_edits_and_the_next_commands(tmp_path):
    compose = stack(tmp_path, CHECKLIST_STACK)
    (tmp_path / "project").mkdir()
    made = deployctl("-e", "staging", "init", str(compose), "--host", "app1.example.com", cwd=tmp_path / "project")
    assert made.returncode == 0, made.stderr
    out = made.stdout
    assert "+    image: \"scheduler:${APP_TAG:-latest}\"" in out, "the patch is shown as it is ([...] included)"
    assert "-      MYSQL_ROOT_PASSWORD: ********" in out and "r00t-pw" not in out, "secrets are not printed"
    assert ("patch -p1 -d ../scheduler < compose-edits.patch && chmod 600 ../scheduler/.env && rm compose-edits.patch"
            in out)
    assert "+MYSQL_PASSWORD=********" in out
    assert "ansible-vault encrypt inventory/staging/group_vars/all/vault.yml" in out
    assert "APP_TAG=v1 docker compose -f ../scheduler/docker-compose.yml build" in out
    assert out.rstrip().endswith("deployctl -e staging release v1")


def apply_patch(found: scaffold.Stack, compose: Path) -> None:
    if shutil.which("patch") is None:
        pytest.skip("patch is not installed (scripts/install-test-deps installs it)")
    applied = subprocess.run(["patch", "-p1", "-d", str(compose.parent)], input=found.patch, capture_output=True,
                             text=True)
    assert applied.returncode == 0, applied.stdout + applied.stderr


def test_a_secret_written_as_a_block_scalar_is_replaced_by_one_line(tmp_path):
    text = """\
services:
  web:
    build: .
    ports: ["8080:80"]
    environment:
      API_TOKEN: >-
        folded
        token
      SESSION_SECRET: |-
        in-a-block
      NEXT: keep
"""
    compose = stack(tmp_path, text)
    found = scaffold.detect(compose)
    assert sorted(found.env_additions) == ["API_TOKEN", "SESSION_SECRET"]
    apply_patch(found, compose)
    assert environments(compose.read_text(), scaffold.read_dotenv(compose.parent / ".env")) == environments(text, {})
    assert "folded" not in compose.read_text()


def test_a_secret_no_env_line_can_carry_stays_in_the_compose_file(tmp_path):
    """A newline, a ' with a $ or ", a name .env cannot hold: moved to ${NAME}, the container would get ""."""
    text = """\
services:
  web:
    build: .
    ports: ["8080:80"]
    environment:
      PRIVATE_KEY: |
        -----BEGIN KEY-----
        abc
        -----END KEY-----
      STRIPE_SECRET_KEY: sk_live_abc"def'ghi
      spring.datasource.password: s3cret
      DATABASE_URL: "mysql://shop:it's$$x@db/shop"
      API_TOKEN: movable
"""
    compose = stack(tmp_path, text)
    found = scaffold.detect(compose)
    assert found.env_additions == {"API_TOKEN": "movable"}
    assert {s.variable for s in found.secrets} >= {"vault_private_key", "vault_stripe_secret_key",
                                                   "vault_spring_datasource_password", "vault_database_url_password"}
    for name in ("PRIVATE_KEY", "STRIPE_SECRET_KEY", "spring.datasource.password", "DATABASE_URL_PASSWORD"):
        assert any(note.startswith(f"{name} stays in the compose file") for note in found.notes), found.notes
    apply_patch(found, compose)
    assert environments(compose.read_text(), scaffold.read_dotenv(compose.parent / ".env")) == environments(text, {})


def test_the_printed_patch_shows_no_secret_in_any_form(tmp_path):
    """Escapes, '' and $$ spell a secret otherwise than its value; a block scalar spreads it over lines; the
    .env's own lines shown around the additions hold secrets init does not know."""
    text = """\
services:
  web:
    build: .
    ports: ["8080:80"]
    environment:
      ESCAPED_PASSWORD: "pa\\x41ss\\"wd"
      SINGLE_TOKEN: 'it''s-tok'
      DOLLAR_KEY: "d$$llar"
      DATABASE_URL: "mysql://shop:Pa$$w0rd@db/shop"
      PRIVATE_KEY: |
        -----BEGIN KEY-----
        abc
        -----END KEY-----
      LIST_FORM: "x"
  worker:
    build: .
    environment:
      - API_KEY=k$$ey
"""
    compose = stack(tmp_path, text, "OTHER_SERVICE_TOKEN=tok-in-dotenv\n")
    shown = []
    for json_option in ([], ["--json"]):
        project = tmp_path / f"project{len(shown)}"
        project.mkdir()
        shown.append(deployctl(*json_option, "init", str(compose), cwd=project))
    assert [made.returncode for made in shown] == [0, 0], shown[0].stderr
    assert json.loads(shown[1].stdout)["compose_patch"] in shown[0].stdout
    for spelled in ("x41ss", "it''s", "d$$llar", "Pa$$w0rd", "BEGIN KEY", "abc", "k$$ey", "tok-in-dotenv"):
        assert spelled not in shown[0].stdout, spelled
    for secret in scaffold.detect(compose).secrets:
        assert secret.value not in shown[0].stdout, secret.variable
    assert '-      DOLLAR_KEY: "********"' in shown[0].stdout
    assert '-      DATABASE_URL: "mysql://shop:********@db/shop"' in shown[0].stdout
    assert "-      - API_KEY=********" in shown[0].stdout


def test_the_next_commands_take_a_path_with_spaces_as_one_word(tmp_path):
    compose = stack(tmp_path, CHECKLIST_STACK, name="my shop")
    project = tmp_path / "project"
    project.mkdir()
    made = deployctl("--json", "init", str(compose), cwd=project)
    assert made.returncode == 0, made.stderr
    steps = json.loads(made.stdout)["next"]
    build = next(step for step in steps if " build" in step)
    assert shlex.split(build, comments=True)[-3:] == ["-f", "../my shop/docker-compose.yml", "build"]
    if shutil.which("patch") is None:
        pytest.skip("patch is not installed (scripts/install-test-deps installs it)")
    patched = subprocess.run(["bash", "-c", steps[0]], cwd=project, capture_output=True, text=True)
    assert patched.returncode == 0, patched.stdout + patched.stderr
    assert "${MYSQL_PASSWORD}" in compose.read_text() and not (project / "compose-edits.patch").exists()


def run_vault_steps(steps: list[str], cwd: Path) -> None:
    """The next commands that set up the vault, in a shell, with this venv's ansible-vault."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for step in [s for s in steps if "vault" in s]:
        ran = subprocess.run(["bash", "-c", step], cwd=cwd, env=env, capture_output=True, text=True)
        assert ran.returncode == 0, (step, ran.stdout + ran.stderr)


def vault_text(project: Path, password_file: Path) -> str:
    shown = subprocess.run([str(Path(sys.executable).parent / "ansible-vault"), "view", "--vault-password-file",
                            str(password_file), "inventory/local/group_vars/all/vault.yml"], cwd=project,
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def test_the_next_commands_keep_the_vault_password_and_ansible_cfg_a_project_has(tmp_path, monkeypatch):
    """init in a repository that has its own Ansible settings: a new .vault_pass would make every vault file the
    old password encrypts unreadable, and a second [defaults] in ansible.cfg makes Ansible refuse it."""
    monkeypatch.delenv("ANSIBLE_CONFIG", raising=False)
    compose = stack(tmp_path, CHECKLIST_STACK)
    made = {}
    for case, config in (("named", "[defaults]\nvault_password_file = .vault_pass\nremote_user = deploy\n"),
                         ("unnamed", "[defaults]\nremote_user = deploy\n"), ("none", None)):
        project = tmp_path / case
        project.mkdir()
        if config is not None:
            (project / "ansible.cfg").write_text(config)
            (project / ".vault_pass").write_text(f"the {case} project's own password\n")
        made[case] = deployctl("--json", "init", str(compose), cwd=project)
        assert made[case].returncode == 0, made[case].stderr
    steps = {case: json.loads(result.stdout)["next"] for case, result in made.items()}

    project = tmp_path / "named"
    run_vault_steps(steps["named"], project)
    assert (project / ".vault_pass").read_text() == "the named project's own password\n"
    assert (project / "ansible.cfg").read_text().count("[defaults]") == 1
    assert "s3cret-db" in vault_text(project, project / ".vault_pass")

    project = tmp_path / "unnamed"
    assert not any("openssl" in step or "ansible.cfg" in step and ">" in step for step in steps["unnamed"])
    assert f"add `vault_password_file = .vault_pass` to the [defaults] section of {project / 'ansible.cfg'}" in (
        steps["unnamed"])

    project = tmp_path / "none"
    run_vault_steps(steps["none"], project)
    assert "s3cret-db" in vault_text(project, project / ".vault_pass")


def test_redis_settings_on_its_command_line_are_read_as_compose_interpolates_them(tmp_path):
    found = scaffold.detect(stack(tmp_path, """\
services:
  web:
    build: .
    ports: ["8080:80"]
  redis:
    image: redis:7
    command: redis-server --port ${REDIS_PORT:-6380} --requirepass "${REDIS_PASSWORD}" --appendonly yes
    ports: ["127.0.0.1:${REDIS_PORT:-6380}:${REDIS_PORT:-6380}"]
""", "REDIS_PASSWORD=rpw-from-env\n"))
    assert (found.redis.port, found.redis.persistent, found.redis.reachable) == (6380, True, True)
    assert {s.variable: s.value for s in found.secrets} == {"vault_redis_password": "rpw-from-env"}


def test_init_that_cannot_write_a_file_leaves_none_behind(tmp_path):
    """Otherwise the files written before the one that failed make the next init refuse."""
    compose = stack(tmp_path, CHECKLIST_STACK)
    project = tmp_path / "project"
    (project / "inventory" / "local").mkdir(parents=True)
    (project / "inventory" / "local" / "group_vars").write_text("a file where init needs a directory\n")
    refused = deployctl("init", str(compose), cwd=project)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1 and "nothing was written" in refused.stderr, refused.stderr
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*")) == [
        "inventory", "inventory/local", "inventory/local/group_vars"]

    (project / "inventory" / "local" / "group_vars").unlink()
    assert deployctl("init", str(compose), cwd=project).returncode == 0


def test_the_copy_step_names_every_file_compose_reads_on_the_hosts(tmp_path):
    """An env_file or a compose secret's file missing on a host fails `config` in preflight, or `up` in the
    middle of the release."""
    compose = stack(tmp_path, """\
services:
  web:
    build: .
    network_mode: host
    env_file: config/web.env
    secrets: [db_password]
  worker:
    build: .
    env_file: [./config/web.env, {path: config/worker.env, required: false}]
secrets:
  db_password:
    file: ./secrets/db_password
""", "TZ=UTC\n")
    (compose.parent / "config").mkdir()
    (compose.parent / "config" / "web.env").write_text("PORT=8080\nSENTRY_TOKEN=tok\n")
    found = scaffold.detect(compose)
    assert found.host_files == [".env", "config/web.env", "config/worker.env", "secrets/db_password"]
    assert found.health_port == 8080, "a single env_file is read too: PORT, with host networking"
    project = scaffold.plan(found, tmp_path / "project", "production", ["web1"], None)
    assert ("copy docker-compose.yml, .env, config/web.env, config/worker.env, secrets/db_password to "
            "/srv/scheduler on every host, at the same paths") in project.next_steps


def test_the_next_commands_start_the_data_services_before_the_first_release(tmp_path, monkeypatch):
    """A release starts only the app's services: its backup would find no database (exit 3)."""
    found = scaffold.detect(stack(tmp_path, CHECKLIST_STACK))
    # the compose command this machine has (only docker-compose, on Debian 12 as packaged)
    monkeypatch.setattr(scaffold, "local_compose", lambda: "docker-compose")
    steps = scaffold.plan(found, tmp_path / "project", "local", [], None).next_steps
    up = next(step for step in steps if " up -d " in step)
    assert shlex.split(up, comments=True) == ["docker-compose", "-p", "scheduler", "-f",
                                              "../scheduler/docker-compose.yml", "up", "-d", "mysql", "redis"]
    assert steps.index(up) == len(steps) - 2, "just before the release"
    steps = scaffold.plan(found, tmp_path / "project", "production", ["web1"], None).next_steps
    assert steps[-2].startswith("on every host, in /srv/scheduler: docker compose -p scheduler up -d mysql redis")


def test_a_secret_whose_name_the_env_file_gives_another_value_stays_in_the_compose_file(tmp_path):
    """${POSTGRES_PASSWORD} would hand the database the .env's value instead of the one it was given."""
    text = """\
services:
  web:
    build: .
    ports: ["8080:80"]
    environment:
      REPORTING_PASSWORD: "${POSTGRES_PASSWORD}"
  db:
    image: postgres:16
    environment:
      POSTGRES_PASSWORD: prod-literal-pw
"""
    compose = stack(tmp_path, text, "POSTGRES_PASSWORD=another-pw\n")
    found = scaffold.detect(compose)
    assert "POSTGRES_PASSWORD stays in the compose file: the .env gives POSTGRES_PASSWORD another value" in " ".join(
        found.notes)
    assert found.database.password_variable and found.env_additions == {}
    if found.patch:
        apply_patch(found, compose)
    env = scaffold.read_dotenv(compose.parent / ".env")
    assert environments(compose.read_text(), env) == environments(text, {"POSTGRES_PASSWORD": "another-pw"})


def test_a_secret_moves_to_the_env_file_only_when_the_services_loading_it_had_it_already(tmp_path):
    """A service with `env_file: .env` gets every variable of it: the database's root password moved there would
    reach the app's containers (and their `docker inspect`)."""
    compose = stack(tmp_path, """\
services:
  web:
    build: .
    ports: ["8080:80"]
    env_file: [./.env]
    environment:
      DATABASE_URL: mysql://shop:shop-pw@db/shop
  db:
    image: mariadb:11
    environment:
      MARIADB_USER: shop
      MARIADB_PASSWORD: shop-pw
      MARIADB_ROOT_PASSWORD: root-pw
""", "TZ=UTC\n")
    found = scaffold.detect(compose)
    assert found.env_additions == {"MARIADB_PASSWORD": "shop-pw"}, "web had that one in its DATABASE_URL"
    assert "MARIADB_ROOT_PASSWORD stays in the compose file: web loads .env as an env_file" in " ".join(found.notes)
    apply_patch(found, compose)
    assert "root-pw" not in (compose.parent / ".env").read_text()
    assert yaml.safe_load(compose.read_text())["services"]["db"]["environment"]["MARIADB_ROOT_PASSWORD"] == "root-pw"


@pytest.mark.parametrize("existing", [None, 0o644, 0o640])
def test_the_env_file_the_secrets_move_to_is_left_readable_by_its_owner_only(tmp_path, existing):
    compose = stack(tmp_path, CHECKLIST_STACK)
    if existing is not None:
        (compose.parent / ".env").write_text("TZ=UTC\n")
        (compose.parent / ".env").chmod(existing)
    project = tmp_path / "project"
    project.mkdir()
    made = deployctl("--json", "init", str(compose), cwd=project)
    assert made.returncode == 0, made.stderr
    if shutil.which("patch") is None:
        pytest.skip("patch is not installed (scripts/install-test-deps installs it)")
    patched = subprocess.run(["bash", "-c", json.loads(made.stdout)["next"][0]], cwd=project, capture_output=True,
                             text=True)
    assert patched.returncode == 0, patched.stdout + patched.stderr
    assert "MYSQL_ROOT_PASSWORD=r00t-pw" in (compose.parent / ".env").read_text()
    assert stat.S_IMODE(os.stat(compose.parent / ".env").st_mode) == 0o600


def test_a_redis_holding_data_the_db_host_cannot_reach_is_written_commented_out(tmp_path):
    """Backups talk to Redis from the db host: without a port there, they would talk to whatever answers on
    127.0.0.1:6379 (another project's Redis)."""
    found = scaffold.detect(stack(tmp_path, """\
services:
  web:
    build: .
    ports: ["8080:80"]
  redis:
    image: redis:7
    command: redis-server --appendonly yes --requirepass "s3cret"
"""))
    assert (found.redis.persistent, found.redis.reachable) == (True, False)
    written = scaffold.plan(found, tmp_path / "project", "local", [], None).files[
        "inventory/local/group_vars/all/deployctl.yml"]
    assert "deployctl_redis" not in yaml.safe_load(written)
    assert ("# publish Redis's port on the db host's 127.0.0.1 (backups reach it there), then uncomment:\n"
            "# deployctl_redis: {role: data, service: redis, password: '{{ vault_redis_password }}'}") in written


@pytest.mark.parametrize("text", [CHECKLIST_STACK, REGISTRY_STACK, FOREIGN_STACK, IN_HOUSE_STACK],
                         ids=["checklist", "registry", "foreign", "in-house"])
def test_every_variable_init_writes_is_one_the_roles_read(tmp_path, text):
    """Preflight refuses a deployctl_... variable (or a key of deployctl_database or deployctl_redis) that no
    role reads: one init wrote, commented out or not, would fail the first release."""
    from deployctl.runner import content_dir
    from deployctl.variables import NAME, known

    made = scaffold.init(stack(tmp_path, text), tmp_path / "project", "local")
    written = "".join((made.root / name).read_text() for name in made.files if name.endswith((".yml", ".yaml")))
    names = set(NAME.findall(written))
    for line in written.splitlines():  # the keys of deployctl_database and deployctl_redis, in their block
        key, _, rest = line.lstrip("# ").partition(":")
        if key in ("deployctl_database", "deployctl_redis") and rest.strip().startswith("{"):
            names.update(f"{key}.{k.strip()}" for k in yaml.safe_load(rest))
    unknown = sorted(name for name in names if name not in known(content_dir()))
    assert {"deployctl_database.engine", "deployctl_strategy"} <= names and unknown == [], unknown
