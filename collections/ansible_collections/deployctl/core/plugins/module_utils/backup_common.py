# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""Errors, limits and small helpers every part of a backup set shares.

Standard library only: runs on the managed hosts (Python 3.8+)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import tempfile

MANIFEST = "manifest.json"
DUMP_FILE = "db.dump"
FILES_ARCHIVE = "files.tar.gz"
FORMAT_VERSION = 1
CHUNK = 1 << 20
INCOMPLETE_MAX_AGE = 3600
SPACE_FACTOR = 1.2
TMP_PREFIX = ".deployctl-tmp-"
SET_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
SCRATCH_PREFIX_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")
DISK_FULL_MARKERS = ("no space left", "errno 28", "errcode: 28", "disk is full", "enospc", "disk full")


class BackupError(Exception):
    """A failure reported to the caller; ``result`` holds extra return values (set_id, manifest, ...)."""

    def __init__(self, msg, **result):
        super().__init__(msg)
        self.msg = msg
        self.result = result


class DiskFullError(BackupError):
    """The backup directory ran out of space while a set was being written."""


class VerifyError(BackupError):
    """A set failed verification."""


def megabytes(n):
    return "%.1f" % (n / 1048576.0)


def looks_disk_full(text):
    low = (text or "").lower()
    return any(m in low for m in DISK_FULL_MARKERS)


def read_tail(fh, limit=4000):
    try:
        fh.flush()
        fh.seek(0)
        data = fh.read()
    except (OSError, ValueError):
        return ""
    text = data.decode("utf-8", "replace").strip()
    return text[-limit:]


def which(names):
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise BackupError("none of {} found on PATH".format(", ".join(names)))


def file_chunks(path):
    with open(path, "rb") as fh:
        yield from iter(lambda: fh.read(CHUNK), b"")


def sha256_file(path):
    h = hashlib.sha256()
    for chunk in file_chunks(path):
        h.update(chunk)
    return h.hexdigest()


def tree_size(path):
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def check_credentials_file(path):
    try:
        st = os.stat(path)
    except OSError as exc:
        raise BackupError(f"credentials_file {path} cannot be read: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise BackupError(f"credentials_file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise BackupError(
            f"credentials_file {path} has mode {stat.S_IMODE(st.st_mode):04o}: it must not be accessible "
            "by group or others (chmod 600 it)"
        )


class TempSecrets:
    """Private 0700 directory for short-lived credential files; ``cleanup()`` removes it."""

    def __init__(self):
        self._dir = None

    def write(self, name, data):
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="deployctl-")
            os.chmod(self._dir, 0o700)
        path = os.path.join(self._dir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
        return path

    def cleanup(self):
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
