"""Tools for the fault suite: slow commands that keep writing, process trees to kill, states to compare."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

# A migration that applies the release's migrations, says so, then keeps working and finally deletes every
# item: if it outlives a cancelled release, the restored database loses its rows. It goes through the demo
# app's own database access, so it writes to whichever engine the app uses.
LONG_MIGRATION = """#!/bin/sh
bin/migrate || exit 1
touch {marker}
sleep {seconds}
exec python3 - <<'EOF'
import sys
sys.path.insert(0, ".")
import app
app.load_env()
app.Database().execute("DELETE FROM items")
EOF
"""


def long_migration(project, seconds: int = 8, name: str = "long-migrate") -> Path:
    """Make the project's migrate command a long one; returns the marker it touches once migrating."""
    marker = project.root / f"{name}.started"
    script = project.root / name
    script.write_text(LONG_MIGRATION.format(marker=marker, seconds=seconds))
    script.chmod(0o755)
    project.group_vars["deployctl_migrate_command"] = str(script)
    project.write()
    return marker


def wait_for(predicate: Callable[[], object], timeout: float = 120, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def sqlite_state(path: Path) -> str:
    """A hash of a SQLite database's schema and content."""
    with sqlite3.connect(path) as db:
        return hashlib.sha256("\n".join(db.iterdump()).encode()).hexdigest()


def processes_matching(text: str) -> list[int]:
    """Live processes whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text.encode() in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and everything it started, as a dying control node would lose them."""
    victims = [pid, *descendants(pid)]
    for victim in victims:
        with contextlib.suppress(OSError):
            os.kill(victim, signal.SIGSTOP)  # freeze first: nothing forks away while the tree is killed
    for victim in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            os.kill(victim, signal.SIGKILL)
    return victims


def settled(app_root: Path) -> dict:
    """What a finished command must leave on a host: no lock, no maintenance flag, no recorded command."""
    registry = app_root / ".deployctl" / "processes"
    return {
        "lock": (app_root / ".deployctl" / "lock").exists(),
        "maintenance": (app_root / "shared" / "maintenance.json").exists(),
        "commands": sorted(p.name for p in registry.glob("*.json")) if registry.is_dir() else [],
    }


SETTLED = {"lock": False, "maintenance": False, "commands": []}
