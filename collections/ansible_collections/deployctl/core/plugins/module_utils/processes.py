# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""Commands deployctl starts on a host, each in a session and process group of its own, recorded on the host.

Ansible's workers, the SSH connection and the control node can all die while a migration or a restore
runs; the command itself does not die with them. So every command a deployctl module starts is recorded in
a registry directory on the host (one JSON file per process group) *before* it executes: the child writes
its own record before it execs the command, so no command can run unrecorded. Recovery reads the registry, kills
the groups and confirms they are gone before it restores anything.

Standard library only: this runs on the managed hosts (Python 3.8+).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

OUTPUT_LIMIT = 256 * 1024  # bytes of stdout/stderr returned; the tail is what explains a failure

# Set once per module run by configure(); every popen()/run() of that module is then recorded.
_registry = {"dir": None, "deployment_id": "", "label": ""}


def registry_dir(app_root):
    return os.path.join(app_root, ".deployctl", "processes")


def configure(directory, deployment_id="", label=""):
    """Record every command this module starts in `directory` (None: do not record)."""
    _registry.update(dir=directory, deployment_id=deployment_id or "", label=label or "")


def _boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _stat(pid):
    """(state, pgid, sid, start time in clock ticks) of pid, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[2]), int(fields[3]), int(fields[19])


def _record_path(directory, pid):
    return os.path.join(directory, f"{pid}.json")


# Runs as the command's first process image: a session of its own, its own record, then exec of the
# command in the same process. A fresh interpreter rather than a preexec_fn, which is unsafe in modules
# that run threads; and the record exists before the command runs, whoever dies when.
_LAUNCHER = r"""
import json, os, sys, time
directory, deployment_id, label = sys.argv[1:4]
argv = sys.argv[4:]
os.setsid()
pid = os.getpid()
with open(f"/proc/{pid}/stat") as handle:
    ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
try:
    with open("/proc/sys/kernel/random/boot_id") as handle:
        boot = handle.read().strip()
except OSError:
    boot = ""
record = {"pid": pid, "pgid": pid, "start_ticks": ticks, "boot_id": boot, "deployment_id": deployment_id,
          "label": label, "program": os.path.basename(argv[0]),
          "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
path = os.path.join(directory, "%d.json" % pid)
with open(path + ".tmp", "w") as handle:
    json.dump(record, handle)
os.replace(path + ".tmp", path)
try:
    os.execvp(argv[0], argv)
except OSError as exc:
    sys.stderr.write("cannot run %s: %s\n" % (argv[0], exc.strerror))
    os._exit(127)
"""


class TrackedPopen(subprocess.Popen):
    """subprocess.Popen in a session of its own, recorded in the registry until it has been reaped."""

    def __init__(self, argv, label=None, **kwargs):
        self._record = None
        directory = _registry["dir"]
        argv = [str(a) for a in argv]
        if directory is None:
            kwargs["start_new_session"] = True
            super().__init__(argv, **kwargs)
            return
        os.makedirs(directory, mode=0o700, exist_ok=True)
        launcher = [sys.executable, "-c", _LAUNCHER, directory, _registry["deployment_id"],
                    label or _registry["label"]]
        super().__init__(launcher + argv, **kwargs)
        self._record = _record_path(directory, self.pid)

    def _forget(self):
        if self._record is not None and self.returncode is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._record)
            self._record = None

    def wait(self, timeout=None):
        returncode = super().wait(timeout)
        self._forget()
        return returncode

    def poll(self):
        returncode = super().poll()
        self._forget()
        return returncode

    def kill_group(self, grace=5.0):
        """Stop the whole group the command leads (a timeout, or the module giving up on it)."""
        info = _stat(self.pid)
        if info is not None:
            _kill_group(self.pid, self.pid, info[3], grace)
        self.wait()


def popen(argv, label=None, **kwargs):
    return TrackedPopen(argv, label=label, **kwargs)


def run(argv, input=None, timeout=None, label=None, cwd=None, env=None, stdin=None):
    """Like subprocess.run with captured output, but tracked, and without pipes the command could keep open.

    Output goes to unlinked temporary files rather than pipes: a command that leaves a daemon behind
    (a restart) returns as soon as it exits itself, instead of when the daemon closes its stdout.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as source:
        if input is not None:
            source.write(input if isinstance(input, bytes) else input.encode("utf-8"))
            source.seek(0)
            stdin = source
        proc = popen(argv, label=label, cwd=cwd, env=env, stdout=out, stderr=err,
                     stdin=subprocess.DEVNULL if stdin is None else stdin)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill_group()
            raise
        return subprocess.CompletedProcess(argv, proc.returncode, _tail(out), _tail(err))


def argv_of(command):
    """A command given as a string (split like a shell would, run without one) or as a list of arguments."""
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command or []]


