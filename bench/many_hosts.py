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

The control node's CPU seconds count the processes it waits for (deployctl, ansible-playbook, its workers
and ssh clients); the machine's CPU seconds (/proc/stat) add the SSH connection masters and everything the
test hosts run for the release (sshd, the module processes), since they share this machine's cores: that
is the per-host cost on this machine.

With --mitogen it then releases v4 through deployctl and v5 with plain ansible-playbook under mitogen's
mitogen_linear strategy (the `mitogen` extra, turned on in the project's ansible.cfg as the README says),
and prints their figures beside Ansible's own linear strategy: whether that strategy plugin pays off on
many hosts.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import benchlib
from benchlib import cli_release, flag_up, maintenance_window, phases, plain_release, ratio, secs, table

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
    parser.add_argument("--mitogen", action="store_true",
                        help="also release v4 through deployctl and v5 with plain ansible-playbook under mitogen's "
                             "mitogen_linear strategy (the `mitogen` extra): whether it pays off on many hosts")
    args = parser.parse_args()
    if args.mitogen:
        mitogen_strategy_plugins()
    return args


def mitogen_strategy_plugins() -> Path:
    """Where the `mitogen` extra keeps its strategy plugins (the path the README puts in ansible.cfg)."""
    try:
        import ansible_mitogen
    except ImportError:
        sys.exit("--mitogen needs the mitogen extra in this virtualenv: pip install 'deployctl[mitogen]'")
    return Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"


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
                for version in ("v1", "v2", "v3", "v4", "v5"):
                    project.build(version)
                figures["v1"], result = cli_release(project, "v1")
                benchlib.check_release(result, "v1")
                print(f"  deployctl release v1 (first install): {figures['v1']:.2f} s", flush=True)
                figures["linear"] = releases(project, fleet, root, args, "v2", "v3")
                if args.mitogen:
                    # the README's way: the strategy named in the project's ansible.cfg (plain ansible-playbook
                    # gets the same two settings from the environment)
                    plugins = mitogen_strategy_plugins()
                    (project.root / "ansible.cfg").write_text(
                        f"[defaults]\nstrategy_plugins = {plugins}\nstrategy = mitogen_linear\n")
                    figures["mitogen"] = releases(project, fleet, root, args, "v4", "v5", {
                        "ANSIBLE_STRATEGY_PLUGINS": str(plugins), "ANSIBLE_STRATEGY": "mitogen_linear"})
            finally:
                for host in fleet.hosts:
                    fleet.run(host, f"for p in {APP_ROOT}/shared/run/*.pid; do kill -9 $(cat $p) 2>/dev/null; "
                                    "done; true", timeout=30)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return figures


def releases(project: DemoProject, fleet: SSHHosts, root: Path, args: argparse.Namespace, version: str,
             plain_version: str, strategy_env: dict[str, str] | None = None) -> dict:
    """An upgrade through deployctl, then one with plain ansible-playbook: wall time, CPU, module calls."""
    strategy_env = strategy_env or {}
    label = strategy_env.get("ANSIBLE_STRATEGY", "linear")
    figures: dict = {}
    calls, cpu, machine = benchlib.ModuleCalls(root), benchlib.children_cpu(), benchlib.machine_cpu()
    figures["v2"], result = cli_release(project, version, env=calls.env)
    figures["cpu"], figures["machine"] = benchlib.children_cpu() - cpu, benchlib.machine_cpu() - machine
    benchlib.check_release(result, version)
    figures["calls"], figures["controller calls"] = calls.per_host(), calls.per_host("controller")
    figures["phases"] = phases(result)
    figures["window"] = maintenance_window(figures["phases"])
    figures["flag"] = flag_up(result)
    print(f"  deployctl release {version} ({label}): {figures['v2']:.2f} s", flush=True)
    calls, cpu, machine = benchlib.ModuleCalls(root), benchlib.children_cpu(), benchlib.machine_cpu()
    figures["plain"] = plain_release(project.root / "inventory" / "local", plain_version, forks=args.forks,
                                     env={**calls.env, **strategy_env})
    figures["plain cpu"], figures["plain machine"] = benchlib.children_cpu() - cpu, benchlib.machine_cpu() - machine
    figures["plain calls"] = calls.per_host()
    wrong = {h: v for h, v in served(fleet, project.port).items() if v != plain_version}
    if wrong:
        sys.exit(f"after the plain ansible-playbook release of {plain_version} ({label}), hosts serve {wrong}")
    print(f"  ansible-playbook release.yml {plain_version} ({label}): {figures['plain']:.2f} s", flush=True)
    return figures


def report(results: dict[int, dict]) -> None:
    counts = sorted(results)
    strategies = [name for name in ("linear", "mitogen") if all(name in results[c] for c in counts)]
    names: list[str] = []
    for count in counts:
        names += [name for name, _ in results[count]["linear"]["phases"] if name not in names]
    headers = ["phase \\ hosts", *(f"{c} {name}" if len(strategies) > 1 else str(c)
                                    for name in strategies for c in counts)]

    def row(label: str, figure) -> list[str]:
        return [label, *(figure(results[c][name], c, name) for name in strategies for c in counts)]

    def per_host_added(key: str):
        first = counts[0]
        return lambda f, c, name: "-" if c == first else secs((f[key] - results[first][name][key]) / (c - first))

    rows = [row(name, lambda f, c, _, name=name: secs(sum(s for n, s in f["phases"] if n == name))) for name in names]
    rows += [
        row("(sum of phases)", lambda f, c, _: secs(sum(s for _, s in f["phases"]))),
        row("maintenance window", lambda f, c, _: secs(f["window"])),
        row("maintenance flag up (downtime)", lambda f, c, _: secs(f["flag"])),
        row("release wall (deployctl)", lambda f, c, _: secs(f["v2"])),
        row("release wall (ansible-playbook)", lambda f, c, _: secs(f["plain"])),
        row("overhead deployctl / ansible-playbook", lambda f, c, _: ratio(f["v2"], f["plain"])),
        row(f"seconds per host added (deployctl, from {counts[0]})", per_host_added("v2")),
        row(f"seconds per host added (plain, from {counts[0]})", per_host_added("plain")),
        row("module calls per host, on the host", lambda f, c, _: calls_figure(f["calls"])),
        row("controller actions per host (gates, stats)", lambda f, c, _: calls_figure(f["controller calls"])),
        row("module calls per host (plain)", lambda f, c, _: calls_figure(f["plain calls"])),
        row("control-node CPU s per host (deployctl)", lambda f, c, _: secs(f["cpu"] / c)),
        row("control-node CPU s per host (plain)", lambda f, c, _: secs(f["plain cpu"] / c)),
        row("machine CPU s per host (deployctl)", lambda f, c, _: secs(f["machine"] / c)),
        row("machine CPU s per host (plain)", lambda f, c, _: secs(f["plain machine"] / c)),
    ]
    if len(strategies) > 1:
        rows.append(row("release wall, mitogen_linear / linear", lambda f, c, _: ratio(
            results[c]["mitogen"]["v2"], results[c]["linear"]["v2"])))
    print()
    print(f"Release to N SSH hosts (app on all, db on h1), seconds; phases are those of the deployctl upgrade; "
          f"strategies: {', '.join(strategies)}")
    print()
    print(table(headers, rows))
    installs = ", ".join(f"{c} host(s) {secs(results[c]['v1'])} s" for c in counts)
    print(f"\nfirst release (install) wall through deployctl: {installs}")


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
