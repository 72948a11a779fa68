"""Shared helpers of the benchmarks in bench/: timing the real CLI and plain ansible-playbook, and tables.

Run the benchmarks with the project's virtualenv (`.venv/bin/python bench/<name>.py`): the CLI and
ansible-playbook are taken from the interpreter's own bin directory, as tests/support/project.py does.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from deployctl.report import flag_downtime  # noqa: E402
from deployctl.runner import content_dir  # noqa: E402

BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = BIN / "ansible-playbook"
DEPLOYCTL = BIN / "deployctl"
# what deployctl runs every phase with when the environment sets no `forks` (deployctl/pipeline.py)
DEPLOYCTL_DEFAULT_FORKS = 50


def require_venv() -> None:
    """Stop with a clear message when not run by the virtualenv that has deployctl installed."""
    for tool in (DEPLOYCTL, ANSIBLE_PLAYBOOK):
        if not tool.exists():
            sys.exit(f"{tool} not found: run this with the project's virtualenv (.venv/bin/python {sys.argv[0]})")


# ------------------------------------------------------------------------------------------ numbers


def summary(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max) of the values."""
    return statistics.median(values), min(values), max(values)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return "-"
    return f"{a / b:.2f}x"


def secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], left: int = 1) -> str:
    """Plain-text table; the first `left` columns are left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    out = [line(cells[0]), line(["-" * w for w in widths])]
    out += [line(row) for row in cells[1:]]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ releases


def cli_release(project, version: str, timeout: float = 3600, env: dict | None = None):
    """`deployctl --json release VERSION` through the real CLI; returns (wall seconds, Result)."""
    started = time.monotonic()
    result = project.run("release", version, timeout=timeout, env=env)
    return time.monotonic() - started, result


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children and theirs: the control node's share
    of a command run meanwhile (the SSH test hosts' sshd are not waited for until they stop)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_cpu() -> float:
    """CPU seconds every process on this machine has used so far (/proc/stat: all but idle and iowait).

    The SSH test hosts share the machine, so the difference over a release is its whole cost here: the
    control node's processes, the connection masters it does not wait for, sshd and the module processes."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class ModuleCalls:
    """Counts the module calls of the Ansible runs of a command, per host (bench/callback_plugins).

    `env` goes into the command's environment; `read()` afterwards gives {host: {"remote": N, ...}}.
    """

    def __init__(self, directory: Path):
        self.path = directory / "module-calls.json"
        self.path.unlink(missing_ok=True)
        self.env = {
            "ANSIBLE_CALLBACK_PLUGINS": str(Path(__file__).resolve().parent / "callback_plugins"),
            "ANSIBLE_CALLBACKS_ENABLED": "module_calls",
            "DEPLOYCTL_BENCH_MODULE_CALLS": str(self.path),
        }

    def read(self) -> dict[str, dict[str, int]]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def per_host(self, kind: str = "remote") -> float | None:
        """The mean count of `kind` over the hosts, or None when nothing was counted."""
        counts = self.read()
        return statistics.mean(c.get(kind, 0) for c in counts.values()) if counts else None


def check_release(result, version: str) -> None:
    if result.code != 0 or result.outcome != "live":
        sys.exit(f"release {version} did not go live: {result!r}")


def phases(result) -> list[tuple[str, float]]:
    """[(phase name, seconds)] of a release, in the order they ran (from the JSON outcome)."""
    deployment = result.data.get("deployment") or {}
    return [(p["name"], float(p["seconds"])) for p in deployment.get("phases", [])]


def maintenance_window(phase_list: list[tuple[str, float]]) -> float | None:
    """Seconds from the start of "maintenance on" to the end of "maintenance off"."""
    names = [name for name, _ in phase_list]
    if "maintenance on" not in names or "maintenance off" not in names:
        return None
    first, last = names.index("maintenance on"), len(names) - 1 - names[::-1].index("maintenance off")
    return sum(seconds for _, seconds in phase_list[first:last + 1])


def flag_up(result) -> float | None:
    """How long the maintenance flag was up in a release (its Result): the downtime behind the maintenance page."""
    return flag_downtime((result.data.get("deployment") or {}).get("details") or {})


def ansible_env(local_temp: Path) -> dict[str, str]:
    """The Ansible settings deployctl/runner.py gives every phase, for a plain ansible-playbook run."""
    content = content_dir()
    return {
        **os.environ,
        "PATH": str(BIN) + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_CONFIG": str(content / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(content / "roles"),
        "ANSIBLE_COLLECTIONS_PATH": str(content / "collections"),
        "ANSIBLE_LOCAL_TEMP": str(local_temp),
        "ANSIBLE_NOCOLOR": "1",
    }


def plain_release(inventory: Path, version: str, forks: int = DEPLOYCTL_DEFAULT_FORKS,
                  timeout: float = 3600, env: dict | None = None) -> float:
    """Time `ansible-playbook -i INVENTORY playbooks/release.yml` (no gates, no history, one process).

    Exits with the end of the playbook's output when it fails: a failed run's time means nothing.
    """
    playbook = content_dir() / "playbooks" / "release.yml"
    with tempfile.TemporaryDirectory(prefix="deployctl-bench-ansible-") as tmp:
        argv = [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), str(playbook), "--forks", str(forks),
                "-e", f"deployctl_version={version}", "-e", "deployctl_lock_token=x"]
        started = time.monotonic()
        proc = subprocess.run(argv, env={**ansible_env(Path(tmp)), **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        seconds = time.monotonic() - started
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
        sys.exit(f"plain ansible-playbook release of {version} failed (rc {proc.returncode}):\n{tail}")
    return seconds
