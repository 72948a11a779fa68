# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""The Telegram Bot API calls deployctl makes: getMe, getWebhookInfo, setWebhook and deleteWebhook.

A webhook bot is paused for maintenance by deleting its webhook (Telegram keeps the updates that arrive
meanwhile, up to 24 hours, and delivers them once the webhook is set again) and resumed by setting it
again. The token is part of every call's URL: it never appears in a message this module produces.

Standard library only: runs on the managed hosts (Python 3.8+)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

DEFAULT_API_URL = "https://api.telegram.org"
ANSWER_LIMIT = 1024 * 1024


class BotAPIError(Exception):
    """A call that failed, in the API's own words (or why it could not be reached), without the token."""


class BotAPI:
    def __init__(self, token, api_url=DEFAULT_API_URL, timeout=10.0, use_proxy=True):
        if not token:
            raise BotAPIError("no bot token")
        self.token = str(token)
        self.api_url = (api_url or DEFAULT_API_URL).rstrip("/")
        self.timeout = timeout
        handlers = [] if use_proxy else [urllib.request.ProxyHandler({})]
        self._opener = urllib.request.build_opener(*handlers)

    def _scrub(self, text):
        return " ".join(str(text).replace(self.token, "<token>").split())[:300]

    def call(self, method, **params):
        """The `result` of one call; BotAPIError when it cannot be made or the API answers ok: false."""
        body = json.dumps({key: value for key, value in params.items() if value is not None}).encode()
        request = urllib.request.Request(f"{self.api_url}/bot{self.token}/{method}", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = response.read(ANSWER_LIMIT)
        except urllib.error.HTTPError as exc:  # the API answers errors with a JSON body too
            raw = exc.read(ANSWER_LIMIT)
            status = exc.code
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise BotAPIError(self._scrub(f"{method}: cannot reach the Bot API at {self.api_url}: {reason}")) from None
        else:
            status = 200
        try:
            answer = json.loads(raw.decode("utf-8", "replace"))
        except ValueError:
            raise BotAPIError(
                self._scrub(f"{method}: HTTP {status} from {self.api_url}, not a Bot API answer")) from None
        if not isinstance(answer, dict) or not answer.get("ok"):
            answer = answer if isinstance(answer, dict) else {}
            code = answer.get("error_code", status)
            raise BotAPIError(self._scrub(f"{method}: {code} {answer.get('description') or 'failed'}"))
        return answer.get("result")

    def me(self):
        return self.call("getMe")

    def webhook(self):
        return self.call("getWebhookInfo")


def webhook_wanted(info, url, allowed_updates=None, max_connections=None):
    """Whether the webhook Telegram reports is the one wanted (the secret token is never reported back)."""
    if (info or {}).get("url", "") != url:
        return False
    if allowed_updates is not None and sorted(info.get("allowed_updates") or []) != sorted(allowed_updates):
        return False
    return max_connections is None or info.get("max_connections") == max_connections


def pause(api, check_mode=False):
    """Delete the webhook, keeping the pending updates: (changed, the webhook it had)."""
    info = api.webhook()
    if not info.get("url"):
        return False, info
    if not check_mode:
        api.call("deleteWebhook", drop_pending_updates=False)
    return True, info


def resume(api, url, secret_token="", allowed_updates=None, max_connections=None, check_mode=False):
    """Set the webhook to `url` (unless it is set so already) and read it back: (changed, before, after)."""
    before = api.webhook()
    if webhook_wanted(before, url, allowed_updates, max_connections):
        return False, before, before
    if check_mode:
        return True, before, before
    api.call("setWebhook", url=url, secret_token=secret_token or None, allowed_updates=allowed_updates,
             max_connections=max_connections, drop_pending_updates=False)
    info = api.webhook()
    if info.get("url") != url:
        raise BotAPIError(f"setWebhook: the Bot API accepted {url} but reports {info.get('url') or 'no webhook'}")
    return True, before, info
