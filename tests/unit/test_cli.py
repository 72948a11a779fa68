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
