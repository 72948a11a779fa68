"""The verification checks for real: deployctl.core.probe through Ansible, and `deployctl verify` through the CLI.

The checks run against the local MariaDB, PostgreSQL and Redis, and against HTTP and HTTPS servers this
test starts on 127.0.0.1 (the HTTPS one with a self-signed certificate valid for 5 days).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.support.http import Handler, LocalServer

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MYSQL = ["mariadb", "-h", "127.0.0.1", "-P", "3306", "-u", "root", "--batch", "--skip-column-names"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class App:
    """What the test HTTP servers answer; `healthy` and the warm-up counter can change while they run."""

    def __init__(self):
        self.healthy = True
        self.warmup_left = 2
        self.lock = threading.Lock()


def handler_for(app: App):
    class AppHandler(Handler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 (http.server's naming)
            status, body = 200, b'{"status": "ok"}'
            if self.path == "/health" and not app.healthy:
                status, body = 500, b'{"status": "broken"}'
            elif self.path == "/error":
                status, body = 500, b"internal error"
            elif self.path == "/slow":
                time.sleep(0.25)
            elif self.path == "/warmup":
                with app.lock:
                    if app.warmup_left > 0:
                        app.warmup_left -= 1
                        status, body = 503, b"starting"
            self.send(status, body)

    return AppHandler


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """An HTTP and an HTTPS server (self-signed certificate, 5 days) on 127.0.0.1, and the certificate."""
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "5", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=30)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    app = App()
    plain, tls = LocalServer(handler_for(app)), LocalServer(handler_for(app), context)
    try:
        yield {"app": app, "http": plain.url, "https": tls.url, "tls_port": tls.port, "http_port": plain.port,
               "cert": str(cert)}
    finally:
        for server in (plain, tls):
            server.close()


def probe(checks: list[dict], tmp_path: Path, **options) -> tuple[int, dict, str]:
    """Run deployctl.core.probe on localhost through `ansible` (one module call); its result and raw stdout."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=str(REPO / "collections"), ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"))
    args = json.dumps({"checks": checks, "hostname": "web1", "retries": 1, "delay": 0, **options})
    run = subprocess.run([str(BIN / "ansible"), "localhost", "-c", "local", "-e",
                          f"ansible_python_interpreter={sys.executable}", "-m", "deployctl.core.probe", "-a", args],
                         capture_output=True, text=True, env=env, timeout=120)
    # the ad-hoc result is "localhost | SUCCESS => {...}" (or FAILED!), after any error summary
    _, marker, rest = run.stdout.rpartition("\nlocalhost | ")
    head, arrow, body = ("localhost | " + rest if marker else run.stdout).partition(" => ")
    assert arrow and head.startswith("localhost |"), run.stdout + run.stderr
    return run.returncode, json.loads(body), run.stdout