def run_text(argv, timeout, label=None, cwd=None, env=None):
    """(rc, stdout, stderr) of a short command, as text; rc None when it could not run or timed out, and
    stderr then says why."""
    try:
        done = run(argv, timeout=timeout, label=label, cwd=cwd, env=env)
    except subprocess.TimeoutExpired:
        return None, "", f"timed out after {timeout:g} s"
    except OSError as exc:
        return None, "", f"cannot run {argv[0]}: {exc.strerror or exc}"
    return done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace")


class CommandFailed(Exception):
    """A command that could not run, ran too long or (see failure()) exited non-zero; `result` holds what
    is known of the run."""

    def __init__(self, msg, **result):
        super().__init__(msg)
        self.result = result


def run_command(argv, cwd=None, timeout=None, scrub=()):
    """Run one command the modules' way, tracked: {rc, stdout, stderr, seconds}, output as text with the
    secrets in `scrub` masked; CommandFailed when it could not run or ran longer than `timeout` seconds."""
    started = time.monotonic()
    try:
        done = run(argv, cwd=cwd, timeout=timeout or None)
    except subprocess.TimeoutExpired:
        raise CommandFailed(f"{argv[0]} ran longer than {timeout} s and was stopped", rc=-1) from None
    except OSError as exc:
        raise CommandFailed(f"cannot run {argv[0]}: {exc.strerror or exc}", rc=127) from None
    return {"rc": done.returncode,
            "stdout": scrubbed(done.stdout.decode("utf-8", "replace"), scrub),
            "stderr": scrubbed(done.stderr.decode("utf-8", "replace"), scrub),
            "seconds": round(time.monotonic() - started, 3)}


def failure(argv, result):
    """Why a command that ran failed: its exit status and the last lines it printed."""
    why = (result["stderr"].strip() or result["stdout"].strip()).splitlines()[-5:]
    return f"{argv[0]} exited with {result['rc']}" + ((": " + " / ".join(why)) if why else "")


def scrubbed(text, secrets):
    """`text` with every secret of some length masked (short ones would mask ordinary words)."""
    for secret in sorted((s for s in secrets or () if s and len(s) >= 6), key=len, reverse=True):
        text = text.replace(secret, "********")
    return text


def _tail(handle):
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(max(0, size - OUTPUT_LIMIT))
    return handle.read()


# ------------------------------------------------------------------------------------------ recovery side


def _members(pgid, start_ticks):
    """Live (non-zombie) processes of the group: same process group and session, started with it or later."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        info = _stat(int(name))
        if info is None:
            continue
        state, group, session, started = info
        if group == pgid and session == pgid and started >= start_ticks and state not in ("Z", "X"):
            members.append(int(name))
    return sorted(members)


def _wait_empty(pgid, start_ticks, seconds):
    deadline = time.monotonic() + seconds
    while True:
        members = _members(pgid, start_ticks)
        if not members or time.monotonic() >= deadline:
            return members
        time.sleep(0.1)


def _kill_group(pid, pgid, start_ticks, grace):
    """SIGTERM the group, SIGKILL what is left after `grace` seconds; returns the pids still alive."""
    if not _members(pgid, start_ticks):
        return []
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return []
        except PermissionError:
            return _members(pgid, start_ticks)
        left = _wait_empty(pgid, start_ticks, wait)
        if not left:
            return []
    return left


def records(directory):
    found = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return found
    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path) as handle:
                record = json.load(handle)
            record["path"] = path
            found.append(record)
        except (OSError, ValueError):
            # a record is written atomically: an unreadable one is not ours, and is left for a human
            continue
    return found


def alive(record):
    if record.get("boot_id") and record["boot_id"] != _boot_id():
        return []
    return _members(int(record["pgid"]), int(record.get("start_ticks") or 0))


def stop(directory, deployment_id=None, grace=10.0, check_mode=False):
    """Kill the recorded groups (of one deployment, or all) and confirm they are gone.

    Returns (stopped, survivors): records whose group was killed or was already gone, and records whose
    group is still alive afterwards (with the pids left), which nobody may restore under.
    """
    stopped, survivors = [], []
    for record in records(directory):
        if deployment_id and record.get("deployment_id") != deployment_id:
            continue
        summary = {k: record.get(k) for k in ("pid", "label", "program", "deployment_id", "started_at")}
        running = alive(record)
        if check_mode:
            (survivors if running else stopped).append(dict(summary, alive=running))
            continue
        left = _kill_group(record["pid"], int(record["pgid"]), int(record.get("start_ticks") or 0), grace) \
            if running else []
        if left:
            survivors.append(dict(summary, alive=left))
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(record["path"])
        stopped.append(dict(summary, was_running=bool(running)))
    return stopped, survivors
