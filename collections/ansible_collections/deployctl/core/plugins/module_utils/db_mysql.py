# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""MySQL/MariaDB: dump in one transaction, restore, and the state a set is verified against.

Standard library only: runs on the managed hosts (Python 3.8+)."""

from __future__ import annotations

import contextlib
import os
import secrets as _random

from ansible_collections.deployctl.core.plugins.module_utils.backup_common import (
    BackupError,
    check_credentials_file,
)
from ansible_collections.deployctl.core.plugins.module_utils.db_engines import Engine, empty_objects, sorted_objects


def _my_ident(name):
    return "`" + name.replace("`", "``") + "`"


def _my_lit(value):
    return "CONVERT(X'{}' USING utf8mb4)".format(value.encode("utf-8").hex())


def _my_opt_value(value):
    value = str(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class MysqlEngine(Engine):
    name = "mysql"

    def __init__(self, params, tools):
        super().__init__(params, tools)
        self.client = tools.which(("mariadb", "mysql"))
        self.dumper = tools.which(("mariadb-dump", "mysqldump"))
        parts = []
        if params["credentials_file"]:
            check_credentials_file(params["credentials_file"])
            with open(params["credentials_file"], encoding="utf-8") as fh:
                parts.append(fh.read())
        parts.append("[client]")
        for opt, key in (
            ("host", "login_host"),
            ("port", "login_port"),
            ("user", "login_user"),
            ("password", "login_password"),
        ):
            if params[key] is not None:
                parts.append(f"{opt}={_my_opt_value(params[key])}")
        self.defaults = tools.secret_file("client.cnf", "\n".join(parts) + "\n")

    def _argv(self, binary):
        # --defaults-extra-file must be the first argument
        return [binary, "--defaults-extra-file=" + self.defaults]

    def query(self, sql, db=None):
        argv = self._argv(self.client) + [
            "--batch",
            "--raw",
            "--skip-column-names",
            "--default-character-set=utf8mb4",
        ]
        if db is not None:
            argv.append("--database=" + db)
        res = self.tools.run(argv, input=sql.encode("utf-8"))
        if res.returncode != 0:
            err = res.stderr.decode("utf-8", "replace").strip()
            raise BackupError(f"mysql query failed (exit {res.returncode}): {err}")
        text = res.stdout.decode("utf-8", "replace")
        return [line.split("\t") for line in text.split("\n") if line != ""]

    def server_version(self):
        return self.query("SELECT VERSION();")[0][0]

    def estimate_size(self):
        lit = _my_lit(self.database)
        rows = self.query(
            "SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables "
            f"WHERE table_schema = {lit};"
        )
        size = int(float(rows[0][0])) if rows else 0
        # InnoDB statistics lag behind recent writes; the tablespace files are a safer upper bound.
        like = self.database.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "/%"
        for table in ("information_schema.innodb_sys_tablespaces", "information_schema.innodb_tablespaces"):
            try:
                rows = self.query(
                    f"SELECT COALESCE(SUM(file_size), 0) FROM {table} WHERE name LIKE {_my_lit(like)};"
                )
            except BackupError:
                continue
            if rows:
                size = max(size, int(float(rows[0][0])))
            break
        return size

    def database_options(self, db=None):
        rows = self.query(
            "SELECT default_character_set_name, default_collation_name "
            f"FROM information_schema.schemata WHERE schema_name = {_my_lit(db or self.database)};"
        )
        if not rows:
            raise BackupError("database %s does not exist" % (db or self.database))
        return {"charset": rows[0][0], "collation": rows[0][1]}

    def _meta(self, db):
        lit = _my_lit(db)
        sql = (
            f"SELECT 'T', HEX(table_name) FROM information_schema.tables WHERE table_schema = {lit} "
            "AND table_type IN ('BASE TABLE', 'SYSTEM VERSIONED');\n"
            f"SELECT 'views', HEX(table_name) FROM information_schema.views WHERE table_schema = {lit};\n"
            "SELECT 'routines', HEX(CONCAT(routine_type, ' ', routine_name)) "
            f"FROM information_schema.routines WHERE routine_schema = {lit};\n"
            "SELECT 'triggers', HEX(CONCAT(event_object_table, '.', trigger_name)) "
            f"FROM information_schema.triggers WHERE trigger_schema = {lit};\n"
            f"SELECT 'events', HEX(event_name) FROM information_schema.events WHERE event_schema = {lit};\n"
            "SELECT 'C', HEX(table_name), HEX(column_name) FROM information_schema.columns "
            f"WHERE table_schema = {lit} ORDER BY table_name, ordinal_position;\n"
        )
        tables, columns, objects = [], {}, empty_objects()
        for row in self.query(sql):
            kind = row[0]
            if kind == "T":
                tables.append(bytes.fromhex(row[1]).decode("utf-8"))
            elif kind == "C":
                columns.setdefault(bytes.fromhex(row[1]).decode("utf-8"), []).append(
                    bytes.fromhex(row[2]).decode("utf-8")
                )
            else:
                objects[kind].append(bytes.fromhex(row[1]).decode("utf-8"))
        return sorted(tables), columns, sorted_objects(objects)

    _PRELUDE = "SET SESSION time_zone = '+00:00'; SET SESSION group_concat_max_len = 4294967295;\n"

    def _row_md5_sql(self, db, table, columns, idx):
        exprs = ", ".join(f"IFNULL(HEX(CAST({_my_ident(c)} AS BINARY)), 'N')" for c in columns) or "''"
        return (
            f"SELECT {idx:d}, COUNT(*), IFNULL(MD5(GROUP_CONCAT(m ORDER BY m SEPARATOR '')), '') FROM "
            f"(SELECT MD5(CONCAT_WS('|', {exprs})) AS m FROM {_my_ident(db)}.{_my_ident(table)}) AS x;\n"
        )

    def _row_md5(self, db, tables, columns):
        if not tables:
            return {}
        sql = self._PRELUDE + "START TRANSACTION WITH CONSISTENT SNAPSHOT;\n"
        sql += "".join(self._row_md5_sql(db, t, columns.get(t, []), i) for i, t in enumerate(tables))
        sql += "COMMIT;\n"
        out = {}
        for row in self.query(sql):
            out[tables[int(row[0])]] = {"rows": int(row[1]), "row_md5": row[2]}
        return out

    def _counts_and_checksums(self, db, tables):
        if not tables:
            return {}
        sql = self._PRELUDE + "START TRANSACTION WITH CONSISTENT SNAPSHOT;\n"
        sql += "".join(
            f"SELECT {i:d}, COUNT(*) FROM {_my_ident(db)}.{_my_ident(t)};\n" for i, t in enumerate(tables)
        )
        sql += "COMMIT;\n"
        sql += "".join(f"CHECKSUM TABLE {_my_ident(db)}.{_my_ident(t)};\n" for t in tables)
        rows = self.query(sql)
        n = len(tables)
        if len(rows) != 2 * n:
            raise BackupError(f"unexpected CHECKSUM TABLE output for database {db}")
        out = {}
        for i, t in enumerate(tables):
            out[t] = {"rows": int(rows[i][1]), "checksum": rows[n + i][-1]}
        return out

    def inspect(self, db, expected=None, record=False):
        """Counts, checksums and object names of ``db``.

        ``record``: also compute the row md5 of every table (done at dump time). Otherwise the row md5 is
        computed only for tables whose CHECKSUM TABLE value differs from ``expected``.
        """
        tables, columns, objects = self._meta(db)
        state = self._counts_and_checksums(db, tables)
        if record:
            for t, v in self._row_md5(db, tables, columns).items():
                state[t]["row_md5"] = v["row_md5"]
        elif expected:
            redo = [
                t
                for t in tables
                if t in expected
                and expected[t].get("row_md5")
                and state[t]["checksum"] != expected[t].get("checksum")
            ]
            for t, v in self._row_md5(db, redo, columns).items():
                state[t]["row_md5"] = v["row_md5"]
        return {"tables": state, "objects": objects}

    def dump(self, sink):
        state = self.inspect(self.database, record=True)
        argv = self._argv(self.dumper) + [
            "--single-transaction",
            "--routines",
            "--triggers",
            "--events",
            "--hex-blob",
            "--default-character-set=utf8mb4",
            "--no-tablespaces",
            "--skip-dump-date",
            "--quick",
        ]
        if self._is_oracle_mysqldump():
            argv.append("--set-gtid-purged=OFF")
        argv.append(self.database)
        self.tools.pump(argv, sink, os.path.basename(self.dumper))
        return state

    def _is_oracle_mysqldump(self):
        if "mariadb" in os.path.basename(self.dumper):
            return False
        res = self.tools.run([self.dumper, "--version"])
        return b"mariadb" not in res.stdout.lower()

    def _load(self, source, db):
        argv = self._argv(self.client) + ["--default-character-set=utf8mb4", "--database=" + db]
        with source.stream() as src:
            self.tools.feed(argv, src, f"loading the dump into {db}")

    def scratch_state(self, source, manifest, keep=None):
        scratch = keep or self.p["scratch_prefix"] + _random.token_hex(6)
        opts = manifest.get("database_options") or {}
        create = f"CREATE DATABASE {_my_ident(scratch)}"
        if opts.get("charset"):
            create += " CHARACTER SET {} COLLATE {}".format(opts["charset"], opts["collation"])
        kept = False
        try:
            self.query(create + ";")
            self._load(source, scratch)
            state = self.inspect(scratch, expected=manifest.get("tables"))
            kept = keep is not None
            return state
        finally:
            if not kept:
                self.drop_scratch(scratch)

    def drop_scratch(self, name):
        self.query(f"DROP DATABASE IF EXISTS {_my_ident(name)};")

    def scratch_names(self, prefix):
        like = prefix.replace("_", "\\_")  # a prefix is letters, digits and '_' only
        return [row[0] for row in self.query(f"SHOW DATABASES LIKE '{like}%';") if row[0].startswith(prefix)]

    def restore_live(self, source, manifest):
        db = self.database
        opts = manifest.get("database_options") or {}
        if not opts.get("charset"):
            with contextlib.suppress(BackupError):
                opts = self.database_options(db)
        create = f"CREATE DATABASE {_my_ident(db)}"
        if opts.get("charset"):
            create += " CHARACTER SET {} COLLATE {}".format(opts["charset"], opts["collation"])
        self.query(f"DROP DATABASE IF EXISTS {_my_ident(db)}; {create};")
        self._load(source, db)

    def live_state(self, manifest):
        return self.inspect(self.database, expected=manifest.get("tables"))

    def current_state(self):
        return self.inspect(self.database, record=True)

    def check_scratch(self):
        scratch = self.p["scratch_prefix"] + _random.token_hex(6)
        try:
            self.query(f"CREATE DATABASE {_my_ident(scratch)}; DROP DATABASE {_my_ident(scratch)};")
        except BackupError as exc:
            account = self.query("SELECT CURRENT_USER();")[0][0]
            user, _at, host = account.rpartition("@")
            prefix = self.p["scratch_prefix"].replace("_", "\\_")
            raise BackupError(
                f"{account} cannot create the scratch databases the backup verification restores into "
                f"({exc.msg.strip().splitlines()[-1]}); "
                f"grant it: GRANT ALL ON `{prefix}%`.* TO '{user}'@'{host}';"
            ) from None
