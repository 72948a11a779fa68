#!/usr/bin/env python3
"""Demo web app released by deployctl.

Standard library only: it runs on target hosts that only have /usr/bin/python3.

Release layout (the deploy tool links the shared entries into each release)::

    <release>/app.py, VERSION, bin/, migrations/
    <release>/.env  -> shared/.env    (optional)
    <release>/data  -> shared/data    (default sqlite database)
    <release>/run   -> shared/run     (pid files)
    <release>/log   -> shared/log     (app.log, worker.log)

Configuration (environment, or ``<release>/.env`` loaded by the bin scripts):

    DEMO_HOST               listen address (default 0.0.0.0)
    DEMO_PORT               listen port (default 18080)
    DEMO_DATABASE_URL       sqlite:///abs/path.db | mysql://user@host:port/db |
                            postgresql://user@host:port/db
                            (default sqlite:///<release>/data/demo.db)
    DEMO_DATABASE_PASSWORD  password for mysql/postgresql (passed to the client
                            via MYSQL_PWD / PGPASSWORD, never on the command line)

Marker files in the release directory build deliberately broken releases:
``HEALTH_BROKEN`` makes /health answer 500, ``START_BROKEN`` makes the app exit
at startup.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from urllib.parse import unquote, urlsplit

RELEASE_DIR = os.path.dirname(os.path.realpath(os.path.abspath(__file__)))

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 18080
CLIENT_TIMEOUT = 15


# --------------------------------------------------------------------------- config


def release_dir():
    return RELEASE_DIR


def release_path(*parts):
    return os.path.join(RELEASE_DIR, *parts)


def read_version(base=None):
    path = os.path.join(base or RELEASE_DIR, "VERSION")
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or "unknown"
    except OSError:
        return "dev"


def load_env(path=None, override=False):
    """Load KEY=VALUE lines from ``<release>/.env`` into os.environ.

    Variables already present in the environment win unless ``override``.
    """
    path = path or release_path(".env")
    if not os.path.isfile(path):
        return {}
    loaded = {}
    with open(path, encoding="utf-8") as fh:
        for raw in fh:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[len("export "):].strip()
            key, sep, value = line.partition("=")
            key = key.strip()
            if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            loaded[key] = value
            if override or key not in os.environ:
                os.environ[key] = value
    return loaded


def listen_host():
    return os.environ.get("DEMO_HOST") or DEFAULT_HOST


def listen_port():
    return int(os.environ.get("DEMO_PORT") or DEFAULT_PORT)


def local_url(path="/"):
    """URL to reach the app from this host."""
    host = listen_host()
    if host in ("0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{listen_port()}{path}"


def ensure_dir(path):
    """Create ``path`` (following a dangling symlink to create its target)."""
    if os.path.islink(path) and not os.path.exists(path):
        target = os.path.join(os.path.dirname(path), os.readlink(path))
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)
    return path


# ------------------------------------------------------------------------- database


class DatabaseError(Exception):
    pass


class Database:
    """Minimal database access: sqlite3 in-process, MariaDB/PostgreSQL via their CLI clients."""

    def __init__(self, url=None, password=None):
        if url is None:
            url = os.environ.get("DEMO_DATABASE_URL") or ""
        if password is None:
            password = os.environ.get("DEMO_DATABASE_PASSWORD") or None
        if not url:
            url = "sqlite://" + release_path("data", "demo.db")
        self.url = url
        scheme = url.split(":", 1)[0].lower()
        if scheme in ("sqlite", "sqlite3"):
            self.kind = "sqlite"
            path = url.split(":", 1)[1]
            if path.startswith("//"):
                path = path[2:]
            if path.startswith("//"):  # sqlite:////abs/path (SQLAlchemy style)
                path = path[1:]
            if not path:
                raise DatabaseError(f"sqlite URL without a path: {url!r}")
            self.path = os.path.join(RELEASE_DIR, unquote(path))
            self.password = None
            return
        if scheme in ("mysql", "mariadb"):
            self.kind = "mysql"
        elif scheme in ("postgresql", "postgres", "pgsql"):
            self.kind = "postgresql"
        else:
            raise DatabaseError(f"unsupported DEMO_DATABASE_URL scheme: {scheme!r}")
        parts = urlsplit(url)
        self.user = unquote(parts.username) if parts.username else None
        self.password = password or (unquote(parts.password) if parts.password else None)
        self.host = parts.hostname
        self.port = parts.port
        self.name = unquote(parts.path.lstrip("/"))
        if not self.name:
            raise DatabaseError("database name missing in DEMO_DATABASE_URL")

    def describe(self):
        if self.kind == "sqlite":
            return f"sqlite:{self.path}"
        return "{}://{}{}{}/{}".format(
            self.kind,
            (self.user + "@") if self.user else "",
            self.host or "localhost",
            (f":{self.port}") if self.port else "",
            self.name,
        )

    # -- sqlite

    def _sqlite(self):
        ensure_dir(os.path.dirname(self.path))
        conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        return conn

    # -- command-line clients

    def _client_command(self, sql):
        if self.kind == "mysql":
            client = shutil.which("mariadb") or shutil.which("mysql")
            if not client:
                raise DatabaseError("neither 'mariadb' nor 'mysql' client is installed")
            cmd = [client, "--batch", "--skip-column-names", "--connect-timeout=5",
                   "--default-character-set=utf8mb4"]
            if self.host:
                cmd += ["-h", self.host]
            if self.port:
                cmd += ["-P", str(self.port)]
            if self.user:
                cmd += ["-u", self.user]
            cmd += ["-D", self.name, "-e", sql]
            return cmd
        client = shutil.which("psql")
        if not client:
            raise DatabaseError("'psql' client is not installed")
        cmd = [client, "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1"]
        if self.host:
            cmd += ["-h", self.host]
        if self.port:
            cmd += ["-p", str(self.port)]
        if self.user:
            cmd += ["-U", self.user]
        cmd += ["-d", self.name, "-c", sql]
        return cmd

    def _client_env(self):
        env = dict(os.environ)
        env.pop("DEMO_DATABASE_PASSWORD", None)
        if self.kind == "mysql":
            env.pop("MYSQL_PWD", None)
            if self.password:
                env["MYSQL_PWD"] = self.password
        else:
            env.pop("PGPASSWORD", None)
            if self.password:
                env["PGPASSWORD"] = self.password
            env.setdefault("PGCONNECT_TIMEOUT", "5")
            env["PGOPTIONS"] = "-c client_min_messages=warning"
        return env

    def _run_client(self, sql):
        try:
            proc = subprocess.run(
                self._client_command(sql),
                env=self._client_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=CLIENT_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise DatabaseError(f"database client timed out after {CLIENT_TIMEOUT}s") from None
        except OSError as exc:
            raise DatabaseError(f"cannot run database client: {exc}") from exc
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout or "").strip()
            raise DatabaseError(msg or f"database client exited with {proc.returncode}")
        return proc.stdout

    # -- public API

    def execute(self, sql):
        """Execute one statement (autocommit, no surrounding transaction)."""
        if self.kind == "sqlite":
            try:
                conn = self._sqlite()
                try:
                    conn.execute(sql)
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                raise DatabaseError(str(exc)) from exc
            return
        self._run_client(sql)

    def query(self, sql):
        """Run one query and return its rows as tuples of strings (None for NULL in sqlite)."""
        if self.kind == "sqlite":
            try:
                conn = self._sqlite()
                try:
                    rows = conn.execute(sql).fetchall()
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                raise DatabaseError(str(exc)) from exc
            return [tuple(None if v is None else str(v) for v in row) for row in rows]
        out = self._run_client(sql)
        return [tuple(line.split("\t")) for line in out.splitlines() if line != ""]

    def ping(self):
        rows = self.query("SELECT 1")
        if not rows or rows[0][0] != "1":
            raise DatabaseError(f"unexpected answer to SELECT 1: {rows!r}")

    def table_exists(self, table):
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", table):
            raise ValueError(table)
        if self.kind == "sqlite":
            sql = f"SELECT name FROM sqlite_master WHERE type = 'table' AND name = '{table}'"
        elif self.kind == "mysql":
            sql = ("SELECT table_name FROM information_schema.tables "
                   f"WHERE table_schema = DATABASE() AND table_name = '{table}'")
        else:
            sql = ("SELECT table_name FROM information_schema.tables "
                   f"WHERE table_schema = current_schema() AND table_name = '{table}'")
        return bool(self.query(sql))


# ------------------------------------------------------------------------ processes


def pid_alive(pid, marker=None):
    """True if ``pid`` is a live (non-zombie) process; optionally its cmdline must contain ``marker``."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
        if marker:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read().decode("utf-8", "replace")
            if marker not in cmdline:
                return False
    except (OSError, IndexError):
        pass  # no /proc: trust kill(0)
    return True


