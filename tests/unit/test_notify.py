"""Notifications: configuration, payloads, delivery to a local HTTP receiver, secrets, pipeline hooks."""

import json
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from deployctl import notify  # noqa: E402
from deployctl.console import Output  # noqa: E402
from deployctl.errors import BadInput  # noqa: E402
from deployctl.pipeline import Pipeline  # noqa: E402
from deployctl.project import Environment, Project  # noqa: E402
from tests.support.http import Handler, LocalServer  # noqa: E402
from tests.support.stub_runner import Answer, StubRunner  # noqa: E402

TOKEN = "123456789:AAH-very-secret-token_xyz"


class Receiver:
    """An HTTP server on 127.0.0.1 that records every request; `answer(n)` decides the n-th response:
    an HTTP status, or None to never answer."""

    def __init__(self, answer=lambda n: 200):
        self.requests: list[dict] = []
        self.release = threading.Event()
        receiver = self

        class ReceiverHandler(Handler):
            def do_POST(self):
                receiver.requests.append({"path": self.path, "headers": dict(self.headers),
                                          "body": json.loads(self.body() or b"null")})
                status = answer(len(receiver.requests))
                if status is None:
                    receiver.release.wait(30)
                    return
                self.send(status, b'{"ok": true}')

        self.server = LocalServer(ReceiverHandler)
        self.url = self.server.url

    def close(self):
        self.release.set()
        self.server.close()


@pytest.fixture
def receiver():
    servers = []

    def make(answer=lambda n: 200):
        servers.append(Receiver(answer))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def channels(entries, root="."):
    return notify.parse_channels("deployctl.yml: environment 'local'", entries, root)


EVENT = {"event": "release.succeeded", "project": "demo", "environment": "production",
         "deployment_id": "DEP-20250101-120000", "version": "v2", "outcome": "live", "message": "v2 is live",
         "at": "2025-01-01T12:00:00+00:00"}


# ---------------------------------------------------------------- configuration


def test_valid_channels_are_parsed():
    parsed = channels([
        {"type": "webhook", "url": "https://hooks.example.com/deploy"},
        {"type": "slack", "url_env": "SLACK_URL", "name": "team", "events": ["release.*"]},
        {"type": "telegram", "token_env": "TG_TOKEN", "chat_id": -100123, "timeout": 2},
    ])
    assert [c.type for c in parsed] == ["webhook", "slack", "telegram"]
    assert parsed[1].name == "team" and parsed[1].wants("release.failed")
    assert not parsed[1].wants("verify.failing")
    assert parsed[2].chat_id == "-100123" and parsed[2].timeout == 2.0
    assert parsed[2].api_base == "https://api.telegram.org"
    assert channels(None) == ()


@pytest.mark.parametrize("entries, words", [
    ("https://x", "must be a list"),
    (["webhook"], "expected a mapping"),
    ([{"type": "email", "url": "https://x"}], "type must be one of"),
    ([{"type": "webhook"}], "exactly one of url, url_env, url_file"),
    ([{"type": "webhook", "url": "https://x", "url_env": "X"}], "exactly one of"),
    ([{"type": "webhook", "url": "ftp://x"}], "url must start with"),
    ([{"type": "slack", "url_env": "not a name"}], "must name an environment variable"),
    ([{"type": "telegram", "token": TOKEN, "chat_id": 1}], "do not put the token"),
    ([{"type": "telegram", "token_env": "TG"}], "needs chat_id"),
    ([{"type": "telegram", "token_env": "TG", "chat_id": 1, "url": "https://x"}], "unknown setting"),
    ([{"type": "webhook", "url": "https://x", "timeout": 0}], "timeout must be"),
    ([{"type": "webhook", "url": "https://x", "events": ["deploy.*"]}], "match no event"),
    ([{"type": "webhook", "url": "https://x"}, {"type": "webhook", "url_env": "X"}], "used twice"),
])
def test_bad_channels_are_refused_with_one_line(entries, words):
    with pytest.raises(BadInput) as caught:
        channels(entries)
    message = str(caught.value)
    assert words in message and "\n" not in message
    assert TOKEN not in message


