import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from .sshhosts import SSHHosts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="SSHHosts needs root for network namespaces")


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def _namespace_pids(fleet: SSHHosts) -> set[int]:
    return {int(p) for h in fleet.hosts for p in _ip("netns", "pids", h.namespace).split()}


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is not running


def _assert_gone(tag: str, instance_dir: Path, pids: set[int]) -> None:
    assert f"dctl-{tag}-" not in _ip("netns", "list")
    assert f"dctl{tag}" not in _ip("link", "show")
    assert not instance_dir.exists()
    assert pids, "expected the instance to have had processes"
    alive = [pid for pid in pids if _running(pid)]
    assert not alive, f"processes of instance {tag} still running: {alive}"
    for proc in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmdline = proc.read_bytes()
        except OSError:
            continue
        assert str(instance_dir).encode() not in cmdline, f"leftover process {proc.parent.name}"


@pytest.fixture(scope="module")
def fleet():
    with SSHHosts(3) as hosts:
        yield hosts


def test_each_host_has_its_own_hostname(fleet):
    assert [h.name for h in fleet.hosts] == ["h1", "h2", "h3"]
    for host in fleet.hosts:
        result = fleet.run(host, "hostname")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == host.name


def test_srv_is_private_to_each_host(fleet):
    h1, h2, h3 = fleet.hosts
    assert fleet.run(h1, "echo hello > /srv/marker && test -x /usr/bin/python3").returncode == 0
    assert (h1.srv_dir / "marker").read_text() == "hello\n"
    assert not (h2.srv_dir / "marker").exists()
    assert fleet.run(h2, "test ! -e /srv/marker").returncode == 0
    assert fleet.run(h3, "test ! -e /srv/marker").returncode == 0


def test_cut_and_restore(fleet):
    h1, h2, _ = fleet.hosts
    fleet.cut(h2)
    try:
        started = time.monotonic()
        result = fleet.run(h2, "true", connect_timeout=3, timeout=20)
        assert result.returncode == 255
        assert time.monotonic() - started < 8
        assert fleet.run(h1, "true", connect_timeout=3).returncode == 0
    finally:
        fleet.restore(h2)
    result = fleet.run(h2, "hostname", connect_timeout=3)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "h2"


def test_inventory(fleet, tmp_path):
    inventory = fleet.inventory(group="web", extra_host_vars={"release": "1.0"})
    hosts = inventory["all"]["children"]["web"]["hosts"]
    assert sorted(hosts) == ["h1", "h2", "h3"]
    h1 = hosts["h1"]
    assert h1["ansible_host"] == fleet.hosts[0].address
    assert h1["ansible_user"] == "root"
    assert h1["ansible_python_interpreter"] == "/usr/bin/python3"
    assert h1["release"] == "1.0"
    assert "StrictHostKeyChecking=no" in h1["ansible_ssh_common_args"]
    assert Path(h1["ansible_ssh_private_key_file"]).is_file()
    path = fleet.write_inventory(tmp_path / "hosts.yml", group="web")
    assert json.loads(path.read_text()) == fleet.inventory(group="web")


def test_two_instances_side_by_side_then_nothing_left():
    with SSHHosts(1) as first, SSHHosts(2) as second:
        assert first.tag != second.tag
        assert first.subnet != second.subnet
        assert first.bridge != second.bridge
        assert first.run("h1", "hostname").stdout.strip() == "h1"
        assert second.run("h2", "hostname").stdout.strip() == "h2"
        # Same host name, different machines.
        first.run("h1", "touch /srv/first")
        assert second.run("h1", "test ! -e /srv/first").returncode == 0
        state = [(f.tag, f.dir, _namespace_pids(f)) for f in (first, second)]
    for tag, instance_dir, pids in state:
        _assert_gone(tag, instance_dir, pids)


def test_failed_start_leaves_nothing(monkeypatch):
    fleet = SSHHosts(2)

    def fail() -> None:
        fleet.state = (fleet.tag, fleet.dir, _namespace_pids(fleet))
        raise RuntimeError("boom")

    monkeypatch.setattr(fleet, "_wait_ready", fail)
    with pytest.raises(RuntimeError, match="boom"):
        fleet.start()
    _assert_gone(*fleet.state)
    fleet.close()


def test_reap_stale_removes_instances_of_dead_owners():
    fleet = SSHHosts(1).start()
    try:
        state = (fleet.tag, fleet.dir, _namespace_pids(fleet))
        assert fleet.tag not in SSHHosts.reap_stale()
        dead = subprocess.Popen(["true"])
        dead.wait()
        owner = fleet.dir / "owner.json"
        owner.write_text(json.dumps({**json.loads(owner.read_text()), "pid": dead.pid}))
        assert fleet.tag in SSHHosts.reap_stale()
        _assert_gone(*state)
    finally:
        fleet.close()
