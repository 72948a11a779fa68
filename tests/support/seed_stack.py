"""The seed stack (demo/stack) as a deployctl project on this machine, and what a test reads of it.

A SeedStack has its own compose project, app image, 127.0.0.1 ports, secrets, data directories and Bot API
stand-in (tests/support/telegram.py), so that tests run side by side with others on the same engine; the
data image and the Debian base under it are shared (built once, cached by content: demo/images.py).
deployctl releases it with the compose strategy through the real CLI.

What a test reads:

    stack.database_state()   sha256 of the app database's dump, by the db container's own mariadb-dump
    stack.redis_state()      sha256 of every Redis key's DUMP serialization and expiry, sorted by key
    stack.schema()           the migrations schema_migrations records, in order
    stack.submit_job(text)   queue a job through the app; stack.job_result(id) waits for the worker's row
    stack.send_update(...)   a Telegram update to the app's webhook, as Telegram would send it
    stack.containers()       every container of the stack: project, service, tag, running, health
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import yaml

from demo.images import remove_images
from demo.stack.build import HERE as STACK_SOURCES
from demo.stack.build import build_app, data_image
from tests.support.compose import compose_command, containers, inspect, remove_containers
from tests.support.project import DEPLOYCTL, Result, free_port, http_get
from tests.support.telegram import SECRET

ENVIRONMENT = "stack"


def redis_command(port: int, *args: str | bytes):
    """One Redis command over RESP (no client library needed): the reply, bulk strings as bytes."""
    def encode(arg):
        return arg if isinstance(arg, bytes) else str(arg).encode()

    request = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(encode(a)), encode(a)) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, sock.makefile("rb") as reply:
        sock.sendall(request)
        return _resp(reply)


def _resp(reply):
    line = reply.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(f"redis: {rest.decode()}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        return None if int(rest) < 0 else reply.read(int(rest) + 2)[:-2]
    if kind == b"*":
        return None if int(rest) < 0 else [_resp(reply) for _ in range(int(rest))]
    raise RuntimeError(f"redis: unexpected reply {line!r}")


class SeedStack:
    """A deployctl project whose environment `stack` is the seed stack on localhost."""

    def __init__(self, root: Path, bot_api, telegram_mode: str = "webhook", **group_vars):
        self.root = root
        self.name = f"dcseed-{uuid.uuid4().hex[:8]}"  # compose project; the app image is <name>-app
        self.image = f"{self.name}-app"
        self.stack = self.app_root = root / "stack"
        self.app_port, self.db_port, self.redis_port, self.pg_port = free_port(), free_port(), free_port(), free_port()
        # where the app answers: its port, or nginx in front of it (zero-downtime: the slots have their own)
        self.base_url = f"http://127.0.0.1:{self.app_port}"
        self.bot_api = bot_api
        # quotes and a backslash: the password goes through SQL and files, never a command line
        self.db_password = f"pw-{secrets.token_hex(8)}'\\\"x"
        self.compose_argv = compose_command()
        self.stack.mkdir(parents=True)
        shutil.copy2(STACK_SOURCES / "docker-compose.yml", self.stack / "docker-compose.yml")
        (self.stack / ".env").write_text(
            "# the project's own settings (deployctl owns only APP_TAG)\n"
            f"APP_IMAGE={self.image}\nDATA_IMAGE={data_image()}\n"
            f"APP_PORT={self.app_port}\nDB_PORT={self.db_port}\nREDIS_PORT={self.redis_port}\nPG_PORT={self.pg_port}\n"
            f"TELEGRAM_API_URL={bot_api.url}\nTELEGRAM_MODE={telegram_mode}\n")
        self.write_secrets({"db_password": self.db_password, "telegram_token": bot_api.token,
                            "telegram_webhook_secret": SECRET})
        inventory = root / "inventory" / ENVIRONMENT
        (inventory / "group_vars").mkdir(parents=True)
        (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {
            "children": {"app": {"hosts": {"localhost": None}}, "db": {"hosts": {"localhost": None}}},
            "vars": {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}}}))
        (root / "deployctl.yml").write_text(yaml.safe_dump(
            {"app": "seed", "environments": {ENVIRONMENT: {"inventory": f"inventory/{ENVIRONMENT}"}}}))
        self.group_vars = {
            "deployctl_strategy": "compose",
            "deployctl_app_root": str(self.stack),
            "deployctl_compose_project": self.name,
            "deployctl_compose_image": self.image,
            "deployctl_compose_app_services": ["app"],
            "deployctl_compose_worker_services": ["worker", "bot"],
            "deployctl_compose_http_port": self.app_port,
            "deployctl_compose_health_timeout": 60,
            "deployctl_compose_migrate_mode": "run",
            "deployctl_compose_migrate_command": ["node", "migrate.js", "up"],
            "deployctl_compose_migrate_status_command": ["node", "migrate.js", "status"],
            # the database and Redis (its data: the jobs queue, what migrations write) are backed up, proven and
            # restored by their containers' own tools
            "deployctl_database": {"engine": "mysql", "service": "db", "name": "app", "host": "127.0.0.1",
                                   "port": self.db_port, "user": "app", "password": self.db_password},
            "deployctl_redis": {"role": "data", "service": "redis", "host": "127.0.0.1", "port": self.redis_port},
            "deployctl_backup_dir": str(root / "backups"),
            "deployctl_verify_checks": [
                {"name": "health", "type": "http", "url": self.url("/health"), "status": 200,
                 "body": '"database":"ok".*"redis":"ok"'},
                {"name": "db", "type": "mariadb", "port": self.db_port, "user": "app",
                 "password": "{{ deployctl_database.password }}", "database": "app"},
                {"name": "cache", "type": "redis", "port": self.redis_port},
            ],
            "deployctl_verify_retries": 10,
            "deployctl_verify_delay": 1,
            "deployctl_preflight_min_free_mb": 50,
            **group_vars,
        }
        self.write()

    # ------------------------------------------------------------------ the project

    def write(self) -> None:
        path = self.root / "inventory" / ENVIRONMENT / "group_vars" / "all.yml"
        path.write_text(yaml.safe_dump(self.group_vars))

    def write_secrets(self, values: dict[str, str]) -> None:
        directory = self.stack / "secrets"
        directory.mkdir(mode=0o700, exist_ok=True)
        for name, value in values.items():
            path = directory / name
            path.write_text(value)
            path.chmod(0o600)

    def build(self, version: str, migrations: int, healthy: bool = True) -> str:
        return build_app(version, self.image, healthy, migrations)

    def run(self, *args: str, timeout: float = 600) -> Result:
        started = time.monotonic()
        proc = subprocess.run([DEPLOYCTL, "--project-dir", str(self.root), "-e", ENVIRONMENT, "--json", *args],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        phases = ", ".join(line[2:] for line in proc.stderr.splitlines() if line.startswith(("✔", "✘")))
        print(f"deployctl {' '.join(args)}: exit {proc.returncode} in {time.monotonic() - started:.1f} s ({phases})")
        return Result(proc)

    def compose(self, *args: str, project: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.compose_argv, "-p", project or self.name, *args], cwd=self.stack,
                              capture_output=True, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)}: {proc.stderr.decode(errors='replace')[-2000:]}")
        return proc

    def start_data_services(self, *services: str, timeout: float = 120) -> None:
        """`up -d db redis` (or `services`) and wait until they are healthy: what an operator does once, before
        the first release (the migrations of a release run before its app starts, and need the database)."""
        services = services or ("db", "redis")
        self.compose("--profile", "postgres", "up", "-d", *services)
        deadline = time.monotonic() + timeout
        while True:
            health = {c["service"]: c["health"] for c in self.containers() if c["service"] in services}
            if health == dict.fromkeys(services, "healthy"):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the data services are not healthy: {health}")
            time.sleep(0.5)

    # ------------------------------------------------------------------ the app

    def url(self, path: str = "/") -> str:
        return f"{self.base_url}{path}"

    def served_version(self) -> str | None:
        status, body = http_get(self.url("/version"))
        return body.strip() if status == 200 else None

    def health(self) -> dict:
        status, body = http_get(self.url("/health"))
        return {"http_status": status, **(json.loads(body) if body.startswith("{") else {})}

    def submit_job(self, text: str) -> str:
        request = urllib.request.Request(self.url("/jobs"), data=json.dumps({"input": text}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["id"]

    def job_result(self, job_id: str, within: float = 20) -> dict | None:
        """The worker's row for the job (every column), once it is there."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            rows = self.sql(f"SELECT * FROM job_results WHERE job_id = '{job_id}'")
            if rows:
                return rows[0]
            time.sleep(0.3)
        return None

    def send_update(self, update: dict, secret: str | None) -> int:
        """POST a Telegram update to the app's webhook with `secret` in Telegram's header; the HTTP status."""
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        request = urllib.request.Request(self.url("/telegram/webhook"), data=json.dumps(update).encode(),
                                         headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def bot_replies(self, chat_id: int, within: float = 20, count: int = 1) -> list[str]:
        """The texts the bot sent to `chat_id`, once there are `count` of them."""
        deadline = time.monotonic() + within
        while True:
            texts = [text for chat, text in self.bot_api.sent() if chat == chat_id]
            if len(texts) >= count or time.monotonic() > deadline:
                return texts
            time.sleep(0.2)

    # ------------------------------------------------------------------ the data, byte for byte

    def sql(self, query: str) -> list[dict]:
        """Rows of a query on the app database, by the db container's own client (root, through its socket)."""
        out = self.compose("exec", "-T", "db", "mariadb", "--batch", "app", "-e", query).stdout.decode()
        lines = out.splitlines()
        if not lines:
            return []
        header = lines[0].split("\t")
        return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]

    def schema(self) -> list[str]:
        return [row["version"] for row in self.sql("SELECT version FROM schema_migrations ORDER BY version")]

    def database_state(self) -> str:
        """sha256 of the app database's dump (schema and rows, in primary key order), by the container's tools."""
        dump = self.compose("exec", "-T", "db", "mariadb-dump", "--skip-dump-date", "--skip-comments",
                            "--order-by-primary", "app").stdout
        return hashlib.sha256(dump).hexdigest()

    def redis_keys(self) -> list[str]:
        keys, cursor = set(), b"0"
        while True:
            cursor, batch = redis_command(self.redis_port, "SCAN", cursor, "COUNT", "1000")
            keys.update(key.decode() for key in batch)
            if cursor == b"0":
                return sorted(keys)

    def redis_state(self) -> str:
        """sha256 of every key's DUMP serialization (its value, byte for byte) and whether it expires."""
        digest = hashlib.sha256()
        for key in self.redis_keys():
            value = redis_command(self.redis_port, "DUMP", key)
            expires = redis_command(self.redis_port, "PTTL", key) >= 0
            digest.update(b"%d:%s%d:%s%d" % (len(key), key.encode(), len(value or b""), value or b"", expires))
        return digest.hexdigest()

    # ------------------------------------------------------------------ the containers

    def projects(self) -> list[str]:
        return [self.name, f"{self.name}-blue", f"{self.name}-green", f"{self.name}-migrate"]

    def containers(self) -> list[dict]:
        """Every container of the stack: {project, service, tag, running, health}."""
        return containers(self.projects())

    def inspect_all(self) -> str:
        """`docker inspect` of every container of the stack, as one text (what anyone on the host can read)."""
        return inspect(self.projects())

    def running(self) -> dict[str, list[str]]:
        """{service: [tags of its running containers]}."""
        found: dict[str, list[str]] = {}
        for container in self.containers():
            if container["running"]:
                found.setdefault(container["service"], []).append(container["tag"])
        return {service: sorted(tags) for service, tags in found.items()}

    def cleanup(self) -> None:
        for project in self.projects():
            self.compose("--profile", "postgres", "down", "--timeout", "2", "--remove-orphans", project=project,
                         check=False)
        remove_containers(self.projects())
        remove_images(self.image)
        # the data directories are the bulk of a stack (MariaDB's files): not kept with pytest's temporary dirs
        shutil.rmtree(self.stack / "data", ignore_errors=True)