def test_project_config_accepts_notify(tmp_path):
    from deployctl import project as projects

    (tmp_path / "inventory").mkdir()
    (tmp_path / "deployctl.yml").write_text(
        "environments:\n  local:\n    inventory: inventory\n"
        "    notify: [{type: slack, url_env: SLACK_URL}]\n")
    env = projects.load(tmp_path).environment("local")
    assert env.notify[0].type == "slack" and env.notify[0].root == str(tmp_path)
    (tmp_path / "deployctl.yml").write_text(
        "environments:\n  local:\n    inventory: inventory\n    notify: [{type: slack}]\n")
    with pytest.raises(BadInput, match="notify\\[0\\]: slack needs exactly one of"):
        projects.load(tmp_path)


# ---------------------------------------------------------------- payloads


def test_payload_shapes():
    webhook, slack, telegram = channels([
        {"type": "webhook", "url": "https://x"}, {"type": "slack", "url": "https://y"},
        {"type": "telegram", "token_env": "TG", "chat_id": "@ops"}])
    assert notify.payload(webhook, EVENT) == EVENT
    text = notify.payload(slack, EVENT)
    assert list(text) == ["text"]
    assert "demo/production" in text["text"] and "release v2 succeeded" in text["text"]
    assert "DEP-20250101-120000" in text["text"] and "v2 is live" in text["text"]
    message = notify.payload(telegram, EVENT)
    assert message["chat_id"] == "@ops" and message["text"] == text["text"]


def test_events_for_outcomes():
    assert notify.finish_event("release", "live") == "release.succeeded"
    assert notify.finish_event("release", "rolled-back") == "release.rolled-back"
    assert notify.finish_event("release", "unchanged") == "release.failed"
    assert notify.finish_event("release", "locked") == "release.failed"
    assert notify.finish_event("release", "needs-human") == "release.needs-human"
    assert notify.finish_event("rollback", "rolled-back") == "rollback.succeeded"
    assert notify.finish_event("rollback", "needs-human") == "rollback.needs-human"
    # the first verification alerts only when it fails; then only changes alert
    assert notify.verification_event(None, True) is None
    assert notify.verification_event(None, False) == "verify.failing"
    assert notify.verification_event(True, True) is None
    assert notify.verification_event(True, False) == "verify.failing"
    assert notify.verification_event(False, False) is None
    assert notify.verification_event(False, True) == "verify.recovered"


# ---------------------------------------------------------------- delivery


def test_webhook_slack_and_telegram_requests(receiver, monkeypatch):
    server = receiver()
    monkeypatch.setenv("DEPLOYCTL_TEST_SLACK", server.url + "/services/T000/B000/secretpart")
    monkeypatch.setenv("DEPLOYCTL_TEST_TG", TOKEN)
    notifier = notify.Notifier(channels([
        {"type": "webhook", "url": server.url + "/hook"},
        {"type": "slack", "url_env": "DEPLOYCTL_TEST_SLACK"},
        {"type": "telegram", "token_env": "DEPLOYCTL_TEST_TG", "chat_id": 42, "api_base": server.url},
    ]), "demo", "production")
    records = notifier.send("release.started", "DEP-1", "v2", "running", "release started by ci")
    assert [r["delivered"] for r in records] == [True, True, True], records
    by_path = {r["path"]: r for r in server.requests}
    hook = by_path["/hook"]["body"]
    keys = ("event", "environment", "deployment_id", "version", "outcome", "message")
    assert {k: hook[k] for k in keys} == {
        "event": "release.started", "environment": "production", "deployment_id": "DEP-1", "version": "v2",
        "outcome": "running", "message": "release started by ci"}
    assert hook["at"].endswith("+00:00")
    assert by_path["/hook"]["headers"]["Content-Type"] == "application/json"
    assert list(by_path["/services/T000/B000/secretpart"]["body"]) == ["text"]
    telegram = by_path[f"/bot{TOKEN}/sendMessage"]["body"]
    assert telegram["chat_id"] == "42" and "release v2 started" in telegram["text"]


def test_retries_until_delivered(receiver):
    server = receiver(lambda n: 500 if n <= 2 else 200)
    waits = []
    notifier = notify.Notifier(channels([{"type": "webhook", "url": server.url}]), "demo", "local",
                               sleep=waits.append)
    records = notifier.send("verify.failing", "DEP-1", None, "checks-failed", "health failed")
    assert records == [{"channel": "webhook", "event": "verify.failing", "delivered": True, "error": None}]
    assert len(server.requests) == 3
    assert waits == [0.5, 1.0]


