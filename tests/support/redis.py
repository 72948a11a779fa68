"""A redis-server of a test's own (Debian's redis-server): no port, a unix socket and its data in the test's
directory, a password, started and stopped the way deployctl's stop_command and start_command do it for a
Redis on the host."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

from ansible_collections.deployctl.core.plugins.module_utils.redis_protocol import RedisConnection, RedisError


class RedisServer:
    def __init__(self, root: Path, appendonly: bool = False, password: str | None = None):
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.socket = str(root / "redis.sock")
        self.pidfile = root / "redis.pid"
        self.password = password or "redis-" + secrets.token_hex(12)
        self.conf = root / "redis.conf"
        self.conf.write_text("\n".join([
            "port 0", f"unixsocket {self.socket}", "unixsocketperm 700", f"dir {self.data}", "daemonize yes",
            f"pidfile {self.pidfile}", f"logfile {root / 'redis.log'}", f"appendonly {'yes' if appendonly else 'no'}",
            # the password is in the server's file, not on its command line
            f"requirepass {self.password}", 'save "60 1"']) + "\n")

    @property
    def start_command(self) -> list[str]:
        return ["redis-server", str(self.conf)]

    @property
    def stop_command(self) -> list[str]:
        return ["sh", "-c", f'kill "$(cat {self.pidfile})"']

    def config(self, **extra) -> dict:
        """The module's `redis` option (deployctl_redis) for this server."""
        return {"role": "data", "socket": self.socket, "password": self.password,
                "stop_command": self.stop_command, "start_command": self.start_command, "timeout": 30, **extra}

    def start(self) -> RedisServer:
        subprocess.run(self.start_command, check=True)
        deadline = time.time() + 20
        while True:
            try:
                with self.client() as conn:
                    if conn.info("persistence").get("loading") == "0":
                        return self
            except RedisError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"redis-server did not start: {(self.root / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pidfile.read_text())
            os.kill(pid, 0)
            return pid
        return None

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)  # a test's end: nothing to save
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def client(self, db: int = 0) -> RedisConnection:
        conn = RedisConnection(socket_path=self.socket, password=self.password)
        if db:
            conn.command("SELECT", db)
        return conn

    def command(self, *args, db: int = 0):
        with self.client(db) as conn:
            return conn.command(*args)

    def dump(self) -> dict:
        with self.client() as conn:
            return contents(conn)


def contents(conn: RedisConnection) -> dict:
    """Every key of every database: its type, value (sets and hashes sorted) and whether it expires."""
    found = {}
    for line in conn.command("INFO", "keyspace").decode().splitlines():
        if not line.startswith("db"):
            continue
        db = int(line.split(":")[0][2:])
        conn.command("SELECT", db)
        for key in conn.command("KEYS", "*"):
            kind = conn.command("TYPE", key).decode()
            read = {"string": ["GET", key], "list": ["LRANGE", key, 0, -1], "set": ["SMEMBERS", key],
                    "zset": ["ZRANGE", key, 0, -1, "WITHSCORES"], "hash": ["HGETALL", key],
                    "stream": ["XRANGE", key, "-", "+"]}[kind]
            value = conn.command(*read)
            found[(db, key)] = (kind, sorted(value) if kind in ("set", "hash") else value,
                                conn.command("PTTL", key) >= 0)
    return found


def fill(server: RedisServer, keys: int = 200) -> None:
    """Keys of every type in two databases, some with an expiry."""
    with server.client() as conn:
        conn.pipeline([["SET", f"user:{i}", f"value {i} \x00\xff"] for i in range(keys)])
        conn.pipeline([["HSET", "profile", f"field{i}", i] for i in range(50)])
        conn.command("SADD", "tags", *[f"t{i}" for i in range(40)])
        conn.command("ZADD", "scores", 1, "a", 2.5, "b", -3, "c")
        conn.command("RPUSH", "queue", *[f"job{i}" for i in range(30)])
        conn.command("XADD", "events", "*", "kind", "created")
        conn.command("XGROUP", "CREATE", "events", "workers", "0")
        conn.command("SET", "session:1", "short-lived", "EX", 3600)
        conn.command("SELECT", 2)
        conn.command("SET", "other-db", "yes")
