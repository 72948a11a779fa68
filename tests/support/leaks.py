"""Where a secret must never show: the process list (every process's command line and environment, those in
containers included, as root on the host sees them) while something runs, and files deployctl keeps."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return b""


class ProcessWatch:
    """Samples /proc (command lines and environments of every process) in a thread until stopped: `seen`
    counts the samples, `found` lists (pid, where, text) of each process that showed one of `secrets`."""

    def __init__(self, *secrets: str, interval: float = 0.1):
        self.secrets = [s.encode() for s in secrets if s]
        self.interval = interval
        self.found: list[tuple[int, str, str]] = []
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            for name in os.listdir("/proc"):
                if not name.isdigit():
                    continue
                for where in ("cmdline", "environ"):
                    data = _read(f"/proc/{name}/{where}")
                    if any(secret in data for secret in self.secrets):
                        self.found.append((int(name), where, data.replace(b"\0", b" ").decode(errors="replace")))
            self.seen += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def files_containing(root: Path, *secrets: str) -> list[str]:
    """The files under `root` that contain one of `secrets`."""
    wanted = [s.encode() for s in secrets if s]
    found = []
    for path in Path(root).rglob("*"):
        if path.is_file() and not path.is_symlink() and any(s in _read(str(path)) for s in wanted):
            found.append(str(path))
    return found
