"""Progress as an operator sees it, on real releases of the demo: plain lines when stderr is not a terminal (CI
logs, cron), a live line on a real pseudo-terminal of 80 columns that never garbles a prompt or what Ctrl-C
prints, and the outcome line alone with --quiet. The tests share one project, in the order they are written."""

import re

import pytest

from tests.support.project import DEPLOYCTL, DemoProject
from tests.support.terminal import Terminal, screen_lines

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """v1 released with stderr a pipe, as in a CI log."""
    project = DemoProject(tmp_path_factory.mktemp("progress") / "project")
    project.build("v1")
    project.build("v2")
    project.released = project.run("release", "v1", as_json=False)
    assert project.released.code == 0, project.released
    yield project
    project.stop()


def on_a_terminal(project, *args) -> Terminal:
    return Terminal([DEPLOYCTL, "--project-dir", str(project.root), *args], columns=80, rows=24)


def test_plain_lines_when_stderr_is_not_a_terminal(project):
    released = project.released
    assert "\x1b" not in released.stderr and "\r" not in released.stderr, "nothing rewritten, no colours"
    lines = released.stderr.splitlines()
    assert re.fullmatch(r"DEP-\d{8}-\d{6}(-\d+)? release v1 on local", lines[0]), lines
    phases = ["lock", "preflight", "backup", "stage", "maintenance on", "migrate", "deploy", "verify", "data state",
              "maintenance off", "unlock"]
    assert lines[1:] == [line for phase in phases
                         for line in (f"▶ {phase}", next(x for x in lines if x.startswith(f"✔ {phase} (")))]
    assert all(re.fullmatch(r"✔ [a-z ]+ \(\d+\.\ds, 1 host\)", line) for line in lines[2::2]), lines
    assert released.stdout == "live: v1 is live\n"


def test_a_live_line_on_a_terminal_and_ctrl_c_in_the_middle_of_it(project):
    terminal = on_a_terminal(project, "release", "v2")
    try:
        # the running phase, its time counting up, the hosts through its current task out of the phase's
        terminal.expect(r"▶ stage  0:0\d  hosts [01]/1")
        # Ctrl-C as soon as the phase shows: the whole phase (a second or two) to arrive in, not what is left of it
        terminal.expect(r"▶ maintenance on  0:0\d")
        terminal.interrupt()
        assert terminal.wait() == 130, terminal.text
    finally:
        terminal.close()
    raw = terminal.raw
    assert "\r\x1b[2K" in raw, "the live line is rewritten in place"
    assert raw.count("\x1b[?25l") == raw.count("\x1b[?25h") >= 1, "the cursor comes back every time it went"
    clocks = re.findall(r"▶ preflight  0:(\d\d)", terminal.text)
    assert len(set(clocks)) > 1, "the elapsed time counts up"
    screen = [line for line in screen_lines(raw) if line]
    assert all(len(line) <= 80 for line in screen), screen
    assert not [line for line in screen if line.startswith("▶")], f"no live line is left behind: {screen}"
    # what Ctrl-C prints, each line whole, between the finished phases, and the outcome last
    assert screen[0].endswith("release v2 on local")
    assert "SIGINT: stopping the running phase, then rolling back" in screen
    assert "✘ maintenance on" in "\n".join(screen) and "rolling back: interrupted" in screen, screen
    assert screen[-1] == "interrupted: interrupted; rolled back", screen
    assert project.served_version() == "v1"


def test_a_prompt_on_a_terminal_is_never_drawn_over_and_ctrl_c_answers_no(project):
    terminal = on_a_terminal(project, "release", "v1")
    try:
        terminal.expect(r"Release it again \(restart, new backup set\)\? \[y/N\]: $")
        at_prompt = screen_lines(terminal.raw)
        terminal.interrupt()
        assert terminal.wait() == 3, terminal.text
    finally:
        terminal.close()
    question = "v1 is already live on every host. Release it again (restart, new backup set)? [y/N]: "
    assert [line for line in at_prompt if line][-1] == question, at_prompt
    assert "✔ preflight" in "\n".join(at_prompt) and not [line for line in at_prompt if line.startswith("▶")]
    screen = [line for line in screen_lines(terminal.raw) if line]
    assert "SIGINT" not in terminal.text, "Ctrl-C at the question is the answer, not a cancel"
    assert any(line.startswith(question) for line in screen), "the question stays on screen"
    assert screen[-1].startswith("unchanged: v1 is already live"), screen


def test_quiet_prints_the_outcome_line_only(project):
    quiet = project.run("release", "v1", "--quiet", as_json=False)
    assert quiet.code == 3 and quiet.stderr == "", quiet
    assert quiet.stdout.startswith("unchanged: v1 is already live on every host") and quiet.stdout.count("\n") == 1
