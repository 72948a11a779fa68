# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""PostgreSQL: dump inside an exported snapshot with checksums from the same snapshot, restore, verification state.

Standard library only: runs on the managed hosts (Python 3.8+)."""

from __future__ import annotations

import json
import queue
import secrets as _random
import subprocess
import tempfile
import threading

from ansible_collections.deployctl.core.plugins.module_utils.backup_common import (
    BackupError,
    check_credentials_file,
    read_tail,
)
from ansible_collections.deployctl.core.plugins.module_utils.db_engines import (
    Engine,
    empty_objects,
    sorted_objects,
)

PG_SESSION_SETTINGS = (
    "SET TimeZone TO 'UTC'; SET DateStyle TO 'ISO, YMD'; SET IntervalStyle TO 'postgres'; "
    "SET extra_float_digits TO 3; SET bytea_output TO 'hex'; SET search_path TO pg_catalog;"
)


def _pg_ident(name):
    return '"' + name.replace('"', '""') + '"'


def _pg_lit(value):
    return "'" + value.replace("'", "''") + "'"


def _pg_conninfo(db):
    return "dbname='" + db.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _pgpass_field(value):
    return str(value).replace("\\", "\\\\").replace(":", "\\:")


class _PsqlSession:
    """A long-lived psql process driven through stdin/stdout (one transaction can span several calls)."""

    def __init__(self, engine, db):
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self._proc = engine.tools.session(
            engine.psql_argv(db),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=engine.env,
        )
        self._lines = queue.Queue()
        self._token = _random.token_hex(8)
        self._n = 0
        self._thread = threading.Thread(target=self._reader, daemon=True)
        self._thread.start()

    def _reader(self):
        try:
            for line in self._proc.stdout:
                self._lines.put(line)
        except (OSError, ValueError):
            pass
        finally:
            self._lines.put(None)

    def _failure(self):
        try:
            rc = self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            rc = self._proc.wait()
        return BackupError(f"psql failed (exit {rc}): {read_tail(self._err)}")

    def run(self, sql):
        """Send ``sql`` and return its output lines."""
        self._n += 1
        marker = f"__deployctl_end_{self._n}_{self._token}__"
        try:
            self._proc.stdin.write((sql.rstrip() + "\n\\echo " + marker + "\n").encode("utf-8"))
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise self._failure() from None
        out = []
        while True:
            line = self._lines.get()
            if line is None:
                raise self._failure()
            text = line.decode("utf-8", "replace").rstrip("\n")
            if text == marker:
                return out
            out.append(text)

    def json_rows(self, sql):
        return [json.loads(line) for line in self.run(sql) if line.strip()]

    def close(self):
        try:
            self._proc.stdin.write(b"\\q\n")
            self._proc.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._thread.join(5)
        self._proc.stdout.close()
        self._err.close()


_PG_USER_NS = (
    "{n}.nspname NOT IN ('pg_catalog', 'information_schema') AND {n}.nspname NOT LIKE 'pg\\_toast%' "
    "AND {n}.nspname NOT LIKE 'pg\\_temp\\_%'"
)


_PG_NOT_EXT = (
    "NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = '{cat}'::pg_catalog.regclass "
    "AND d.objid = {oid} AND d.deptype = 'e')"
)


PG_META_SQL = (
    "SELECT json_build_array('T', n.nspname, c.relname)::text FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND {ns} AND {ext_c};\n"
    "SELECT json_build_array('views', n.nspname || '.' || c.relname)::text FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('v', 'm') AND {ns} AND {ext_c};\n"
    "SELECT json_build_array('routines', n.nspname || '.' || p.proname || '(' "
    "|| pg_catalog.pg_get_function_identity_arguments(p.oid) || ')')::text FROM pg_catalog.pg_proc p "
    "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE {ns} AND {ext_p};\n"
    "SELECT json_build_array('triggers', n.nspname || '.' || c.relname || '.' || t.tgname)::text "
    "FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE NOT t.tgisinternal AND {ns} AND {ext_c};\n"
    "SELECT json_build_array('events', e.evtname)::text FROM pg_catalog.pg_event_trigger e WHERE {ext_e};\n"
).format(
    ns=_PG_USER_NS.format(n="n"),
    ext_c=_PG_NOT_EXT.format(cat="pg_catalog.pg_class", oid="c.oid"),
    ext_p=_PG_NOT_EXT.format(cat="pg_catalog.pg_proc", oid="p.oid"),
    ext_e=_PG_NOT_EXT.format(cat="pg_catalog.pg_event_trigger", oid="e.oid"),
)


PG_TABLE_CHECKSUM_SQL = (
    "SELECT json_build_array({idx}, count(*), "
    "coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), ''))::text FROM {table} t;\n"
)


class PostgresEngine(Engine):
    name = "postgresql"
    maintenance_db = "postgres"

    def __init__(self, params, tools):
        super().__init__(params, tools)
        self.psql, self.pg_dump, self.pg_restore = (tools.which((tool,)) for tool in ("psql", "pg_dump", "pg_restore"))
        # over the caller's environment (None: removed from it)
        env = {"PGPASSWORD": None, "PGCLIENTENCODING": "UTF8", "PGAPPNAME": "deployctl", "PGCONNECT_TIMEOUT": "30"}
        for var, key in (("PGHOST", "login_host"), ("PGPORT", "login_port"), ("PGUSER", "login_user")):
            if params[key] is not None:
                env[var] = str(params[key])
        cred = params["credentials_file"]
        if cred:
            check_credentials_file(cred)
        if params["login_password"] is not None or (cred and tools.container):
            content = "*:*:*:*:{}\n".format(_pgpass_field(params["login_password"])) \
                if params["login_password"] is not None else ""
            if cred:
                with open(cred, encoding="utf-8") as fh:
                    content += fh.read()
            env["PGPASSFILE"] = tools.secret_file("pgpass", content)
        elif cred:
            env["PGPASSFILE"] = cred
        self.env = env
        self._version_num = None

    def psql_argv(self, db):
        return [
            self.psql,
            "-X",
            "-q",
            "-A",
            "-t",
            "-w",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            _pg_conninfo(db),
        ]

    def query(self, sql, db=None):
        res = self.tools.run(self.psql_argv(db or self.database), input=sql.encode("utf-8"), env=self.env)
        if res.returncode != 0:
            err = res.stderr.decode("utf-8", "replace").strip()
            raise BackupError(f"psql failed (exit {res.returncode}): {err}")
        return [line for line in res.stdout.decode("utf-8", "replace").split("\n") if line != ""]

    def version_num(self):
        if self._version_num is None:
            self._version_num = int(self.query("SHOW server_version_num;", self.maintenance_db)[0])
        return self._version_num

    def server_version(self):
        return self.query("SHOW server_version;", self.maintenance_db)[0]

    def estimate_size(self):
        return int(self.query("SELECT pg_catalog.pg_database_size(current_database());")[0])

    def database_options(self):
        rows = self.query(
            "SELECT json_build_object('encoding', pg_catalog.pg_encoding_to_char(encoding), "
            "'collate', datcollate, 'ctype', datctype, 'owner', pg_catalog.pg_get_userbyid(datdba))::text "
            "FROM pg_catalog.pg_database WHERE datname = current_database();"
        )
        opts = json.loads(rows[0])
        if self.version_num() >= 150000:
            col = "datlocale" if self.version_num() >= 170000 else "daticulocale"
            try:
                extra = self.query(
                    f"SELECT json_build_object('provider', datlocprovider, 'icu_locale', {col})::text "
                    "FROM pg_catalog.pg_database WHERE datname = current_database();"
                )
                opts.update(json.loads(extra[0]))
            except BackupError:
                pass
        return opts

    def _inspect_session(self, session):
        tables, objects = [], empty_objects()
        for row in session.json_rows(PG_META_SQL):
            if row[0] == "T":
                tables.append((row[1], row[2]))
            else:
                objects[row[0]].append(row[1])
        tables.sort()
        sql = "".join(
            PG_TABLE_CHECKSUM_SQL.format(idx=i, table=_pg_ident(s) + "." + _pg_ident(t))
            for i, (s, t) in enumerate(tables)
        )
        state = {}
        for row in session.json_rows(sql) if sql else []:
            s, t = tables[row[0]]
            state[f"{s}.{t}"] = {"rows": int(row[1]), "checksum": row[2]}
        return {"tables": state, "objects": sorted_objects(objects)}

    def inspect(self, db):
        session = _PsqlSession(self, db)
        try:
            session.run(PG_SESSION_SETTINGS)
            session.run("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;")
            state = self._inspect_session(session)
            session.run("COMMIT;")
            return state
        finally:
            session.close()

    def dump(self, sink):
        session = _PsqlSession(self, self.database)
        try:
            session.run(PG_SESSION_SETTINGS)
            session.run("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;")
            snapshot = session.run("SELECT pg_catalog.pg_export_snapshot();")[0].strip()
            # counts and checksums inside the exported snapshot; the locks taken here are held until COMMIT
            state = self._inspect_session(session)
            argv = [
                self.pg_dump,
                "-w",
                "-Fc",
                "--snapshot=" + snapshot,
                "-d",
                _pg_conninfo(self.database),
            ]
            self.tools.pump(argv, sink, "pg_dump", env=self.env)
            session.run("COMMIT;")
            return state
        finally:
            session.close()

    def _create_sql(self, db, opts, owner=False):
        sql = f"CREATE DATABASE {_pg_ident(db)} TEMPLATE template0"
        if opts.get("encoding"):
            sql += " ENCODING {} LC_COLLATE {} LC_CTYPE {}".format(
                _pg_lit(opts["encoding"]), _pg_lit(opts["collate"]), _pg_lit(opts["ctype"])
            )
        if opts.get("provider") == "i" and opts.get("icu_locale"):
            sql += " LOCALE_PROVIDER icu ICU_LOCALE {}".format(_pg_lit(opts["icu_locale"]))
        if owner and opts.get("owner"):
            sql += " OWNER {}".format(_pg_ident(opts["owner"]))
        return sql + ";"

    def _drop(self, db):
        if self.version_num() >= 130000:
            self.query(f"DROP DATABASE IF EXISTS {_pg_ident(db)} WITH (FORCE);", self.maintenance_db)
        else:
            self.query(
                "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity "
                f"WHERE datname = {_pg_lit(db)} AND pid <> pg_catalog.pg_backend_pid();\n"
                f"DROP DATABASE IF EXISTS {_pg_ident(db)};",
                self.maintenance_db,
            )

    def _pg_restore(self, source, args, what):
        argv = [self.pg_restore, "-w", "--exit-on-error"] + args
        with source.stream() as src:
            self.tools.feed(argv, src, what, env=self.env)

    def scratch_state(self, source, manifest, keep=None):
        scratch = keep or self.p["scratch_prefix"] + _random.token_hex(6)
        opts = manifest.get("database_options") or {}
        kept = False
        try:
            try:
                self.query(self._create_sql(scratch, opts), self.maintenance_db)
            except BackupError:
                self.query(f"CREATE DATABASE {_pg_ident(scratch)} TEMPLATE template0;", self.maintenance_db)
            self._pg_restore(
                source,
                ["--no-owner", "-d", _pg_conninfo(scratch)],
                f"pg_restore into scratch database {scratch}",
            )
            state = self.inspect(scratch)
            kept = keep is not None
            return state
        finally:
            if not kept:
                self._drop(scratch)

    def drop_scratch(self, name):
        self._drop(name)

    def scratch_names(self, prefix):
        rows = self.query("SELECT datname FROM pg_catalog.pg_database;", self.maintenance_db)
        return [row for row in rows if row.startswith(prefix)]

    def restore_live(self, source, manifest):
        db = self.database
        self._drop(db)
        if db == manifest.get("database"):
            # recreates the database as dumped: encoding, locale, owner, grants, settings
            self._pg_restore(
                source, ["--create", "-d", _pg_conninfo(self.maintenance_db)], f"pg_restore --create of {db}"
            )
        else:
            self.query(
                self._create_sql(db, manifest.get("database_options") or {}, owner=True), self.maintenance_db
            )
            self._pg_restore(source, ["-d", _pg_conninfo(db)], f"pg_restore into {db}")

    def live_state(self, manifest):
        return self.inspect(self.database)

    def current_state(self):
        return self.inspect(self.database)

    def check_scratch(self):
        scratch = self.p["scratch_prefix"] + _random.token_hex(6)
        try:
            self.query(f"CREATE DATABASE {_pg_ident(scratch)};", self.maintenance_db)
        except BackupError as exc:
            user = self.query("SELECT current_user;", self.maintenance_db)[0]
            raise BackupError(
                f"{user} cannot create the scratch databases the backup verification restores into "
                f"({exc.msg.strip().splitlines()[-1]}); "
                f"grant it: ALTER ROLE {_pg_ident(user)} CREATEDB;"
            ) from None
        self._drop(scratch)
