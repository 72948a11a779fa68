"""Notifications: release start and end, rollbacks and verification state changes, sent to webhooks.

Three kinds of channel, configured per environment under `notify:` in deployctl.yml:

  - webhook:  POST of a JSON object {event, environment, deployment_id, version, outcome, message, at}
  - slack:    a Slack-compatible incoming webhook, POST of {"text": ...}
  - telegram: the Bot API's sendMessage, POST to {api_base}/bot<TOKEN>/sendMessage with chat_id and text

URLs and tokens are secrets: they come from an environment variable (`url_env`, `token_env`) or from a
file only the control node's user can read (`url_file`, `token_file`, mode 0600). A literal `url` is
accepted for endpoints that hold no secret. Secret values are never logged or recorded: every error
message is redacted before it leaves this module.

A notification never fails a release: each send has a timeout and three attempts, and what could not be
delivered is reported on stderr and recorded in the deployment's history (`details.notifications`).
"""

from __future__ import annotations

import fnmatch
import http.client
import json
import os
import re
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from deployctl.errors import BadInput
from deployctl.history import now

TYPES = ("webhook", "slack", "telegram")
TELEGRAM_API = "https://api.telegram.org"
DEFAULT_TIMEOUT = 5.0
BACKOFF = (0.5, 1.0)  # seconds to wait before the 2nd and the 3rd attempt
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

EVENTS = (
    "release.started", "release.succeeded", "release.failed", "release.rolled-back",
    "release.interrupted", "release.needs-human",
    "rollback.started", "rollback.succeeded", "rollback.failed", "rollback.needs-human",
    "verify.failing", "verify.recovered",
)
# Actions whose start and end are announced; verification only announces a change of health.
ANNOUNCED_ACTIONS = ("release", "rollback")

_KEYS = {
    "webhook": {"type", "name", "url", "url_env", "url_file", "timeout", "events"},
    "slack": {"type", "name", "url", "url_env", "url_file", "timeout", "events"},
    "telegram": {"type", "name", "token_env", "token_file", "chat_id", "api_base", "timeout", "events"},
}


class DeliveryError(Exception):
    """A notification could not be delivered; the message is already redacted."""


@dataclass(frozen=True)
class Channel:
    type: str
    name: str
    url: str | None = None
    url_env: str | None = None
    url_file: str | None = None
    token_env: str | None = None
    token_file: str | None = None
    chat_id: str | None = None
    api_base: str = TELEGRAM_API
    timeout: float = DEFAULT_TIMEOUT
    events: tuple[str, ...] = ()
    root: str = "."  # the project root: relative secret files are read from there

    def wants(self, event: str) -> bool:
        return not self.events or any(fnmatch.fnmatchcase(event, pattern) for pattern in self.events)


# ---------------------------------------------------------------- configuration


