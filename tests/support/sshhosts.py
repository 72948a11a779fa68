"""Real SSH hosts on this machine, one network namespace each, for multi-host tests.

Usage::

    with SSHHosts(3) as fleet:
        inventory = fleet.inventory(group="app")
        fleet.cut(fleet.hosts[1])        # h2 becomes unreachable
        fleet.restore(fleet.hosts[1])
        assert fleet.run("h1", "cat /srv/app/VERSION").stdout == "1.2.3\\n"

Each host is an sshd in its own network namespace (and mount/UTS namespace, so it has its own
hostname and its own /srv), attached through a veth pair to a bridge that belongs to the
instance. Everything else (/usr, /root, /tmp ...) is the machine's own filesystem, shared by all
hosts. Only the bridge subnet is ever addressed; no forwarding or NAT is set up.

Needs root, iproute2 with `ip netns`, util-linux `unshare`, openssh-server and openssh-client.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASE_DIR = Path("/tmp/deployctl-sshhosts")
SSHD = "/usr/sbin/sshd"
SUPERNET = ipaddress.ip_network("10.213.0.0/16")
FIRST_HOST_OCTET = 11  # h1 = .11, h2 = .12, ...; the bridge is .1
MAX_HOSTS = 200

SSH_ARGS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]

_NS_RE = re.compile(r"^dctl-([0-9a-f]{4})-h\d+$")
_LINK_RE = re.compile(r"^dctl([0-9a-f]{4})(-\d+[bn])?$")


@dataclass(frozen=True)
class Host:
    name: str  # h1, h2, ...; also the host's hostname
    address: str
    srv_dir: Path  # bind-mounted at /srv inside the host
    namespace: str
    veth: str  # bridge-side end, the one cut() takes down


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def _quiet(*args: str) -> None:
    subprocess.run(["ip", *args], capture_output=True)


def _netns_names() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _link_names() -> list[str]:
    out = _ip("-o", "link", "show", check=False).stdout
    # "7: dctlab12-1b@if6: <...>" -> "dctlab12-1b"
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def _process_identity(pid: int) -> str | None:
    """Start time of pid (in clock ticks since boot), or None if it is not running."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # A zombie is dead, though its entry may linger if nobody reaps it.
    return None if fields[0] in ("Z", "X") else fields[19]


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


