"""What the user sees: progress on stderr, results on stdout (a table, or JSON with --json).

Progress has three forms. On a terminal, a live line updated in place (rich's Live display) shows the
running phase, how long it has run and how many of its hosts are through its current task, above it one
line per finished phase. Anywhere else (CI logs, cron, a pipe) the same events are plain lines, one per
event, never rewritten. With --quiet there is none: only the outcome. Prompts and failure output are never
drawn over: the live line is taken down for a prompt and every other line is printed above it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
import time

from rich import box
from rich.console import Console
from rich.live import Live
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from deployctl.runner import PHASE_HOSTS

TICK = 0.25  # seconds between two refreshes of the live line
_LIVE: set[Output] = set()  # the outputs whose live line is up (close_all takes them down at exit)
FINISHED = ("runner_on_ok", "runner_on_failed", "runner_on_skipped", "runner_on_unreachable")


class _Console(Console):
    """A console that goes quiet when its reader goes away (`deployctl release | head`, a dropped SSH
    session) instead of rich's default of exiting: a release must never stop halfway for that."""

    def on_broken_pipe(self) -> None:
        self.quiet = True


class _Progress:
    """The running phase as the events tell it: since when, its hosts, its current task and the hosts
    through that task (across batches: a task's id stays the same in every batch of a serial play)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.started: float | None = None  # the first phase of the command
        self.phase: str | None = None
        self.phase_started = 0.0
        self.hosts: list[str] | None = None  # the phase's hosts, when the run said (deployctl.runner.PHASE_HOSTS)
        self.task = ""
        self.task_id = ""
        self.through: dict[str, set[str]] = {}  # task id -> hosts that finished it
        self.seen: set[str] = set()  # hosts with a result in this phase

    def start(self, phase: str) -> None:
        with self.lock:
            now = time.monotonic()
            self.started = self.started or now
            self.phase, self.phase_started, self.hosts = phase, now, None
            self.task, self.task_id, self.through, self.seen = "", "", {}, set()

    def finish(self) -> int:
        """The number of hosts the phase ran on."""
        with self.lock:
            count = len(self.hosts) if self.hosts is not None else len(self.seen)
            self.phase = None
            return count

    def event(self, kind: str, data: dict) -> None:
        with self.lock:
            if kind == PHASE_HOSTS and str(data.get("phase", "")).replace("-", " ") == self.phase:
                self.hosts = list(data.get("hosts") or [])
            elif kind == "playbook_on_task_start":
                self.task, self.task_id = str(data.get("task") or data.get("name") or ""), str(data.get("task_uuid"))
            elif kind in FINISHED and data.get("host"):
                self.seen.add(data["host"])
                self.through.setdefault(str(data.get("task_uuid")), set()).add(data["host"])

    def line(self, width: int) -> Text:
        with self.lock:
            if self.phase is None or self.started is None:
                return Text("")
            now = time.monotonic()
            through = len(self.through.get(self.task_id, ()))
            total = len(self.hosts) if self.hosts is not None else None
            hosts = (f"  hosts {through}/{total}" if total is not None else
                     f"  hosts {through}" if self.task else "")  # nothing yet: Ansible is starting
            line = Text.assemble(("▶ ", "bold"), (self.phase, "bold"), f"  {_clock(now - self.phase_started)}",
                                 hosts, (f"  {self.task}" if self.task else "", "dim"),
                                 (f"  ({_clock(now - self.started)} in all)", "dim"))
        line.truncate(max(width - 1, 10), overflow="ellipsis")
        line.no_wrap = True
        return line


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"


class Output:
    def __init__(self, as_json: bool = False, quiet: bool = False, wide: bool = False):
        self.as_json = as_json
        self.quiet = quiet
        self.wide = wide  # tables at their full width: nothing shortened
        self.err = _Console(stderr=True, highlight=False, soft_wrap=True)
        self.out = _Console(highlight=False, soft_wrap=True)
        self._gone: set[str] = set()
        self._progress = _Progress()
        self._live: Live | None = None
        self._ticker: threading.Thread | None = None
        self._held = 0  # prompts under way: the live line stays down

    # ------------------------------------------------------------ progress

    @property
    def live(self) -> bool:
        """Whether progress is a line updated in place: stderr is a terminal, and --quiet was not given."""
        return not self.quiet and "err" not in self._gone and self.err.is_terminal

    def _print(self, stream: str, *objects) -> None:
        """Print, unless the terminal went away (an SSH session dropped): a release never stops for that."""
        if stream in self._gone:
            return
        try:
            (self.err if stream == "err" else self.out).print(*objects)
        except (OSError, ValueError):
            self._lost("err" if stream == "err" else "out")

    def progress(self, message: str) -> None:
        if not self.quiet:
            self._print("err", message)  # above the live line while it is up

    def phase_started(self, name: str) -> None:
        self._progress.start(name)
        if self.live:
            self._show()
        else:
            self.progress(f"[bold]▶ {name}[/bold]")

    def phase_finished(self, name: str, passed: bool, seconds: float, problem: str = "") -> None:
        hosts = self._progress.finish()
        self._refresh()  # the live line empties before the finished phase's line goes above it
        mark = "[green]✔[/green]" if passed else "[red]✘[/red]"
        on = f", {hosts} host{'' if hosts == 1 else 's'}" if hosts else ""
        self.progress(f"{mark} {name} ({seconds:.1f}s{on}){'' if passed else ': ' + problem}")

    def on_event(self, kind: str, data: dict) -> None:
        """What a phase's events say while it runs (called from the thread that reads them): the live line's
        counts, and a line for each failure, so nobody stares at a silent terminal."""
        self._progress.event(kind, data)
        if kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            result = data.get("res") or {}
            msg = " ".join(str(result.get("msg") or result.get("stderr") or "").split())[:200]
            self.progress(f"  [red]{data.get('host')}[/red] {data.get('task', '')}: {msg}")

    @property
    def prompting(self) -> bool:
        """Whether a prompt has the terminal (Output.paused)."""
        return self._held > 0

    @contextlib.contextmanager
    def paused(self):
        """Take the live line down while something else uses the terminal (a prompt); it comes back after."""
        self._held += 1
        self.close()
        try:
            yield
        finally:
            self._held -= 1
            if self._progress.phase is not None and self.live:
                self._show()

    def close(self) -> None:
        """Take the live line down for good (the outcome follows); what was printed above it stays."""
        _LIVE.discard(self)
        live, self._live = self._live, None
        if live is not None:
            try:
                live.stop()
            except (OSError, ValueError):
                self._lost("err")
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join()
        self._ticker = None

    def _show(self) -> None:
        if self._live is not None or self._held:
            return
        self._live = Live(self._progress.line(self.err.width), console=self.err, auto_refresh=False,
                          transient=True, redirect_stdout=False, redirect_stderr=False)
        try:
            self._live.start()
        except (OSError, ValueError):
            self._lost("err")
            return
        _LIVE.add(self)
        # our own refresh thread rather than rich's: a write error here must end the display, not the thread
        self._ticker = threading.Thread(target=self._tick, name="deployctl progress", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while self._live is not None:
            self._refresh()
            time.sleep(TICK)

    def _refresh(self) -> None:
        live = self._live
        if live is None:
            return
        try:
            live.update(self._progress.line(self.err.width), refresh=True)
        except (OSError, ValueError):
            self._lost("err")

    def _lost(self, stream: str) -> None:
        """The stream's reader is gone: nothing more is written to it, and the live line is dropped."""
        self._gone.add(stream)
        if stream == "err":
            self._live = None

    # ------------------------------------------------------------ results

    def error(self, message: str) -> None:
        self.close()
        if self.as_json:
            self._write(json.dumps({"error": message}))
        self._print("err", f"[red]error:[/red] {message}")

    def _write(self, text: str) -> None:
        try:
            print(text, file=sys.stdout, flush=True)
        except (OSError, ValueError):
            self._gone.add("out")

    def result(self, data, table: Table | None = None, text: str | None = None) -> None:
        self.close()
        if self.as_json:
            self._write(json.dumps(data, indent=2, default=str))
        elif table is not None and self.wide:
            self._print_wide(_widened(table))
        elif table is not None:
            self._print("out", table)
        if not self.as_json and text:
            self._print("out", text)

    def _print_wide(self, view: Table) -> None:
        """The table as wide as its widest row (a console prints no wider than itself: one that wide)."""
        try:
            width = Measurement.get(self.out, self.out.options.update(width=1_000_000), view).maximum
            wide = _Console(file=self.out.file, width=max(width, self.out.width), highlight=False,
                            force_terminal=self.out.is_terminal, color_system=self.out.color_system)
            wide.print(view, crop=False)
        except (OSError, ValueError):
            self._lost("out")


