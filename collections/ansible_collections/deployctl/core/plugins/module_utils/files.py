# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""Files on the managed host that readers must never see half written. Standard library only (Python 3.8+)."""

from __future__ import annotations

import contextlib
import json
import os
import time


def utc_stamp(when=None, precise=False):
    """The timestamp format of every record deployctl keeps on a host: 2026-12-01T09:30:00Z.

    `precise` adds microseconds (2026-12-01T09:30:00.250000Z) where records made in one second must sort."""
    when = time.time() if when is None else when
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))
    return stamp + (f".{int(when % 1 * 1000000):06d}Z" if precise else "Z")


def fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path, data, mode=0o644, owner=None):
    """Write bytes or text to `path` through a temporary file and rename(2): the old or the new, never half.

    `owner` (uid, gid) keeps the file someone else's when root rewrites it."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if owner is not None and os.geteuid() == 0:
            os.chown(tmp, owner[0], owner[1])
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def read_with_owner(path, new_mode=0o644):
    """(bytes, mode, (uid, gid)) of the file at `path`; (None, `new_mode`, None) when it does not exist.

    Rewriting a file with write_atomic(path, data, mode, owner) then keeps it as its owner had it."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
            info = os.fstat(handle.fileno())
    except FileNotFoundError:
        return None, new_mode, None
    return data, info.st_mode & 0o7777, (info.st_uid, info.st_gid)


def write_json_atomic(path, data, mode=0o644):
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode)


def read_json(path, default=None):
    """The JSON document at `path`, `default` when the file does not exist; ValueError when it is not JSON."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return default


def read_lock(path):
    """The lock file at `path` ({token, holder, since}), None when there is none. A file that is not JSON
    still holds the lock, for a holder nobody can name."""
    try:
        return read_json(path)
    except ValueError:
        return {"token": None, "holder": {"error": "unreadable lock file"}, "since": None}