@contextlib.contextmanager
def _global_lock() -> Iterator[None]:
    """Serialises reaping and tag/subnet allocation across processes (xdist workers, parallel runs)."""
    BASE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    with open(BASE_DIR / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def unavailable_reason() -> str | None:
    """Why SSHHosts cannot run here, or None if it can. Handy for pytest.skip()."""
    if os.geteuid() != 0:
        return "SSHHosts needs root (network namespaces, bridges and sshd as root)"
    for tool in ("ip", "unshare", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"SSHHosts needs `{tool}` on PATH (packages iproute2, util-linux, openssh-client)"
    if not os.access(SSHD, os.X_OK):
        return f"SSHHosts needs {SSHD} (apt-get install openssh-server)"
    if _ip("netns", "list", check=False).returncode != 0:
        return "SSHHosts needs a working `ip netns` (iproute2 with network namespace support)"
    return None


class SSHHosts:
    """N real sshd hosts on a private bridge; a context manager. See the module docstring."""

    def __init__(self, count: int = 3, *, start_timeout: float = 20.0,
                 session_environment: Mapping[str, str] | None = None) -> None:
        """session_environment: variables sshd sets in every session on each host (SetEnv), e.g. a DOCKER_HOST
        of the host's own; `{host_dir}` in a value is the host's private directory on this machine."""
        if not 1 <= count <= MAX_HOSTS:
            raise ValueError(f"count must be between 1 and {MAX_HOSTS}, not {count}")
        self.count = count
        self.start_timeout = start_timeout
        self.session_environment = dict(session_environment or {})
        self.tag: str | None = None
        self.dir: Path | None = None
        self.subnet: ipaddress.IPv4Network | None = None
        self.bridge: str | None = None
        self.bridge_address: str | None = None
        self.hosts: list[Host] = []
        self.key_path: Path | None = None
        self.ssh_args: list[str] = list(SSH_ARGS)
        self._procs: list[subprocess.Popen[bytes]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> SSHHosts:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> SSHHosts:
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        if self.tag is not None:
            raise RuntimeError("SSHHosts instance already started")
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        self.hosts = []
        try:
            with _global_lock():
                self._reap_stale_locked()
                self._allocate()
                self._create_bridge()
            self._generate_keys()
            for index in range(1, self.count + 1):
                self._create_host(index)
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Tear everything down; safe to call repeatedly and after a half-done start."""
        if self.tag is None:
            return
        if self.dir is not None:
            _stop_control_masters(self.dir)
        _teardown(self.tag)
        for proc in self._procs:
            with contextlib.suppress(Exception):
                proc.kill()
                proc.wait(timeout=5)
        self._procs.clear()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.tag = None

    @staticmethod
    def reap_stale() -> list[str]:
        """Remove leftovers of instances whose owner process is gone. Returns the reaped tags."""
        with _global_lock():
            return SSHHosts._reap_stale_locked()

    @staticmethod
    def _reap_stale_locked() -> list[str]:
        # Links and namespaces are listed before the instance dirs: a live instance always
        # creates its dir before any of them and removes it last, so nothing live is missed.
        tags = {m.group(1) for m in map(_NS_RE.match, _netns_names()) if m}
        tags |= {m.group(1) for m in map(_LINK_RE.match, _link_names()) if m}
        live: set[str] = set()
        for entry in BASE_DIR.iterdir() if BASE_DIR.is_dir() else []:
            if not entry.is_dir():
                continue
            tags.add(entry.name)
            if _owner_alive(entry / "owner.json"):
                live.add(entry.name)
        reaped = sorted(tags - live)
        for tag in reaped:
            _stop_control_masters(BASE_DIR / tag)
            _teardown(tag)
            shutil.rmtree(BASE_DIR / tag, ignore_errors=True)
        return reaped

    # -- start-up steps ----------------------------------------------------------------------

    def _allocate(self) -> None:
        taken_tags = {m.group(1) for m in map(_NS_RE.match, _netns_names()) if m}
        taken_tags |= {m.group(1) for m in map(_LINK_RE.match, _link_names()) if m}
        for _ in range(100):
            tag = secrets.token_hex(2)
            if tag in taken_tags:
                continue
            try:
                (BASE_DIR / tag).mkdir(mode=0o755)
            except FileExistsError:
                continue
            break
        else:
            raise RuntimeError("SSHHosts could not find a free instance tag")
        self.tag = tag
        self.dir = BASE_DIR / tag
        owner = {"pid": os.getpid(), "start": _process_identity(os.getpid()), "boot": _boot_id()}
        (self.dir / "owner.json").write_text(json.dumps(owner))

        used = _used_ipv4_networks()
        first = int(tag, 16) % 254 + 1
        for offset in range(254):
            n = (first + offset - 1) % 254 + 1
            candidate = ipaddress.ip_network(f"10.213.{n}.0/24")
            if not any(candidate.overlaps(net) for net in used):
                self.subnet = candidate
                break
        else:
            raise RuntimeError(f"SSHHosts found no free /24 in {SUPERNET}")

    def _create_bridge(self) -> None:
        assert self.tag and self.subnet
        self.bridge = f"dctl{self.tag}"
        self.bridge_address = str(self.subnet.network_address + 1)
        _ip("link", "add", "name", self.bridge, "type", "bridge")
        # No IPv6 link-local addresses: keeps the bridge silent apart from the tests' own traffic.
        _ip("link", "set", "dev", self.bridge, "addrgenmode", "none")
        _ip("addr", "add", f"{self.bridge_address}/24", "dev", self.bridge)
        _ip("link", "set", "dev", self.bridge, "up")

    def _generate_keys(self) -> None:
        assert self.dir
        self.key_path = self.dir / "id_ed25519"
        _keygen(self.key_path, "deployctl-sshhosts client")
        authorized = self.dir / "authorized_keys"
        authorized.write_text(Path(f"{self.key_path}.pub").read_text())
        authorized.chmod(0o600)

    def _create_host(self, index: int) -> None:
        assert self.tag and self.dir and self.subnet and self.bridge
        name = f"h{index}"
        namespace = f"dctl-{self.tag}-{name}"
        veth_bridge, veth_ns = f"dctl{self.tag}-{index}b", f"dctl{self.tag}-{index}n"
        address = str(self.subnet.network_address + FIRST_HOST_OCTET + index - 1)
        host_dir = self.dir / name
        srv_dir = host_dir / "srv"
        srv_dir.mkdir(parents=True)

        _ip("netns", "add", namespace)
        _ip("-n", namespace, "link", "set", "dev", "lo", "up")
        _ip("link", "add", veth_bridge, "type", "veth", "peer", "name", veth_ns)
        _ip("link", "set", "dev", veth_bridge, "addrgenmode", "none")
        _ip("link", "set", "dev", veth_ns, "netns", namespace)
        _ip("-n", namespace, "link", "set", "dev", veth_ns, "name", "eth0")
        _ip("-n", namespace, "link", "set", "dev", "eth0", "addrgenmode", "none")
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "dev", "eth0", "up")
        _ip("link", "set", "dev", veth_bridge, "master", self.bridge)
        _ip("link", "set", "dev", veth_bridge, "up")

        host_key = host_dir / "ssh_host_ed25519_key"
        _keygen(host_key, f"root@{name}")
        config = host_dir / "sshd_config"
        set_env = " ".join(f"{key}={value.format(host_dir=host_dir)}"
                           for key, value in self.session_environment.items())
        config.write_text(
            _SSHD_CONFIG.format(
                address=address,
                host_key=host_key,
                authorized_keys=self.dir / "authorized_keys",
                pid_file=host_dir / "sshd.pid",
            )
            + (f"SetEnv {set_env}\n" if set_env else "")
        )
        inner = (
            "mount --make-rprivate / && mount --bind {srv} /srv && hostname {name} && "
            "exec {sshd} -D -f {config} -E {log}"
        ).format(srv=srv_dir, name=name, sshd=SSHD, config=config, log=host_dir / "sshd.log")
        with open(host_dir / "console.log", "wb") as console:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", namespace, "unshare", "-m", "-u", "sh", "-c", inner],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs.append(proc)
        self.hosts.append(Host(name, address, srv_dir, namespace, veth_bridge))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        for host, proc in zip(self.hosts, self._procs, strict=True):
            while not _tcp_open(host.address):
                if proc.poll() is not None:
                    raise RuntimeError(f"sshd on {host.name} exited early: {self._host_logs(host)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"sshd on {host.name} ({host.address}) not accepting connections after "
                        f"{self.start_timeout:.0f}s: {self._host_logs(host)}"
                    )
                time.sleep(0.05)
        for host in self.hosts:
            result = self.run(host, "true", timeout=max(deadline - time.monotonic(), 5))
            if result.returncode != 0:
                raise RuntimeError(
                    f"ssh to {host.name} failed ({result.returncode}): {result.stderr.strip()} "
                    f"{self._host_logs(host)}"
                )

    def _host_logs(self, host: Host) -> str:
        assert self.dir
        parts = []
        for log in ("console.log", "sshd.log"):
            with contextlib.suppress(OSError):
                text = (self.dir / host.name / log).read_text(errors="replace").strip()
                if text:
                    parts.append(f"[{log}] {text[-2000:]}")
        return " ".join(parts) or "(no log output)"

    # -- use ---------------------------------------------------------------------------------

    def host_dir(self, host: str | Host) -> Path:
        """The host's private directory on this machine (its /srv is srv/ in it)."""
        assert self.dir
        return self.dir / self.host(host).name

    def host(self, name: str | Host) -> Host:
        if isinstance(name, Host):
            return name
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(f"no host named {name!r} (have {', '.join(h.name for h in self.hosts)})")

    def cut(self, host: str | Host) -> None:
        """Make host unreachable: its bridge-side veth goes down (its own processes keep running)."""
        _ip("link", "set", "dev", self.host(host).veth, "down")

    def restore(self, host: str | Host, *, wait: float = 10.0) -> None:
        """Undo cut(); waits up to `wait` seconds until its sshd answers again (0: don't wait)."""
        h = self.host(host)
        _ip("link", "set", "dev", h.veth, "up")
        deadline = time.monotonic() + wait
        while wait and not _tcp_open(h.address):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{h.name} not reachable {wait:.0f}s after restore()")
            time.sleep(0.05)

    def ssh_command(self, host: str | Host, *extra_args: str) -> list[str]:
        """argv of an ssh client logged in as root on host; append the remote command."""
        return [
            "ssh", "-i", str(self.key_path), *self.ssh_args, "-o", "BatchMode=yes",
            *extra_args, f"root@{self.host(host).address}",
        ]  # fmt: skip

    def run(
        self,
        host: str | Host,
        command: str,
        *,
        timeout: float = 60,
        connect_timeout: int = 5,
        input: str | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command on host over real ssh, capturing text output."""
        argv = self.ssh_command(host, "-o", f"ConnectTimeout={connect_timeout}") + ["--", command]
        return subprocess.run(
            argv,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    @property
    def ssh_common_args(self) -> str:
        """ssh options for Ansible. The ControlPath keeps Ansible's persistent connections private
        to this instance: a later instance may reuse the same addresses, and a default ControlPath
        would then hand it a master connection to a host that no longer exists."""
        assert self.dir
        return " ".join([*self.ssh_args, "-o", f"ControlPath={self.dir}/cp-%C"])

    def inventory(self, group: str = "app", extra_host_vars: Mapping[str, Any] | None = None) -> dict:
        """An Ansible inventory (dump it as YAML or JSON) with every host in `group`.

        extra_host_vars are added to every host's variables."""
        hosts = {}
        for host in self.hosts:
            hosts[host.name] = {
                "ansible_host": host.address,
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(self.key_path),
                "ansible_ssh_common_args": self.ssh_common_args,
                "ansible_python_interpreter": "/usr/bin/python3",
                **(extra_host_vars or {}),
            }
        return {"all": {"children": {group: {"hosts": hosts}}}}

    def write_inventory(self, path: str | os.PathLike[str], **kwargs: Any) -> Path:
        """Write inventory(**kwargs) to path as JSON (valid YAML; name it .yml, .yaml or .json)."""
        path = Path(path)
        path.write_text(json.dumps(self.inventory(**kwargs), indent=2) + "\n")
        return path


def ssh_hosts_fixture(count: int = 3, *, scope: str = "module") -> Any:
    """A pytest fixture yielding a started SSHHosts(count); skips when not possible here.

    In a test module or conftest: ``fleet = ssh_hosts_fixture(3)``."""
    import pytest

    @pytest.fixture(scope=scope)
    def _fleet() -> Iterator[SSHHosts]:
        reason = unavailable_reason()
        if reason:
            pytest.skip(reason)
        with SSHHosts(count) as fleet:
            yield fleet

    return _fleet


_SSHD_CONFIG = """\
ListenAddress {address}
Port 22
HostKey {host_key}
PidFile {pid_file}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile {authorized_keys}
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
MaxStartups 100
MaxSessions 100
PrintMotd no
PrintLastLog no
X11Forwarding no
Subsystem sftp internal-sftp
"""


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )


def _tcp_open(address: str, port: int = 22) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def _used_ipv4_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network on any interface or in the main routing table (read only)."""
    used = []
    for line in _ip("-o", "-4", "addr", "show", check=False).stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            used.append(ipaddress.ip_interface(fields[fields.index("inet") + 1]).network)
    for line in _ip("-4", "route", "show", check=False).stdout.splitlines():
        dest = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            if dest != "default":
                used.append(ipaddress.ip_network(dest, strict=False))
    return used


def _owner_alive(owner_file: Path) -> bool:
    try:
        owner = json.loads(owner_file.read_text())
    except (OSError, ValueError):
        # A dir without a readable owner file is either just being created (its creator holds
        # the lock we hold, so not the case here) or a leftover.
        return False
    if owner.get("boot") != _boot_id():
        return False
    return _process_identity(int(owner["pid"])) == owner.get("start")


def _stop_control_masters(instance_dir: Path) -> None:
    for sock in instance_dir.glob("cp-*"):
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "sshhosts"],
                capture_output=True,
                timeout=10,
                check=False,
            )


def _teardown(tag: str) -> None:
    """Remove every namespace, process and link of the instance `tag`, whatever state it is in."""
    namespaces = [ns for ns in _netns_names() if ns.startswith(f"dctl-{tag}-")]
    deadline = time.monotonic() + 10
    while namespaces and time.monotonic() < deadline:
        pids = set()
        for ns in namespaces:
            pids |= {int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split() if p.isdigit()}
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    for link in _link_names():
        if link.startswith(f"dctl{tag}-"):
            _quiet("link", "del", "dev", link)
    for ns in namespaces:
        _quiet("netns", "del", ns)
    if f"dctl{tag}" in _link_names():
        _quiet("link", "del", "dev", f"dctl{tag}")
