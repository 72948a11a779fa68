# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""Backup sets on disk: manifests, listing, retention that never drops a protected set, and the checks of a set's files.

Standard library only: runs on the managed hosts (Python 3.8+)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import time

from ansible_collections.deployctl.core.plugins.module_utils.backup_common import (
    CHUNK,
    DUMP_FILE,
    INCOMPLETE_MAX_AGE,
    MANIFEST,
    SET_ID_RE,
    TMP_PREFIX,
    BackupError,
    DiskFullError,
    sha256_file,
)
from ansible_collections.deployctl.core.plugins.module_utils.files import utc_stamp, write_json_atomic
from ansible_collections.deployctl.core.plugins.module_utils.sealed_streams import (
    SetFileSource,
)


def write_manifest(set_dir, manifest):
    try:
        write_json_atomic(os.path.join(set_dir, MANIFEST), manifest, mode=0o600)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(f"no space left on device while writing the manifest in {set_dir}") from exc
        raise


def load_manifest(set_dir):
    path = os.path.join(set_dir, MANIFEST)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise BackupError(f"set {set_dir} is incomplete or does not exist (no {MANIFEST})") from None
    except ValueError as exc:
        raise BackupError(f"manifest {path} is not valid JSON: {exc}") from exc


def compare_states(expected, actual):
    """Return (problems, fallback_tables) comparing a recorded state with an observed one."""
    problems, fallback = [], []
    exp_t, act_t = expected.get("tables", {}), actual.get("tables", {})
    for name in sorted(set(exp_t) - set(act_t)):
        problems.append(f"table {name} is missing")
    for name in sorted(set(act_t) - set(exp_t)):
        problems.append(f"unexpected table {name}")
    for name in sorted(set(exp_t) & set(act_t)):
        e, a = exp_t[name], act_t[name]
        if e.get("rows") != a.get("rows"):
            problems.append("table {}: {} rows expected, {} found".format(name, e.get("rows"), a.get("rows")))
        elif e.get("checksum") != a.get("checksum"):
            if e.get("row_md5") and a.get("row_md5") == e.get("row_md5"):
                fallback.append(name)
            else:
                problems.append(f"table {name}: checksum mismatch")
    exp_o, act_o = expected.get("objects", {}), actual.get("objects", {})
    for kind in ("views", "routines", "triggers", "events"):
        e, a = set(exp_o.get(kind, [])), set(act_o.get(kind, []))
        if e - a:
            problems.append("{} missing: {}".format(kind, ", ".join(sorted(e - a))))
        if a - e:
            problems.append("unexpected {}: {}".format(kind, ", ".join(sorted(a - e))))
    return problems, fallback


def list_sets(backup_dir):
    """Manifests of the complete sets in ``backup_dir``, newest first, each with ``path``."""
    sets = []
    if not os.path.isdir(backup_dir):
        return sets
    for name in os.listdir(backup_dir):
        set_dir = os.path.join(backup_dir, name)
        if not SET_ID_RE.match(name) or not os.path.isdir(set_dir):
            continue
        try:
            manifest = load_manifest(set_dir)
        except BackupError:
            continue
        if not isinstance(manifest, dict):
            continue
        manifest = dict(manifest)
        manifest["set_id"] = name
        manifest["path"] = set_dir
        sets.append(manifest)
    sets.sort(key=lambda m: (str(m.get("created_at", "")), m["set_id"]), reverse=True)
    return sets


def list_all_sets(backup_dir):
    """Every set, as `backups` shows them: the good ones with their files checked against their hashes
    (cached by size and mtime), and the broken ones (unreadable manifest, missing or corrupted file) with
    the reason, never hidden."""
    sets = list_sets(backup_dir)
    for manifest in sets:
        problem = files_problem(manifest["path"], manifest)
        if problem:
            manifest.update(broken=problem, verified=False)
    listed = {m["set_id"] for m in sets}
    for name in sorted(os.listdir(backup_dir)) if os.path.isdir(backup_dir) else []:
        set_dir = os.path.join(backup_dir, name)
        if name in listed or not SET_ID_RE.match(name) or not os.path.isfile(os.path.join(set_dir, MANIFEST)):
            continue
        try:
            load_manifest(set_dir)
            why = "the manifest is not a JSON object"
        except BackupError as exc:
            why = exc.msg
        created = utc_stamp(os.path.getmtime(set_dir), precise=True)
        sets.append({"set_id": name, "path": set_dir, "created_at": created, "verified": False, "broken": why})
    sets.sort(key=lambda m: (str(m.get("created_at", "")), m["set_id"]), reverse=True)
    return sets


