# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""The files archive of a backup set and its safe restore (no path leaves its target, owners kept).

Standard library only: runs on the managed hosts (Python 3.8+)."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile

from ansible_collections.deployctl.core.plugins.module_utils.backup_common import (
    FILES_ARCHIVE,
    BackupError,
)


def archive_files(paths, sink):
    with tarfile.open(fileobj=sink, mode="w|gz", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            tar.add(path, arcname=path.lstrip("/"), recursive=True)


def owner_of(name, archived):
    best = None
    for path in archived:
        rel = path.lstrip("/")
        inside = name == rel or name.startswith(rel.rstrip("/") + "/")
        if inside and (best is None or len(rel) > len(best.lstrip("/"))):
            best = path
    return best


def restore_files(source, archived):
    """Put the archived paths back in place, replacing the current ones (staged next to each path)."""
    archived = [os.path.normpath(p) for p in archived]
    with source.as_file() as archive, tarfile.open(archive, mode="r:gz") as tar:
        members = {p: [] for p in archived}
        links = set()
        for m in tar.getmembers():
            name = os.path.normpath(m.name)
            parts = name.split("/")
            if name.startswith("/") or ".." in parts:
                raise BackupError(f"unsafe member {m.name!r} in {FILES_ARCHIVE}")
            if any("/".join(parts[:i]) in links for i in range(1, len(parts))):
                raise BackupError(f"member {m.name!r} of {FILES_ARCHIVE} lies below a symlink")
            if m.issym():
                links.add(name)
            owner = owner_of(name, archived)
            if owner is None:
                raise BackupError(f"unexpected member {m.name!r} in {FILES_ARCHIVE}")
            rel = name[len(owner.lstrip("/")) :].lstrip("/")
            m.name = "root" + ("/" + rel if rel else "")
            if m.islnk():
                target = os.path.normpath(m.linkname)
                if owner_of(target, [owner]) is None:
                    raise BackupError(f"hard link {m.name!r} in {FILES_ARCHIVE} crosses archived paths")
                trel = target[len(owner.lstrip("/")) :].lstrip("/")
                m.linkname = "root" + ("/" + trel if trel else "")
            members[owner].append(m)
        extra = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
        for path in archived:
            if not members[path]:
                raise BackupError(f"{FILES_ARCHIVE} has no entry for {path}")
            parent = os.path.dirname(path)
            os.makedirs(parent, exist_ok=True)
            staging = tempfile.mkdtemp(prefix=".deployctl-restore-", dir=parent)
            try:
                tar.extractall(staging, members=members[path], numeric_owner=True, **extra)
                old = None
                if os.path.lexists(path):
                    old = os.path.join(staging, "old")
                    os.rename(path, old)
                os.rename(os.path.join(staging, "root"), path)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
