"""A throwaway deployctl project around the demo app: its own app root, port, artifacts and state.

Tests drive the real CLI (`deployctl --project-dir ... --json`) against it, so every release is a real
ansible-runner run of the real playbooks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from demo.build import build

REPO = Path(__file__).resolve().parents[2]
DEPLOYCTL = str(Path(sys.executable).with_name("deployctl"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


class Result:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        try:
            self.data = json.loads(proc.stdout) if proc.stdout.strip() else {}
        except ValueError:
            self.data = {}

    @property
    def outcome(self) -> str | None:
        return self.data.get("outcome") if isinstance(self.data, dict) else None

    def __repr__(self) -> str:
        message = self.data.get("message") if isinstance(self.data, dict) else ""
        return f"<exit {self.code} {self.outcome}: {message}\n{self.stderr[-3000:]}>"


class DemoProject:
    """A project dir with deployctl.yml and one environment `local` releasing the demo app to localhost."""

    def __init__(self, root: Path, environment: dict | None = None, group_vars: dict | None = None,
                 hosts: dict | None = None):
        self.root = root
        self.port = free_port()
        self.app_root = root / "srv" / "app"
        self.dist = root / "dist"
        self.backups = root / "srv" / "backups"
        self.dist.mkdir(parents=True)
        self.group_vars = {
            "deployctl_app_root": str(self.app_root),
            "deployctl_artifact": str(self.dist) + "/demo-{{ deployctl_version }}.tar.gz",
            "deployctl_env": {"DEMO_PORT": self.port, "DEMO_HOST": "127.0.0.1"},
            "deployctl_restart_command": "bin/restart",
            "deployctl_stop_command": "bin/stop",
            "deployctl_migrate_command": "bin/migrate",
            "deployctl_migrate_status_command": "bin/migrate --status",
            "deployctl_workers": [{"name": "worker", "status": "bin/worker status", "stop": "bin/worker stop",
                                   "start": "bin/worker start"}],
            "deployctl_verify_checks": [
                {"name": "health", "type": "http", "url": f"http://127.0.0.1:{self.port}/health", "status": 200},
            ],
            "deployctl_verify_retries": 3,
            "deployctl_verify_delay": 1,
            "deployctl_database": {"engine": "sqlite", "name": "{{ deployctl_app_root }}/shared/data/demo.db"},
            "deployctl_backup_dir": str(self.backups),
            "deployctl_preflight_min_free_mb": 10,
            **(group_vars or {}),
        }
        self.hosts = hosts or {
            "all": {
                "children": {"app": {"hosts": {"localhost": None}}, "db": {"hosts": {"localhost": None}}},
                "vars": {"ansible_connection": "local",
                         "ansible_python_interpreter": "{{ ansible_playbook_python }}"},
            }
        }
        self.environment = {"inventory": "inventory/local", **(environment or {})}
        self.command = [DEPLOYCTL]  # another deployctl (an older checkout, say) for benchmarks
        self.command_env: dict[str, str] = {}
        self.write()

    def write(self) -> None:
        inventory = self.root / "inventory" / "local"
        (inventory / "group_vars").mkdir(parents=True, exist_ok=True)
        (inventory / "hosts.yml").write_text(yaml.safe_dump(self.hosts))
        (inventory / "group_vars" / "all.yml").write_text(yaml.safe_dump(self.group_vars))
        config = {"app": "demo", "environments": {"local": self.environment}}
        (self.root / "deployctl.yml").write_text(yaml.safe_dump(config))

    def build(self, version: str, broken: str | None = None, migrations=()) -> Path:
        return build(version, self.dist, broken=broken, migrations=migrations)

    def run(self, *args: str, timeout: float = 600, env: dict | None = None, as_json: bool = True) -> Result:
        proc = subprocess.run([*self.command, "--project-dir", str(self.root), *(["--json"] if as_json else []), *args],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.command_env, **(env or {})}, stdin=subprocess.DEVNULL)
        return Result(proc)

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([DEPLOYCTL, "--project-dir", str(self.root), "--json", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def served_version(self) -> str | None:
        status, body = http_get(self.url("/version"))
        return body.strip() if status == 200 else None

    def live(self) -> str | None:
        current = self.app_root / "current"
        return os.path.basename(os.readlink(current)) if current.is_symlink() else None

    def running(self, name: str) -> bool:
        pidfile = self.app_root / "shared" / "run" / f"{name}.pid"
        try:
            os.kill(int(pidfile.read_text().strip()), 0)
            return True
        except (OSError, ValueError):
            return False

    def sqlite(self, query: str) -> list[tuple]:
        import sqlite3

        with sqlite3.connect(self.app_root / "shared" / "data" / "demo.db") as db:
            return db.execute(query).fetchall()

    def stop(self) -> None:
        """Stop whatever the releases started, whichever release is live."""
        for name in ("app", "worker"):
            pidfile = self.app_root / "shared" / "run" / f"{name}.pid"
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        time.sleep(0.1)
