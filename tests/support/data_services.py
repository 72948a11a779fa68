"""MariaDB, PostgreSQL and Redis in containers of a compose project of a test's own: the seed stack's data image
(demo/stack/data, on the shared Debian base), host networking on free 127.0.0.1 ports, data in the test's
directory, passwords in compose secrets (never on a command line, in the environment or in docker inspect).

    services = DataServices(root, "db", "redis")     # any of db (MariaDB), postgres, redis
    services.up()
    services.sql("SELECT 1")                          # as root in the db container (postgres: as postgres)
    services.state()                                  # sha256 of the app database's dump, by the container's tools
    services.redis()                                  # a RedisConnection with the password
    services.down()                                   # containers removed, data directories removed
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import yaml
from ansible_collections.deployctl.core.plugins.module_utils.redis_protocol import RedisConnection, RedisError

from demo.stack.build import data_image
from tests.support.project import free_port
from tests.support.redis import contents

DATABASE = "app"
USER = "app"


def compose_command() -> list[str]:
    """`docker compose` (the v2 plugin) where it works, else `docker-compose` (v1)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"]


class DataServices:
    def __init__(self, root: Path, *services: str):
        self.root = root
        self.project = f"dcdata-{uuid.uuid4().hex[:8]}"
        self.services = services
        self.ports = {name: free_port() for name in services}
        self.password = "db-" + secrets.token_hex(12)
        self.redis_password = "redis-" + secrets.token_hex(12)
        root.mkdir(parents=True, exist_ok=True)
        secrets_dir = root / "secrets"
        secrets_dir.mkdir(exist_ok=True)
        (secrets_dir / "db_password").write_text(self.password)
        (secrets_dir / "db_password").chmod(0o600)
        # the ACL file holds the password's sha256 only: the redis user reads it
        digest = hashlib.sha256(self.redis_password.encode()).hexdigest()
        (secrets_dir / "redis_acl").write_text(f"user default on #{digest} ~* &* +@all\n")
        (secrets_dir / "redis_acl").chmod(0o644)
        image = data_image()
        every = {
            "db": {"image": image, "network_mode": "host", "command": ["stack-mariadb"],
                   "environment": {"DB_PORT": str(self.ports.get("db", 0)), "DB_NAME": DATABASE, "DB_USER": USER,
                                   "DB_PASSWORD_FILE": "/run/secrets/db_password"},
                   "secrets": ["db_password"], "volumes": ["./data/mariadb:/var/lib/mysql"],
                   "healthcheck": {"test": ["CMD", "mariadb-admin", "--socket=/run/mysqld/mysqld.sock", "ping"],
                                   "interval": "1s", "timeout": "3s", "retries": 120}},
            "postgres": {"image": image, "network_mode": "host", "command": ["stack-postgres"],
                         "environment": {"DB_PORT": str(self.ports.get("postgres", 0)), "DB_NAME": DATABASE,
                                         "DB_USER": USER, "DB_PASSWORD_FILE": "/run/secrets/db_password"},
                         "secrets": ["db_password"], "volumes": ["./data/postgres:/var/lib/postgresql/data"],
                         "healthcheck": {"test": ["CMD", "pg_isready", "-q", "-h", "127.0.0.1", "-p",
                                                  str(self.ports.get("postgres", 0))],
                                         "interval": "1s", "timeout": "3s", "retries": 120}},
            "redis": {"image": image, "network_mode": "host",
                      "command": ["stack-redis", "--aclfile", "/run/secrets/redis_acl"],
                      "environment": {"REDIS_PORT": str(self.ports.get("redis", 0))},
                      "secrets": ["redis_acl"], "volumes": ["./data/redis:/data"],
                      "healthcheck": {"test": ["CMD-SHELL", f"redis-cli -p {self.ports.get('redis', 0)} ping "
                                               "| grep -qE 'PONG|NOAUTH'"],
                                      "interval": "1s", "timeout": "3s", "retries": 60}},
        }
        compose = {"version": "2.4", "services": {name: every[name] for name in services},
                   "secrets": {"db_password": {"file": "./secrets/db_password"},
                               "redis_acl": {"file": "./secrets/redis_acl"}}}
        (root / "docker-compose.yml").write_text(yaml.safe_dump(compose, sort_keys=False))

    # ------------------------------------------------------------------ lifecycle

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([*compose_command(), "-p", self.project, *args], cwd=self.root, capture_output=True,
                              text=True, timeout=300)
        if check and done.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)}: {done.stderr.strip()}")
        return done

    def up(self, *services: str) -> DataServices:
        self.compose("up", "-d", *(services or self.services))
        self.wait_healthy(*(services or self.services))
        return self

    def wait_healthy(self, *services: str, seconds: float = 180) -> None:
        deadline = time.time() + seconds
        while True:
            states = {name: self.health(name) for name in services or self.services}
            if all(state == "healthy" for state in states.values()):
                return
            if time.time() > deadline:
                logs = self.compose("logs", "--tail", "30", check=False).stdout
                raise AssertionError(f"not healthy: {states}\n{logs}")
            time.sleep(0.5)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def health(self, service: str) -> str | None:
        container = self.container(service)
        if not container:
            return None
        state = json.loads(subprocess.run(["docker", "inspect", "--format", "{{json .State}}", container],
                                          capture_output=True, text=True).stdout or "{}")
        return (state.get("Health") or {}).get("Status") or state.get("Status")

    def inspect(self) -> str:
        ids = [self.container(s) for s in self.services]
        ids = [i for i in ids if i]
        return subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True).stdout if ids else ""

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", check=False)
        # the data directories belong to the containers' users: removed from a container
        image = data_image()
        subprocess.run(["docker", "run", "--rm", "--network", "none", "-v", f"{self.root}:/stack", image,
                        "rm", "-rf", "/stack/data"], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ what a test reads and writes

    def exec(self, service: str, *argv: str, user: str | None = None, input: bytes | None = None) -> bytes:
        # stdin is attached only to feed it; otherwise the command reads an empty one, never the test runner's
        attach = ["-i"] if input is not None else []
        command = ["docker", "exec", *attach, *(["-u", user] if user else []), self.container(service), *argv]
        stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        done = subprocess.run(command, capture_output=True, timeout=120, **stdin)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: {done.stderr.decode(errors='replace')}")
        return done.stdout

    def processes(self, service: str) -> list[str]:
        """The command lines of the processes in the service's container (zombies as `<defunct>`), read from
        the host's /proc: a `docker exec ps` beside an exec whose output nobody reads could hang for minutes."""
        init = subprocess.run(["docker", "inspect", "--format", "{{.State.Pid}}", self.container(service)],
                              capture_output=True, text=True, timeout=60).stdout.strip()
        namespace = os.readlink(f"/proc/{init}/ns/pid")
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.readlink(f"/proc/{pid}/ns/pid") != namespace:
                    continue
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    found.append(handle.read().replace(b"\0", b" ").decode(errors="replace").strip() or "<defunct>")
            except OSError:  # gone meanwhile
                continue
        return found

    def sql(self, statements: str, engine: str = "mysql", database: str = DATABASE) -> str:
        if engine == "mysql":
            out = self.exec("db", "mariadb", "--batch", "--skip-column-names", database, input=statements.encode())
        else:
            out = self.exec("postgres", "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h",
                            "/run/postgresql", "-p", str(self.ports["postgres"]), "-d", database, user="postgres",
                            input=statements.encode())
        return out.decode()

    def state(self, engine: str = "mysql", database: str = DATABASE) -> str:
        """sha256 of the database's dump by the container's own tools (the same data dumps the same)."""
        if engine == "mysql":
            dump = self.exec("db", "mariadb-dump", "--skip-dump-date", "--skip-comments", "--order-by-primary",
                             database)
        else:
            dump = self.exec("postgres", "pg_dump", "-h", "/run/postgresql", "-p", str(self.ports["postgres"]),
                             "--no-owner", "--no-privileges", database, user="postgres")
            dump = b"\n".join(line for line in dump.splitlines()
                              if not line.startswith(b"--") and b"restrict" not in line.lower())
        return hashlib.sha256(dump).hexdigest()

    def wait_sessions_gone(self, database: str = DATABASE, seconds: float = 30) -> None:
        """Until the test's own sessions (as postgres) on `database` have ended: a restore as the app's user may
        end only its own."""
        deadline = time.time() + seconds
        query = (f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}' "
                 "AND usename <> 'app' AND pid <> pg_backend_pid();")
        while self.sql(query, "postgresql", "postgres").strip() != "0":
            if time.time() > deadline:
                raise AssertionError(f"sessions on {database} did not end")
            time.sleep(0.2)

    def redis(self) -> RedisConnection:
        return RedisConnection(port=self.ports["redis"], password=self.redis_password)

    def redis_keys(self) -> dict:
        """Every key of every database: its type, value and whether it expires."""
        with self.redis() as conn:
            return contents(conn)

    def redis_file(self, name: str) -> bytes:
        return self.exec("redis", "cat", f"/data/{name}")

    def wait_redis(self, seconds: float = 30) -> None:
        deadline = time.time() + seconds
        while True:
            with contextlib.suppress(RedisError), self.redis() as conn:
                if conn.info("persistence").get("loading") == "0":
                    return
            if time.time() > deadline:
                raise AssertionError("redis does not answer")
            time.sleep(0.2)

    def database_config(self, engine: str = "mysql", **extra) -> dict:
        """deployctl_database for the db (mysql) or postgres service."""
        service = "db" if engine == "mysql" else "postgres"
        return {"engine": engine, "service": service, "name": DATABASE, "host": "127.0.0.1",
                "port": self.ports[service], "user": USER, "password": self.password, **extra}

    def redis_config(self, **extra) -> dict:
        """deployctl_redis for the redis service."""
        return {"role": "data", "service": "redis", "host": "127.0.0.1", "port": self.ports["redis"],
                "password": self.redis_password, "timeout": 60, **extra}
