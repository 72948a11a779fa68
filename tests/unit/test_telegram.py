"""The Bot API calls behind pausing a webhook bot for maintenance, and the telegram verify check, against a
local stand-in of the Bot API that answers with the real API's shapes."""

import time

import pytest
from ansible_collections.deployctl.core.plugins.module_utils import health_checks, telegram

from tests.support.telegram import TOKEN, FakeBotAPI

HOOK = "https://shop.example.com/telegram/webhook"


@pytest.fixture
def api():
    server = FakeBotAPI()
    yield server
    server.close()


def client(server, token=TOKEN):
    return telegram.BotAPI(token, server.url, timeout=5, use_proxy=False)


def test_pausing_deletes_the_webhook_and_keeps_the_updates_waiting(api):
    api.set_webhook_directly(HOOK, pending=3)
    changed, before = telegram.pause(client(api))
    assert changed and before["url"] == HOOK
    assert api.calls[-1].method == "deleteWebhook" and api.calls[-1].params["drop_pending_updates"] is False
    assert api.webhook["url"] == "" and api.webhook["pending_update_count"] == 3
    assert telegram.pause(client(api)) == (False, api.webhook)  # paused already: nothing deleted twice
    assert api.methods().count("deleteWebhook") == 1


def test_resuming_sets_the_webhook_with_its_secret_and_reads_it_back(api):
    changed, before, after = telegram.resume(client(api), HOOK, "s3cret", ["message"], 10)
    assert changed and before["url"] == "" and after["url"] == HOOK
    assert api.secret_token == "s3cret" and api.webhook["allowed_updates"] == ["message"]
    assert api.methods() == ["getWebhookInfo", "setWebhook", "getWebhookInfo"]
    changed, _, _ = telegram.resume(client(api), HOOK, "s3cret", ["message"], 10)
    assert not changed and api.methods().count("setWebhook") == 1


def test_check_mode_reads_and_changes_nothing(api):
    api.set_webhook_directly(HOOK)
    assert telegram.pause(client(api), check_mode=True)[0]
    assert api.webhook["url"] == HOOK
    api.set_webhook_directly("")
    assert telegram.resume(client(api), HOOK, check_mode=True)[0]
    assert api.webhook["url"] == "" and "setWebhook" not in api.methods()


def test_failures_say_why_and_never_show_the_token(api):
    with pytest.raises(telegram.BotAPIError) as wrong:
        client(api, token="1:wrong-token-value").me()
    assert str(wrong.value) == "getMe: 401 Unauthorized" and "wrong-token-value" not in str(wrong.value)
    with pytest.raises(telegram.BotAPIError) as refused:
        telegram.resume(client(api), "http://plain.example.com/hook")
    assert "An HTTPS URL must be provided" in str(refused.value)
    api.failing.add("deleteWebhook")
    api.set_webhook_directly(HOOK)
    with pytest.raises(telegram.BotAPIError, match="deleteWebhook: 500 Internal Server Error"):
        telegram.pause(client(api))
    port = api.server.port
    api.close()
    with pytest.raises(telegram.BotAPIError) as unreachable:
        telegram.BotAPI(TOKEN, f"http://127.0.0.1:{port}", timeout=2, use_proxy=False).me()
    assert "cannot reach the Bot API" in str(unreachable.value) and TOKEN not in str(unreachable.value)


def probe(api, maintenance_flag=None, **options):
    check = {name: spec.get("default") for name, spec in health_checks.CHECK_OPTIONS.items()}
    check.update({"name": "bot", "type": "telegram", "token": TOKEN, "api_url": api.url, "use_proxy": False, **options})
    params = {"retries": 1, "delay": 0, "timeout": 5, "maintenance_flag": maintenance_flag}
    assert health_checks.prepare(check, params) is None
    return health_checks.run_check(check, "web1")


def test_the_check_passes_on_the_expected_webhook(api):
    api.set_webhook_directly(HOOK, pending=2)
    result = probe(api, webhook_url=HOOK)
    assert result["status"] == "pass", result
    assert result["value"] == {"bot": "@deployctl_test_bot", "webhook": HOOK, "pending_update_count": 2}


@pytest.mark.parametrize(("webhook", "pending", "error_age", "expected", "message"), [
    ("", 0, None, HOOK, "webhook is not set, expected webhook " + HOOK),
    ("https://old.example.com/hook", 0, None, HOOK, "webhook is https://old.example.com/hook"),
    (HOOK, 100, None, HOOK, "100 updates waiting (below 100 expected)"),
    (HOOK, 0, 30, HOOK, "Telegram could not deliver to the webhook at"),
    (HOOK, 0, None, "", "a polling bot's getUpdates fails while one is set"),
])
def test_the_check_fails_on_what_would_leave_the_bot_deaf(api, webhook, pending, error_age, expected, message):
    api.set_webhook_directly(webhook, pending=pending,
                             last_error_date=int(time.time() - error_age) if error_age else None,
                             last_error_message="Wrong response from the webhook: 502 Bad Gateway")
    result = probe(api, webhook_url=expected)
    assert result["status"] == "fail" and message in result["message"], result


def test_an_old_delivery_error_does_not_fail_the_check(api):
    api.set_webhook_directly(HOOK, last_error_date=int(time.time() - 3600), last_error_message="timeout")
    assert probe(api, webhook_url=HOOK)["status"] == "pass"


def test_a_webhook_paused_for_maintenance_passes_only_while_the_flag_is_up(api, tmp_path):
    flag = tmp_path / "maintenance.json"
    flag.write_text("{}")
    result = probe(api, maintenance_flag=str(flag), webhook_url=HOOK)
    assert result["status"] == "pass" and "paused for maintenance" in result["message"]
    flag.unlink()
    assert probe(api, maintenance_flag=str(flag), webhook_url=HOOK)["status"] == "fail"


def test_a_wrong_token_fails_the_check_without_showing_it(api):
    result = probe(api, webhook_url=HOOK, token="42:the-wrong-one")
    assert result["status"] == "fail" and result["message"] == "Telegram bot: getMe: 401 Unauthorized"
