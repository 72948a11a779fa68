"""Scheduled verification and its alerts through the real CLI, playbooks and ansible-runner.

A throwaway project verifies localhost against an HTTP endpoint the test serves (healthy or failing on
demand) and notifies a webhook and a Telegram-compatible receiver the test also serves.

Alert policy under test: the first verification establishes the state (an alert only when it fails),
then only a change of health alerts: healthy → failing, failing → healthy.
"""

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.http import Handler, LocalServer

DEPLOYCTL = str(Path(sys.executable).with_name("deployctl"))
TOKEN = "987654321:AAE-integration-secret-token"


class Endpoint:
    """GET /health answers 200 or 500 (`healthy`); POSTs are recorded (webhooks, Telegram)."""

    def __init__(self):
        self.healthy = True
        self.posts: list[dict] = []
        endpoint = self

        class EndpointHandler(Handler):
            def do_GET(self):
                self.send(200 if endpoint.healthy else 500, b"ok" if endpoint.healthy else b"down", "text/plain")

            def do_POST(self):
                endpoint.posts.append({"path": self.path, "body": json.loads(self.body() or b"null")})
                self.send(200, b'{"ok": true}')

        self.server = LocalServer(EndpointHandler)
        self.url = self.server.url
        self.close = self.server.close


@pytest.fixture
def endpoint():
    server = Endpoint()
    yield server
    server.close()


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_project(root: Path, endpoint: Endpoint, notify=None) -> Path:
    inventory = root / "inventory" / "local"
    inventory.mkdir(parents=True)
    check = {"name": "health", "type": "http", "url": endpoint.url + "/health", "status": 200}
    hosts = {"all": {
        "children": {"app": {"hosts": {"localhost": None}}, "db": {"hosts": {"localhost": None}}},
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                 "deployctl_verify_checks": [check], "deployctl_verify_retries": 1,
                 "deployctl_verify_delay": 0},
    }}
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    environment = {"inventory": "inventory/local", "backup": False}
    if notify:
        environment["notify"] = notify
    config = {"app": "probe", "environments": {"local": environment}}
    (root / "deployctl.yml").write_text(yaml.safe_dump(config))
    return root


