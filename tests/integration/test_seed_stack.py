"""The stack the checklists describe, released end to end by deployctl's compose strategy on the real engine.

demo/stack: a Node.js app (HTTP, /health reporting MariaDB and Redis, the Telegram webhook), a worker taking
jobs from Redis, a Telegram bot, MariaDB with its data in a bind mount and its password a compose secret,
Redis with RDB and AOF in a bind mount; all containers on host networking, images built here from a
debootstrap base (demo/images.py: minutes once, then cached). The Bot API is the local stand-in.

deployctl backs up, proves and restores the database and Redis (as data: the job queue, what migrations
write) with their containers' own tools; `database_state()` and `redis_state()` read both byte for byte.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from demo.stack.build import migrations
from tests.support.compose import container_ids
from tests.support.nginx import Nginx
from tests.support.prober import Prober
from tests.support.project import free_port, http_get
from tests.support.seed_stack import SeedStack, redis_command
from tests.support.telegram import HOOK, SECRET, TOKEN, configure, message_update

REPO = Path(__file__).resolve().parents[2]
# v1 carries the first two, v2 the third (a new column), v3 the fourth (another) and the fifth (JavaScript: it
# writes the bot's greetings to Redis)
MIGRATIONS = migrations()
GREETINGS = "bot:greetings"
CHAT = 5150


@pytest.fixture(scope="module")
def docker_engine():
    if shutil.which("docker") is None:
        pytest.skip("docker is needed")
    started = subprocess.run([str(REPO / "scripts" / "start-docker")], capture_output=True, text=True)
    if started.returncode != 0:
        pytest.skip(f"no Docker engine: {started.stderr.strip()}")


@pytest.fixture
def seed_stack(tmp_path, docker_engine, bot_api):
    stacks = []

    def make(**kwargs) -> SeedStack:
        stack = SeedStack(tmp_path / f"seed{len(stacks)}", bot_api, **kwargs)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.cleanup()


def build_versions(stack: SeedStack, *versions: tuple[str, int, bool]) -> None:
    started = time.monotonic()
    for version, carried, healthy in versions:
        stack.build(version, carried, healthy)
    print(f"\nseed stack images: {', '.join(v for v, _, _ in versions)} built in {time.monotonic() - started:.1f} s")


class RedisWatch:
    """Whether a Redis key existed at some point while the block ran (polled every 50 ms)."""

    def __init__(self, port: int, key: str):
        self.port, self.key, self.seen = port, key, False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._done.wait(0.05):
            with contextlib.suppress(OSError):  # Redis stopped for the restore
                self.seen = self.seen or redis_command(self.port, "EXISTS", self.key) == 1

    def __enter__(self) -> RedisWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def writes(api):
    """The calls that change the webhook, with what the stand-in observed at each (flag up, services running)."""
    return [(call.method, call.observed) for call in api.calls if call.method in ("deleteWebhook", "setWebhook")]


def observe_window(stack: SeedStack):
    """What the Bot API stand-in records with each call: the maintenance flag, and the services running."""
    flag = stack.app_root / "shared" / "maintenance.json"
    return lambda: (flag.exists(), sorted(stack.running()))


def test_release_migrate_fail_roll_back_and_go_back_to_v1(seed_stack, bot_api):
    stack = seed_stack()
    configure(stack, bot_api)  # the webhook bot: paused for the window, and the telegram verify check
    bot_api.observe = observe_window(stack)
    bot_api.set_webhook_directly(HOOK)
    build_versions(stack, ("v1", 2, True), ("v2", 3, True), ("v3", 5, False))
    stack.start_data_services()

    first = stack.run("release", "v1")
    assert first.code == 0, first
    assert stack.served_version() == "v1"
    health = stack.health()
    assert (health["http_status"], health["database"], health["redis"], health["schema"]) == (
        200, "ok", "ok", MIGRATIONS[1]), health
    assert stack.schema() == MIGRATIONS[:2]
    job = stack.job_result(stack.submit_job("hello"))
    assert job and (job["result"], job["worker_version"]) == ("olleh", "v1") and "duration_ms" not in job, job
    assert stack.send_update(message_update(1, "/start", CHAT), SECRET) == 200
    assert stack.bot_replies(CHAT) == ["Hello! This is the deployctl seed stack, version v1."]
    assert stack.send_update(message_update(2, "/start", CHAT), "not-the-secret") == 401
    assert stack.send_update(message_update(3, "/start", CHAT), None) == 401
    assert bot_api.webhook["url"] == HOOK and bot_api.secret_token == SECRET

    # v2: its migration runs in a one-off container of the new image before the switch; the bot is paused
    # before the flag goes up and set again after it came down; the worker and the bot stop for the window
    bot_api.calls.clear()
    # what users left in Redis: sessions and a queue that waits for a worker of another app
    for user in range(50):
        redis_command(stack.redis_port, "HSET", f"session:{user}", "user", str(user), "cart", "x" * user)
    redis_command(stack.redis_port, "RPUSH", "mail:outbox", "welcome:7", "receipt:9")
    database_before_v2, redis_before_v2 = stack.database_state(), stack.redis_state()
    second = stack.run("release", "v2")
    assert second.code == 0, second
    assert stack.served_version() == "v2"
    assert stack.schema() == MIGRATIONS[:3]
    assert stack.health()["schema"] == MIGRATIONS[2]
    assert [(method, flag) for method, (flag, _) in writes(bot_api)] == [("deleteWebhook", False),
                                                                         ("setWebhook", False)]
    in_window = [running for call in bot_api.calls if call.observed and call.observed[0]
                 for running in [call.observed[1]]]
    assert in_window, "the telegram check ran inside the window"
    assert all("worker" not in running and "bot" not in running for running in in_window), in_window
    assert bot_api.webhook["url"] == HOOK and bot_api.secret_token == SECRET
    running = stack.running()
    assert (running["app"], running["worker"], running["bot"]) == (["v2"], ["v2"], ["v2"]), running
    assert not [c for c in stack.containers() if c["project"].endswith("-migrate")], "the one-off container is gone"
    job = stack.job_result(stack.submit_job("abc"))
    assert job and job["worker_version"] == "v2" and job["duration_ms"] != "NULL", job
    assert stack.send_update(message_update(4, "/status", CHAT), SECRET) == 200
    assert stack.bot_replies(CHAT, count=2)[-1] == "Running version v2."

    # v3 never gets healthy: the release rolls back by itself, code and database
    database_before, redis_before = stack.database_state(), stack.redis_state()
    with RedisWatch(stack.redis_port, GREETINGS) as greetings:
        failed = stack.run("release", "v3")
    assert failed.code == 4 and failed.outcome == "rolled-back", failed
    assert "unhealthy" in failed.data["message"], failed
    assert greetings.seen, "v3's migration wrote to Redis"
    assert stack.served_version() == "v2"
    running = stack.running()
    assert (running["app"], running["worker"], running["bot"]) == (["v2"], ["v2"], ["v2"]), running
    assert stack.schema() == MIGRATIONS[:3], "v3's migration is undone with the database"
    assert stack.database_state() == database_before
    assert stack.redis_state() == redis_before, "v3's greetings are undone with Redis's data"
    assert redis_command(stack.redis_port, "EXISTS", GREETINGS) == 0
    assert bot_api.webhook["url"] == HOOK and bot_api.secret_token == SECRET
    assert not (stack.app_root / "shared" / "maintenance.json").exists()
    job = stack.job_result(stack.submit_job("xyz"))
    assert job and job["worker_version"] == "v2", job

    # going back over v2, which changed the schema, would lose the jobs done since: deployctl asks first
    refused = stack.run("rollback", "--to", "v1")
    assert refused.code == 3 and "job_results" in refused.data["message"], refused
    assert stack.served_version() == "v2" and stack.database_state() != database_before_v2
    back = stack.run("rollback", "--to", "v1", "--restore-data")
    assert back.code == 0, back
    assert stack.schema() == MIGRATIONS[:2]
    assert stack.database_state() == database_before_v2, "the set taken before v2, byte for byte"
    assert stack.redis_state() == redis_before_v2
    assert stack.served_version() == "v1"
    running = stack.running()
    assert (running["app"], running["worker"], running["bot"]) == (["v1"], ["v1"], ["v1"]), running
    job = stack.job_result(stack.submit_job("back"))
    assert job and job["worker_version"] == "v1", job
    assert stack.send_update(message_update(5, "/status", CHAT), SECRET) == 200
    assert stack.bot_replies(CHAT, count=3)[-1] == "Running version v1."
    assert bot_api.webhook["url"] == HOOK

    # the database password, the bot's token and its webhook secret: in the secret files and the inventory
    # (the vault's place) only
    secrets = [stack.db_password, TOKEN, SECRET]
    for result in (first, second, failed, refused, back):
        assert not [s for s in secrets if s in result.stdout + result.stderr]
    assert not [s for s in secrets if s in stack.inspect_all()], "docker inspect shows no secret"
    leaked = [str(path) for path in stack.root.rglob("*")
              if path.is_file() and not path.is_symlink()
              and not {"inventory", "secrets"} & set(path.relative_to(stack.root).parts)
              and any(s.encode() in path.read_bytes() for s in secrets)]
    assert not leaked, f"secrets in kept files: {leaked}"


def test_zero_downtime_release_through_nginx_fails_no_request(seed_stack, bot_api, tmp_path):
    blue, green = free_port(), free_port()
    nginx = Nginx(tmp_path / "nginx")
    upstream = tmp_path / "nginx" / "upstream.conf"
    upstream.parent.mkdir(parents=True)
    upstream.write_text(f"upstream seed {{\n    server 127.0.0.1:{blue};\n}}\n")  # until the first release
    nginx.start("proxy_pass http://seed;", f"include {upstream};")
    try:
        stack = seed_stack(
            telegram_mode="polling",  # a polling bot is a worker: stopped and started with the others
            deployctl_compose_zero_downtime=True,
            deployctl_compose_zero_downtime_ports=[blue, green],
            deployctl_compose_nginx_upstream_file=str(upstream),
            deployctl_compose_nginx_upstream_name="seed",
            deployctl_compose_nginx_check_command=[*nginx.argv, "-t", "-q"],
            deployctl_compose_nginx_reload_command=[*nginx.argv, "-s", "reload"],
            deployctl_compose_drain_seconds=2,
        )
        url = stack.base_url = f"http://127.0.0.1:{nginx.port}"
        stack.group_vars["deployctl_verify_checks"][0]["url"] = f"{url}/health"
        stack.write()
        build_versions(stack, ("v1", 2, True), ("v2", 3, True))
        stack.start_data_services()
        first = stack.run("release", "v1")
        assert first.code == 0, first
        assert http_get(f"{url}/version")[1].strip() == "v1"

        prober = Prober(f"{url}/version", {"v1", "v2"})
        prober.start()
        try:
            second = stack.run("release", "v2")
        finally:
            prober.stop()
        assert second.code == 0, second
        print(f"\nseed stack, zero-downtime release through nginx: {prober.requests} requests, "
              f"{len(prober.failures)} failed, answers seen: {prober.seen}")
        assert prober.failures == [], prober.failures[:10]
        assert prober.seen.get("v1", 0) > 0 and prober.seen.get("v2", 0) > 0
        assert http_get(f"{url}/version")[1].strip() == "v2"
        assert stack.schema() == MIGRATIONS[:3]
        apps = [(c["project"], c["tag"]) for c in stack.containers() if c["service"] == "app" and c["running"]]
        assert apps == [(f"{stack.name}-green", "v2")], apps
        running = stack.running()
        assert (running["worker"], running["bot"]) == (["v2"], ["v2"]), running

        job = stack.job_result(stack.submit_job("zd"))
        assert job and job["worker_version"] == "v2", job
        bot_api.updates.append(message_update(10, "/status", CHAT))
        assert stack.bot_replies(CHAT) == ["Running version v2."]
    finally:
        nginx.stop()


def test_data_services_keep_their_data_and_their_passwords_to_themselves(seed_stack):
    """MariaDB, Redis and PostgreSQL of the stack, without a release: the app's user logs in over 127.0.0.1
    with the secret's password (and with no other), which neither `docker inspect` nor the process list
    shows; recreated containers find their data and do not set it up again."""
    stack = seed_stack()
    stack.start_data_services("db", "redis", "postgres")

    def mariadb(password: str, sql: str) -> subprocess.CompletedProcess:
        return subprocess.run(["mariadb", "--protocol=tcp", "-h", "127.0.0.1", "-P", str(stack.db_port), "-u", "app",
                               "--batch", "--skip-column-names", "app", "-e", sql],
                              env=dict(os.environ, MYSQL_PWD=password), capture_output=True, text=True)

    def psql(password: str, sql: str) -> subprocess.CompletedProcess:
        return subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p",
                               str(stack.pg_port), "-U", "app", "-d", "app", "-c", sql],
                              env=dict(os.environ, PGPASSWORD=password), capture_output=True, text=True)

    made = mariadb(stack.db_password, "CREATE TABLE kept (v TEXT); INSERT INTO kept VALUES ('m'); "
                                      "SELECT CURRENT_USER()")
    assert (made.returncode, made.stdout.strip()) == (0, "app@127.0.0.1"), made.stderr
    assert "Access denied" in mariadb("not-the-password", "SELECT 1").stderr
    made = psql(stack.db_password, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('p'); SELECT current_user")
    assert (made.returncode, made.stdout.strip()) == (0, "app"), made.stderr
    assert "password authentication failed" in psql("not-the-password", "SELECT 1").stderr
    assert redis_command(stack.redis_port, "SET", "kept", "r") == "OK"

    assert stack.db_password not in stack.inspect_all()
    for container in container_ids(stack.projects()):
        processes = subprocess.run(["docker", "top", container, "-eo", "pid,args"], capture_output=True, text=True)
        assert processes.returncode == 0 and len(processes.stdout.splitlines()) > 1, processes.stderr
        assert stack.db_password not in processes.stdout

    stack.compose("--profile", "postgres", "down", "--timeout", "10")
    stack.start_data_services("db", "redis", "postgres")
    assert mariadb(stack.db_password, "SELECT v FROM kept").stdout.strip() == "m"
    assert psql(stack.db_password, "SELECT v FROM kept").stdout.strip() == "p"
    assert redis_command(stack.redis_port, "GET", "kept") == b"r", "Redis's append-only file kept it"
    logs = stack.compose("--profile", "postgres", "logs", "--no-color", "db", "postgres").stdout.decode()
    assert "created database" not in logs, "the second start found the data and set nothing up"
