"""A user hitting a URL many times a second while releases run: how many requests failed, and which answers came."""

from __future__ import annotations

import threading
import time

from tests.support.project import http_get


class Prober(threading.Thread):
    """Hits a URL many times a second; counts the requests that did not answer 200 with a version."""

    def __init__(self, url: str, versions: set[str]):
        super().__init__(daemon=True)
        self.url, self.versions = url, versions
        self.stopping = threading.Event()
        self.requests = 0
        self.failures: list[str] = []
        self.seen: dict[str, int] = {}

    def run(self) -> None:
        while not self.stopping.is_set():
            self.requests += 1
            try:
                status, body = http_get(self.url, timeout=5)
                body = body.strip()
                if status != 200 or body not in self.versions:
                    self.failures.append(f"{status} {body[:60]!r}")
                else:
                    self.seen[body] = self.seen.get(body, 0) + 1
            except Exception as exc:  # refused, reset, timed out
                self.failures.append(f"{exc.__class__.__name__}: {exc}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)
