# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""Streams into and out of a backup set: AES-256 by openssl when a key is set, a checksum on the way.

Standard library only: runs on the managed hosts (Python 3.8+)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
import tempfile

from ansible_collections.deployctl.core.plugins.module_utils import processes
from ansible_collections.deployctl.core.plugins.module_utils.backup_common import (
    CHUNK,
    TMP_PREFIX,
    BackupError,
    DiskFullError,
    TempSecrets,
    file_chunks,
    looks_disk_full,
    read_tail,
    sha256_file,
    which,
)

OPENSSL_CIPHER = "aes-256-cbc"
OPENSSL_DIGEST = "sha256"
OPENSSL_ITER = 100000


def openssl_argv(decrypt, key_file, enc_info=None):
    info = enc_info or {}
    argv = [
        which(("openssl",)),
        "enc",
        "-d" if decrypt else "-e",
        "-" + info.get("cipher", OPENSSL_CIPHER),
        "-pbkdf2",
        "-iter",
        str(info.get("iter", OPENSSL_ITER)),
        "-md",
        info.get("md", OPENSSL_DIGEST),
    ]
    if not decrypt:
        argv.append("-salt")
    argv += ["-pass", "file:" + key_file]
    return argv


class Sink:
    """Destination of one set file: a plain file or an ``openssl enc`` pipe.

    Tracks the sha256 of the plaintext (used to tell a wrong key from a corrupted file on restore).
    """

    def __init__(self, path, key_file=None):
        self.path = path
        self.key_file = key_file
        self.plain = hashlib.sha256()
        self.plain_size = 0
        self._fh = None
        self._out = None
        self._proc = None
        self._err = None
        self._adopted = False

    def _open(self):
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        if self.key_file is None:
            self._fh = os.fdopen(fd, "wb")
            return
        self._out = os.fdopen(fd, "wb")
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in abort()
        self._proc = processes.popen(
            openssl_argv(False, self.key_file), stdin=subprocess.PIPE, stdout=self._out, stderr=self._err
        )
        self._fh = self._proc.stdin

    def _openssl_failure(self, what):
        rc = self._proc.wait()
        err = read_tail(self._err)
        if looks_disk_full(err) or self._dir_full():
            return DiskFullError(f"no space left on device while writing {self.path}: {err}")
        return BackupError(f"openssl failed (exit {rc}) while {what} {self.path}: {err}")

    def _dir_full(self):
        try:
            return shutil.disk_usage(os.path.dirname(self.path)).free < 65536
        except OSError:
            return False

    def write(self, data):
        if self._fh is None:
            self._open()
        self.plain.update(data)
        self.plain_size += len(data)
        try:
            self._fh.write(data)
        except BrokenPipeError:
            raise self._openssl_failure("encrypting") from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(f"no space left on device while writing {self.path}") from exc
            raise
        return len(data)

    def write_from(self, path):
        for chunk in file_chunks(path):
            self.write(chunk)

    def adopt(self, path):
        """Take over a finished plaintext file: moved into place, or streamed through openssl."""
        if self.key_file is None and self._fh is None:
            os.chmod(path, 0o600)
            os.replace(path, self.path)
            self._adopted = True
        else:
            self.write_from(path)

    def close(self):
        """Finish the file and return its manifest entry."""
        if self._adopted:
            return {"sha256": sha256_file(self.path), "size": os.path.getsize(self.path)}
        if self._fh is None:
            self._open()
        try:
            if self._proc is None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()
            else:
                try:
                    self._fh.close()
                except BrokenPipeError:
                    raise self._openssl_failure("encrypting") from None
                if self._proc.wait() != 0:
                    raise self._openssl_failure("encrypting")
                self._out.flush()
                os.fsync(self._out.fileno())
                self._out.close()
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(f"no space left on device while writing {self.path}") from exc
            raise
        finally:
            self.abort()
        info = {"sha256": sha256_file(self.path), "size": os.path.getsize(self.path)}
        if self.key_file is not None:
            info["plain_sha256"] = self.plain.hexdigest()
            info["plain_size"] = self.plain_size
        return info

    def abort(self):
        for fh in (self._fh, self._out):
            if fh is not None:
                with contextlib.suppress(OSError):
                    fh.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._err is not None:
            self._err.close()
            self._err = None


