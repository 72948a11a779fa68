#!/usr/bin/env python3
"""Time every phase of a real release of the demo app to localhost, and deployctl's gating overhead.

A throwaway project (tests/support/project.py's DemoProject: its own app root, port, artifacts and
state in a temporary directory) releases the bundled demo app through the real CLI
(`deployctl --json release VERSION`), alternating two versions so that every run really switches the
live release, restarts the app and its worker, migrates and verifies. Per phase it prints the median,
min and max seconds (deployment.phases[].seconds of the JSON outcome), then the whole release's wall
time (the CLI process, start to end) and the maintenance window (the phases from "maintenance on"
through "maintenance off").

It then releases the same project with plain `ansible-playbook -i INVENTORY playbooks/release.yml`
(the same playbooks in one process, with no gate, history or lock token of deployctl's own), with the
Ansible settings and forks deployctl uses, and prints the gating overhead: deployctl's median wall
time over plain ansible-playbook's. The demo app is stopped and the project removed at the end.

Run with the project's virtualenv, on an otherwise idle machine:

    .venv/bin/python bench/release_phases.py --runs 10
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import benchlib
from benchlib import cli_release, maintenance_window, phases, plain_release, ratio, secs, summary, table

from tests.support.project import DemoProject

VERSIONS = ("v1.0.0", "v1.0.1")


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
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary project directory (its path is printed) instead of removing it")
    args = parser.parse_args()
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")
    return args


def main() -> None:
    args = parse_args()
    benchlib.require_venv()
    root = Path(tempfile.mkdtemp(prefix="deployctl-bench-release-"))
    project = None
    try:
        project = DemoProject(root / "project")
        for version in VERSIONS:
            project.build(version)
        print(f"project {project.root}, demo app on port {project.port}, "
              f"{args.warmup} warm-up + {args.runs} timed releases per tool", flush=True)
        count = 0

        def next_version() -> str:
            nonlocal count
            count += 1
            return VERSIONS[(count - 1) % len(VERSIONS)]

        for _ in range(args.warmup):
            version = next_version()
            seconds, result = cli_release(project, version)
            benchlib.check_release(result, version)
            print(f"  warm-up  deployctl release {version}: {seconds:.2f} s", flush=True)

        walls: list[float] = []
        phase_total: list[float] = []
        windows: list[float] = []
        per_phase: dict[str, list[float]] = {}
        for run in range(1, args.runs + 1):
            version = next_version()
            seconds, result = cli_release(project, version)
            benchlib.check_release(result, version)
            ran = phases(result)
            walls.append(seconds)
            phase_total.append(sum(s for _, s in ran))
            window = maintenance_window(ran)
            if window is not None:
                windows.append(window)
            for name, phase_seconds in ran:
                per_phase.setdefault(name, []).append(phase_seconds)
            print(f"  run {run:>3}  deployctl release {version}: {seconds:.2f} s "
                  f"(phases {phase_total[-1]:.2f} s, maintenance window {secs(window)} s)", flush=True)

        plain: list[float] = []
        inventory = project.root / "inventory" / "local"
        for run in range(1, args.runs + 1):
            version = next_version()
            seconds = plain_release(inventory, version)
            if project.served_version() != version:
                sys.exit(f"plain ansible-playbook run {run} left {project.served_version()!r} served, not {version}")
            plain.append(seconds)
            print(f"  run {run:>3}  ansible-playbook release.yml {version}: {seconds:.2f} s", flush=True)

        rows = []
        for name, values in per_phase.items():
            median, low, high = summary(values)
            rows.append([name, f"{median:.2f}", f"{low:.2f}", f"{high:.2f}"])
        rows.append(["(sum of phases)", *(f"{x:.2f}" for x in summary(phase_total))])
        if windows:
            rows.append(["maintenance window", *(f"{x:.2f}" for x in summary(windows))])
        rows.append(["release wall time (deployctl)", *(f"{x:.2f}" for x in summary(walls))])
        rows.append(["release wall time (ansible-playbook)", *(f"{x:.2f}" for x in summary(plain))])
        print()
        print(f"Release of the demo app to localhost, {args.runs} run(s) each, seconds")
        print()
        print(table(["phase", "median", "min", "max"], rows))
        print()
        print(f"gating overhead (deployctl / plain ansible-playbook, medians): "
              f"{ratio(summary(walls)[0], summary(plain)[0])}")
        print(f"  deployctl {summary(walls)[0]:.2f} s = phases {summary(phase_total)[0]:.2f} s + "
              f"CLI, gates and history {summary(walls)[0] - summary(phase_total)[0]:.2f} s")
    finally:
        if project is not None:
            project.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
