"""What the user sees: progress on stderr, results on stdout (a table, or JSON with --json)."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table


class Output:
    def __init__(self, as_json: bool = False, quiet: bool = False):
        self.as_json = as_json
        self.quiet = quiet
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.out = Console(highlight=False, soft_wrap=True)

    def progress(self, message: str) -> None:
        if not self.quiet:
            self.err.print(message)

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
            print(json.dumps({"error": message}), file=sys.stdout)
        self.err.print(f"[red]error:[/red] {message}")

    def result(self, data, table: Table | None = None, text: str | None = None) -> None:
        if self.as_json:
            print(json.dumps(data, indent=2, default=str))
        elif table is not None:
            self.out.print(table)
        if not self.as_json and text:
            self.out.print(text)


def table(title: str, columns: list[str], rows: list[list]) -> Table:
    view = Table(title=title, title_justify="left")
    for column in columns:
        view.add_column(column)
    for row in rows:
        view.add_row(*("" if cell is None else str(cell) for cell in row))
    return view
