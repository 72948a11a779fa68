#!/usr/bin/env python3
"""Time every phase of a real release of the demo app to localhost, and deployctl's gating overhead.

A throwaway project (tests/support/project.py's DemoProject: its own app root, port, artifacts and
state in a temporary directory) releases the bundled demo app through the real CLI
(`deployctl --json release VERSION`), alternating two versions so that every run really switches the
live release, restarts the app and its worker, migrates and verifies. Per phase it prints the median,
median seconds (deployment.phases[].seconds of the JSON outcome), the whole release's wall time (the
CLI process, start to end), the maintenance window (the phases from "maintenance on" through
"maintenance off"), how long the maintenance flag itself was up (the downtime behind the maintenance
page, from the flag's own times) and how many ansible-playbook processes each release started. Then it
releases a version that never gets healthy (--failed-runs times), which rolls back by itself, and prints
the wall time, flag time and ansible-playbook runs of that failure path too.

With --compare-ref, the deployctl of another git ref (an unpacked `git archive`, run as `python -m
deployctl`) releases the same project too, printed side by side with this one. Then the same project
is released with plain `ansible-playbook -i INVENTORY playbooks/release.yml` (the same playbooks in
one process, with no gate, history or lock token of deployctl's own), with the Ansible settings and
forks deployctl uses, and the gating overhead is printed: each deployctl's median wall time over
plain ansible-playbook's. The demo app is stopped and the project removed at the end.

Run with the project's virtualenv, on an otherwise idle machine:

    .venv/bin/python bench/release_phases.py --runs 10
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import benchlib
from benchlib import cli_release, flag_up, maintenance_window, phases, plain_release, ratio, secs, summary, table

from tests.support.project import DEPLOYCTL, REPO, DemoProject

VERSIONS = ("v1.0.0", "v1.0.1")
BROKEN = "v1.0.9"  # never gets healthy: its release rolls back by itself


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Both versions are released once first (--warmup) so that the measured runs all switch "
               "between two unpacked releases; the first install of a fresh app root is not timed.",
    )
    parser.add_argument("--runs", type=int, default=5, metavar="N",
                        help="timed releases through deployctl, and as many plain ansible-playbook runs "
                             "(default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, metavar="N",
                        help="untimed releases before the timed ones (default: %(default)s, one per version)")
    parser.add_argument("--compare-ref", metavar="GIT_REF",
                        help="also time the deployctl of this git ref of the repository (e.g. main~3), in the same "
                             "project, and print both side by side")
    parser.add_argument("--failed-runs", type=int, default=2, metavar="N",
                        help="releases of a version that never gets healthy, per tool, each rolled back by itself "
                             "(default: %(default)s; 0: none)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary project directory (its path is printed) instead of removing it")
    args = parser.parse_args()
    if args.runs < 1 or args.warmup < 0 or args.failed_runs < 0:
        parser.error("--runs must be at least 1, --warmup and --failed-runs at least 0")
    return args


@dataclass
class Measured:
    """One deployctl's timed releases."""

    label: str
    walls: list[float] = field(default_factory=list)
    phase_total: list[float] = field(default_factory=list)
    windows: list[float] = field(default_factory=list)
    flag_up: list[float] = field(default_factory=list)  # the maintenance flag's own times (older refs: none)
    per_phase: dict[str, list[float]] = field(default_factory=dict)
    processes: list[int] = field(default_factory=list)  # ansible-playbook runs per release
    failed_walls: list[float] = field(default_factory=list)  # failed releases, rolled back by themselves
    failed_flag_up: list[float] = field(default_factory=list)
    failed_processes: list[int] = field(default_factory=list)


def ansible_runs(project, result) -> int:
    """How many ansible-playbook processes the release started: ansible-runner makes one artifacts
    directory per run, in the deployment's private data directory."""
    ident = (result.data.get("deployment") or {}).get("id")
    artifacts = project.root / ".deployctl" / "runs" / str(ident) / "artifacts"
    return sum(1 for _ in artifacts.iterdir()) if artifacts.is_dir() else 0


def checkout(ref: str, into: Path) -> Path:
    """The tree of `ref` of this repository, unpacked (`python -m deployctl` runs from it)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


@contextlib.contextmanager
def own_history(project, name: str):
    """The project's history moved aside while another deployctl releases it, and put back after."""
    history = project.root / ".deployctl" / "history.db"
    kept = history.with_name(f"history.db.{name}.kept")
    history.rename(kept)
    try:
        yield
    finally:
        history.unlink(missing_ok=True)
        kept.rename(history)