def files_problem(set_dir, manifest):
    """Why a set's files do not match its manifest, or None; a sidecar remembers files found sound."""
    checked_path = os.path.join(set_dir, ".checked.json")
    try:
        with open(checked_path) as fh:
            checked = json.load(fh)
    except (OSError, ValueError):
        checked = {}
    sound = {}
    for name, info in sorted((manifest.get("files") or {}).items()):
        path = os.path.join(set_dir, name)
        try:
            st = os.stat(path)
        except OSError:
            return f"{name} is missing"
        if st.st_size != info.get("size"):
            return f"{name} has {st.st_size} bytes, the manifest says {info.get('size')}"
        stamp = [st.st_size, st.st_mtime_ns]
        if checked.get(name) != stamp and sha256_file(path) != info.get("sha256"):
            return f"{name} does not match its sha256: the set is corrupted"
        sound[name] = stamp
    if sound != checked:
        with contextlib.suppress(OSError), open(checked_path, "w") as fh:
            json.dump(sound, fh)
    return None


def apply_retention(backup_dir, keep, protect=(), current=None, now=None, dry_run=False):
    """Delete good sets beyond the newest ``keep``, bad sets and stale incomplete sets.

    Never deletes a set listed in ``protect`` or ``current``. Returns the deleted names. With ``dry_run``
    nothing is deleted: the names are those a set ``current`` not taken yet would make retention delete.
    """
    now = time.time() if now is None else now
    protect = set(protect or ())
    pruned = []
    sets = list_sets(backup_dir)
    # the set about to be taken is the newest good one
    kept = 1 if dry_run and current and all(m["set_id"] != current for m in sets) else 0
    for m in sets:
        sid = m["set_id"]
        if sid == current or sid in protect:
            if not m.get("bad"):
                kept += 1
            continue
        if not m.get("bad") and kept < keep:
            kept += 1
            continue
        if not dry_run:
            shutil.rmtree(m["path"], ignore_errors=True)
        pruned.append(sid)
    if not os.path.isdir(backup_dir):
        return pruned
    for name in sorted(os.listdir(backup_dir)):
        path = os.path.join(backup_dir, name)
        if name == current or name in protect or not os.path.isdir(path) or os.path.islink(path):
            continue
        if not (SET_ID_RE.match(name) or name.startswith(TMP_PREFIX)):
            continue
        if os.path.exists(os.path.join(path, MANIFEST)):
            continue
        try:
            age = now - os.lstat(path).st_mtime
        except OSError:
            continue
        if age > INCOMPLETE_MAX_AGE:
            if not dry_run:
                shutil.rmtree(path, ignore_errors=True)
            pruned.append(name)
    return pruned


def check_set_files(set_dir, manifest, key_file):
    """Detect missing, truncated or corrupted files (and a wrong key) before anything else."""
    files = manifest.get("files") or {}
    if DUMP_FILE not in files:
        raise BackupError(f"manifest of {set_dir} lists no {DUMP_FILE}")
    for name, info in sorted(files.items()):
        path = os.path.join(set_dir, name)
        if not os.path.isfile(path):
            raise BackupError(f"{name} is missing from set {set_dir}")
        size = os.path.getsize(path)
        digest = sha256_file(path)
        if digest != info.get("sha256"):
            raise BackupError(
                f"sha256 mismatch for {name} in set {set_dir} (size {size}, expected {info.get('size')}): "
                "the set is corrupted"
            )
    if manifest.get("encrypted"):
        if key_file is None:
            raise BackupError(f"set {set_dir} is encrypted: encryption_key is required")
        for name, info in sorted(files.items()):
            src = SetFileSource(
                os.path.join(set_dir, name),
                dict(info, encrypted=True, encryption=manifest.get("encryption")),
                key_file,
                set_dir,
            )
            h = hashlib.sha256()
            try:
                with src.stream() as fh:
                    while True:
                        chunk = fh.read(CHUNK)
                        if not chunk:
                            break
                        h.update(chunk)
            except BackupError as exc:
                raise BackupError(
                    f"cannot decrypt {name} of set {set_dir}: wrong encryption_key? "
                    f"({exc.msg.rsplit(': ', 1)[-1]})"
                ) from None
            if info.get("plain_sha256") and h.hexdigest() != info["plain_sha256"]:
                raise BackupError(f"decrypted {name} of set {set_dir} does not match: wrong encryption_key?")


def default_set_id(backup_dir, label, now):
    base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    if label:
        clean = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.")[:64]
        if clean:
            base += "-" + clean
    candidate, n = base, 1
    while os.path.lexists(os.path.join(backup_dir, candidate)):
        n += 1
        candidate = f"{base}-{n}"
    return candidate
