"""The wrapper a database tool runs under in a container (deployctl.core's tool_runners), run here with the
host's sh: the credentials arrive as private files and go when the tool ends, the rest of stdin is the
tool's, and a tool that only writes is stopped when the stdin deployctl holds open ends."""

import os
import signal
import subprocess
import sys
import time

import pytest
from ansible_collections.deployctl.core.plugins.module_utils.backup_common import BackupError
from ansible_collections.deployctl.core.plugins.module_utils.tool_runners import (
    SECRETS_TOKEN,
    WRAPPER,
    ContainerTools,
    escape_line,
)

AWKWARD = 'pa\\ss\nword \\c %s $HOME `id` "\' \\\\n é'


def wrapper(tmp_path, mode, secrets, argv, **kwargs):
    preamble = "".join(f"{name}\n{escape_line(content)}\n" for name, content in secrets.items()).encode()
    env = dict(os.environ, TMPDIR=str(tmp_path))
    return preamble, ["sh", "-c", WRAPPER, "deployctl", mode, str(len(secrets)), *argv], env


def test_credentials_arrive_as_private_files_and_go_with_the_tool(tmp_path):
    preamble, argv, env = wrapper(tmp_path, "stream", {"client.cnf": AWKWARD, "pgpass": "*:*:*:*:x"}, [
        "sh", "-c", 'cat "$1"; printf "|"; cat "${2#--file=}"; printf "|"; stat -c %a "$(dirname "$1")" "$1"; cat',
        "tool", f"{SECRETS_TOKEN}/client.cnf", f"--file={SECRETS_TOKEN}/pgpass"])
    # the tool reads what follows the credentials on stdin, bytes as they are
    done = subprocess.run(argv, input=preamble + b"\x00\xffrest\n", capture_output=True, env=env, check=True)
    first, second, modes = done.stdout.split(b"|", 2)
    assert first.decode() == AWKWARD
    assert second == b"*:*:*:*:x"
    assert modes.startswith(b"700\n600\n") and modes.endswith(b"\x00\xffrest\n")
    assert list(tmp_path.iterdir()) == []


def test_the_tools_arguments_and_environment_name_the_private_directory(tmp_path):
    preamble, argv, env = wrapper(tmp_path, "stream", {"pgpass": "secret"}, [
        "env", f"PGPASSFILE={SECRETS_TOKEN}/pgpass", "sh", "-c", 'cat "$PGPASSFILE"'])
    done = subprocess.run(argv, input=preamble, capture_output=True, env=env, check=True)
    assert done.stdout == b"secret"


def test_the_tools_exit_status_comes_through(tmp_path):
    preamble, argv, env = wrapper(tmp_path, "stream", {"a": "b"}, ["sh", "-c", "exit 7"])
    assert subprocess.run(argv, input=preamble, env=env).returncode == 7
    # a writer's stdin stays open until its output ends, as pump() holds it
    preamble, argv, env = wrapper(tmp_path, "lifeline", {}, ["sh", "-c", "sleep 0.2; echo out; exit 5"])
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True)
    proc.stdin.write(preamble)
    proc.stdin.flush()
    assert proc.stdout.read() == b"out\n"
    assert proc.wait(timeout=10) == 5  # ended before its stdin did
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)
    proc.stdin.close()
    proc.stdout.close()


def test_missing_credentials_stop_before_the_tool_runs(tmp_path):
    _preamble, argv, env = wrapper(tmp_path, "stream", {"a": "b"}, ["touch", str(tmp_path / "ran")])
    done = subprocess.run(argv, input=b"a\n", capture_output=True, env=env)
    assert done.returncode == 125 and b"did not arrive" in done.stderr
    assert not (tmp_path / "ran").exists()


def test_a_writer_stops_when_the_stdin_held_open_for_it_ends(tmp_path):
    marker = tmp_path / "still-writing"
    # one process, like a dump (a shell loop would leave its `sleep` behind when stopped)
    writer = ("import pathlib, sys, time\nwhile True:\n"
              f"    pathlib.Path({str(marker)!r}).write_text(str(time.time()))\n"
              "    sys.stdout.write('line\\n'); sys.stdout.flush(); time.sleep(0.1)")
    preamble, argv, env = wrapper(tmp_path, "lifeline", {"a": "b"}, [sys.executable, "-c", writer])
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True)
    proc.stdin.write(preamble)
    proc.stdin.flush()
    assert proc.stdout.readline() == b"line\n"
    proc.stdin.close()  # what `docker exec` does to the command when it is killed
    assert proc.wait(timeout=10) != 0
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):  # nothing of it is left, not even a process to reap
        os.killpg(proc.pid, 0)
    stamp = marker.stat().st_mtime
    time.sleep(0.5)
    assert marker.stat().st_mtime == stamp, "the writer kept running"
    assert [p.name for p in tmp_path.iterdir()] == ["still-writing"]
    proc.stdout.close()


def test_directories_of_dead_wrappers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "30"])
    try:
        for pid in (dead.pid, live.pid):
            (tmp_path / f"deployctl-secrets.{pid}").mkdir()
            (tmp_path / f"deployctl-secrets.{pid}" / "client.cnf").write_text("x")
        preamble, argv, env = wrapper(tmp_path, "stream", {}, ["true"])
        subprocess.run(argv, input=preamble, env=env, check=True)
        assert [p.name for p in tmp_path.iterdir()] == [f"deployctl-secrets.{live.pid}"]
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()


def test_the_command_line_carries_no_credential():
    tools = ContainerTools.__new__(ContainerTools)
    tools.docker, tools.container, tools.service, tools._secrets = "docker", {"id": "c0ffee"}, "db", {}
    path = tools.secret_file("pgpass", "*:*:*:*:hunter2-secret")
    argv = tools.argv("stream", ["pg_dump", "-w"], {"PGPASSFILE": path, "PGPASSWORD": None, "PGUSER": "app"})
    assert argv[:4] == ["docker", "exec", "-i", "c0ffee"]
    assert argv[-8:] == ["1", "env", "-u", "PGPASSWORD", f"PGPASSFILE={SECRETS_TOKEN}/pgpass", "PGUSER=app",
                         "pg_dump", "-w"]
    assert not any("hunter2" in part for part in argv)
    assert tools.preamble() == b"pgpass\n*:*:*:*:hunter2-secret\n"


def test_a_credential_with_nul_is_refused():
    with pytest.raises(BackupError):
        escape_line("a\0b")