def test_gives_up_after_three_attempts_and_not_on_client_errors(receiver):
    failing = receiver(lambda n: 503)
    refused = receiver(lambda n: 404)
    notifier = notify.Notifier(channels([{"type": "webhook", "url": failing.url, "name": "a"},
                                         {"type": "webhook", "url": refused.url, "name": "b"}]),
                               "demo", "local", sleep=lambda s: None)
    first, second = notifier.send("release.failed", "DEP-1", "v1", "unchanged", "preflight failed")
    assert not first["delivered"] and "HTTP 503" in first["error"] and "3 attempts" in first["error"]
    assert len(failing.requests) == 3
    assert not second["delivered"] and "HTTP 404" in second["error"]
    assert len(refused.requests) == 1, "a 404 is not retried"


def test_a_receiver_that_never_answers_times_out_without_failing(receiver):
    silent = receiver(lambda n: None)
    lines = []
    notifier = notify.Notifier(channels([{"type": "webhook", "url": silent.url, "timeout": 0.3}]),
                               "demo", "local", progress=lines.append)
    started = time.monotonic()
    records = notifier.send("release.started", "DEP-1", "v1", "running", "started")
    assert time.monotonic() - started < 8  # 3 × 0.3 s + 0.5 s + 1 s of backoff
    assert records[0]["delivered"] is False
    assert "timed out" in records[0]["error"]
    assert len(silent.requests) == 3
    assert any("not delivered" in line for line in lines)


def test_secrets_never_appear_in_errors(receiver, monkeypatch, tmp_path):
    server = receiver(lambda n: 500)
    monkeypatch.setenv("DEPLOYCTL_TEST_TG", TOKEN)
    records = notify.Notifier(channels([
        {"type": "telegram", "token_env": "DEPLOYCTL_TEST_TG", "chat_id": 1, "api_base": server.url}]),
        "demo", "local", sleep=lambda s: None).send("verify.failing", "DEP-1", None, "x", "y")
    assert records[0]["delivered"] is False and TOKEN not in json.dumps(records)
    # a token that breaks the URL makes urllib quote the URL in its exception
    monkeypatch.setenv("DEPLOYCTL_TEST_TG", "12345:bad secret\ntoken")
    records = notify.Notifier(channels([
        {"type": "telegram", "token_env": "DEPLOYCTL_TEST_TG", "chat_id": 1, "api_base": server.url}]),
        "demo", "local", sleep=lambda s: None).send("verify.failing", "DEP-1", None, "x", "y")
    assert records[0]["delivered"] is False
    assert "bad secret" not in records[0]["error"] and "bad%20secret" not in records[0]["error"]
    # a Slack URL is a secret as a whole
    monkeypatch.setenv("DEPLOYCTL_TEST_SLACK", "http://127.0.0.1:1/services/T0/B0/XyZsecret")
    records = notify.Notifier(channels([{"type": "slack", "url_env": "DEPLOYCTL_TEST_SLACK"}]), "demo",
                              "local", sleep=lambda s: None).send("verify.failing", "D", None, "x", "y")
    assert records[0]["delivered"] is False and "XyZsecret" not in records[0]["error"]


def test_missing_secrets_and_unsafe_token_files(tmp_path, monkeypatch):
    monkeypatch.delenv("DEPLOYCTL_TEST_NOPE", raising=False)
    token_file = tmp_path / "telegram.token"
    token_file.write_text(TOKEN + "\n")
    os.chmod(token_file, 0o644)
    notifier = notify.Notifier(channels([
        {"type": "slack", "url_env": "DEPLOYCTL_TEST_NOPE"},
        {"type": "telegram", "token_file": "telegram.token", "chat_id": 1, "api_base": "http://127.0.0.1:1"},
    ], root=tmp_path), "demo", "local", sleep=lambda s: None)
    slack, telegram = notifier.send("release.started", "D", "v1", "running", "x")
    assert "DEPLOYCTL_TEST_NOPE is not set" in slack["error"]
    assert "chmod 600" in telegram["error"] and TOKEN not in telegram["error"]
    os.chmod(token_file, 0o600)
    _, telegram = notifier.send("release.started", "D", "v1", "running", "x")
    # read this time, then refused by the port
    assert "chmod" not in telegram["error"] and TOKEN not in telegram["error"]


def test_token_file_is_read(receiver, tmp_path):
    server = receiver()
    token_file = tmp_path / "tg"
    token_file.write_text(TOKEN)
    os.chmod(token_file, 0o600)
    records = notify.Notifier(channels([
        {"type": "telegram", "token_file": str(token_file), "chat_id": 7, "api_base": server.url}]),
        "demo", "local").send("rollback.started", "D", None, "running", "x")
    assert records[0]["delivered"], records
    assert server.requests[0]["path"] == f"/bot{TOKEN}/sendMessage"


