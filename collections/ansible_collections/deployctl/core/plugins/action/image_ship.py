"""Ship an image from the control node's Docker engine to a host that lacks it, without a registry.

The control node exports the image with the Docker SDK for Python (`image.save()`, a stream of tar
chunks) and writes the chunks straight into `docker load` on the host: over SSH, into the stdin of an ssh
command that Ansible's own ssh connection builds (same options, same ControlPath, so the play's master
connection carries it); over the local connection, into a local `docker load`. Nothing the size of the
image is written to disk on either side. Connections that cannot take a stream (mitogen's, paramiko, or
an SSH or become password that has to be typed) get the archive the way Ansible copies files: a temporary
file on the control node (with no name: a killed run leaves nothing), copied to the host's temporary
directory, loaded and removed.

A host is judged by the image id: one that has the tag with the control node's id gets nothing; one that
has the tag with another id is refused (a tag names one image: a rollback to it must run what was
released); after a load the host's id must equal the control node's. When the control node does not have
the image, a host that has the tag keeps it, and one that lacks it fails. Check mode says what would be
shipped and ships nothing.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
import threading
import time

from ansible import constants as C
from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()

CHUNK_BYTES = 1024 * 1024
# transports whose commands this plugin can start itself, with a pipe to their stdin
STREAMING_TRANSPORTS = ("ssh", "local")


class ShipError(Exception):
    """Why the image could not be shipped; becomes the task's message."""