def close_all() -> None:
    """Take down every live line still up (an exception on the way out): the terminal gets its cursor back."""
    for output in list(_LIVE):
        output.close()


def detach_dead_streams() -> None:
    """Point stdout/stderr at /dev/null when their terminal is gone, so that the exit code survives the
    interpreter's final flush."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def table(title: str, columns: list[str], rows: list[list], whole: tuple[str, ...] = (),
          shorten: tuple[str, ...] = ()) -> Table:
    """A table that fits the terminal. The first column and the `whole` ones (ids, versions: what the next
    command takes) are never cut or wrapped; the `shorten` ones (free text) stay on one line, cut with an
    ellipsis (--wide and --json have all of it); the others wrap."""
    cells = [["" if cell is None else " ".join(str(cell).split()) for cell in row] for row in rows]
    longest = [max([len(column), *(len(row[index]) for row in cells)]) for index, column in enumerate(columns)]
    # rich would squeeze the other columns to nothing for a long one-line cell: share out what is left
    # (two characters between columns, none at the edges)
    left = shutil.get_terminal_size().columns - 2 * (len(columns) - 1)
    left -= sum(width for column, width in zip(columns, longest, strict=True) if column not in shorten)
    share = max(12, left // max(1, sum(column in shorten for column in columns)))
    view = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                 collapse_padding=True)
    for index, column in enumerate(columns):
        if index == 0 or column in whole:
            view.add_column(column, no_wrap=True, min_width=longest[index])
        elif column in shorten:
            view.add_column(column, no_wrap=True, overflow="ellipsis", max_width=share)
        else:
            view.add_column(column)
    for row in cells:
        view.add_row(*row)
    return view


def _widened(view: Table) -> Table:
    """The table with every cell whole, each row on one line however wide (--wide): the terminal wraps it."""
    for column in view.columns:
        column.no_wrap, column.max_width = True, None
    return view
