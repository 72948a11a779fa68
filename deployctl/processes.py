"""Processes on the control node: is a deployment's deployctl still alive, and what did it leave running.

Every ansible-playbook a deployctl process starts carries that process's run id in the environment
(`DEPLOYCTL_RUN_ID`, random: deployment ids of two projects can be equal), and so do Ansible's workers, its
SSH clients and the modules it runs locally. When a deployctl process
dies, the Ansible processes it started can be found by that mark and stopped before anyone recovers the
deployment. Commands the modules started (migrations, restarts) are not killed here: they are recorded on
their host, and recovery stops them there (deployctl.core.tracked_processes); app daemons a restart left
behind carry the mark too and are left alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import uuid
from pathlib import Path

MARK = "DEPLOYCTL_RUN_ID"
RUN_ID = uuid.uuid4().hex


def start_ticks(pid: int) -> int | None:
    """When pid started (clock ticks since boot), or None when it does not exist or is a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def identity() -> dict:
    """This process, as a deployment records it: enough to tell later whether it still runs."""
    return {"control_node": socket.gethostname(), "pid": os.getpid(), "start_ticks": start_ticks(os.getpid()),
            "run_id": RUN_ID}


def is_local(process: dict | None) -> bool:
    return bool(process) and process.get("control_node") == socket.gethostname()


def alive(process: dict | None) -> bool | None:
    """True/False for a process of this control node; None when it belongs to another one (unknowable)."""
    if not is_local(process):
        return None
    pid = process.get("pid")
    return isinstance(pid, int) and start_ticks(pid) is not None and start_ticks(pid) == process.get("start_ticks")


def marked(run_id: str | None) -> list[int]:
    """The Ansible processes (ansible-playbook, its workers and SSH clients) of a run, still alive."""
    return _marked(run_id) if run_id else []


def _marked(run_id: str) -> list[int]:
    mark = f"{MARK}={run_id}".encode() + b"\0"
    own = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if (b"\0" + environ).find(b"\0" + mark) < 0 or start_ticks(int(entry.name)) is None:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if _is_ansible(argv):
            found.append(int(entry.name))
    return found


def _is_ansible(argv: list[bytes]) -> bool:
    """ansible-playbook and its forked workers, the SSH clients, and modules run on this machine."""
    program = os.path.basename(argv[0]) if argv else b""
    return program == b"ssh" or any(b"ansible-playbook" in arg or b"AnsiballZ_" in arg for arg in argv[:3])


def kill_marked(run_id: str | None, wait: float = 10.0) -> list[int]:
    """SIGKILL every Ansible process carrying the run's mark; returns the pids still alive after `wait`."""
    if not run_id:
        return []
    pids = _marked(run_id)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if start_ticks(pid) is not None]
        if pids:
            time.sleep(0.1)
    return pids