# ---------------------------------------------------------------- the pipeline's hooks


def checks(status):
    return [{"host": "localhost", "check": "health", "type": "http", "status": status, "value": None,
             "threshold": None, "message": "x"}]


def pipeline(tmp_path, entries, fail=()):
    """A pipeline whose phases all pass (verify with its checks) unless `fail` names them."""
    runner = StubRunner()
    runner.answer("preflight", Answer(reports={"localhost": {"state": {"live": "v1"}}}))
    for phase in fail:
        runner.answer(phase, Answer(failed={"localhost": "check failed"},
                                    reports={"localhost": {"checks": checks("fail")}}))
    if "verify" not in fail:
        runner.answer("verify", Answer(reports={"localhost": {"checks": checks("pass")}}))
    project = Project(root=tmp_path, app="demo", environments={})
    env = Environment(name="local", inventory=tmp_path, backup=False, notify=channels(entries, tmp_path))
    made = Pipeline(project, env, Output(quiet=True), runner=runner)
    made.notifier.sleep = lambda s: None
    return made


def test_release_announces_start_and_end(receiver, tmp_path):
    server = receiver()
    outcome = pipeline(tmp_path, [{"type": "webhook", "url": server.url}]).release("v2")
    assert outcome.outcome == "live", outcome.message
    assert [r["body"]["event"] for r in server.requests] == ["release.started", "release.succeeded"]
    assert server.requests[1]["body"]["outcome"] == "live"
    assert server.requests[1]["body"]["deployment_id"] == outcome.deployment.id
    notes = outcome.deployment.details["notifications"]
    assert [(n["event"], n["delivered"]) for n in notes] == [("release.started", True),
                                                             ("release.succeeded", True)]


def test_failed_release_announces_the_rollback(receiver, tmp_path):
    server = receiver()
    outcome = pipeline(tmp_path, [{"type": "webhook", "url": server.url}], fail={"migrate"}).release("v2")
    assert outcome.outcome == "rolled-back", outcome.message
    assert [r["body"]["event"] for r in server.requests] == ["release.started", "release.rolled-back"]


def test_undeliverable_notifications_do_not_fail_a_release(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEPLOYCTL_TEST_TG", TOKEN)
    made = pipeline(tmp_path, [{"type": "telegram", "token_env": "DEPLOYCTL_TEST_TG", "chat_id": 1,
                                "api_base": "http://127.0.0.1:1", "timeout": 0.5}])
    made.output = Output()
    made.notifier.progress = made.output.progress
    outcome = made.release("v2")
    assert outcome.outcome == "live"
    notes = outcome.deployment.details["notifications"]
    assert [n["delivered"] for n in notes] == [False, False]
    assert TOKEN not in capsys.readouterr().err
    db = (tmp_path / ".deployctl" / "history.db").read_bytes()
    assert TOKEN.encode() not in db
    with sqlite3.connect(tmp_path / ".deployctl" / "history.db") as conn:
        stored = json.loads(conn.execute("SELECT details FROM deployments").fetchone()[0])
    assert stored["notifications"][0]["channel"] == "telegram"
    assert stored["notifications"][0]["delivered"] is False


def test_verify_alerts_on_health_changes_only(receiver, tmp_path):
    server = receiver()
    entries = [{"type": "slack", "url": server.url}]
    runs = [((), None), (("verify",), "verify.failing"), (("verify",), None), ((), "verify.recovered"),
            ((), None)]
    for fail, expected in runs:
        before = len(server.requests)
        outcome = pipeline(tmp_path, entries, fail).verify()
        sent = [r["body"]["text"] for r in server.requests[before:]]
        if expected is None:
            assert sent == [], (fail, sent)
        else:
            assert len(sent) == 1 and expected.split(".")[1] in sent[0], (fail, sent)
        assert outcome.exit_code == (7 if fail else 0)
    from deployctl.history import History

    history = History(tmp_path / ".deployctl" / "history.db")
    stored = history.verifications("local")
    assert [v["healthy"] for v in stored] == [True, True, False, False, True]
    assert stored[2]["exit_code"] == 7 and stored[2]["checks"]["localhost"][0]["status"] == "fail"
