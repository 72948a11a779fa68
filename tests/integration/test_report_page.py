"""`deployctl report DEP-ID --format html` rendered by a real browser (headless Chromium): the page's text, the
timeline's picture (bars of the expected colours where the timeline puts them, the maintenance window shaded,
the rollback marked, verify results per host), and not one network request."""

import http.server
import io
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from deployctl.history import History

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# what Chromium calls by itself, whatever the page, despite the flags below
CHROMIUMS_OWN = {"update.googleapis.com", "accounts.google.com", "clients2.google.com"}
WINDOW = (1100, 1600)
COLOURS = {"passed": (0x2E, 0x7D, 0x32), "failed": (0xC6, 0x28, 0x28), "rollback": (0xEF, 0x6C, 0x00),
           "window": (0xFD, 0xE6, 0x8A), "paper": (0xFF, 0xFF, 0xFF)}
# a release whose verify failed and was rolled back: (phase, seconds, status)
PHASES = [("lock", 1.0, "passed"), ("preflight", 4.0, "passed"), ("backup", 3.0, "passed"), ("stage", 2.0, "passed"),
          ("maintenance on", 2.0, "passed"), ("migrate", 3.0, "passed"), ("deploy", 4.0, "passed"),
          ("verify", 5.0, "failed"), ("stop commands", 1.0, "passed"), ("rollback", 4.0, "passed"),
          ("verify", 3.0, "passed"), ("data state", 1.0, "passed"), ("maintenance off", 2.0, "passed"),
          ("unlock", 1.0, "passed")]
CHECKS = {"web1": [{"host": "web1", "check": "health", "type": "http", "status": "fail", "message": "HTTP 503"}],
          "web2": [{"host": "web2", "check": "health", "type": "http", "status": "pass", "message": "HTTP 200"},
                   {"host": "web2", "check": "p95", "type": "latency", "status": "pass",
                    "value": {"p50_ms": 40, "p95_ms": 120}, "message": "p95 120 ms"}]}
