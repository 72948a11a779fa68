"""The command line's own behaviour: global options in either place, --version, shell completion.
Read commands on a project with an empty history: no server, no ansible-playbook."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deployctl.history import History
from tests.support.terminal import Terminal

DEPLOYCTL = [sys.executable, "-m", "deployctl"]


@pytest.fixture
def project(tmp_path):
    for name in ("staging", "production"):
        (tmp_path / "inventory" / name).mkdir(parents=True)
        (tmp_path / "inventory" / name / "hosts.yml").write_text("all: {}\n")
    (tmp_path / "deployctl.yml").write_text(yaml.safe_dump({"app": "shop", "environments": {
        "staging": {"inventory": "inventory/staging"}, "production": {"inventory": "inventory/production"}}}))
    history = History(tmp_path / ".deployctl" / "history.db")
    for env in ("staging", "production"):
        done = history.start(env, "release", f"v1-{env}")
        history.finish(done, "live", 0)
    return tmp_path


def deployctl(*args, cwd, env=None):
    return subprocess.run([*DEPLOYCTL, *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args", [
    ["--json", "-e", "production", "history"],
    ["history", "--json", "-e", "production"],
    ["-e", "staging", "history", "--json", "--env", "production"],  # after the command wins
    ["--json", "history", "-e", "production"],
])
def test_global_options_before_or_after_the_command(project, args):
    done = deployctl(*args, cwd=project)
    assert done.returncode == 0, done.stderr
    assert [d["version"] for d in json.loads(done.stdout)] == ["v1-production"]


def test_project_dir_after_the_command(project, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    done = deployctl("history", "--project-dir", str(project), "--json", "-e", "staging", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert [d["version"] for d in json.loads(done.stdout)] == ["v1-staging"]


def test_a_typo_in_an_option_after_the_command_is_exit_2(project):
    done = deployctl("history", "--jsn", cwd=project)
    assert done.returncode == 2 and "No such option" in done.stderr


def test_version_names_ansible_core_and_ansible_runner(project):
    done = deployctl("--version", cwd=project)
    assert done.returncode == 0
    assert "ansible-core 2." in done.stdout and "ansible-runner 2." in done.stdout


def test_shell_completion_through_clicks_mechanism(project):
    """What the README's `eval "$(_DEPLOYCTL_COMPLETE=bash_source deployctl)"` installs, and what it answers."""
    deployctl_bin = Path(sys.executable).with_name("deployctl")
    source = subprocess.run([str(deployctl_bin)], env={**os.environ, "_DEPLOYCTL_COMPLETE": "bash_source"},
                            capture_output=True, text=True, timeout=60)
    assert "complete -o nosort -F _deployctl_completion deployctl" in source.stdout
    answer = subprocess.run([str(deployctl_bin)], capture_output=True, text=True, timeout=60, env={
        **os.environ, "_DEPLOYCTL_COMPLETE": "bash_complete", "COMP_WORDS": "deployctl rol", "COMP_CWORD": "1"})
    assert answer.stdout.split() == ["plain,rollback"]


def test_history_fits_a_real_80_column_terminal_and_wide_shows_it_all(project):
    """On a pseudo-terminal of 80 columns (no COLUMNS): ids whole, messages on one line, shortened; --wide (given
    after the command) prints them whole."""
    history = History(project / ".deployctl" / "history.db")
    message = "verify failed on web1: health: HTTP 503 from http://127.0.0.1:8080/health " * 3
    for n in range(3):
        done = history.start("staging", "release", f"v1.{n}.0-rc.{n}")
        done.details["message"] = message
        history.finish(done, "rolled-back", 4)
    for wide in (False, True):
        # the terminal's own width: COLUMNS and LINES as a login shell leaves them, unset
        terminal = Terminal([*DEPLOYCTL, "--project-dir", str(project), "-e", "staging", "history",
                             *(["--wide"] if wide else [])], columns=80, env={"COLUMNS": "", "LINES": ""})
        try:
            assert terminal.wait(60) == 0, terminal.text
        finally:
            terminal.close()
        lines = [line.rstrip() for line in terminal.text.replace("\r", "").splitlines()]
        ids = [d.id for d in history.recent("staging")]
        rows = [line for line in lines if line.startswith("DEP-")]
        assert len(rows) == 4 and all(any(ident in row for row in rows) for ident in ids), lines
        if wide:
            assert sum(message.strip() in row for row in rows) == 3, lines
        else:
            assert all(len(line) <= 80 for line in lines), lines
            assert sum(row.endswith("…") for row in rows) == 3, lines


def test_quiet_and_wide_are_global_options_too(project):
    for args in (["-q", "--wide", "history", "--json"], ["history", "--quiet", "--wide", "--json"]):
        done = deployctl(*args, "-e", "production", cwd=project)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert [d["version"] for d in json.loads(done.stdout)] == ["v1-production"]


def test_report_as_a_web_page_written_to_a_file(project):
    ident = History(project / ".deployctl" / "history.db").recent("staging")[0].id
    target = project / "report.html"
    done = deployctl("report", ident, "--format", "html", "-o", str(target), "-e", "staging", cwd=project)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and target.read_text().startswith("<!DOCTYPE html>")
    refused = deployctl("report", ident, "--format", "html", "-o", str(project / "missing" / "r.html"), cwd=project)
    assert refused.returncode == 2 and "cannot write" in refused.stderr
