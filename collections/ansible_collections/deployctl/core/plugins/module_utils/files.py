# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""Files on the managed host that readers must never see half written. Standard library only (Python 3.8+)."""

from __future__ import annotations

import json
import os
import time


def utc_stamp(when=None):
    """The timestamp format of every record deployctl keeps on a host: 2026-12-01T09:30:00Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


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


def write_atomic(path, data, mode=0o644):
    """Write bytes or text to `path` through a temporary file and rename(2): the old or the new, never half."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


def write_json_atomic(path, data, mode=0o644):
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode)


def read_json(path, default=None):
    """The JSON document at `path`, `default` when the file does not exist; ValueError when it is not JSON."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return default
