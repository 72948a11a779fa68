# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""Where a database's client tools run: on this host, or inside the container of a Docker Compose service.

Both give the engines the same calls (a query with its input, a dump streamed into a set file, a set file
streamed into a tool, a long-lived session) and keep the credentials in files that no command line, no
environment and no `docker inspect` shows: on the host a private 0700 directory (TempSecrets); in a
container a private directory the command's wrapper creates (umask 077) from the credentials it reads on
its stdin, and removes when the tool ends.

A command in a container is not a child of this host's processes: killing `docker exec` (a cancelled
phase, recovery) leaves it running. A tool that reads its stdin ends when `docker exec` goes, since its
stdin then ends; a tool that only writes (a dump) runs under a watcher that reads the stdin this side
keeps open, and stops the tool when it ends.

Standard library only: runs on the managed hosts (Python 3.8+)."""

from __future__ import annotations

import os

from ansible_collections.deployctl.core.plugins.module_utils import processes
from ansible_collections.deployctl.core.plugins.module_utils.backup_common import BackupError, which
from ansible_collections.deployctl.core.plugins.module_utils.compose_containers import (
    ContainerError,
    docker_command,
    service_container,
)
from ansible_collections.deployctl.core.plugins.module_utils.sealed_streams import pump, run_with_stdin

# Stands, in a command's arguments, for the private directory its credentials were written to.
SECRETS_TOKEN = "@SECRETS@"

# sh -c WRAPPER deployctl MODE COUNT [env -u VAR VAR=value...] TOOL ARGS...: COUNT credential files arrive
# first on stdin, each as its name on one line and its content on the next (backslashes doubled, newlines as
# \n; printf %b reads them back). `read` takes a pipe byte by byte, so the rest of stdin is the tool's.
# MODE stream: the tool reads stdin. MODE lifeline: the tool gets /dev/null, and is stopped when stdin ends (the
# watcher is the subshell itself, reading with the builtin: stopping it leaves no process behind to reap, which
# matters in containers whose first process reaps nothing).
# Directories a killed wrapper left behind (named by its pid) are removed by the next one.
WRAPPER = r"""umask 077
mode=$1 count=$2
shift 2
base=${TMPDIR:-/tmp}
for old in "$base"/deployctl-secrets.*; do
    if [ -d "$old" ] && [ ! -d "/proc/${old##*.}" ]; then rm -rf "$old"; fi
done
if [ "$count" -gt 0 ]; then
    dir=$base/deployctl-secrets.$$
    mkdir "$dir" || { echo "deployctl: cannot create $dir for the credentials" >&2; exit 125; }
    trap 'rm -rf "$dir"' EXIT
    trap 'exit 143' HUP INT TERM
    while [ "$count" -gt 0 ]; do
        if ! { IFS= read -r name && IFS= read -r content; }; then
            echo "deployctl: the credentials did not arrive" >&2
            exit 125
        fi
        printf '%b' "$content" > "$dir/$name" || exit 125
        count=$((count - 1))
    done
    for arg do
        shift
        case $arg in *@SECRETS@*) arg=${arg%%@SECRETS@*}$dir${arg#*@SECRETS@} ;; esac
        set -- "$@" "$arg"
    done
fi
if [ "$mode" = lifeline ]; then
    exec 3<&0 </dev/null
    "$@" 3<&- &
    tool=$!
    (while read -r _; do :; done <&3; kill -TERM "$tool" 2>/dev/null) &
    watcher=$!
    exec 3<&-
    wait "$tool"
    status=$?
    kill "$watcher" 2>/dev/null
    wait "$watcher"
    exit "$status"
fi
"$@"
status=$?
exit "$status"
"""


def escape_line(content):
    """`content` as one line printf %b turns back into it."""
    if "\0" in content:
        raise BackupError("a credential cannot contain a NUL character")
    return content.replace("\\", "\\\\").replace("\n", "\\n")


class HostTools:
    """The tools of this host. `env` of a call: the variables to set (None: to unset) over this process's."""

    container = None

    def __init__(self, tmp):
        self.tmp = tmp

    def which(self, names):
        return which(names)

    def secret_file(self, name, content):
        return self.tmp.write(name, content)

    @staticmethod
    def _env(env):
        if env is None:
            return None
        merged = dict(os.environ)
        for name, value in env.items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        return merged

    def run(self, argv, input=None, env=None):
        return processes.run(argv, input=input, env=self._env(env))

    def pump(self, argv, sink, what, env=None):
        pump(argv, sink, what, env=self._env(env))

    def feed(self, argv, src, what, env=None):
        run_with_stdin(argv, src, what, env=self._env(env))

    def session(self, argv, stdin, stdout, stderr, env=None):
        return processes.popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, env=self._env(env))


class ContainerTools:
    """The tools inside the running container of a compose service, through `docker exec -i`: the container is
    found by the labels compose gives it, once (compose v1 starts a Python interpreter for every `exec`)."""

    def __init__(self, project, service):
        try:
            self.docker = docker_command()
            self.container = service_container(project, service)
        except ContainerError as exc:
            raise BackupError(str(exc)) from None
        self.service = service
        self._secrets = {}
        self._found = {}

    def secret_file(self, name, content):
        self._secrets[name] = escape_line(content)
        return SECRETS_TOKEN + "/" + name

    def argv(self, mode, argv, env=None):
        prefix = []
        if env:
            prefix = ["env"] + [part for name, value in sorted(env.items()) if value is None for part in ("-u", name)]
            prefix += [f"{name}={value}" for name, value in sorted(env.items()) if value is not None]
        return [self.docker, "exec", "-i", self.container["id"], "sh", "-c", WRAPPER, "deployctl", mode,
                str(len(self._secrets)), *prefix, *[str(a) for a in argv]]

    def preamble(self):
        return "".join(f"{name}\n{content}\n" for name, content in self._secrets.items()).encode("utf-8")

    def which(self, names):
        missing = [name for name in names if name not in self._found]
        if missing:
            probe = 'for n do if command -v "$n" >/dev/null 2>&1; then echo "$n"; fi; done'
            done = processes.run(self.argv("stream", ["sh", "-c", probe, "sh", *missing]), input=self.preamble())
            present = set(done.stdout.decode("utf-8", "replace").split())
            self._found.update({name: name in present for name in missing})
        for name in names:
            if self._found[name]:
                return name
        raise BackupError("none of {} found in the container {} of compose service {}".format(
            ", ".join(names), self.container["name"], self.service))

    def run(self, argv, input=None, env=None):
        data = input if isinstance(input, bytes) or input is None else input.encode("utf-8")
        return processes.run(self.argv("stream", argv, env), input=self.preamble() + (data or b""))

    def pump(self, argv, sink, what, env=None):
        pump(self.argv("lifeline", argv, env), sink, what, lifeline=self.preamble())

    def feed(self, argv, src, what, env=None):
        run_with_stdin(self.argv("stream", argv, env), src, what, preamble=self.preamble())

    def session(self, argv, stdin, stdout, stderr, env=None):
        proc = processes.popen(self.argv("stream", argv, env), stdin=stdin, stdout=stdout, stderr=stderr)
        try:
            proc.stdin.write(self.preamble())
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # docker exec ended at once: the session's first call reports why
        return proc