def pump(argv, sink, what, env=None, lifeline=None):
    """Run a dump command and stream its stdout into ``sink``. ``lifeline``: bytes written to the command's
    stdin, which then stays open until the output ends (a command in a container stops when it closes)."""
    errf = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finally
    try:
        proc = processes.popen(argv, stdin=subprocess.DEVNULL if lifeline is None else subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=errf, env=env)
        try:
            if lifeline is not None:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.write(lifeline)
                    proc.stdin.flush()
            while True:
                chunk = proc.stdout.read(CHUNK)
                if not chunk:
                    break
                sink.write(chunk)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            proc.stdout.close()
            if proc.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
        rc = proc.wait()
        if rc != 0:
            err = read_tail(errf)
            if looks_disk_full(err):
                raise DiskFullError(f"{what}: no space left on device: {err}")
            raise BackupError(f"{what} failed (exit {rc}): {err}")
    finally:
        errf.close()


class SetFileSource:
    """Read access to the plaintext of a set file (decrypting on the fly when needed)."""

    def __init__(self, path, info, key_file, tmp_root):
        self.path = path
        self.info = info or {}
        self.key_file = key_file
        self.tmp_root = tmp_root
        self.encrypted = bool(self.info.get("encrypted"))

    @contextlib.contextmanager
    def stream(self):
        if not self.encrypted:
            with open(self.path, "rb") as fh:
                yield fh
            return
        errf = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finally
        proc = processes.popen(
            openssl_argv(True, self.key_file, self.info.get("encryption")) + ["-in", self.path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errf,
        )
        ok = False
        try:
            yield proc.stdout
            ok = True
            # a consumer may stop before EOF; drain so openssl's exit status reflects the decryption only
            while proc.stdout.read(CHUNK):
                pass
        finally:
            proc.stdout.close()
            if not ok and proc.poll() is None:
                proc.kill()
            rc = proc.wait()
            err = read_tail(errf)
            errf.close()
            if ok and rc != 0:
                raise BackupError(
                    f"decrypting {self.path} failed (wrong encryption_key?): {openssl_reason(err)}"
                )

    @contextlib.contextmanager
    def as_file(self):
        """A path to the plaintext (a private temporary copy when the set is encrypted)."""
        if not self.encrypted:
            yield self.path
            return
        tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.tmp_root)
        try:
            os.chmod(tmp, 0o700)
            target = os.path.join(tmp, "plain")
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out, self.stream() as src:
                shutil.copyfileobj(src, out, CHUNK)
            yield target
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def openssl_reason(err):
    """The useful part of openssl's error output ("bad decrypt" rather than a provider stack)."""
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    for line in lines:
        if "bad decrypt" in line or "bad magic" in line:
            return "bad decrypt" if "bad decrypt" in line else "bad magic number"
    return lines[0] if lines else "no error output"


def run_with_stdin(argv, src, what, env=None, preamble=None):
    """Run ``argv`` reading ``src`` (a file object) on stdin, after ``preamble`` (bytes) when given; raise
    BackupError on failure."""
    with tempfile.TemporaryFile() as errf, tempfile.TemporaryFile() as outf:
        if preamble is None:
            rc = processes.popen(argv, stdin=src, stdout=outf, stderr=errf, env=env).wait()
        else:
            proc = processes.popen(argv, stdin=subprocess.PIPE, stdout=outf, stderr=errf, env=env)
            try:
                proc.stdin.write(preamble)
                shutil.copyfileobj(src, proc.stdin, CHUNK)
            except BrokenPipeError:
                pass  # the command ended early: its exit status and output say why
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
            rc = proc.wait()
        if rc != 0:
            raise BackupError(f"{what} failed (exit {rc}): {read_tail(errf) or read_tail(outf)}")


@contextlib.contextmanager
def passphrase_file(key):
    if key is None:
        yield None
        return
    tmp = TempSecrets()
    try:
        yield tmp.write("pass", key)
    finally:
        tmp.cleanup()