def read_pidfile(path):
    try:
        with open(path) as fh:
            return int(fh.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def write_pidfile(path, pid):
    ensure_dir(os.path.dirname(path))
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{pid}\n")
    os.replace(tmp, path)


def remove_pidfile(path, pid=None):
    if pid is not None and read_pidfile(path) != pid:
        return
    with contextlib.suppress(OSError):
        os.unlink(path)


def running_pid(pidfile, marker=None):
    pid = read_pidfile(pidfile)
    return pid if pid_alive(pid, marker) else 0


def stop_pidfile(pidfile, marker=None, timeout=10.0, name="app"):
    """Stop the process in ``pidfile``: SIGTERM, wait ``timeout`` s, then SIGKILL. Returns the pid or 0."""
    pid = running_pid(pidfile, marker)
    if not pid:
        remove_pidfile(pidfile)
        return 0
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline and pid_alive(pid):
        time.sleep(0.05)
    if pid_alive(pid):
        sys.stderr.write(f"{name} pid {pid} did not stop after {timeout:.0f}s, sending SIGKILL\n")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 5
        while time.time() < deadline and pid_alive(pid):
            time.sleep(0.05)
    remove_pidfile(pidfile)
    return pid


def spawn_daemon(argv, logfile):
    """Start ``argv`` detached (new session, stdin /dev/null, output appended to ``logfile``)."""
    ensure_dir(os.path.dirname(logfile))
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    with open(logfile, "ab") as log, open(os.devnull, "rb") as devnull:
        return subprocess.Popen(
            argv,
            cwd=RELEASE_DIR,
            env=env,
            stdin=devnull,
            stdout=log,
            stderr=log,
            close_fds=True,
            start_new_session=True,
        )


def fetch(path, timeout=2.0):
    """GET a path from the local app; returns (status, body) or raises OSError."""
    from urllib.error import HTTPError
    from urllib.request import urlopen

    try:
        with urlopen(local_url(path), timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def utcnow():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --------------------------------------------------------------------------- server


def make_server(host, port, version):
    """Create the ThreadingHTTPServer (http.server is imported here: the bin scripts do not need it)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def version_string(self):
            return f"demo/{self.server.version}"

        def _send(self, status, body, content_type="text/plain; charset=utf-8"):
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _json(self, status, obj):
            self._send(status, json.dumps(obj) + "\n", "application/json")

        def do_GET(self):
            version = self.server.version
            path = self.path.split("?", 1)[0]
            if path == "/":
                self._send(200, f"demo {version}\n")
            elif path == "/version":
                self._send(200, f"{version}\n")
            elif path == "/health":
                self._health(version)
            elif path == "/items":
                self._items()
            else:
                self._json(404, {"error": "not found", "path": path})

        do_HEAD = do_GET

        def _health(self, version):
            if os.path.exists(release_path("HEALTH_BROKEN")):
                self._json(500, {"status": "broken", "version": version,
                                 "error": "HEALTH_BROKEN marker present in release"})
                return
            try:
                Database().ping()
            except (DatabaseError, ValueError) as exc:
                self._json(503, {"status": "error", "version": version, "database": "error",
                                 "error": str(exc)})
                return
            self._json(200, {"status": "ok", "version": version, "database": "ok"})

        def _items(self):
            try:
                rows = Database().query("SELECT id, name FROM items ORDER BY id")
            except (DatabaseError, ValueError) as exc:
                self._json(503, {"error": str(exc)})
                return
            items = [{"id": int(r[0]) if r[0] and r[0].lstrip("-").isdigit() else r[0],
                      "name": r[1] if len(r) > 1 else None} for r in rows]
            self._json(200, items)

        def log_message(self, fmt, *args):
            sys.stderr.write(f"{utcnow()} {fmt % args}\n")

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    if ":" in host:
        import socket

        Server.address_family = socket.AF_INET6
    server = Server((host, port), Handler)
    server.version = version
    return server


def _terminate(signum, frame):
    raise SystemExit(0)


def serve():
    load_env()
    version = read_version()
    if os.path.exists(release_path("START_BROKEN")):
        sys.stderr.write(f"{utcnow()} demo {version}: START_BROKEN marker present, refusing to start\n")
        return 1
    host, port = listen_host(), listen_port()
    try:
        server = make_server(host, port, version)
    except OSError as exc:
        sys.stderr.write(f"{utcnow()} demo {version}: cannot listen on {host}:{port}: {exc}\n")
        return 1
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    sys.stderr.write(
        f"{utcnow()} demo {version} listening on {host}:{port} (pid {os.getpid()}, release {RELEASE_DIR})\n"
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        sys.stderr.write(f"{utcnow()} demo {version} stopped (pid {os.getpid()})\n")
    return 0


if __name__ == "__main__":
    sys.exit(serve())
