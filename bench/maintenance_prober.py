#!/usr/bin/env python3
"""Probe the demo app through nginx during real releases: what does a user see while deployctl releases?

A throwaway project (tests/support/project.py's DemoProject) releases the bundled demo app to localhost
through the real CLI (`deployctl --json release VERSION`), alternating two versions, with the nginx
maintenance page on (README, "Maintenance page and verification"): `deployctl_maintenance_nginx: true`,
the role's http{} snippet included in http { } and its server{} snippet in the app's server block, before
the `location / { proxy_pass ...; }` to the app, and test/reload commands that drive an nginx this
benchmark starts for itself (its own prefix, nginx.conf, pid file and 127.0.0.1 port).

During every release a prober thread sends GET / to that nginx back to back, one fresh connection per
request and a short timeout, and counts the answers: 200 (the app), 503 with the maintenance page
(Retry-After), any other status (a 502 is nginx failing to reach the app), and connection errors or
timeouts. The prober plays a user: it connects from 127.0.0.1, which is kept off the maintenance allow list
(the allow list holds 127.0.0.2, a stand-in for the control node; deployctl's own verify checks go to
the app's port directly). Per release it prints those counts, the longest stretch of answers other than
200 (seconds from sending the first of them to the end of the last), and the maintenance window deployctl
reports (its phases from "maintenance on" through "maintenance off"). A user behind the page should see
only 200s and 503s: other statuses and connection errors are printed loudly, with when they happened
(relative to the start of the release) and whether the maintenance flag file existed at the time.

The first release installs the app and the nginx snippets and is not probed. With --no-nginx-page the
project keeps deployctl's flag file only (deployctl_maintenance_nginx: false; nginx proxies to the app
all along), to show what the page saves users from. The demo app and nginx are stopped and the project
removed at the end.

Run with the project's virtualenv:

    .venv/bin/python bench/maintenance_prober.py --runs 3
"""

from __future__ import annotations

import argparse
import errno
import http.client
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import benchlib
from benchlib import cli_release, maintenance_window, phases, secs, table

from tests.support.nginx import NGINX, Nginx, proxy_to
from tests.support.project import DemoProject

VERSIONS = ("v1.0.0", "v1.0.1")
CONTROL_NODE = "127.0.0.2"  # the allow-listed address; the prober connects from 127.0.0.1
SETTLE = 0.5  # seconds probed before each release starts and after it returns


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, metavar="N",
                        help="probed releases through deployctl, alternating the two versions (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS",
                        help="timeout of each probe request (default: %(default)s)")
    parser.add_argument("--no-nginx-page", action="store_true",
                        help="maintenance mode without the nginx page: deployctl's flag file only, nginx not told")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (project, nginx prefix and logs; its path is printed)")
    args = parser.parse_args()
    if args.runs < 1 or args.timeout <= 0:
        parser.error("--runs must be at least 1 and --timeout more than 0")
    return args


# ------------------------------------------------------------------------------------------ probing


@dataclass
class Answer:
    started: float  # monotonic
    ended: float
    kind: str  # "200", "503", "other", "error"
    detail: str  # the status, the maintenance page's marker, or the error
    flag: bool  # the maintenance flag file existed when the request was sent


def probe(port: int, timeout: float) -> tuple[str, str]:
    """One GET / through a fresh connection: (kind, detail)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
        if response.status == 200:
            return "200", body.decode("utf-8", "replace").strip()
        if response.status == 503 and response.getheader("Retry-After"):
            return "503", "maintenance page"
        if response.status == 503:
            return "other", "503 without the maintenance page"
        return "other", str(response.status)
    except TimeoutError:
        return "error", "timeout"
    except OSError as exc:
        name = errno.errorcode.get(exc.errno, "") if exc.errno else ""
        return "error", f"{type(exc).__name__}{' ' + name if name else ''}"
    except http.client.HTTPException as exc:
        return "error", type(exc).__name__
    finally:
        conn.close()


class Prober(threading.Thread):
    """Sends GET / back to back until stopped, keeping every answer."""

    def __init__(self, port: int, timeout: float, flag: Path):
        super().__init__(daemon=True)
        self.port, self.timeout, self.flag = port, timeout, flag
        self.answers: list[Answer] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            flag = self.flag.exists()
            started = time.monotonic()
            kind, detail = probe(self.port, self.timeout)
            self.answers.append(Answer(started, time.monotonic(), kind, detail, flag))

    def stop(self) -> list[Answer]:
        self.halt.set()
        self.join(self.timeout + 5)
        return self.answers


@dataclass
class Probed:
    """One probed release."""

    version: str
    wall: float
    window: float | None
    started: float  # monotonic, when the release command started
    answers: list[Answer] = field(default_factory=list)
    nginx_errors: list[str] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(1 for a in self.answers if a.kind == kind)

    def details(self, kind: str) -> Counter:
        return Counter(a.detail for a in self.answers if a.kind == kind)

    def longest_non_200(self) -> float:
        longest, first = 0.0, None
        for answer in self.answers:
            if answer.kind == "200":
                first = None
                continue
            first = answer if first is None else first
            longest = max(longest, answer.ended - first.started)
        return longest

    def bad(self) -> list[Answer]:
        return [a for a in self.answers if a.kind in ("other", "error")]


def described(counts: Counter) -> str:
    return ", ".join(f"{detail} x{n}" for detail, n in counts.most_common()) or "-"


def wait_for_app(port: int, timeout: float) -> None:
    deadline = time.monotonic() + 30
    while probe(port, timeout)[0] != "200":
        if time.monotonic() > deadline:
            sys.exit(f"nginx on port {port} did not answer 200 after the first release")
        time.sleep(0.1)


def probed_release(project: DemoProject, nginx: Nginx, version: str, timeout: float) -> Probed:
    flag = project.app_root / "shared" / "maintenance.json"
    log_offset = nginx.error_log_size()
    prober = Prober(nginx.port, timeout, flag)
    prober.start()
    time.sleep(SETTLE)
    started = time.monotonic()
    wall, result = cli_release(project, version)
    time.sleep(SETTLE)
    answers = prober.stop()
    if result.code != 0 or result.outcome != "live":
        message = (result.data.get("message") if isinstance(result.data, dict) else "") or result.stderr[-300:]
        sys.exit(f"release {version} failed (exit {result.code}, {result.outcome}): {' '.join(message.split())}")
    return Probed(version, wall, maintenance_window(phases(result)), started, answers,
                  nginx.errors_since(log_offset))


def episodes(answers: list[Answer]) -> list[list[Answer]]:
    """The runs of consecutive answers that were neither 200 nor the maintenance page."""
    runs: list[list[Answer]] = []
    current: list[Answer] = []
    for answer in answers:
        if answer.kind in ("other", "error"):
            current.append(answer)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def nginx_causes(lines: list[str]) -> Counter:
    """nginx's error lines without time, pid and connection number, up to the client part."""
    causes = Counter()
    for line in lines:
        text = re.sub(r"^\S+ \S+ \[\w+\] \d+#\d+: (\*\d+ )?", "", line)
        causes[text.split(", client:", 1)[0]] += 1
    return causes


