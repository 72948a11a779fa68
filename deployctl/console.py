"""What the user sees: progress on stderr, results on stdout (a table, or JSON with --json)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys

from rich import box
from rich.console import Console
from rich.table import Table


class _Console(Console):
    """A console that goes quiet when its reader goes away (`deployctl release | head`, a dropped SSH
    session) instead of rich's default of exiting: a release must never stop halfway for that."""

    def on_broken_pipe(self) -> None:
        self.quiet = True


class Output:
    def __init__(self, as_json: bool = False, quiet: bool = False):
        self.as_json = as_json
        self.quiet = quiet
        self.err = _Console(stderr=True, highlight=False, soft_wrap=True)
        self.out = _Console(highlight=False, soft_wrap=True)
        self._gone: set[str] = set()

    def _print(self, stream: str, *objects) -> None:
        """Print, unless the terminal went away (an SSH session dropped): a release never stops for that."""
        if stream in self._gone:
            return
        try:
            (self.err if stream == "err" else self.out).print(*objects)
        except (OSError, ValueError):
            self._gone.add(stream)

    def progress(self, message: str) -> None:
        if not self.quiet:
            self._print("err", message)

    def phase_started(self, name: str) -> None:
        self.progress(f"[bold]▶ {name}[/bold]")

    def phase_finished(self, name: str, passed: bool, seconds: float, problem: str = "") -> None:
        mark = "[green]✔[/green]" if passed else "[red]✘[/red]"
        self.progress(f"{mark} {name} ({seconds:.1f}s){'' if passed else ': ' + problem}")

    def on_event(self, kind: str, data: dict) -> None:
        """Live failure lines while a phase runs, so nobody stares at a silent terminal."""
        if kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            result = data.get("res") or {}
            msg = " ".join(str(result.get("msg") or result.get("stderr") or "").split())[:200]
            self.progress(f"  [red]{data.get('host')}[/red] {data.get('task', '')}: {msg}")

    def error(self, message: str) -> None:
        if self.as_json:
            self._write(json.dumps({"error": message}))
        self._print("err", f"[red]error:[/red] {message}")

    def _write(self, text: str) -> None:
        try:
            print(text, file=sys.stdout, flush=True)
        except (OSError, ValueError):
            self._gone.add("out")

    def result(self, data, table: Table | None = None, text: str | None = None) -> None:
        if self.as_json:
            self._write(json.dumps(data, indent=2, default=str))
        elif table is not None:
            self._print("out", table)
        if not self.as_json and text:
            self._print("out", text)


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
    ellipsis (--json has all of it); the others wrap."""
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
