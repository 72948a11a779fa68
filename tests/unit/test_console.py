"""Progress as the user sees it: a live line on a terminal, plain lines elsewhere, none with --quiet; tables
whole with --wide. The events are those a phase's run forwards (deployctl.runner); the terminal is rich's."""

import io

from rich.console import Console

from deployctl.console import Output, _Console, table
from deployctl.runner import PHASE_HOSTS


def on(output: Output, terminal: bool, width: int = 80) -> io.StringIO:
    """Send the output's progress to a buffer that is (or is not) a terminal of `width` columns."""
    buffer = io.StringIO()
    output.err = _Console(file=buffer, force_terminal=terminal, width=width, highlight=False, soft_wrap=True,
                          color_system=None)
    return buffer


def task(output: Output, name: str, uuid: str, *hosts: str) -> None:
    output.on_event("playbook_on_task_start", {"task": name, "task_uuid": uuid})
    for host in hosts:
        output.on_event("runner_on_ok", {"task": name, "task_uuid": uuid, "host": host, "res": {}})


def test_plain_progress_is_one_line_per_event():
    output = Output()
    buffer = on(output, terminal=False)
    assert not output.live
    output.phase_started("deploy")
    output.on_event(PHASE_HOSTS, {"phase": "deploy", "hosts": ["web1", "web2"]})
    task(output, "Switch", "t1", "web1", "web2")
    output.on_event("runner_on_failed", {"task": "Restart", "task_uuid": "t2", "host": "web2",
                                         "res": {"msg": "exit 3\nport taken"}})
    output.phase_finished("deploy", False, 3.21, "web2: exit 3")
    assert buffer.getvalue().splitlines() == ["▶ deploy", "  web2 Restart: exit 3 port taken",
                                              "✘ deploy (3.2s, 2 hosts): web2: exit 3"]
    assert "\x1b" not in buffer.getvalue() and "\r" not in buffer.getvalue()


def test_quiet_prints_no_progress_but_the_outcome():
    output = Output(quiet=True)
    buffer = on(output, terminal=True)
    output.out = Console(file=io.StringIO(), width=80)
    output.phase_started("deploy")
    task(output, "Switch", "t1", "web1")
    output.phase_finished("deploy", True, 1.0)
    output.progress("a warning")
    output.result({"outcome": "live"}, text="live: v2 is live")
    assert buffer.getvalue() == "" and output.out.file.getvalue() == "live: v2 is live\n"


def test_the_live_line_counts_hosts_through_the_current_task_against_the_phases_hosts():
    output = Output()
    output._progress.start("deploy")
    assert "hosts" not in output._progress.line(80).plain, "nothing to count before Ansible starts"
    output.on_event(PHASE_HOSTS, {"phase": "maintenance-on", "hosts": ["web1"]})  # a skipped phase's gate
    output.on_event(PHASE_HOSTS, {"phase": "deploy", "hosts": ["web1", "web2", "web3"]})
    task(output, "Switch current and restart", "t1", "web1")
    line = output._progress.line(80).plain
    assert line.startswith("▶ deploy  0:00  hosts 1/3  Switch current and restart"), line
    # a serial play: the same task again for the next batch counts on
    task(output, "Wait until healthy", "t2", "web1")
    task(output, "Switch current and restart", "t1", "web2", "web3")
    assert "hosts 3/3  Switch current and restart" in output._progress.line(80).plain
    assert len(output._progress.line(40).plain) <= 40, "one line, however narrow the terminal"
    assert output._progress.finish() == 3


def test_a_live_line_on_a_terminal_is_updated_in_place_and_prints_above_it():
    output = Output()
    buffer = on(output, terminal=True)
    assert output.live
    output.phase_started("deploy")
    output.on_event(PHASE_HOSTS, {"phase": "deploy", "hosts": ["web1"]})
    task(output, "Switch", "t1", "web1")
    output._refresh()
    output.progress("a line above the live one")
    output.phase_finished("deploy", True, 1.5)
    output.close()
    raw = buffer.getvalue()
    assert "\r\x1b[2K" in raw, "the live line is rewritten in place"
    assert "deploy  0:00  hosts 1/1  Switch" in raw
    assert "a line above the live one\n" in raw and "✔ deploy (1.5s, 1 host)\n" in raw
    assert raw.endswith("\x1b[?25h") or "\x1b[?25h" in raw[-40:], "the cursor comes back"
    assert output._ticker is None and output._live is None


def test_a_prompt_takes_the_live_line_down_and_it_comes_back_after():
    output = Output()
    buffer = on(output, terminal=True)
    output.phase_started("preflight")
    with output.paused():
        assert output._live is None
        output.phase_started("preflight")  # nothing comes up while the prompt is on
        assert output._live is None
        at_prompt = len(buffer.getvalue())
    assert output._live is not None
    output.close()
    assert buffer.getvalue()[:at_prompt].endswith("\x1b[2K") or "\x1b[2K" in buffer.getvalue()[at_prompt - 20:at_prompt]


class Gone(io.StringIO):
    """A terminal that went away (the SSH session dropped): every write fails."""

    def __init__(self):
        super().__init__()
        self.gone = False

    def write(self, text):
        if self.gone:
            raise OSError(5, "Input/output error")
        return super().write(text)

    def isatty(self):
        return True


def test_a_terminal_that_goes_away_ends_the_live_line_not_the_command():
    output = Output()
    terminal = Gone()
    output.err = _Console(file=terminal, force_terminal=True, width=80, color_system=None)
    output.phase_started("deploy")
    terminal.gone = True
    task(output, "Switch", "t1", "web1")
    output._refresh()
    output.progress("lost")
    output.phase_finished("deploy", True, 1.0)
    output.close()
    assert "err" in output._gone and output._live is None and not output.live


def test_wide_tables_keep_every_cell_whole(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    message = "verify failed on web1: health: HTTP 503 from http://127.0.0.1:8080/health " * 3
    rows = [["DEP-20261201-093000", "release", "v1.4.0", message.strip()]]
    for wide in (False, True):
        output = Output(wide=wide)
        output.out = Console(file=io.StringIO(), width=80, color_system=None)
        output.result([], table("History", ["id", "action", "version", "message"], rows, shorten=("message",)))
        lines = output.out.file.getvalue().splitlines()
        if wide:
            assert any(message.strip() in line for line in lines), lines
        else:
            assert all(len(line) <= 80 for line in lines) and any("…" in line for line in lines), lines
