#!/usr/bin/env python3
"""Time a release to N real SSH hosts, per phase, for several N, beside plain ansible-playbook.

For each host count N it starts N real SSH test hosts (tests/support/sshhosts.py: one sshd per network
namespace, each with its own /srv) and builds a project the way tests/integration/test_many_hosts.py
does: the demo app on every host (group app), the database on h1 (group db). Through the real CLI
(`deployctl --json release`) it releases v1 (the first install) and then v2 (an upgrade: unpack,
switch, restart, migrate, verify on every host), and records the wall time of both and every phase of
v2 (deployment.phases[].seconds), the module calls it made per host (counted by
bench/callback_plugins/module_calls.py: the per-host cost on any machine) and the control node's CPU
seconds. It then releases v3 with plain
`ansible-playbook -i INVENTORY playbooks/release.yml` (the same playbooks, inventory, Ansible settings
and forks, in one process, with no gates) and checks that every host serves v3. The hosts are torn
down after each count, and one table of every count is printed at the end.

Needs root (network namespaces), iproute2, util-linux and openssh. Run with the project's virtualenv,
on an otherwise idle machine:

    .venv/bin/python bench/many_hosts.py --hosts 1,5,10,25,50

With --mitogen DIR it also releases v4 with mitogen's mitogen_linear strategy (plain ansible-playbook), to
show whether that strategy plugin pays off on many hosts.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import benchlib
from benchlib import cli_release, maintenance_window, phases, plain_release, ratio, secs, table

from tests.support.project import DemoProject, free_port, http_get
from tests.support.sshhosts import MAX_HOSTS, SSHHosts, unavailable_reason

APP_ROOT = "/srv/bench/app"


def host_counts(text: str) -> list[int]:
    try:
        counts = list(dict.fromkeys(int(part) for part in text.split(",") if part.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not counts or any(not 1 <= n <= MAX_HOSTS for n in counts):
        raise argparse.ArgumentTypeError(f"host counts must be between 1 and {MAX_HOSTS}")
    return counts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Phases are those of the v2 release (an upgrade of every host).")
    parser.add_argument("--hosts", type=host_counts, default=[1, 5, 10, 25, 50], metavar="N,N,...",
                        help="host counts to measure, one fleet each (default: 1,5,10,25,50)")
    parser.add_argument("--forks", type=int, default=benchlib.DEPLOYCTL_DEFAULT_FORKS,
                        help="Ansible forks, for deployctl (the environment's `forks`) and for "
                             "ansible-playbook alike (default: %(default)s, deployctl's default)")
    parser.add_argument("--serial", default="100%",
                        help="the environment's `serial` (batch size of the deploy phase; default: %(default)s)")
    parser.add_argument("--mitogen", type=Path, metavar="DIR",
                        help="also release v4 with plain ansible-playbook and mitogen's mitogen_linear strategy, "
                             "from DIR (`pip install --target DIR mitogen`): whether it pays off on many hosts")
    return parser.parse_args()


def mitogen_env(directory: Path) -> dict[str, str]:
    """ansible-playbook with mitogen's strategy plugin, from a directory mitogen was installed into."""
    plugins = directory / "ansible_mitogen" / "plugins" / "strategy"
    if not plugins.is_dir():
        sys.exit(f"{plugins} not found: install mitogen there first (pip install --target {directory} mitogen)")
    return {"ANSIBLE_STRATEGY_PLUGINS": str(plugins), "ANSIBLE_STRATEGY": "mitogen_linear",
            "PYTHONPATH": str(directory)}


def make_project(fleet: SSHHosts, root: Path, forks: int, serial: str) -> DemoProject:
    """The fleet project of test_many_hosts.py: app = every host, db = h1, the app under /srv on each."""
    inventory = fleet.inventory(group="app")
    inventory["all"]["children"]["db"] = {"hosts": {"h1": None}}
    port = free_port()  # each host has its own network namespace, so any port will do
    project = DemoProject(
        root, environment={"forks": forks, "serial": serial}, hosts=inventory,
        group_vars={
            "deployctl_app_root": APP_ROOT,
            "deployctl_env": {"DEMO_PORT": port, "DEMO_HOST": "0.0.0.0"},
            "deployctl_backup_dir": f"{APP_ROOT}/../backups",
            "deployctl_verify_checks": [{"name": "health", "type": "http", "status": 200,
                                         "url": f"http://127.0.0.1:{port}/health"}],
        })
    project.port = port
    return project


def served(fleet: SSHHosts, port: int) -> dict[str, str]:
    return {h.name: http_get(f"http://{h.address}:{port}/version")[1].strip() for h in fleet.hosts}