@pytest.fixture(scope="module")
def mysql_user():
    """A MariaDB user with a password, so the password path (MYSQL_PWD) is exercised for real."""
    name, password = f"probe_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    try:
        subprocess.run(MYSQL + ["-e", f"CREATE USER '{name}'@'127.0.0.1' IDENTIFIED BY '{password}'"],
                       check=True, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("MariaDB is not reachable as root on 127.0.0.1:3306")
    try:
        yield name, password
    finally:
        subprocess.run(MYSQL + ["-e", f"DROP USER IF EXISTS '{name}'@'127.0.0.1'"], capture_output=True, timeout=20)


def test_every_check_type_against_real_services(servers, mysql_user, tmp_path):
    http, https, cert = servers["http"], servers["https"], servers["cert"]
    user, password = mysql_user
    closed = free_port()
    checks = [
        # http
        {"name": "http-ok", "type": "http", "url": f"{http}/health", "status": 200, "body": '"status": ?"ok"'},
        {"name": "http-500", "type": "http", "url": f"{http}/error", "status": 200},
        {"name": "http-body", "type": "http", "url": f"{http}/health", "body": "nope"},
        {"name": "http-slow", "type": "http", "url": f"{http}/slow", "latency_ms": 100},
        {"name": "http-tls-required", "type": "http", "url": f"{http}/health", "tls": True},
        {"name": "https-ok", "type": "http", "url": f"{https}/health", "tls": True, "ca_path": cert},
        {"name": "https-untrusted", "type": "http", "url": f"{https}/health"},
        {"name": "http-warmup", "type": "http", "url": f"{http}/warmup", "retries": 4, "delay": 0.1},
        # tcp and command
        {"name": "tcp-open", "type": "tcp", "port": servers["http_port"]},
        {"name": "tcp-closed", "type": "tcp", "port": closed},
        {"name": "command-ok", "type": "command", "command": "sh -c 'echo ready'", "stdout": "^ready"},
        {"name": "command-fails", "type": "command", "command": ["sh", "-c", "echo nope >&2; exit 3"]},
        # databases and redis
        {"name": "mariadb-ok", "type": "mariadb", "user": user, "password": password},
        {"name": "mysql-bad-password", "type": "mysql", "user": user, "password": password + "x"},
        {"name": "postgresql-ok", "type": "postgresql", "user": "postgres"},
        {"name": "postgresql-no-db", "type": "postgres", "user": "postgres", "database": "no_such_db_probe"},
        {"name": "redis-ok", "type": "redis"},
        {"name": "redis-auth", "type": "redis", "password": "not-configured"},
        {"name": "redis-closed", "type": "redis", "port": closed},
        # TLS certificate (valid 5 days)
        {"name": "cert-2-days", "type": "tls_cert", "port": servers["tls_port"], "ca_path": cert, "min_days": 2},
        {"name": "cert-10-days", "type": "tls_cert", "port": servers["tls_port"], "ca_path": cert, "min_days": 10},
        {"name": "cert-untrusted", "type": "tls_cert", "port": servers["tls_port"], "min_days": 2},
        {"name": "cert-unverified", "type": "tls_cert", "port": servers["tls_port"], "validate_certs": False,
         "min_days": 2},
        # resources
        {"name": "disk-ok", "type": "disk", "path": str(tmp_path), "threshold": 100},
        {"name": "disk-full", "type": "disk", "path": str(tmp_path), "threshold": 0},
        {"name": "memory-ok", "type": "memory", "threshold": 100},
        {"name": "memory-high", "type": "memory", "threshold": 0},
        {"name": "load-ok", "type": "load", "threshold": 1_000_000},
        {"name": "load-high", "type": "load", "threshold": 0},
        # bursts
        {"name": "latency-ok", "type": "latency", "url": f"{http}/health", "requests": 10, "concurrency": 2,
         "p50_ms": 2000, "p95_ms": 4000},
        {"name": "latency-slow", "type": "latency", "url": f"{http}/slow", "requests": 4, "concurrency": 2,
         "p50_ms": 100, "p95_ms": 4000},
        {"name": "errors-none", "type": "error_rate", "url": f"{http}/health", "requests": 10, "concurrency": 2},
        {"name": "errors-all", "type": "error_rate", "url": f"{http}/error", "requests": 5},
    ]
    started = time.monotonic()
    rc, result, stdout = probe(checks, tmp_path)
    took = time.monotonic() - started

    assert rc != 0 and "localhost | FAILED!" in stdout
    assert password not in stdout  # no_log: the password never comes back
    by_name = {r["check"]: r for r in result["checks"]}
    assert [r["check"] for r in result["checks"]] == [c["name"] for c in checks]  # input order
    expected_pass = {name for name in by_name if name.endswith(("-ok", "-2-days", "-unverified", "-warmup",
                                                                "-open", "-none"))}
    assert {n for n, r in by_name.items() if r["status"] == "pass"} == expected_pass, result["msg"]
    assert sorted(result["failed_checks"]) == sorted(set(by_name) - expected_pass)
    assert result["msg"].startswith(f"{len(by_name) - len(expected_pass)} of {len(by_name)} checks failed")
    assert "http-500: HTTP 500" in result["msg"] and "cert-10-days:" in result["msg"]
    for r in result["checks"]:
        assert set(r) >= {"host", "check", "type", "status", "value", "threshold", "message"}
        assert r["host"] == "web1" and r["message"]

    assert by_name["http-ok"]["value"]["status"] == 200
    assert by_name["http-ok"]["threshold"] == {"status": [200], "body": '"status": ?"ok"', "latency_ms": None}
    assert by_name["http-500"]["value"]["status"] == 500 and "expected 200" in by_name["http-500"]["message"]
    assert "does not match" in by_name["http-body"]["message"]
    assert by_name["http-slow"]["value"]["latency_ms"] >= 250 and by_name["http-slow"]["threshold"]["latency_ms"] == 100
    assert "not https" in by_name["http-tls-required"]["message"]
    assert "CERTIFICATE_VERIFY_FAILED" in by_name["https-untrusted"]["message"] \
        or "certificate" in by_name["https-untrusted"]["message"]
    assert by_name["http-warmup"]["attempts"] == 3  # two 503s, then 200: the retries apply
    assert by_name["https-ok"]["attempts"] == 1 and by_name["http-500"]["attempts"] == 1

    assert (by_name["tcp-open"]["value"], by_name["tcp-closed"]["value"]) == ("open", "closed")
    assert by_name["command-fails"]["value"] == 3 and "nope" in by_name["command-fails"]["message"]

    assert by_name["mariadb-ok"]["type"] == "mysql" and by_name["mariadb-ok"]["value"] == "1"
    assert "Access denied" in by_name["mysql-bad-password"]["message"]
    assert by_name["postgresql-ok"]["value"] == "1"
    assert "no_such_db_probe" in by_name["postgresql-no-db"]["message"]
    assert by_name["redis-ok"]["value"] == "PONG"
    assert "AUTH failed" in by_name["redis-auth"]["message"]

    assert 4 < by_name["cert-2-days"]["value"] <= 5 and by_name["cert-2-days"]["threshold"] == 2
    assert 4 < by_name["cert-10-days"]["value"] <= 5 and by_name["cert-10-days"]["threshold"] == 10
    assert "not valid" in by_name["cert-untrusted"]["message"]

    assert 0 < by_name["disk-ok"]["value"] < 100 and by_name["disk-full"]["threshold"] == 0
    assert 0 < by_name["memory-ok"]["value"] < 100
    assert by_name["load-high"]["threshold"] == 0 and by_name["load-ok"]["value"] >= 0

    assert set(by_name["latency-ok"]["value"]) == {"p50_ms", "p95_ms"}
    assert by_name["latency-slow"]["value"]["p50_ms"] >= 250
    assert by_name["latency-slow"]["threshold"] == {"p50_ms": 100, "p95_ms": 4000}
    assert by_name["errors-none"]["value"] == 0 and by_name["errors-none"]["threshold"] == 1
    assert by_name["errors-all"]["value"] == 100

    assert took < 45  # one module call, the checks run side by side


def test_all_checks_passing_is_a_success(servers, tmp_path):
    checks = [{"name": "health", "type": "http", "url": f"{servers['http']}/health", "status": 200},
              {"name": "redis", "type": "redis"}, {"name": "disk", "type": "disk", "threshold": 100}]
    rc, result, _ = probe(checks, tmp_path)
    assert rc == 0, result
    assert not result.get("failed") and result["changed"] is False
    assert result["failed_checks"] == [] and [r["status"] for r in result["checks"]] == ["pass"] * 3


def test_deployctl_verify_reports_json_and_exit_codes(servers, tmp_path):
    project = tmp_path / "project"
    inventory = project / "inventory" / "local"
    (inventory / "group_vars").mkdir(parents=True)
    (project / "deployctl.yml").write_text(yaml.safe_dump(
        {"app": "verify", "environments": {"local": {"inventory": "inventory/local", "backup": False}}}))
    (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {
        "children": {"app": {"hosts": {"localhost": None}}, "db": {"hosts": {"localhost": None}}},
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}}}))
    (inventory / "group_vars" / "all.yml").write_text(yaml.safe_dump({
        "deployctl_app_root": str(tmp_path / "app"),
        "deployctl_env": {"DEMO_PORT": free_port(), "DEMO_HOST": "127.0.0.1"},
        # the list format the demo inventory has always used
        "deployctl_verify_checks": [
            {"name": "health", "type": "http", "url": f"{servers['http']}/health", "status": 200,
             "body": '"status": ?"ok"'},
            {"name": "port", "type": "tcp", "port": servers["http_port"]},
            {"name": "true", "type": "command", "command": "true"},
        ],
        "deployctl_verify_retries": 2,
        "deployctl_verify_delay": 0,
    }))

    def verify():
        run = subprocess.run([str(BIN / "deployctl"), "--json", "--project-dir", str(project), "verify"],
                             capture_output=True, text=True, timeout=120)
        return run.returncode, json.loads(run.stdout), run

    code, data, run = verify()
    assert code == 0, run.stdout + run.stderr
    assert data["outcome"] == "healthy"
    assert [(c["host"], c["check"], c["status"]) for c in data["checks"]] == [
        ("localhost", "health", "pass"), ("localhost", "port", "pass"), ("localhost", "true", "pass")]

    servers["app"].healthy = False
    try:
        code, data, run = verify()
    finally:
        servers["app"].healthy = True
    assert code == 7, run.stdout + run.stderr
    assert data["outcome"] == "checks-failed"
    assert "health" in data["message"] and "HTTP 500" in data["message"]
    health = data["checks"][0]
    assert (health["check"], health["status"], health["value"]["status"], health["attempts"]) == (
        "health", "fail", 500, 2)
    assert [c["status"] for c in data["checks"][1:]] == ["pass", "pass"]
