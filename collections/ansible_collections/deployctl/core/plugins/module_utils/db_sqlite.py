# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""SQLite: online backup, restore and the state a set is verified against.

Standard library only: runs on the managed hosts (Python 3.8+)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sqlite3
import tempfile

from ansible_collections.deployctl.core.plugins.module_utils.backup_common import (
    TMP_PREFIX,
    BackupError,
    DiskFullError,
    looks_disk_full,
)
from ansible_collections.deployctl.core.plugins.module_utils.db_engines import (
    Engine,
    empty_objects,
    sorted_objects,
)


def _sqlite_ident(name):
    return '"' + name.replace('"', '""') + '"'


def _sqlite_uri(path, mode="ro"):
    from urllib.parse import quote

    return f"file:{quote(os.path.abspath(path))}?mode={mode}"


def _sqlite_value(v):
    if v is None:
        return b"N;"
    if isinstance(v, int):
        return b"i" + str(v).encode() + b";"
    if isinstance(v, float):
        return b"f" + repr(v).encode() + b";"
    if isinstance(v, str):
        v = v.encode("utf-8", "surrogatepass")
    return b"b" + str(len(v)).encode() + b":" + bytes(v)


class SqliteEngine(Engine):
    name = "sqlite"

    def __init__(self, params, tools):
        super().__init__(params, tools)
        self.database = os.path.abspath(os.path.expanduser(params["database"]))

    def _require_live(self):
        if not os.path.isfile(self.database):
            raise BackupError(f"sqlite database {self.database} does not exist")

    def server_version(self):
        return sqlite3.sqlite_version

    def estimate_size(self):
        self._require_live()
        size = os.path.getsize(self.database)
        wal = self.database + "-wal"
        if os.path.exists(wal):
            size += os.path.getsize(wal)
        return size

    def database_options(self):
        return {}

    @staticmethod
    def _inspect_conn(conn):
        conn.text_factory = bytes
        rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
        tables, objects = [], empty_objects()
        for typ, name, tbl, sql in rows:
            name = name.decode("utf-8", "surrogateescape")
            sql = (sql or b"").decode("utf-8", "replace")
            if typ == b"table":
                if name.startswith("sqlite_") or sql.upper().startswith("CREATE VIRTUAL"):
                    continue
                tables.append((name, bool(re.search(r"\)\s*WITHOUT\s+ROWID\s*;?\s*$", sql, re.I))))
            elif typ == b"view":
                objects["views"].append(name)
            elif typ == b"trigger":
                objects["triggers"].append("{}.{}".format(tbl.decode("utf-8", "surrogateescape"), name))
        state = {}
        for name, without_rowid in sorted(tables):
            q = _sqlite_ident(name)
            if without_rowid:
                pk = [
                    r[1].decode("utf-8", "surrogateescape")
                    for r in sorted(conn.execute(f"PRAGMA table_info({q})").fetchall(), key=lambda r: r[5])
                    if r[5]
                ]
                order = ", ".join(_sqlite_ident(c) for c in pk) or "1"
            else:
                order = "rowid"
            h, n = hashlib.md5(), 0
            for row in conn.execute(f"SELECT * FROM {q} ORDER BY {order}"):
                h.update(hashlib.md5(b"".join(_sqlite_value(v) for v in row)).digest())
                n += 1
            state[name] = {"rows": n, "checksum": h.hexdigest() if n else ""}
        return {"tables": state, "objects": sorted_objects(objects)}

    def inspect(self, path, readonly=True):
        conn = sqlite3.connect(_sqlite_uri(path, "ro" if readonly else "rw"), uri=True, isolation_level=None)
        try:
            return self._inspect_conn(conn)
        finally:
            conn.close()

    def dump(self, sink):
        self._require_live()
        tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=os.path.dirname(sink.path))
        try:
            copy = os.path.join(tmp, "copy.sqlite")
            live = sqlite3.connect(_sqlite_uri(self.database), uri=True, isolation_level=None)
            try:
                live.execute("BEGIN")
                state = self._inspect_conn(live)  # the read transaction pins the snapshot the backup copies
                dst = sqlite3.connect(copy)
                try:
                    live.backup(dst)
                finally:
                    dst.close()
                live.execute("COMMIT")
            finally:
                live.close()
            sink.adopt(copy)
            return state
        except sqlite3.OperationalError as exc:
            if looks_disk_full(str(exc)):
                raise DiskFullError(f"sqlite backup: {exc}") from exc
            raise BackupError(f"sqlite backup of {self.database} failed: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def scratch_state(self, source, manifest, keep=None):
        with source.as_file() as path:
            conn = sqlite3.connect(_sqlite_uri(path), uri=True, isolation_level=None)
            try:
                res = conn.execute("PRAGMA integrity_check").fetchall()
                if [r[0] for r in res] != ["ok"]:
                    raise BackupError(f"integrity_check of the copy failed: {res[:5]}")
                state = self._inspect_conn(conn)
            except sqlite3.DatabaseError as exc:
                raise BackupError(f"the copy is not a valid sqlite database: {exc}") from exc
            finally:
                conn.close()
            if keep is not None:
                # a file of its own beside the sets: the rehearsal writes into it, never into the set
                target = self.scratch_location(keep)
                shutil.copyfile(path, target)
                os.chmod(target, 0o600)
            return state

    def scratch_location(self, name):
        return os.path.join(self.p["backup_dir"], name + ".sqlite")

    def scratch_name_of(self, location):
        directory, base = os.path.split(location)
        if directory == self.p["backup_dir"] and base.endswith(".sqlite"):
            return base[: -len(".sqlite")]
        return location

    def drop_scratch(self, name):
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.scratch_location(name) + suffix)

    def scratch_names(self, prefix):
        try:
            names = os.listdir(self.p["backup_dir"])
        except FileNotFoundError:
            return []
        return [n[: -len(".sqlite")] for n in names if n.startswith(prefix) and n.endswith(".sqlite")]

    def restore_live(self, source, manifest):
        with source.as_file() as path:
            src = sqlite3.connect(_sqlite_uri(path), uri=True)
            try:
                dst = sqlite3.connect(self.database, timeout=30)
                try:
                    src.backup(dst)
                finally:
                    dst.close()
            except sqlite3.Error as exc:
                raise BackupError(f"restoring {self.database} failed: {exc}") from exc
            finally:
                src.close()

    def live_state(self, manifest):
        return self.inspect(self.database)

    def current_state(self):
        self._require_live()
        return self.inspect(self.database)

    def check_scratch(self):
        """Scratch copies of a SQLite set are files in the backup directory, checked writable already."""