def measure(project, label: str, runs: int, warmup: int, next_version, failed_runs: int = 0) -> Measured:
    measured = Measured(label)
    for _ in range(warmup):
        version = next_version()
        seconds, result = cli_release(project, version)
        benchlib.check_release(result, version)
        print(f"  warm-up  {label} release {version}: {seconds:.2f} s", flush=True)
    for run in range(1, runs + 1):
        version = next_version()
        seconds, result = cli_release(project, version)
        benchlib.check_release(result, version)
        ran = phases(result)
        measured.walls.append(seconds)
        measured.phase_total.append(sum(s for _, s in ran))
        measured.processes.append(ansible_runs(project, result))
        window = maintenance_window(ran)
        if window is not None:
            measured.windows.append(window)
        up = flag_up(result)
        if up is not None:
            measured.flag_up.append(up)
        for name, phase_seconds in ran:
            measured.per_phase.setdefault(name, []).append(phase_seconds)
        print(f"  run {run:>3}  {label} release {version}: {seconds:.2f} s (phases {measured.phase_total[-1]:.2f} s, "
              f"maintenance window {secs(window)} s, flag up {secs(up)} s, {measured.processes[-1]} ansible-playbook "
              "run(s))", flush=True)
    for run in range(1, failed_runs + 1):
        seconds, result = cli_release(project, BROKEN)
        if result.code != 4 or result.outcome != "rolled-back":
            sys.exit(f"release {BROKEN} did not roll back by itself: {result!r}")
        measured.failed_walls.append(seconds)
        measured.failed_processes.append(ansible_runs(project, result))
        up = flag_up(result)
        if up is not None:
            measured.failed_flag_up.append(up)
        print(f"  failed {run:>2}  {label} release {BROKEN}, rolled back: {seconds:.2f} s (flag up {secs(up)} s, "
              f"{measured.failed_processes[-1]} ansible-playbook run(s))", flush=True)
    return measured


def main() -> None:
    args = parse_args()
    benchlib.require_venv()
    root = Path(tempfile.mkdtemp(prefix="deployctl-bench-release-"))
    project = None
    try:
        project = DemoProject(root / "project")
        for version in VERSIONS:
            project.build(version)
        project.build(BROKEN, broken="health")
        print(f"project {project.root}, demo app on port {project.port}, "
              f"{args.warmup} warm-up + {args.runs} timed releases per tool", flush=True)
        count = 0

        def next_version() -> str:
            nonlocal count
            count += 1
            return VERSIONS[(count - 1) % len(VERSIONS)]

        results = [measure(project, "deployctl", args.runs, args.warmup, next_version, args.failed_runs)]
        if args.compare_ref:
            tree = checkout(args.compare_ref, root / "ref")
            # -P: the working directory (this checkout) must not come before the ref's tree on sys.path
            project.command = [sys.executable, "-P", "-m", "deployctl"]
            project.command_env = {"PYTHONPATH": str(tree)}
            imported = subprocess.run([sys.executable, "-P", "-c", "import deployctl; print(deployctl.__file__)"],
                                      env={**os.environ, **project.command_env}, capture_output=True, text=True)
            if not imported.stdout.startswith(str(tree)):
                sys.exit(f"the deployctl of {args.compare_ref} is not the one imported: {imported.stdout.strip()}")
            # each deployctl keeps its own history: an older one cannot write this one's newer schema
            with own_history(project, "ref"):
                results.append(measure(project, f"deployctl@{args.compare_ref}", args.runs, args.warmup,
                                       next_version, args.failed_runs))
            project.command, project.command_env = [DEPLOYCTL], {}

        plain: list[float] = []
        inventory = project.root / "inventory" / "local"
        for run in range(1, args.runs + 1):
            version = next_version()
            seconds = plain_release(inventory, version)
            if project.served_version() != version:
                sys.exit(f"plain ansible-playbook run {run} left {project.served_version()!r} served, not {version}")
            plain.append(seconds)
            print(f"  run {run:>3}  ansible-playbook release.yml {version}: {seconds:.2f} s", flush=True)

        def medians(values_of) -> list[str]:
            return [f"{summary(values_of(m))[0]:.2f}" if values_of(m) else "-" for m in results]

        rows = []
        for name in results[0].per_phase:
            rows.append([name, *medians(lambda m, name=name: m.per_phase.get(name, []))])
        rows.append(["(sum of phases)", *medians(lambda m: m.phase_total)])
        rows.append(["maintenance window", *medians(lambda m: m.windows)])
        rows.append(["maintenance flag up (downtime)", *medians(lambda m: m.flag_up)])
        rows.append(["release wall time", *medians(lambda m: m.walls)])
        rows.append(["ansible-playbook runs per release", *medians(lambda m: [float(n) for n in m.processes])])
        if args.failed_runs:
            rows.append(["failed release, rolled back: wall time", *medians(lambda m: m.failed_walls)])
            rows.append(["  its maintenance flag up (downtime)", *medians(lambda m: m.failed_flag_up)])
            rows.append(["  its ansible-playbook runs", *medians(lambda m: [float(n) for n in m.failed_processes])])
        print()
        print(f"Release of the demo app to localhost, {args.runs} run(s) each, median seconds")
        print()
        print(table(["phase", *(m.label for m in results)], rows))
        print()
        baseline = summary(plain)[0]
        print(f"plain ansible-playbook playbooks/release.yml (one process, no gates): {baseline:.2f} s")
        for m in results:
            wall = summary(m.walls)[0]
            print(f"gating overhead of {m.label} (its release / plain ansible-playbook): {ratio(wall, baseline)}; "
                  f"{wall:.2f} s = phases {summary(m.phase_total)[0]:.2f} s + CLI, gates and history "
                  f"{wall - summary(m.phase_total)[0]:.2f} s")
    finally:
        if project is not None:
            project.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
