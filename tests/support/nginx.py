"""An nginx of its own (prefix, nginx.conf, pid file, 127.0.0.1 port) that includes the maintenance role's snippets.

What `location / { }` does is the caller's: a fixed answer standing in for the app, or a proxy_pass to a real
one. group_vars() is what a project sets so the maintenance role installs its snippets into this instance
and tests and reloads this instance, not the host's nginx.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.support.project import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def proxy_to(port: int) -> str:
    """The app location of an nginx in front of an app listening on 127.0.0.1:`port`."""
    return f"proxy_pass http://127.0.0.1:{port};"


class Nginx:
    """One nginx master under `prefix`, listening on a free 127.0.0.1 port (`port`)."""

    def __init__(self, prefix: Path):
        self.prefix = prefix
        self.port = free_port()
        self.conf = prefix / "nginx.conf"
        self.pidfile = prefix / "nginx.pid"
        self.error_log = prefix / "error.log"
        self.http_snippet = prefix / "maintenance-http.conf"
        self.server_snippet = prefix / "maintenance-server.conf"
        self.argv = [NGINX, "-p", f"{prefix}/", "-c", str(self.conf)]
        self.pid: int | None = None

    def command(self, *extra: str) -> str:
        return " ".join([*self.argv, *extra])

    def group_vars(self) -> dict:
        return {
            "deployctl_maintenance_nginx": True,
            "deployctl_maintenance_nginx_http_snippet": str(self.http_snippet),
            "deployctl_maintenance_nginx_server_snippet": str(self.server_snippet),
            "deployctl_maintenance_nginx_test_command": self.command("-t", "-q"),
            "deployctl_maintenance_nginx_reload_command": self.command("-s", "reload"),
        }

    def start(self, app_location: str, http_directives: str = "") -> None:
        """Start nginx with `app_location` as the directives of `location / { }` (and `http_directives` in
        `http { }`, e.g. the include of an upstream block); RuntimeError if it does not."""
        temp = self.prefix / "tmp"
        temp.mkdir(parents=True, exist_ok=True)
        (self.prefix / "logs").mkdir(exist_ok=True)  # nginx opens its default error log before it reads nginx.conf
        # empty until the role installs the real ones: nginx must run before maintenance is set up
        self.http_snippet.write_text("")
        self.server_snippet.write_text("")
        # the workers stat the flag file and read the page under a private temporary directory
        user = "user root;\n" if os.geteuid() == 0 else ""
        self.conf.write_text(f"""\
{user}worker_processes 1;
pid {self.pidfile};
error_log {self.error_log} warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {self.http_snippet};
    {http_directives}
    server {{
        listen 127.0.0.1:{self.port};
        include {self.server_snippet};
        location / {{
            {app_location}
        }}
    }}
}}
""")
        proc = subprocess.run(self.argv, capture_output=True, text=True, timeout=20)
        if proc.returncode != 0:
            raise RuntimeError(f"nginx did not start: {proc.stderr.strip()}")
        # the master writes its pid file after the command that daemonised it has returned
        deadline = time.monotonic() + 10
        while not self.pidfile.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx wrote no pid file {self.pidfile}")
            time.sleep(0.05)
        self.pid = int(self.pidfile.read_text())

    def stop(self) -> None:
        """Stop the master this instance started, and with it its workers; never any other nginx."""
        pid = self.pid
        if pid is None:  # start() gave up waiting, but the master may have written its pid file since
            with contextlib.suppress(OSError, ValueError):
                pid = int(self.pidfile.read_text())
        if pid is None:
            return
        with contextlib.suppress(OSError):  # ProcessLookupError ends the wait: the master is gone
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)
        self.pid = None

    def error_log_size(self) -> int:
        try:
            return self.error_log.stat().st_size
        except OSError:
            return 0

    def errors_since(self, offset: int) -> list[str]:
        """The error log's lines written after byte `offset` (see error_log_size)."""
        try:
            with open(self.error_log, "rb") as handle:
                handle.seek(offset)
                return handle.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return []