class ActionModule(ActionBase):
    TRANSFERS_FILES = False  # a temporary directory only for the copy, made then
    _VALID_ARGS = frozenset(("image", "tag", "timeout"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        if not args.get("image") or not args.get("tag"):
            raise AnsibleActionFail("image_ship needs image (the repository) and tag")
        reference = f"{args['image']}:{args['tag']}"
        host = task_vars.get("inventory_hostname", "the host") if task_vars else "the host"
        try:
            result.update(self._ship(reference, host, int(args.get("timeout") or 600)))
        except ShipError as exc:
            result.update(failed=True, msg=str(exc), shipped=False)
        return result

    def _ship(self, reference, host, timeout):
        engine = _control_node_engine(timeout)
        try:
            local = _local_image(engine, reference)
            host_id = self._host_image_id(reference)
            facts = {"image": reference, "image_id": local.id if local else host_id, "shipped": False,
                     "transport": None, "bytes": 0}
            if local is None:
                if host_id is None:
                    raise ShipError(f"image {reference} is not in the control node's Docker engine, and "
                                    f"{host} does not have it: build or tag it on the control node first")
                return {**facts, "changed": False,
                        "msg": f"{host} has {reference} ({_short(host_id)}); the control node does not"}
            if host_id == local.id:
                return {**facts, "changed": False, "msg": f"{host} has {reference} ({_short(host_id)})"}
            if reference not in local.tags:
                raise ShipError(f"the control node's Docker engine names the image {', '.join(local.tags)}, not "
                                f"{reference}: set deployctl_compose_image the way `docker image ls` shows it")
            if host_id is not None:
                raise ShipError(f"{reference} on {host} is image {_short(host_id)}, the control node's is "
                                f"{_short(local.id)}: a tag names one image; release the new build under a "
                                f"new tag (or remove {reference} from {host})")
            transport = self._transport()
            size = _megabytes(local.attrs.get("Size", 0))
            if self._task.check_mode:
                return {**facts, "changed": True, "transport": transport,
                        "msg": f"would ship {reference} ({_short(local.id)}, {size}) to {host} ({transport})"}
            started = time.monotonic()
            sent = (self._stream if transport == "stream" else self._copy)(local, reference)
            seconds = round(time.monotonic() - started, 1)
        finally:
            engine.close()
        loaded_id = self._host_image_id(reference)
        if loaded_id != local.id:
            raise ShipError(f"{reference} was loaded on {host}, but its id there is {_short(loaded_id)}, not the "
                            f"control node's {_short(local.id)}")
        return {**facts, "changed": True, "shipped": True, "transport": transport, "bytes": sent,
                "seconds": seconds,
                "msg": f"shipped {reference} ({_short(local.id)}, {_megabytes(sent)}) to {host} in {seconds}s"}

    # -- the host's side ---------------------------------------------------------------------

    def _host_image_id(self, reference):
        """The id of `reference` in the host's Docker engine, None when it has no such image."""
        listed = self._low_level_execute_command(self._with_environment(
            f"docker image ls --no-trunc --format '{{{{.ID}}}}' {shlex.quote(reference)}"))
        if listed["rc"] != 0:
            raise ShipError(f"docker image ls failed on the host: {_last_line(listed)}")
        ids = listed["stdout"].split()
        return ids[0] if ids else None

    def _with_environment(self, command):
        """The command with the task's environment (as Ansible gives it to modules), e.g. DOCKER_HOST."""
        return " ".join(part for part in (self._compute_environment_string(), command) if part)

    def _transport(self):
        """stream when this plugin can start the connection's command itself and feed its stdin, else copy."""
        connection = self._connection
        name = connection.transport.rsplit(".", 1)[-1]
        if name not in STREAMING_TRANSPORTS or (name == "ssh" and not hasattr(connection, "_build_command")):
            return "copy"
        if name == "ssh" and (connection.get_option("password") or self._play_context.password):
            return "copy"  # the password goes to ssh through Ansible's own prompt handling
        if self._becomes() and self.get_become_option("become_pass"):
            return "copy"  # the password is typed at a prompt that Ansible's connection answers
        return "stream"

    def _becomes(self):
        """Whether the task's commands run through become, decided as _low_level_execute_command decides."""
        remote_user, become_user = self._get_remote_user(), self.get_become_option("become_user")
        different = remote_user != become_user or not any((remote_user, become_user))
        return bool(self._connection.become) and (C.BECOME_ALLOW_SAME_USER or different)

    def _remote_command(self, command):
        """The command as _low_level_execute_command would run it: with become, under the play's shell."""
        if self._becomes():
            command = self._connection.become.build_become_command(command, self._connection._shell)
        if self._connection.allow_executable:
            command = f"{self._play_context.executable or '/bin/sh'} -c {shlex.quote(command)}"
        return command

    def _stream(self, image, reference):
        """Write the image's tar stream into `docker load` on the host; the bytes sent."""
        command = self._remote_command(self._with_environment("docker load"))
        connection = self._connection
        if connection.transport.rsplit(".", 1)[-1] == "local":
            argv = ["/bin/sh", "-c", command]
        else:
            host = connection.get_option("host") or self._play_context.remote_addr
            argv = connection._build_command(connection.get_option("ssh_executable"), "ssh", host, command)
        display.vvv(f"image_ship: streaming {reference} into docker load", host=self._play_context.remote_addr)
        # no terminal: a prompt ssh would need (a passphrase, an unknown host key) fails instead of waiting; the
        # play's master connection, which Ansible opened already, needs none
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)
        output = _Drain(process.stdout), _Drain(process.stderr)
        sent = 0
        try:
            for chunk in image.save(chunk_size=CHUNK_BYTES, named=reference):
                process.stdin.write(chunk)
                sent += len(chunk)
            process.stdin.close()
        except BrokenPipeError:
            pass  # docker load (or the connection) ended early: its exit status and output say why
        except Exception as exc:  # the control node's engine failed mid-stream
            process.kill()
            process.wait()
            raise ShipError(f"exporting {reference} from the control node's Docker engine failed: {exc}") from None
        rc = process.wait()
        stdout, stderr = (drain.text() for drain in output)
        if rc != 0:
            raise ShipError(f"docker load of {reference} failed on the host (exit {rc}): "
                            f"{_last_line({'stdout': stdout, 'stderr': stderr})}")
        return sent

    def _copy(self, image, reference):
        """The archive through a temporary file, copied with the connection's put_file; the bytes sent."""
        sent = 0
        # a file with no name (O_TMPFILE), read through /proc: a cancelled phase kills this worker, and a named
        # one would stay behind in /tmp, the size of the image
        with tempfile.TemporaryFile(prefix="deployctl-image-", suffix=".tar") as archive:
            for chunk in image.save(chunk_size=CHUNK_BYTES, named=reference):
                archive.write(chunk)
                sent += len(chunk)
            archive.flush()
            self._make_tmp_path()
            try:
                remote = self._connection._shell.join_path(self._connection._shell.tmpdir, "image.tar")
                self._transfer_file(f"/proc/{os.getpid()}/fd/{archive.fileno()}", remote)
                self._fixup_perms2((self._connection._shell.tmpdir, remote))
                loaded = self._low_level_execute_command(
                    self._with_environment(f"docker load --input {shlex.quote(remote)}"))
            finally:
                self._remove_tmp_path(self._connection._shell.tmpdir)
        if loaded["rc"] != 0:
            raise ShipError(f"docker load of {reference} failed on the host: {_last_line(loaded)}")
        return sent


class _Drain(threading.Thread):
    """Reads a pipe to its end, so that a chatty process never blocks on a full pipe while we write."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe, self.data = pipe, b""
        self.start()

    def run(self):
        self.data = self.pipe.read()

    def text(self):
        self.join()
        return self.data.decode("utf-8", "replace")


def _control_node_engine(timeout):
    try:
        import docker  # the control node's dependency only: hosts need the docker command line, not the SDK
    except ImportError:
        raise ShipError("shipping images needs the Docker SDK for Python on the control node "
                        "(pip install docker)") from None
    try:
        engine = docker.from_env(timeout=timeout)
        engine.ping()
    except Exception as exc:
        where = os.environ.get("DOCKER_HOST") or "the default socket"
        raise ShipError(f"the control node's Docker engine does not answer ({where}): {exc}") from None
    return engine


def _local_image(engine, reference):
    import docker

    try:
        return engine.images.get(reference)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        raise ShipError(f"the control node's Docker engine failed to look up {reference}: {exc}") from None


def _short(image_id):
    return (image_id or "none").split(":", 1)[-1][:12]


def _megabytes(size):
    return f"{size / 1e6:.1f} MB"


def _last_line(result):
    lines = (result.get("stderr") or result.get("stdout") or "").strip().splitlines()
    return lines[-1] if lines else "no output"