def deployctl(root: Path, *args, env=None):
    done = subprocess.run([DEPLOYCTL, "--project-dir", str(root), *args], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    return done


def test_verify_alerts_on_health_changes(tmp_path, endpoint, monkeypatch):
    monkeypatch.setenv("DEPLOYCTL_IT_TOKEN", TOKEN)
    root = make_project(tmp_path / "project", endpoint, notify=[
        {"type": "webhook", "url": endpoint.url + "/hook"},
        {"type": "telegram", "token_env": "DEPLOYCTL_IT_TOKEN", "chat_id": 99, "api_base": endpoint.url},
        {"type": "telegram", "name": "unreachable", "token_env": "DEPLOYCTL_IT_TOKEN", "chat_id": 99,
         "api_base": f"http://127.0.0.1:{closed_port()}", "timeout": 1},
    ])
    textfile = tmp_path / "probe.prom"
    stderr = ""

    def verify(expected_code, *extra):
        nonlocal stderr
        before = len(endpoint.posts)
        done = deployctl(root, "--json", "verify", *extra)
        stderr += done.stderr
        assert done.returncode == expected_code, done.stderr[-2000:]
        return done, endpoint.posts[before:]

    # two healthy runs: the first establishes the state, neither alerts
    for _ in range(2):
        _, sent = verify(0)
        assert sent == []

    endpoint.healthy = False
    done, sent = verify(7, "--prometheus-textfile", str(textfile))
    hook = [p["body"] for p in sent if p["path"] == "/hook"]
    assert [h["event"] for h in hook] == ["verify.failing"]
    assert hook[0]["outcome"] == "checks-failed" and hook[0]["environment"] == "local"
    assert hook[0]["deployment_id"] == json.loads(done.stdout)["deployment"]["id"]
    telegram = [p for p in sent if p["path"].endswith("/sendMessage")]
    assert [p["path"] for p in telegram] == [f"/bot{TOKEN}/sendMessage"]
    assert telegram[0]["body"]["chat_id"] == "99" and "verify failing" in telegram[0]["body"]["text"]
    details = json.loads(done.stdout)["deployment"]["details"]
    delivered = {(n["channel"], n["delivered"]) for n in details["notifications"]}
    assert delivered == {("webhook", True), ("telegram", True), ("unreachable", False)}
    metrics = textfile.read_text()
    assert 'deployctl_verify_healthy{environment="local"} 0' in metrics
    assert 'deployctl_verify_duration_seconds{environment="local"}' in metrics
    assert 'deployctl_verify_last_run_timestamp_seconds{environment="local"}' in metrics

    _, sent = verify(7)
    assert sent == [], "still failing: no second alert"

    endpoint.healthy = True
    _, sent = verify(0, "--prometheus-textfile", str(textfile))
    assert [p["body"]["event"] for p in sent if p["path"] == "/hook"] == ["verify.recovered"]
    assert 'deployctl_verify_healthy{environment="local"} 1' in textfile.read_text()

    status = deployctl(root, "--json", "status")
    last = json.loads(status.stdout)["last_verification"]
    assert last["healthy"] is True and last["exit_code"] == 0

    # the secret never reaches the terminal or the history, even when delivery failed
    assert "not delivered" in stderr
    assert TOKEN not in stderr
    history_db = root / ".deployctl" / "history.db"
    assert TOKEN.encode() not in history_db.read_bytes()

    report = deployctl(root, "report", json.loads(done.stdout)["deployment"]["id"])
    assert report.returncode == 0 and "| Deployment time | < 30 min |" in report.stdout


def test_schedule_install_list_remove_and_run(tmp_path, endpoint):
    root = make_project(tmp_path / "project", endpoint)
    # tmp dirs instead of /etc/systemd/system and /etc/cron.d; no systemctl call for them
    dirs = {"DEPLOYCTL_SYSTEMD_DIR": str(tmp_path / "systemd"),
            "DEPLOYCTL_CRON_DIR": str(tmp_path / "cron.d")}
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    # what a timer or cron runs with: next to no environment
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}

    refused = deployctl(root, "schedule", "install", "--every", "30s", env=dirs)
    assert refused.returncode == 2 and "1m" in refused.stderr

    cron = deployctl(root, "--json", "schedule", "install", "--every", "15m", "--textfile",
                     str(metrics / "probe.prom"), env={**dirs, "DEPLOYCTL_SCHEDULER": "cron"})
    assert cron.returncode == 0, cron.stderr
    cron_file = tmp_path / "cron.d" / "deployctl-verify-probe-local"
    assert json.loads(cron.stdout)["files"] == [str(cron_file)]
    line = [x for x in cron_file.read_text().splitlines()
            if x and not x.startswith("#") and "=" not in x.split()[0]]
    fields = line[0].split(None, 6)
    assert fields[:6] == ["*/15", "*", "*", "*", "*", "root"]
    command = fields[6].replace("\\%", "%")
    argv = shlex.split(command)
    assert argv[0] == str(Path(DEPLOYCTL).resolve())
    assert argv[1:9] == ["--project-dir", str(root), "-e", "local", "verify", "--prometheus-textfile",
                         str(metrics / "probe.prom"), ">>"]

    systemd = deployctl(root, "schedule", "install", "--every", "1h",
                        env={**dirs, "DEPLOYCTL_SCHEDULER": "systemd"})
    assert systemd.returncode == 0, systemd.stderr
    service = (tmp_path / "systemd" / "deployctl-verify-probe-local.service").read_text()
    timer = (tmp_path / "systemd" / "deployctl-verify-probe-local.timer").read_text()
    assert "OnUnitActiveSec=1h" in timer
    exec_start = next(x for x in service.splitlines() if x.startswith("ExecStart="))
    systemd_argv = shlex.split(exec_start[len("ExecStart="):].replace("%%", "%").replace("$$", "$"))
    assert systemd_argv == [str(Path(DEPLOYCTL).resolve()), "--project-dir", str(root), "-e", "local",
                            "verify"]
    log = next(x for x in service.splitlines() if x.startswith("StandardOutput=append:")).split(":", 1)[1]

    listed = deployctl(root, "--json", "schedule", "list", env=dirs)
    jobs = json.loads(listed.stdout)
    assert sorted((j["scheduler"], j["every"], j["environment"]) for j in jobs) == [
        ("cron", "15m", "local"), ("systemd", "1h", "local")]

    # run what cron would run: a real verify, healthy
    ran = subprocess.run(["/bin/sh", "-c", command], env=bare, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, Path(argv[-2]).read_text()[-2000:]
    assert "healthy" in Path(argv[argv.index(">>") + 1]).read_text()
    assert 'deployctl_verify_healthy{environment="local"} 1' in (metrics / "probe.prom").read_text()

    # run what systemd would run, with its output appended to the log: a real verify, failing
    endpoint.healthy = False
    with open(log, "a") as output:
        ran = subprocess.run(systemd_argv, env=bare, stdout=output, stderr=output, timeout=120)
    assert ran.returncode == 7, Path(log).read_text()[-2000:]
    assert "checks-failed" in Path(log).read_text()

    removed = deployctl(root, "--json", "schedule", "remove", env=dirs)
    assert removed.returncode == 0
    assert len(json.loads(removed.stdout)["removed"]) == 3
    assert json.loads(deployctl(root, "--json", "schedule", "list", env=dirs).stdout) == []
    assert not cron_file.exists()