def measure(count: int, args: argparse.Namespace) -> dict:
    figures: dict = {}
    root = Path(tempfile.mkdtemp(prefix=f"deployctl-bench-hosts{count}-"))
    try:
        print(f"{count} host(s): starting", flush=True)
        with SSHHosts(count, start_timeout=max(20.0, count * 2.0)) as fleet:
            project = make_project(fleet, root / "control", args.forks, args.serial)
            try:
                for version in ("v1", "v2", "v3", "v4"):
                    project.build(version)
                figures["v1"], result = cli_release(project, "v1")
                benchlib.check_release(result, "v1")
                print(f"  deployctl release v1 (first install): {figures['v1']:.2f} s", flush=True)
                calls, cpu = benchlib.ModuleCalls(root), benchlib.children_cpu()
                figures["v2"], result = cli_release(project, "v2", env=calls.env)
                figures["cpu"] = benchlib.children_cpu() - cpu
                benchlib.check_release(result, "v2")
                figures["calls"], figures["controller calls"] = calls.per_host(), calls.per_host("controller")
                figures["phases"] = phases(result)
                figures["window"] = maintenance_window(figures["phases"])
                print(f"  deployctl release v2 (upgrade):       {figures['v2']:.2f} s", flush=True)
                calls, cpu = benchlib.ModuleCalls(root), benchlib.children_cpu()
                figures["plain"] = plain_release(project.root / "inventory" / "local", "v3", forks=args.forks,
                                                 env=calls.env)
                figures["plain cpu"] = benchlib.children_cpu() - cpu
                figures["plain calls"] = calls.per_host()
                wrong = {h: v for h, v in served(fleet, project.port).items() if v != "v3"}
                if wrong:
                    sys.exit(f"after the plain ansible-playbook release of v3, hosts serve {wrong}")
                print(f"  ansible-playbook release.yml v3:      {figures['plain']:.2f} s", flush=True)
                if args.mitogen:
                    calls = benchlib.ModuleCalls(root)
                    figures["mitogen"] = plain_release(project.root / "inventory" / "local", "v4",
                                                       forks=args.forks, env={**calls.env, **mitogen_env(args.mitogen)})
                    wrong = {h: v for h, v in served(fleet, project.port).items() if v != "v4"}
                    if wrong:
                        sys.exit(f"after the mitogen release of v4, hosts serve {wrong}")
                    print(f"  ansible-playbook release.yml v4 (mitogen_linear): {figures['mitogen']:.2f} s", flush=True)
            finally:
                for host in fleet.hosts:
                    fleet.run(host, f"for p in {APP_ROOT}/shared/run/*.pid; do kill -9 $(cat $p) 2>/dev/null; "
                                    "done; true", timeout=30)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return figures


def report(results: dict[int, dict]) -> None:
    counts = sorted(results)
    names: list[str] = []
    for count in counts:
        names += [name for name, _ in results[count]["phases"] if name not in names]
    rows = []
    for name in names:
        rows.append([name, *(secs(sum(s for n, s in results[c]["phases"] if n == name)) for c in counts)])
    rows.append(["(sum of phases)", *(secs(sum(s for _, s in results[c]["phases"])) for c in counts)])
    rows.append(["maintenance window", *(secs(results[c]["window"]) for c in counts)])
    rows.append(["release v2 wall (deployctl)", *(secs(results[c]["v2"]) for c in counts)])
    rows.append(["release v3 wall (ansible-playbook)", *(secs(results[c]["plain"]) for c in counts)])
    if all("mitogen" in results[c] for c in counts):
        rows.append(["release v4 wall (ansible-playbook, mitogen_linear)",
                     *(secs(results[c]["mitogen"]) for c in counts)])
        rows.append(["mitogen_linear / linear (plain)",
                     *(ratio(results[c]["mitogen"], results[c]["plain"]) for c in counts)])
    rows.append(["overhead deployctl / ansible-playbook",
                 *(ratio(results[c]["v2"], results[c]["plain"]) for c in counts)])
    rows.append(["first release v1 wall (deployctl)", *(secs(results[c]["v1"]) for c in counts)])
    first = counts[0]
    rows.append([f"seconds per host added (v2, from {first} host(s))", "-",
                 *(secs((results[c]["v2"] - results[first]["v2"]) / (c - first)) for c in counts[1:])])
    rows.append([f"seconds per host added (plain, from {first} host(s))", "-",
                 *(secs((results[c]["plain"] - results[first]["plain"]) / (c - first)) for c in counts[1:])])
    if all("mitogen" in results[c] for c in counts):
        rows.append([f"seconds per host added (mitogen, from {first} host(s))", "-",
                     *(secs((results[c]["mitogen"] - results[first]["mitogen"]) / (c - first)) for c in counts[1:])])
    rows.append(["module calls per host, on the host (v2)", *(calls_figure(results[c]["calls"]) for c in counts)])
    rows.append(["controller actions per host (v2: gates, stats)",
                 *(calls_figure(results[c]["controller calls"]) for c in counts)])
    rows.append(["module calls per host (plain)", *(calls_figure(results[c]["plain calls"]) for c in counts)])
    rows.append(["control-node CPU s per host (v2)", *(secs(results[c]["cpu"] / c) for c in counts)])
    rows.append(["control-node CPU s per host (plain)", *(secs(results[c]["plain cpu"] / c) for c in counts)])
    print()
    print("Release to N SSH hosts (app on all, db on h1), seconds; phases are those of the v2 release")
    print()
    print(table(["phase \\ hosts", *map(str, counts)], rows))


def calls_figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main() -> None:
    args = parse_args()
    benchlib.require_venv()
    reason = unavailable_reason()
    if reason:
        sys.exit(reason)
    results: dict[int, dict] = {}
    try:
        for count in args.hosts:
            results[count] = measure(count, args)
    finally:
        if results:
            report(results)


if __name__ == "__main__":
    main()
