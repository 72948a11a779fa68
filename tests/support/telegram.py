"""A local stand-in for the Telegram Bot API (the real one cannot be reached from the test machines).

It answers getMe, getWebhookInfo, setWebhook and deleteWebhook with the shapes and error answers of the
real API (https://core.telegram.org/bots/api), keeps the bot's webhook state, and records every call
with what the test asks to know at that moment (`observe`, e.g. whether the maintenance flag was up).
For a bot that runs against it (the seed stack's), it also takes sendMessage (`sent()` lists the
messages) and serves getUpdates from `updates` (`message_update` makes one), refused while a webhook is set.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.support.http import Handler, LocalServer

TOKEN = "7311864201:AAHk-test-bot-token-NEVER-LOGGED"
SECRET = "webhook-secret-NEVER-LOGGED-42"


@dataclass
class Call:
    method: str
    params: dict
    observed: object = None
    at: float = field(default_factory=time.time)


class FakeBotAPI:
    def __init__(self, token: str = TOKEN, username: str = "deployctl_test_bot",
                 observe: Callable[[], object] | None = None):
        self.token = token
        self.username = username
        self.observe = observe or (lambda: None)
        self.calls: list[Call] = []
        self.webhook: dict = {"url": "", "has_custom_certificate": False, "pending_update_count": 0}
        self.secret_token: str | None = None
        self.failing: set[str] = set()  # methods answered with a 500, as when the API has a bad moment
        self.updates: list[dict] = []  # what getUpdates hands out, until a later offset confirms them
        self._lock = threading.Lock()
        api = self

        class BotAPIHandler(Handler):
            def do_GET(self):
                self._handle()

            def do_POST(self):
                self._handle()

            def _handle(self):
                raw = self.body()
                try:
                    params = json.loads(raw) if raw else {}
                except ValueError:
                    params = dict(urllib.parse.parse_qsl(raw.decode()))
                status, answer = api.answer(urllib.parse.urlsplit(self.path).path, params)
                self.send(status, json.dumps(answer).encode())

        self.server = LocalServer(BotAPIHandler)
        self.url = self.server.url
        self.close = self.server.close

    def methods(self) -> list[str]:
        return [call.method for call in self.calls]

    def sent(self) -> list[tuple[int, str]]:
        """(chat_id, text) of every message the bot sent, in order."""
        return [(int(call.params["chat_id"]), str(call.params["text"])) for call in list(self.calls)
                if call.method == "sendMessage"]

    def set_webhook_directly(self, url: str, pending: int = 0, last_error_date: int | None = None,
                             last_error_message: str = "") -> None:
        """The webhook as the bot's owner or Telegram left it before the test."""
        self.webhook = {"url": url, "has_custom_certificate": False, "pending_update_count": pending}
        if url:
            self.webhook["max_connections"] = 40
            self.webhook["ip_address"] = "127.0.0.1"
        if last_error_date:
            self.webhook.update(last_error_date=last_error_date, last_error_message=last_error_message)

    def answer(self, path: str, params: dict) -> tuple[int, dict]:
        prefix, _, method = path.lstrip("/").partition("/")
        if prefix != f"bot{self.token}":
            return 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
        if method == "getUpdates":  # a long poll: wait up to `timeout` seconds for an update
            deadline = time.monotonic() + min(float(params.get("timeout") or 0), 10)
            offset = int(params.get("offset") or 0)
            while time.monotonic() < deadline and not any(u["update_id"] >= offset for u in self.updates):
                time.sleep(0.05)
        with self._lock:
            self.calls.append(Call(method, params, self.observe()))
            if method in self.failing:
                return 500, {"ok": False, "error_code": 500, "description": "Internal Server Error"}
            if method == "getMe":
                return 200, {"ok": True, "result": {"id": int(self.token.split(":")[0]), "is_bot": True,
                                                    "first_name": "Test bot", "username": self.username,
                                                    "can_join_groups": True, "can_read_all_group_messages": False,
                                                    "supports_inline_queries": False}}
            if method == "getWebhookInfo":
                return 200, {"ok": True, "result": dict(self.webhook)}
            if method == "deleteWebhook":
                had = bool(self.webhook["url"])
                if str(params.get("drop_pending_updates", "false")).lower() == "true":
                    self.webhook["pending_update_count"] = 0
                self.webhook = {"url": "", "has_custom_certificate": False,
                                "pending_update_count": self.webhook["pending_update_count"]}
                return 200, {"ok": True, "result": True,
                             "description": "Webhook was deleted" if had else "Webhook is already deleted"}
            if method == "setWebhook":
                url = str(params.get("url", ""))
                if url and not url.startswith("https://"):
                    return 400, {"ok": False, "error_code": 400,
                                 "description": "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"}
                self.secret_token = params.get("secret_token")
                pending = self.webhook["pending_update_count"]
                self.set_webhook_directly(url, pending)
                if params.get("allowed_updates") is not None:
                    self.webhook["allowed_updates"] = list(params["allowed_updates"])
                if params.get("max_connections") is not None:
                    self.webhook["max_connections"] = int(params["max_connections"])
                return 200, {"ok": True, "result": True,
                             "description": "Webhook was set" if url else "Webhook was deleted"}
            if method == "sendMessage":
                if not str(params.get("text", "")).strip():
                    return 400, {"ok": False, "error_code": 400, "description": "Bad Request: message text is empty"}
                return 200, {"ok": True, "result": {
                    "message_id": len(self.sent()), "date": int(time.time()), "text": str(params["text"]),
                    "chat": {"id": int(params["chat_id"]), "type": "private"},
                    "from": {"id": int(self.token.split(":")[0]), "is_bot": True, "first_name": "Test bot",
                             "username": self.username}}}
            if method == "getUpdates":
                if self.webhook["url"]:
                    return 409, {"ok": False, "error_code": 409, "description": "Conflict: can't use getUpdates "
                                 "method while webhook is active; use deleteWebhook to delete the webhook first"}
                offset = int(params.get("offset") or 0)
                self.updates = [update for update in self.updates if update["update_id"] >= offset]
                return 200, {"ok": True, "result": list(self.updates)}
            return 404, {"ok": False, "error_code": 404, "description": "Not Found"}