def report_bad(probed: Probed) -> None:
    """When the answers other than 200 and the page came, and whether the flag file existed then."""
    bad = probed.bad()
    if not bad:
        return
    print(f"  !!! {len(bad)} answer(s) a user should never see during the release of {probed.version}:")
    for run in episodes(probed.answers)[:10]:
        flags = {a.flag for a in run}
        flag = "present" if flags == {True} else "absent" if flags == {False} else "present, then absent"
        print(f"      {run[0].started - probed.started:+8.3f} s to {run[-1].ended - probed.started:+8.3f} s "
              f"after the release started: {described(Counter(a.detail for a in run))} (flag file {flag})")
    for cause, n in nginx_causes(probed.nginx_errors).most_common(5):
        print(f"      nginx error.log x{n}: {cause}")


def main() -> None:
    args = parse_args()
    benchlib.require_venv()
    if not os.access(NGINX, os.X_OK):
        sys.exit(f"{NGINX} not found: this benchmark needs nginx")
    root = Path(tempfile.mkdtemp(prefix="deployctl-bench-prober-"))
    project = nginx = None
    try:
        nginx = Nginx(root / "nginx")
        group_vars = {"deployctl_maintenance_allow": [CONTROL_NODE]}
        if not args.no_nginx_page:
            group_vars.update(nginx.group_vars())
        project = DemoProject(root / "project", group_vars=group_vars)
        for version in VERSIONS:
            project.build(version)
        try:
            nginx.start(proxy_to(project.port))
        except RuntimeError as exc:
            sys.exit(str(exc))
        page = "without the nginx page (flag file only)" if args.no_nginx_page else "with the nginx maintenance page"
        print(f"project {project.root}, demo app on port {project.port}, nginx on port {nginx.port}, {page}",
              flush=True)

        seconds, result = cli_release(project, VERSIONS[0])
        benchlib.check_release(result, VERSIONS[0])
        print(f"  first release {VERSIONS[0]} (not probed): {seconds:.2f} s", flush=True)
        wait_for_app(nginx.port, args.timeout)

        results: list[Probed] = []
        for run in range(1, args.runs + 1):
            version = VERSIONS[run % len(VERSIONS)]
            probed = probed_release(project, nginx, version, args.timeout)
            results.append(probed)
            rate = len(probed.answers) / (probed.answers[-1].ended - probed.answers[0].started)
            print(f"  run {run:>3}  release {version}: {probed.wall:.2f} s, {len(probed.answers)} requests "
                  f"({rate:.0f}/s), maintenance window {secs(probed.window)} s, longest non-200 "
                  f"{probed.longest_non_200():.2f} s", flush=True)
            report_bad(probed)

        headers = ["release", "requests", "200", "503 page", "other status", "conn errors", "longest non-200 s",
                   "maint. window s", "release s"]

        def row(label: str, items: list[Probed]) -> list[object]:
            other = Counter()
            errors = Counter()
            for p in items:
                other.update(p.details("other"))
                errors.update(p.details("error"))
            windows = [p.window for p in items if p.window is not None]
            return [label, sum(len(p.answers) for p in items), sum(p.count("200") for p in items),
                    sum(p.count("503") for p in items),
                    f"{sum(other.values())} ({described(other)})" if other else "0",
                    f"{sum(errors.values())} ({described(errors)})" if errors else "0",
                    f"{max(p.longest_non_200() for p in items):.2f}",
                    f"{sum(windows):.2f}" if windows else "-", f"{sum(p.wall for p in items):.2f}"]

        rows = [row(f"{n} {p.version}", [p]) for n, p in enumerate(results, 1)]
        rows.append(row("total (longest: max)", results))
        print()
        print(f"GET / through nginx during {args.runs} release(s) of the demo app, {page}, "
              f"{args.timeout:g} s timeout per request")
        print()
        print(table(headers, rows))
        print()
        bad = sum(len(p.bad()) for p in results)
        versions = Counter(a.detail for p in results for a in p.answers if a.kind == "200")
        print(f"200s served: {described(versions)}")
        if bad:
            print(f"!!! {bad} request(s) got neither the app nor the maintenance page "
                  f"(other statuses or connection errors; details above)")
        else:
            print("every request got the app (200) or the maintenance page (503): no other status, "
                  "no connection error")
    finally:
        if project is not None:
            project.stop()
        if nginx is not None:
            nginx.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
