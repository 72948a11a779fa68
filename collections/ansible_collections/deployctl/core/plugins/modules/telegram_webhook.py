#!/usr/bin/python
# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""A Telegram webhook bot paused while maintenance is on, and resumed after."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: telegram_webhook
short_description: Pause, resume or read a Telegram bot's webhook through the Bot API
version_added: "0.2.0"
description:
  - C(state=paused) deletes the bot's webhook (C(deleteWebhook), keeping the pending updates); Telegram
    holds the updates that arrive meanwhile and delivers them once the webhook is set again, so the bot
    answers nothing while maintenance is on and loses nothing.
  - C(state=active) sets the webhook to O(url) with O(secret_token) (C(setWebhook)) unless Telegram already
    reports that URL (and O(allowed_updates), O(max_connections) when given), then reads it back and fails
    when Telegram does not report it.
  - C(state=read) changes nothing; it proves the token and the API work (C(getMe)) and reports the webhook.
  - The bot's token is part of every call's URL; it is never returned or put in a message.
options:
  token: {description: The bot's token (from the vault)., type: str, required: true}
  state: {description: What to do., type: str, choices: [paused, active, read], default: read}
  url: {description: The webhook URL (needed by C(state=active))., type: str, default: ""}
  secret_token:
    description: Sent by Telegram in the C(X-Telegram-Bot-Api-Secret-Token) header of every webhook call.
    type: str
    default: ""
  allowed_updates: {description: Update types the webhook receives (Telegram keeps its setting when omitted)., type: list, elements: str}
  max_connections: {description: Simultaneous webhook connections (Telegram's default when omitted)., type: int}
  api_url: {description: "Base URL of the Bot API (another Bot API server, for example).", type: str, default: "https://api.telegram.org"}
  timeout: {description: Seconds each call may take., type: float, default: 10}
  use_proxy: {description: Use the host's proxy environment variables., type: bool, default: true}
notes:
  - Supports check mode (reads the webhook, changes nothing).
author:
  - deployctl maintainers (@deployctl)
"""

EXAMPLES = r"""
- name: Pause the bot for maintenance
  deployctl.core.telegram_webhook:
    token: "{{ vault_telegram_token }}"
    state: paused
  run_once: true

- name: Resume it
  deployctl.core.telegram_webhook:
    token: "{{ vault_telegram_token }}"
    state: active
    url: https://shop.example.com/telegram/webhook
    secret_token: "{{ vault_telegram_secret }}"
  run_once: true
"""

RETURN = r"""
bot: {description: The bot's username (C(getMe))., type: str, returned: state=read}
webhook:
  description: The webhook as C(getWebhookInfo) reports it after the call (before it in check mode).
  type: dict
  returned: always
  contains:
    url: {description: The webhook URL; empty when none is set., type: str}
    pending_update_count: {description: Updates waiting to be delivered., type: int}
    last_error_date: {description: When delivering an update last failed (seconds since the epoch)., type: int}
    last_error_message: {description: Why it failed., type: str}
previous_url: {description: The webhook URL before the call., type: str, returned: always}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.deployctl.core.plugins.module_utils import telegram

REPORTED = ("url", "pending_update_count", "last_error_date", "last_error_message", "allowed_updates",
            "max_connections")


def _reported(info):
    return {key: info[key] for key in REPORTED if key in (info or {})}


def main():
    module = AnsibleModule(
        argument_spec={
            "token": {"type": "str", "required": True, "no_log": True},
            "state": {"type": "str", "choices": ["paused", "active", "read"], "default": "read"},
            "url": {"type": "str", "default": ""},
            "secret_token": {"type": "str", "default": "", "no_log": True},
            "allowed_updates": {"type": "list", "elements": "str"},
            "max_connections": {"type": "int"},
            "api_url": {"type": "str", "default": telegram.DEFAULT_API_URL},
            "timeout": {"type": "float", "default": 10},
            "use_proxy": {"type": "bool", "default": True},
        },
        required_if=[("state", "active", ("url",))],
        supports_check_mode=True,
    )
    params = module.params
    result = {"changed": False}
    try:
        api = telegram.BotAPI(params["token"], params["api_url"], params["timeout"], params["use_proxy"])
        if params["state"] == "read":
            result["bot"] = (api.me() or {}).get("username", "")
            info = before = api.webhook()
        elif params["state"] == "paused":
            result["changed"], before = telegram.pause(api, module.check_mode)
            info = before if module.check_mode else dict(before, url="")
        else:
            result["changed"], before, info = telegram.resume(
                api, params["url"], params["secret_token"], params["allowed_updates"], params["max_connections"],
                module.check_mode)
    except telegram.BotAPIError as exc:
        module.fail_json(msg=f"Telegram bot: {exc}", **result)
    module.exit_json(webhook=_reported(info), previous_url=(before or {}).get("url", ""), **result)


if __name__ == "__main__":
    main()
