"""The process watch the secret tests rely on sees what it must: a secret in a command line or an environment."""

import os
import subprocess
import time

from tests.support.leaks import ProcessWatch


def test_the_watch_sees_a_secret_in_a_command_line_and_in_an_environment():
    secret, other = "s3cret-" + os.urandom(6).hex(), "0ther-" + os.urandom(6).hex()
    with ProcessWatch(secret, other) as watch:
        shown = [subprocess.Popen(["sh", "-c", "sleep 0.5", secret]),
                 subprocess.Popen(["sleep", "0.5"], env=dict(os.environ, PASSWORD=other))]
        for proc in shown:
            proc.wait()
        time.sleep(0.2)
    pids = {proc.pid for proc in shown}
    assert {(pid, where) for pid, where, _ in watch.found if pid in pids} == {(shown[0].pid, "cmdline"),
                                                                              (shown[1].pid, "environ")}
