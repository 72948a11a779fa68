"""A Telegram webhook bot through real releases of the demo app: paused before the maintenance flag goes up,
set again (with its secret token) after it comes down, checked by the telegram verify check, set back when a
release rolls back, refused before anything changes when its token is wrong, and never in a kept file.

The Bot API is a local stand-in (tests/support/telegram.py) answering with the real API's shapes."""

import pytest

from tests.support.telegram import HOOK, SECRET, TOKEN, configure


@pytest.fixture
def bot_project(demo_project, bot_api):
    project = demo_project()
    configure(project, bot_api)
    bot_api.set_webhook_directly(HOOK)
    project.build("v1")
    project.build("v2")
    first = project.run("release", "v1")
    assert first.code == 0, first
    bot_api.calls.clear()
    return project


def writes(api):
    """The calls that change the webhook, with whether the maintenance flag was up at each."""
    return [(call.method, call.observed) for call in api.calls if call.method in ("deleteWebhook", "setWebhook")]


def kept_files(project):
    """Every file deployctl keeps in the project (history, logs, artifacts) and on the host, but the inventory."""
    for path in [*project.root.rglob("*")]:
        if path.is_file() and not path.is_symlink() and "inventory" not in path.relative_to(project.root).parts:
            yield path


def test_a_release_pauses_the_bot_around_the_window_and_loses_no_update(bot_project, bot_api):
    bot_api.webhook["pending_update_count"] = 4  # updates on their way while the release runs
    release = bot_project.run("release", "v2")
    assert release.code == 0, release
    assert bot_project.served_version() == "v2"
    # deleted before the flag went up, set again only after it came down: Telegram never met the 503 page
    assert writes(bot_api) == [("deleteWebhook", False), ("setWebhook", False)]
    delete = next(call for call in bot_api.calls if call.method == "deleteWebhook")
    assert delete.params["drop_pending_updates"] is False
    assert bot_api.webhook["url"] == HOOK and bot_api.secret_token == SECRET
    assert bot_api.webhook["pending_update_count"] == 4
    # the verify phase's telegram check ran while the webhook was paused, and passed
    assert any(call.method == "getMe" and call.observed for call in bot_api.calls)

    verify = bot_project.run("verify")
    assert verify.code == 0, verify
    bot = next(check for check in verify.data["checks"] if check["check"] == "bot")
    assert bot["status"] == "pass" and bot["value"]["webhook"] == HOOK, bot

    leaked = [str(path) for path in kept_files(bot_project)
              if TOKEN.encode() in path.read_bytes() or SECRET.encode() in path.read_bytes()]
    assert not leaked, f"the bot's token or secret in kept files: {leaked}"
    for output in (release.stdout, release.stderr, verify.stdout, verify.stderr):
        assert TOKEN not in output and SECRET not in output


def test_a_rolled_back_release_sets_the_webhook_again(bot_project, bot_api):
    bot_project.build("v3", broken="health")
    failed = bot_project.run("release", "v3")
    assert failed.code != 0 and failed.outcome == "rolled-back", failed
    assert bot_project.served_version() == "v1"
    assert writes(bot_api) == [("deleteWebhook", False), ("setWebhook", False)]
    assert bot_api.webhook["url"] == HOOK and bot_api.secret_token == SECRET


def test_a_wrong_token_is_refused_before_anything_changes(bot_project, bot_api):
    bot_project.group_vars["deployctl_telegram_bot"]["token"] = "7311864201:a-typo-in-the-vault"
    bot_project.write()
    refused = bot_project.run("release", "v2")
    assert refused.code == 3, refused
    assert "Telegram bot: getMe: 401 Unauthorized" in refused.data["message"], refused
    assert "a-typo-in-the-vault" not in refused.stdout + refused.stderr
    assert bot_project.live() == "v1" and bot_project.served_version() == "v1"
    assert writes(bot_api) == [] and not any(call.observed for call in bot_api.calls)
    assert bot_api.webhook["url"] == HOOK


def test_an_unreachable_bot_api_is_refused_before_anything_changes(bot_project, bot_api):
    bot_api.close()
    refused = bot_project.run("release", "v2")
    assert refused.code == 3, refused
    assert "cannot reach the Bot API" in refused.data["message"], refused
    assert bot_project.live() == "v1"
    assert not (bot_project.app_root / "shared" / "maintenance.json").exists()


def test_manual_maintenance_pauses_and_resumes_the_bot(bot_project, bot_api):
    on = bot_project.run("maintenance", "on")
    assert on.code == 0, on
    assert bot_api.webhook["url"] == ""
    off = bot_project.run("maintenance", "off")
    assert off.code == 0, off
    assert writes(bot_api) == [("deleteWebhook", False), ("setWebhook", False)]
    assert bot_api.webhook["url"] == HOOK


def test_a_webhook_that_cannot_be_set_again_needs_a_human_and_says_so(bot_project, bot_api):
    bot_api.failing.add("setWebhook")
    release = bot_project.run("release", "v2")
    assert release.code == 5, release
    assert "setWebhook: 500 Internal Server Error" in release.data["message"], release
    assert bot_project.served_version() == "v2" and bot_api.webhook["url"] == ""
    bot_api.failing.clear()
    off = bot_project.run("maintenance", "off")
    assert off.code == 0, off
    assert bot_api.webhook["url"] == HOOK and bot_api.secret_token == SECRET