HOOK = "https://shop.example.com/telegram/webhook"


def message_update(update_id: int, text: str, chat_id: int = 424242) -> dict:
    """An Update as Telegram delivers it (to a webhook, or from getUpdates): a private text message."""
    user = {"id": chat_id, "is_bot": False, "first_name": "Test", "username": "test_user"}
    entities = [{"offset": 0, "length": len(text.split()[0]), "type": "bot_command"}] if text.startswith("/") else []
    return {"update_id": update_id, "message": {
        "message_id": update_id, "date": int(time.time()), "from": user,
        "chat": {"id": chat_id, "type": "private", "first_name": "Test", "username": "test_user"},
        "text": text, **({"entities": entities} if entities else {})}}


def configure(project, api: FakeBotAPI, hook: str = HOOK) -> None:
    """A webhook bot for the demo project, its telegram check among the verify checks, as the README shows;
    the stand-in records with each call whether the maintenance flag was up."""
    flag = project.app_root / "shared" / "maintenance.json"
    api.observe = flag.exists
    project.group_vars["deployctl_telegram_bot"] = {"token": api.token, "webhook_url": hook,
                                                    "secret_token": SECRET, "api_url": api.url}
    project.group_vars["deployctl_verify_checks"] = [
        *[check for check in project.group_vars["deployctl_verify_checks"] if check["type"] != "telegram"],
        {"name": "bot", "type": "telegram", "token": "{{ deployctl_telegram_bot.token }}",
         "webhook_url": "{{ deployctl_telegram_bot.webhook_url }}", "api_url": "{{ deployctl_telegram_bot.api_url }}"},
    ]
    project.write()