# writes each drawn element's place on the page into the DOM, for --dump-dom (only in the test's measuring copy)
MEASURE = """<script>
for (const e of document.querySelectorAll('#timeline rect, #timeline circle')) {
  const r = e.getBoundingClientRect();
  e.setAttribute('data-box', [r.left + scrollX, r.top + scrollY, r.width, r.height].join(','));
}
</script>"""


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The report of the release above, written by the real command line."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (scripts/install-test-deps installs it)")
    root = tmp_path_factory.mktemp("report")
    (root / "inventory").mkdir()
    (root / "deployctl.yml").write_text("app: demo\nenvironments:\n  local: {inventory: inventory}\n")
    history = History(root / ".deployctl" / "history.db")
    release = history.start("local", "release", "v2", {
        "before": {"web1": "v1", "web2": "v1"}, "targets": {"web1": "v1", "web2": "v1"}, "checks": CHECKS,
        "backup_set": "20261201T090001Z-pre-release", "message": "verify failed: web1: health: HTTP 503; rolled back"})
    started = datetime.fromisoformat(release.started_at)
    at = started + timedelta(seconds=1)
    for name, seconds, status in PHASES:
        history.add_phase(release, name, status, seconds, [], {}, {}, at.isoformat(timespec="milliseconds"))
        at += timedelta(seconds=seconds + 0.5)
    history.finish(release, "rolled-back", 4)
    with sqlite3.connect(root / ".deployctl" / "history.db") as db:  # a finish 4 s after the last phase
        db.execute("UPDATE deployments SET finished_at=? WHERE id=?",
                   ((at + timedelta(seconds=3.5)).isoformat(timespec="seconds"), release.id))
    target = root / "report.html"
    done = subprocess.run([sys.executable, "-m", "deployctl", "--project-dir", str(root), "report", release.id,
                           "--format", "html", "-o", str(target)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return target


class Recorder(http.server.BaseHTTPRequestHandler):
    """A proxy that answers nothing and remembers every request the browser sent through it."""

    seen: list[str] = []

    def _record(self):
        self.seen.append(f"{self.command} {self.path}")
        self.send_response(404)
        self.end_headers()

    do_GET = do_POST = do_HEAD = do_CONNECT = _record

    def log_message(self, *args):
        pass


@pytest.fixture
def proxy():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    Recorder.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], Recorder.seen
    server.shutdown()


def chromium(tmp_path, url: str, *what: str, proxy_port: int | None = None) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    profile.mkdir()
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars",
               "--force-device-scale-factor=1", "--virtual-time-budget=3000",
               "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,Translate",
               "--disable-domain-reliability", "--no-pings", "--disable-extensions", *what, url]
    if proxy_port is not None:
        command[1:1] = [f"--proxy-server=http://127.0.0.1:{proxy_port}", "--proxy-bypass-list=<-loopback>"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def boxes(tmp_path, page: Path) -> list[dict]:
    """Where Chromium drew each bar, the window and each verify marker: their attributes and box on the page."""
    measuring = tmp_path / "measuring.html"
    allowed = page.read_text().replace("default-src 'none'", "default-src 'none'; script-src 'unsafe-inline'")
    measuring.write_text(allowed.replace("</body>", MEASURE + "</body>"))
    dom = chromium(tmp_path, measuring.as_uri(), "--dump-dom").stdout
    found = []
    for element in re.findall(r"<(?:rect|circle) [^>]*>", dom):
        attributes = dict(re.findall(r'([\w-]+)="([^"]*)"', element))
        left, top, width, height = map(float, attributes["data-box"].split(","))
        found.append({**attributes, "box": (left, top, width, height)})
    return found


def colour(image: Image.Image, x: float, y: float) -> tuple[int, int, int]:
    return image.getpixel((round(x), round(y)))[:3]


def near(found: tuple[int, int, int], expected: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 12 for a, b in zip(found, expected, strict=True))


def test_the_timeline_as_chromium_draws_it(page, tmp_path):
    shot = tmp_path / "page.png"
    chromium(tmp_path, page.as_uri(), f"--screenshot={shot}")
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    drawn = boxes(tmp_path, page)
    bars = [b for b in drawn if b.get("class", "").startswith("phase ")]
    assert [b["data-phase"] for b in bars] == [name for name, _, _ in PHASES]
    expected = ["passed"] * 7 + ["failed"] + ["rollback"] * 6
    for bar, kind in zip(bars, expected, strict=True):
        left, top, width, height = bar["box"]
        assert bar["class"] == f"phase {kind}"
        assert near(colour(image, left + width / 2, top + height / 2), COLOURS[kind]), (bar["data-phase"], kind)
    # on the time axis where the timeline says: each bar after the one before, as long as its phase took
    scale = bars[1]["box"][2] / 4.0  # preflight: 4 s
    for bar, (name, seconds, _) in zip(bars, PHASES, strict=True):
        assert abs(bar["box"][2] - max(seconds * scale, 3)) <= 1.5, (name, bar["box"], scale)
    for before, after in zip(bars, bars[1:], strict=False):
        gap = after["box"][0] - (before["box"][0] + before["box"][2])
        assert abs(gap - 0.5 * scale) <= 1.5, (before["data-phase"], after["data-phase"], gap)
    # the maintenance window: shaded from maintenance on to maintenance off, behind the bars, nowhere else
    window = next(b for b in drawn if b.get("class") == "window")
    on, off = bars[4]["box"], bars[12]["box"]
    assert abs(window["box"][0] - on[0]) <= 1 and abs(window["box"][0] + window["box"][2] - (off[0] + off[2])) <= 1
    lock = bars[0]["box"]  # the lock's row, beside its bar: paper before the window, shaded inside it
    assert near(colour(image, lock[0] + lock[2] + 10, lock[1] + lock[3] / 2), COLOURS["paper"])
    assert near(colour(image, on[0] + 5, lock[1] + lock[3] / 2), COLOURS["window"])
    assert near(colour(image, off[0] + off[2] + 5, bars[-1]["box"][1] + 2), COLOURS["paper"]), "it ends with it"
    # verify results per host, at the (first) verify phase
    markers = {m["data-host"]: m for m in drawn if m.get("class", "").startswith("verify ")}
    verify = bars[7]["box"]
    for host, kind in (("web1", "failed"), ("web2", "passed")):
        left, top, width, height = markers[host]["box"]
        assert near(colour(image, left + width / 2, top + height / 2), COLOURS[kind]), host
        assert abs(left + width / 2 - (verify[0] + verify[2] / 2)) <= 1.5


def test_the_pages_text(page, tmp_path):
    dom = chromium(tmp_path, page.as_uri(), "--dump-dom").stdout
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    ident = re.search(r"DEP-\d{8}-\d{6}", text).group(0)
    assert f"{ident}: release v2 on local" in text
    assert "Outcome rolled-back (exit 4)" in text and "verify failed: web1: health: HTTP 503; rolled back" in text
    assert "Deployment time &lt; 30 min 47.0 s met" in text
    assert "Downtime &lt; 5 min 23.0 s met end of maintenance on → end of maintenance off" in text
    assert "Response time (p95) &lt; 500 ms 120 ms met" in text
    assert "Error rate after deploy &lt; 1 % - unknown no error_rate check in the verify results" in text
    assert "web1 health fail HTTP 503" in text and "web2 p95 pass p95 120 ms" in text
    assert "0 of 1 checks passed" in text and "2 of 2 checks passed" in text
    assert "phase passed phase failed rollback maintenance window" in text
    assert "8 verify failed 23.5 s 5.0 s" in text


def host(request: str) -> str:
    target = request.split(" ", 1)[1]
    return re.sub(r"^\w+://", "", target).split("/", 1)[0].split(":", 1)[0]


def test_the_page_makes_no_network_request(page, tmp_path, proxy):
    """Every request the browser makes goes through a recording proxy. Chromium's own (its updater and sign-in
    services, which it calls for an empty page too) are told apart by their hosts; the page itself names no
    host at all (tests/unit/test_report.py), and its Content-Security-Policy forbids any request."""
    port, seen = proxy
    chromium(tmp_path, "about:blank", "--dump-dom", proxy_port=port)
    assert {host(request) for request in seen} <= CHROMIUMS_OWN, f"Chromium's own requests changed: {seen}"
    seen.clear()
    chromium(tmp_path, page.as_uri(), "--dump-dom", proxy_port=port)
    assert [request for request in seen if host(request) not in CHROMIUMS_OWN] == [], seen
    # the same browser and proxy do see a page that fetches something: the check above can fail
    fetching = tmp_path / "fetching.html"
    fetching.write_text('<!DOCTYPE html><img src="http://deployctl-test.invalid/pixel.png">')
    chromium(tmp_path, fetching.as_uri(), "--dump-dom", proxy_port=port)
    assert "GET http://deployctl-test.invalid/pixel.png" in seen, seen
