"""A Docker engine of its own for an SSH test host (tests/support/sshhosts.py).

The test hosts share this machine's filesystem, so by default they would all use the machine's Docker engine
and an image "shipped" to them would already be there. HostDockerd starts a second dockerd for one host:
in the host's network namespace (containers with host networking serve on the host's addresses), in a
mount namespace that sees the host's /srv (compose's bind mounts are the host's), with its own data root,
exec root, pid file and unix socket under the host's private directory, no bridge and no iptables rules.
The host's sshd points every session at it (SSHHosts(session_environment=HostDockerd.SESSION_ENVIRONMENT)),
so `docker` and compose run over SSH use it. The machine's own engine is never touched.

    with SSHHosts(1, session_environment=HostDockerd.SESSION_ENVIRONMENT) as fleet:
        with HostDockerd(fleet, "h1") as engine:
            engine.docker("image", "ls")
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.support.sshhosts import SSHHosts


class HostDockerd:
    SOCKET_NAME = "docker.sock"
    SESSION_ENVIRONMENT = {"DOCKER_HOST": "unix://{host_dir}/" + SOCKET_NAME}

    def __init__(self, fleet: SSHHosts, host: str, *, start_timeout: float = 60) -> None:
        self.fleet, self.host = fleet, fleet.host(host)
        self.start_timeout = start_timeout
        host_dir = fleet.host_dir(self.host)
        self.socket = host_dir / self.SOCKET_NAME
        self.root = host_dir / "docker"  # data root, exec root, configuration and log, removed by stop()
        self.process: subprocess.Popen | None = None

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def __enter__(self) -> HostDockerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> HostDockerd:
        if shutil.which("dockerd") is None or shutil.which("nsenter") is None:
            raise RuntimeError("HostDockerd needs dockerd and nsenter (docker.io, util-linux)")
        (self.root / "exec").mkdir(parents=True)
        config = self.root / "daemon.json"
        config.write_text("{}\n")  # not the machine's /etc/docker/daemon.json
        sshd = int((self.fleet.host_dir(self.host) / "sshd.pid").read_text())
        # the host's network namespace, and a mount namespace of our own with the host's /srv: `ip netns exec`
        # (which started sshd) hides the machine's cgroup mounts, which dockerd needs
        inner = f"mount --make-rprivate / && mount --bind {self.host.srv_dir} /srv && exec dockerd \"$@\""
        argv = ["nsenter", "-t", str(sshd), "-n", "unshare", "-m", "sh", "-c", inner, "dockerd",
                "--config-file", str(config), "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "dockerd.pid"),
                "-H", self.docker_host, "--bridge=none", "--iptables=false", "--ip-masq=false",
                "--userland-proxy=false"]
        with open(self.root / "dockerd.log", "wb") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while self.docker("info", check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.root / "dockerd.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"the Docker engine of {self.host.name} did not start: {log}")
            time.sleep(0.2)
        return self

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The docker command line against this engine, from the control node."""
        proc = subprocess.run(["docker", "-H", self.docker_host, *args], capture_output=True, text=True,
                              timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} on {self.host.name}: {proc.stderr.strip()}")
        return proc

    def image_id(self, reference: str) -> str | None:
        ids = self.docker("image", "ls", "--no-trunc", "--format", "{{.ID}}", reference).stdout.split()
        return ids[0] if ids else None

    def stop(self) -> None:
        """Stop dockerd (it stops its containers and its containerd), then remove its data."""
        if self.process is not None and self.process.poll() is None:
            for container in self.docker("ps", "-aq", check=False).stdout.split():
                self.docker("rm", "-f", container, check=False)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._kill_leftovers()
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    def _kill_leftovers(self) -> None:
        """containerd and shims of this engine that outlived it (named by its exec root on their command line)."""
        marker = str(self.root / "exec").encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