def parse_channels(where: str, value: object, root: Path | str = ".") -> tuple[Channel, ...]:
    """The `notify:` list of one environment, checked; BadInput (one line) on the first bad entry."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadInput(f"{where}: notify must be a list of channels")
    channels = [_channel(f"{where}: notify[{i}]", entry, str(root)) for i, entry in enumerate(value)]
    names = [c.name for c in channels]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise BadInput(f"{where}: notify channel name(s) used twice: {', '.join(duplicated)} (set name:)")
    return tuple(channels)


def _channel(where: str, entry: object, root: str) -> Channel:
    if not isinstance(entry, dict):
        raise BadInput(f"{where}: expected a mapping with type: {' | '.join(TYPES)}")
    kind = entry.get("type")
    if kind not in TYPES:
        raise BadInput(f"{where}: type must be one of {', '.join(TYPES)}, not {kind!r}")
    if "token" in entry:
        raise BadInput(f"{where}: do not put the token in deployctl.yml; use token_env or token_file")
    unknown = set(entry) - _KEYS[kind]
    if unknown:
        raise BadInput(f"{where}: unknown setting(s) for {kind}: {', '.join(sorted(map(str, unknown)))}")
    for key, text in entry.items():
        if key not in ("timeout", "events", "chat_id") and not isinstance(text, str):
            raise BadInput(f"{where}: {key} must be a string")
    for key in ("url_env", "token_env"):
        if key in entry and not ENV_NAME.match(entry[key]):
            raise BadInput(f"{where}: {key} must name an environment variable, not {entry[key]!r}")
    sources = ("token_env", "token_file") if kind == "telegram" else ("url", "url_env", "url_file")
    given = [key for key in sources if entry.get(key)]
    if len(given) != 1:
        raise BadInput(f"{where}: {kind} needs exactly one of {', '.join(sources)}")
    if entry.get("url") and not entry["url"].startswith(("http://", "https://")):
        raise BadInput(f"{where}: url must start with http:// or https://")
    api_base = entry.get("api_base", TELEGRAM_API)
    if not api_base.startswith(("http://", "https://")):
        raise BadInput(f"{where}: api_base must start with http:// or https://")
    chat_id = entry.get("chat_id")
    if kind == "telegram" and (isinstance(chat_id, bool) or not isinstance(chat_id, int | str)
                               or chat_id == ""):
        raise BadInput(f"{where}: telegram needs chat_id (a number or @channelname)")
    timeout = entry.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 60:
        raise BadInput(f"{where}: timeout must be a number of seconds from 0 to 60, not {timeout!r}")
    events = entry.get("events", [])
    if not isinstance(events, list) or not all(isinstance(e, str) and e for e in events):
        raise BadInput(f"{where}: events must be a list of event names or patterns (release.*, verify.*)")
    unmatched = [e for e in events if not any(fnmatch.fnmatchcase(known, e) for known in EVENTS)]
    if unmatched:
        raise BadInput(f"{where}: events {', '.join(unmatched)} match no event ({', '.join(EVENTS)})")
    return Channel(
        type=kind, name=entry.get("name", kind), url=entry.get("url"), url_env=entry.get("url_env"),
        url_file=entry.get("url_file"), token_env=entry.get("token_env"), token_file=entry.get("token_file"),
        chat_id=None if chat_id is None else str(chat_id), api_base=api_base.rstrip("/"),
        timeout=float(timeout), events=tuple(events), root=root,
    )


# ---------------------------------------------------------------- secrets


def _secret_from_env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise DeliveryError(f"environment variable {name} is not set")
    return value


def _secret_from_file(root: str, name: str) -> str:
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = Path(root) / path
    try:
        info = path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise DeliveryError(f"{path} can be read by other users: chmod 600 {path}")
        value = path.read_text().strip()
    except OSError as exc:
        raise DeliveryError(f"cannot read {path}: {exc.strerror or exc.__class__.__name__}") from None
    if not value:
        raise DeliveryError(f"{path} is empty")
    return value


def endpoint(channel: Channel) -> tuple[str, list[str]]:
    """The URL to POST to, and the secret strings that must never appear in a message."""
    if channel.type == "telegram":
        if channel.token_env:
            token = _secret_from_env(channel.token_env)
        else:
            token = _secret_from_file(channel.root, channel.token_file or "")
        return f"{channel.api_base}/bot{token}/sendMessage", [token]
    if channel.url:
        url = channel.url
    elif channel.url_env:
        url = _secret_from_env(channel.url_env)
    else:
        url = _secret_from_file(channel.root, channel.url_file or "")
    parts = urllib.parse.urlsplit(url)
    # a webhook URL's path and query are its credentials (Slack's /services/T…/B…/secret)
    secrets = [url, parts.path + ("?" + parts.query if parts.query else "")]
    if parts.password:
        secrets.append(parts.password)
    return url, secrets


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted({s for s in secrets if s and len(s) > 1}, key=len, reverse=True):
        forms = {secret, repr(secret)[1:-1], urllib.parse.quote(secret), urllib.parse.quote(secret, safe="")}
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, "***")
    return text


# ---------------------------------------------------------------- payloads


def summary(event: str, project: str, environment: str, version: str | None, outcome: str,
            message: str, deployment_id: str | None) -> str:
    """One human line, for chat channels."""
    marks = {"succeeded": "✅", "recovered": "✅", "started": "🚀", "failing": "🔴", "needs-human": "🆘",
             "rolled-back": "↩️", "failed": "❌", "interrupted": "⚠️"}
    action, _, kind = event.partition(".")
    what = f"{action} {version}" if version else action
    line = f"{marks.get(kind, '•')} {project}/{environment}: {what} {kind.replace('-', ' ')}"
    if message:
        line += f" — {message}"
    if deployment_id:
        line += f" ({deployment_id})"
    return line


def payload(channel: Channel, event: dict) -> dict:
    if channel.type == "webhook":
        return event
    text = summary(event["event"], event.get("project", ""), event["environment"], event.get("version"),
                   event.get("outcome", ""), event.get("message", ""), event.get("deployment_id"))
    if channel.type == "slack":
        return {"text": text}
    return {"chat_id": channel.chat_id, "text": text, "disable_web_page_preview": True}


# ---------------------------------------------------------------- delivery


def deliver(channel: Channel, event: dict, backoff: tuple[float, ...] = BACKOFF,
            sleep: Callable[[float], None] = time.sleep) -> None:
    """POST the event to one channel: up to len(backoff) + 1 attempts. Raises DeliveryError (redacted)."""
    secrets: list[str] = []
    try:
        url, secrets = endpoint(channel)
        body = json.dumps(payload(channel, event)).encode()
        attempts = len(backoff) + 1
        for attempt in range(attempts):
            try:
                request = urllib.request.Request(
                    url, data=body, method="POST",
                    headers={"Content-Type": "application/json", "User-Agent": "deployctl"})
                with urllib.request.urlopen(request, timeout=channel.timeout) as response:
                    response.read(65536)
                return
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code} {exc.reason}"
                exc.close()
                permanent = 400 <= exc.code < 500 and exc.code not in (408, 429)
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", exc)
                problem = "timed out" if isinstance(reason, TimeoutError) else f"{reason}"
                permanent = False
            if permanent or attempt == attempts - 1:
                raise DeliveryError(f"{problem} (after {attempt + 1} attempt{'s' if attempt else ''})")
            sleep(backoff[attempt])
    except DeliveryError as exc:
        raise DeliveryError(redact(str(exc), secrets)) from None
    except Exception as exc:  # a malformed URL and the like: still never fatal, still never leaking
        raise DeliveryError(redact(f"{exc.__class__.__name__}: {exc}", secrets)) from None


class Notifier:
    """Sends one event to every channel of an environment that wants it, all at once."""

    def __init__(self, channels: Iterable[Channel], project: str, environment: str,
                 progress: Callable[[str], None] | None = None, backoff: tuple[float, ...] = BACKOFF,
                 sleep: Callable[[float], None] = time.sleep):
        self.channels = tuple(channels)
        self.project, self.environment = project, environment
        self.progress = progress
        self.backoff, self.sleep = backoff, sleep

    def send(self, event: str, deployment_id: str | None, version: str | None, outcome: str,
             message: str) -> list[dict]:
        """Deliver `event`; returns one record per channel: {channel, event, delivered, error}."""
        channels = [c for c in self.channels if c.wants(event)]
        if not channels:
            return []
        body = {"event": event, "project": self.project, "environment": self.environment,
                "deployment_id": deployment_id, "version": version, "outcome": outcome, "message": message,
                "at": now()}

        def one(channel: Channel) -> dict:
            try:
                deliver(channel, body, self.backoff, self.sleep)
                return {"channel": channel.name, "event": event, "delivered": True, "error": None}
            except DeliveryError as exc:
                return {"channel": channel.name, "event": event, "delivered": False, "error": str(exc)}

        with ThreadPoolExecutor(max_workers=min(8, len(channels))) as pool:
            records = list(pool.map(one, channels))
        for record in records:
            if not record["delivered"] and self.progress:
                self.progress(f"[yellow]notification {event} to {escape(record['channel'])} not delivered: "
                              f"{escape(record['error'])}[/yellow]")
        return records


def finish_event(action: str, outcome: str) -> str:
    """The event announcing how a release or rollback ended."""
    if (action, outcome) in (("release", "live"), ("rollback", "rolled-back")):
        kind = "succeeded"
    elif outcome in ("rolled-back", "needs-human", "interrupted"):
        kind = outcome
    else:
        kind = "failed"  # unchanged, locked: nothing was changed
    return f"{action}.{kind}"


def verification_event(previous_healthy: bool | None, healthy: bool) -> str | None:
    """Alert on a change of health only. The first verification alerts when it fails, not when healthy."""
    if previous_healthy is None:
        return None if healthy else "verify.failing"
    if previous_healthy == healthy:
        return None
    return "verify.recovered" if healthy else "verify.failing"
