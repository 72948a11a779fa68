"""Tests of the backup sets (deployctl.core.backup_set) against the local MariaDB, PostgreSQL and SQLite."""

import contextlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from ansible_collections.deployctl.core.plugins.module_utils.backup_common import (
    BackupError,
    DiskFullError,
    VerifyError,
    sha256_file,
)
from ansible_collections.deployctl.core.plugins.module_utils.backup_sets import list_sets
from ansible_collections.deployctl.core.plugins.module_utils.db_mysql import MysqlEngine
from ansible_collections.deployctl.core.plugins.module_utils.db_sqlite import SqliteEngine
from ansible_collections.deployctl.core.plugins.module_utils.set_operations import (
    restore_set,
    run,
    take_set,
    verify_set,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO_ROOT / "collections"

MYSQL = ["mariadb", "--default-character-set=utf8mb4", "-h", "127.0.0.1", "-P", "3306", "-u", "root"]
PSQL = [
    "psql",
    "-X",
    "-q",
    "-A",
    "-t",
    "-v",
    "ON_ERROR_STOP=1",
    "-h",
    "127.0.0.1",
    "-p",
    "5432",
    "-U",
    "postgres",
]
MYSQL_LOGIN = {"login_host": "127.0.0.1", "login_port": 3306, "login_user": "root"}
PG_LOGIN = {"login_host": "127.0.0.1", "login_port": 5432, "login_user": "postgres"}




def _works(argv):
    try:
        return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_mysql = pytest.mark.skipif(not _works(MYSQL + ["-e", "SELECT 1"]), reason="MariaDB not reachable")
needs_pg = pytest.mark.skipif(not _works(PSQL + ["-c", "SELECT 1"]), reason="PostgreSQL not reachable")


# --------------------------------------------------------------------------- database helpers


def my(sql, db=None, raw=True):
    """Run SQL with the mariadb client; return the raw stdout bytes."""
    argv = MYSQL + ["--batch", "--skip-column-names"] + (["--raw"] if raw else [])
    if db:
        argv.append(db)
    res = subprocess.run(argv, input=sql.encode(), capture_output=True)
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout


def my_rows(sql, db=None):
    return [line.split("\t") for line in my(sql, db).decode().splitlines()]


def my_snapshot(db):
    """Every base table's rows (escaped batch output, sorted on all columns) plus the object names."""
    tables = [
        r[0]
        for r in my_rows(
            f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{db}' "
            "AND table_type = 'BASE TABLE' ORDER BY 1"
        )
    ]
    data = {}
    for t in tables:
        ncols = int(
            my_rows(
                f"SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = '{db}' "
                f"AND table_name = '{t}'"
            )[0][0]
        )
        order = ", ".join(str(i) for i in range(1, ncols + 1))
        data[t] = my(f"SET time_zone = '+00:00'; SELECT * FROM `{t}` ORDER BY {order}", db, raw=False)
    objects = {
        "views": my(
            f"SELECT table_name FROM information_schema.views WHERE table_schema = '{db}' ORDER BY 1"
        ),
        "routines": my(
            f"SELECT routine_name FROM information_schema.routines WHERE routine_schema = '{db}' ORDER BY 1"
        ),
        "triggers": my(
            f"SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = '{db}' ORDER BY 1"
        ),
        "events": my(
            f"SELECT event_name FROM information_schema.events WHERE event_schema = '{db}' ORDER BY 1"
        ),
    }
    return data, objects


def pg(sql, db="postgres"):
    res = subprocess.run(PSQL + ["-d", db], input=sql.encode(), capture_output=True)
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode()


def pg_snapshot(db):
    tables = pg(
        "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
        db,
    ).splitlines()
    data = {t: pg(f"SET TimeZone = 'UTC'; SELECT x::text FROM {t} x ORDER BY 1", db) for t in tables}
    objects = pg(
        "SELECT 'view ' || table_schema || '.' || table_name FROM information_schema.views "
        "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
        "UNION ALL SELECT 'function ' || p.proname FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'public' "
        "UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal "
        "UNION ALL SELECT 'seq ' || last_value FROM public.kinds_id_seq ORDER BY 1",
        db,
    )
    return data, objects


@pytest.fixture
def mysql_db():
    name = "dctest_" + uuid.uuid4().hex[:8]
    my(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    try:
        yield name
    finally:
        my(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def pg_db():
    name = "dctest_" + uuid.uuid4().hex[:8]
    pg(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def backup_dir(tmp_path):
    return tmp_path / "backups"


def mysql_params(db, backup_dir, **kw):
    # scratch databases of this test's own: other tests' releases verify sets on the same server meanwhile
    return {**MYSQL_LOGIN, "engine": "mysql", "database": db, "backup_dir": str(backup_dir),
            "scratch_prefix": f"v_{db}_", **kw}


def mysql_scratch_left(db):
    return my_rows(f"SHOW DATABASES LIKE 'v\\_{db.replace('_', chr(92) + '_')}\\_%'")


def pg_params(db, backup_dir, **kw):
    return dict(PG_LOGIN, engine="postgresql", database=db, backup_dir=str(backup_dir), **kw)


def make_sqlite(path):
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, data BLOB, note TEXT);
        CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER) WITHOUT ROWID;
        CREATE TABLE log (msg TEXT);
        CREATE VIEW cheap AS SELECT id, name FROM items WHERE price < 10;
        CREATE TRIGGER items_log AFTER INSERT ON items BEGIN INSERT INTO log VALUES ('ins ' || NEW.id); END;
        """
    )
    conn.executemany(
        "INSERT INTO items (name, price, data, note) VALUES (?, ?, ?, ?)",
        [
            ("Grüße 🚀 日本", 1.25, bytes(range(256)), None),
            ("plain", 99.5, b"", "line\nbreak\ttab"),
            (None, None, None, None),
        ],
    )
    conn.executemany("INSERT INTO kv VALUES (?, ?)", [("b", 2), ("a", 1)])
    conn.commit()
    conn.close()


def sqlite_snapshot(path):
    conn = sqlite3.connect(path)
    try:
        out = {}
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view', 'trigger') ORDER BY name"
        ):
            out[name] = (
                conn.execute(f'SELECT * FROM "{name}" ORDER BY 1').fetchall()
                if name != "items_log"
                else "trigger"
            )
        return out
    finally:
        conn.close()


def listing(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


# --------------------------------------------------------------------------- MariaDB


MYSQL_SCHEMA = f"""
CREATE TABLE kinds (
  id INT PRIMARY KEY AUTO_INCREMENT,
  txt VARCHAR(200) CHARACTER SET utf8mb4,
  big MEDIUMTEXT,
  bin BLOB,
  amount DECIMAL(20,6),
  ts TIMESTAMP(6) NULL DEFAULT NULL,
  dt DATETIME(6),
  js JSON,
  f DOUBLE
);
CREATE TABLE logs (id INT AUTO_INCREMENT PRIMARY KEY, msg TEXT);
CREATE TABLE `odd-name` (a INT, b VARCHAR(10));
CREATE TRIGGER kinds_log AFTER INSERT ON kinds FOR EACH ROW
  INSERT INTO logs (msg) VALUES (CONCAT('ins ', NEW.id));
INSERT INTO kinds (txt, big, bin, amount, ts, dt, js, f) VALUES
  ('Grüße 🚀 日本', REPEAT('x', 70000), UNHEX('{bytes(range(256)).hex()}'), 12345678901234.123456,
   '2024-02-29 12:34:56.123456', '1999-12-31 23:59:59.999999', '{{"a": [1, "ü"], "b": null}}', 1.5e-10),
  (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  ('tab\\there', 'new\\nline', 0x00, -0.000001, '1970-01-02 00:00:00', '2038-01-19 03:14:07', '[]', -0.0);
INSERT INTO `odd-name` VALUES (2, 'b'), (1, 'a'), (1, 'a'), (NULL, NULL);
CREATE VIEW v_kinds AS SELECT id, txt FROM kinds;
CREATE PROCEDURE p_count(OUT n INT) SELECT COUNT(*) INTO n FROM kinds;
CREATE EVENT ev_cleanup ON SCHEDULE EVERY 1 DAY DO DELETE FROM logs WHERE id < 0;
"""


@needs_mysql
def test_mysql_round_trip(mysql_db, backup_dir):
    my(MYSQL_SCHEMA, mysql_db)
    before = my_snapshot(mysql_db)
    params = mysql_params(mysql_db, backup_dir, label="deploy-42", live_version="1.4.2")

    res = take_set(params)
    manifest = res["manifest"]
    assert res["changed"] and res["verified"] and manifest["verified"] and not manifest["bad"]
    assert res["set_id"].endswith("-deploy-42") and manifest["live_version"] == "1.4.2"
    assert manifest["tables"]["kinds"]["rows"] == 3 and manifest["tables"]["logs"]["rows"] == 3
    assert manifest["tables"]["odd-name"]["rows"] == 4
    assert manifest["objects"] == {
        "views": ["v_kinds"],
        "routines": ["PROCEDURE p_count"],
        "triggers": ["kinds.kinds_log"],
        "events": ["ev_cleanup"],
    }
    assert manifest["database_options"] == {"charset": "utf8mb4", "collation": "utf8mb4_unicode_ci"}
    # CHECKSUM TABLE of the scratch restore equals the live one on the same server: no fallback needed
    assert res["checksum_fallback"] == []
    assert sorted(os.listdir(res["path"])) == ["db.dump", "manifest.json"]
    dump = (Path(res["path"]) / "db.dump").read_bytes()
    assert b"CREATE TABLE `kinds`" in dump and b"CREATE DATABASE" not in dump
    assert not mysql_scratch_left(mysql_db)

    my(
        "INSERT INTO kinds (txt) VALUES ('after'); DELETE FROM logs; DROP TABLE `odd-name`; "
        "DROP VIEW v_kinds; "
        "DROP PROCEDURE p_count; DROP EVENT ev_cleanup; UPDATE kinds SET amount = 1 WHERE id = 1; "
        "ALTER DATABASE CHARACTER SET latin1 COLLATE latin1_swedish_ci",
        mysql_db,
    )
    assert my_snapshot(mysql_db) != before

    restored = restore_set(dict(MYSQL_LOGIN, backup_dir=str(backup_dir), set_id=res["set_id"]))
    assert restored["changed"] and restored["live_version"] == "1.4.2"
    assert my_snapshot(mysql_db) == before
    row = my_rows(
        "SELECT txt, HEX(bin), amount, JSON_EXTRACT(js, '$.a[1]'), DATE_FORMAT(dt, '%f') "
        "FROM kinds WHERE id = 1",
        mysql_db,
    )[0]
    assert row == ["Grüße 🚀 日本", bytes(range(256)).hex().upper(), "12345678901234.123456", '"ü"', "999999"]
    assert my_rows(
        "SELECT default_character_set_name, default_collation_name FROM information_schema.schemata "
        f"WHERE schema_name = '{mysql_db}'"
    ) == [["utf8mb4", "utf8mb4_unicode_ci"]]
    # the trigger works again
    my("INSERT INTO kinds (txt) VALUES ('x')", mysql_db)
    assert my_rows("SELECT COUNT(*) FROM logs", mysql_db) == [["4"]]


@needs_mysql
def test_mysql_checksum_fallback_to_row_md5(mysql_db, backup_dir):
    my(
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20)); INSERT INTO t VALUES (1, 'a'), (2, NULL);",
        mysql_db,
    )
    res = take_set(mysql_params(mysql_db, backup_dir, set_id="s1"))
    path = Path(res["path"]) / "manifest.json"
    manifest = json.loads(path.read_text())
    # pretend CHECKSUM TABLE differed (e.g. another row format): the row md5 decides
    manifest["tables"]["t"]["checksum"] = "12345"
    path.write_text(json.dumps(manifest))
    out = verify_set(dict(MYSQL_LOGIN, backup_dir=str(backup_dir), set_id="s1"))
    assert out["verified"] and out["checksum_fallback"] == ["t"] and not out["changed"]
    manifest["tables"]["t"]["row_md5"] = "0" * 32
    path.write_text(json.dumps(manifest))
    with pytest.raises(VerifyError, match="table t: checksum mismatch"):
        verify_set(dict(MYSQL_LOGIN, backup_dir=str(backup_dir), set_id="s1"))
    assert json.loads(path.read_text())["bad"] is True


@needs_mysql
def test_mysql_verification_mismatch_marks_set_bad(mysql_db, backup_dir):
    my("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20)); INSERT INTO t VALUES (1, 'original');", mysql_db)

    def tamper(set_dir, manifest):
        # a dump that restores fine but holds other data (hash kept consistent): only the comparison sees it
        dump = Path(set_dir) / "db.dump"
        dump.write_bytes(dump.read_bytes().replace(b"'original'", b"'tampered'"))
        manifest["files"]["db.dump"]["sha256"] = sha256_file(str(dump))

    with pytest.raises(VerifyError, match="table t: checksum mismatch") as err:
        take_set(mysql_params(mysql_db, backup_dir, set_id="bad1"), hooks={"after_dump": tamper})
    manifest = json.loads((backup_dir / "bad1" / "manifest.json").read_text())
    assert manifest["bad"] is True and manifest["verified"] is False
    assert "checksum mismatch" in manifest["verify_error"]
    assert err.value.result["set_id"] == "bad1"
    assert not mysql_scratch_left(mysql_db)
    with pytest.raises(BackupError, match="marked bad"):
        restore_set(dict(MYSQL_LOGIN, backup_dir=str(backup_dir), set_id="bad1"))
    listed = run({"state": "listed", "backup_dir": str(backup_dir)})["sets"]
    assert [(s["set_id"], s["bad"]) for s in listed] == [("bad1", True)]


@needs_mysql
def test_mysql_truncated_dump_detected(mysql_db, backup_dir):
    my("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1), (2);", mysql_db)

    def truncate(set_dir, manifest):
        dump = Path(set_dir) / "db.dump"
        dump.write_bytes(dump.read_bytes()[:200])

    with pytest.raises(VerifyError, match="sha256 mismatch"):
        take_set(mysql_params(mysql_db, backup_dir, set_id="trunc"), hooks={"after_dump": truncate})
    assert json.loads((backup_dir / "trunc" / "manifest.json").read_text())["bad"] is True


@needs_mysql
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_full_disk(mysql_db, tmp_path, monkeypatch):
    my(
        "CREATE TABLE b (id INT PRIMARY KEY AUTO_INCREMENT, d BLOB); "
        "INSERT INTO b (d) SELECT RANDOM_BYTES(1024) FROM seq_1_to_5000;",
        mysql_db,
    )
    full = tmp_path / "full"
    full.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(full)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here")
    try:
        with pytest.raises(
            BackupError, match=r"not enough space at .*: need ~\d+\.\d MB, \d+\.\d MB free"
        ):
            take_set(mysql_params(mysql_db, full))
        assert listing(full) == []
        # an estimate that is too low: the dump itself hits ENOSPC (plain file, then through openssl)
        monkeypatch.setattr(MysqlEngine, "estimate_size", lambda self: 0)
        for extra in ({}, {"encryption_key": "k" * 20}):
            with pytest.raises(
                DiskFullError, match="is full .no space left on device.*partial set was removed"
            ):
                take_set(mysql_params(mysql_db, full, **extra))
            assert listing(full) == []
    finally:
        subprocess.run(["umount", str(full)], check=True)


class PsSampler(threading.Thread):
    """Collects `ps -eo args` every 20 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.lines = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
            self.lines.extend(out.splitlines())
            time.sleep(0.02)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join()


def all_bytes_under(path):
    blob = b""
    for root, _dirs, files in os.walk(path):
        for name in files:
            blob += Path(root, name).read_bytes()
    return blob


@needs_mysql
def test_mysql_secrets_stay_hidden(mysql_db, backup_dir, tmp_path):
    user = "dctest_u_" + uuid.uuid4().hex[:8]
    password = "Pw#" + secrets.token_hex(12) + '"; x'
    prefix = "dcs_" + uuid.uuid4().hex[:6] + "_"
    key = "Key-" + secrets.token_hex(12)
    my(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'")
    try:
        my(
            f"GRANT ALL ON `{mysql_db}`.* TO '{user}'@'127.0.0.1'; "
            f"GRANT ALL ON `{prefix.replace('_', chr(92) + '_')}%`.* TO '{user}'@'127.0.0.1'"
        )
        my(
            "CREATE TABLE t (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(64)); "
            "INSERT INTO t (v) SELECT MD5(seq) FROM seq_1_to_20000;",
            mysql_db,
        )
        params = dict(
            engine="mysql",
            database=mysql_db,
            backup_dir=str(backup_dir),
            login_host="127.0.0.1",
            login_port=3306,
            login_user=user,
            login_password=password,
            scratch_prefix=prefix,
        )
        with PsSampler() as ps:
            res = run(params)
            res_enc = run(dict(params, encryption_key=key))
            run(dict(params, state="verified", set_id=res_enc["set_id"], encryption_key=key))
        assert res["verified"] and res_enc["verified"]
        assert any("--defaults-extra-file=" in line for line in ps.lines), "sampler saw no client"
        for secret in (password, key):
            assert not [line for line in ps.lines if secret in line]
            assert secret not in json.dumps(res) and secret not in json.dumps(res_enc)
            assert secret.encode() not in all_bytes_under(backup_dir)
        temp_files = {
            m.group(1) for line in ps.lines for m in [re.search(r"--defaults-extra-file=(\S+)", line)] if m
        }
        temp_files |= {m.group(1) for line in ps.lines for m in [re.search(r"-pass file:(\S+)", line)] if m}
        assert temp_files and not [p for p in temp_files if os.path.exists(p)]

        # a wrong password never shows up in an error message either
        with pytest.raises(BackupError) as err:
            run(dict(params, login_password=password + "wrong"))
        assert password not in err.value.msg

        # credentials_file route: an option file only its owner can read
        cred = tmp_path / "my.cnf"
        cred.write_text(
            f'[client]\nuser={user}\npassword="{password.replace(chr(34), chr(92) + chr(34))}"\n'
            "host=127.0.0.1\nport=3306\n"
        )
        cred.chmod(0o600)
        res = run(
            dict(
                engine="mysql",
                database=mysql_db,
                backup_dir=str(backup_dir),
                credentials_file=str(cred),
                scratch_prefix=prefix,
            )
        )
        assert res["verified"]
        cred.chmod(0o644)
        with pytest.raises(BackupError, match="must not be accessible by group or others"):
            run(
                dict(
                    engine="mysql", database=mysql_db, backup_dir=str(backup_dir), credentials_file=str(cred)
                )
            )
    finally:
        my(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")


@needs_mysql
def test_mysql_encrypted_round_trip(mysql_db, backup_dir, tmp_path):
    my(
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(50)); "
        "INSERT INTO t VALUES (1, 'secret row'), (2, 'Grüße');",
        mysql_db,
    )
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "app.ini").write_text("version=1\n")
    key = "correct horse battery staple"
    res = take_set(mysql_params(mysql_db, backup_dir, encryption_key=key, files=[str(conf)]))
    manifest = res["manifest"]
    assert manifest["encrypted"] is True and res["verified"]
    for name in ("db.dump", "files.tar.gz"):
        data = (Path(res["path"]) / name).read_bytes()
        assert data.startswith(b"Salted__")
        assert b"CREATE TABLE" not in data and b"secret row" not in data
        assert manifest["files"][name]["plain_sha256"] != manifest["files"][name]["sha256"]
    assert key not in json.dumps(manifest)

    my("DELETE FROM t", mysql_db)
    (conf / "app.ini").write_text("version=2\n")
    base = dict(MYSQL_LOGIN, backup_dir=str(backup_dir), set_id=res["set_id"])
    with pytest.raises(BackupError, match="encryption_key is required"):
        restore_set(base)
    with pytest.raises(BackupError, match="wrong encryption_key"):
        restore_set(dict(base, encryption_key="wrong key"))
    assert my_rows("SELECT COUNT(*) FROM t", mysql_db) == [["0"]]  # untouched by the failed attempts
    assert verify_set(dict(base, encryption_key=key))["verified"]
    restore_set(dict(base, encryption_key=key))
    assert my_rows("SELECT id, v FROM t ORDER BY id", mysql_db) == [["1", "secret row"], ["2", "Grüße"]]
    assert (conf / "app.ini").read_text() == "version=1\n"


# --------------------------------------------------------------------------- PostgreSQL


PG_SCHEMA = rf"""
CREATE TABLE kinds (
  id serial PRIMARY KEY,
  txt text,
  bin bytea,
  amount numeric(30, 10),
  ts timestamptz,
  js jsonb,
  nums int[],
  tags text[]
);
CREATE TABLE audit (id serial PRIMARY KEY, note text);
CREATE SCHEMA other;
CREATE TABLE other."Mixed Case" (k text PRIMARY KEY, v double precision);
CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO audit (note) VALUES ('ins ' || NEW.id);
  RETURN NEW;
END $$;
CREATE TRIGGER kinds_audit AFTER INSERT ON kinds FOR EACH ROW EXECUTE FUNCTION audit_fn();
INSERT INTO kinds (txt, bin, amount, ts, js, nums, tags) VALUES
  ('Grüße 🚀 日本', decode('{bytes(range(256)).hex()}', 'hex'), 12345678901234567890.0123456789,
   '2024-02-29 12:34:56.123456+02', '{{"a": [1, "ü"], "b": null}}', '{{1,2,NULL}}', '{{"x y","z"}}'),
  (NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (E'tab\there\nnewline', '\x00', -0.0000000001, 'epoch', '[]', '{{}}', '{{""}}');
INSERT INTO other."Mixed Case" VALUES ('a', 1.5), ('b', 'NaN'), ('c', -0.1);
CREATE VIEW v_kinds AS SELECT id, txt FROM kinds;
"""


@needs_pg
def test_postgres_round_trip(pg_db, backup_dir):
    pg(PG_SCHEMA, pg_db)
    before = pg_snapshot(pg_db)
    prefix = f"dcrt_{uuid.uuid4().hex[:6]}_"  # its own scratch names: other tests verify sets meanwhile
    res = take_set(pg_params(pg_db, backup_dir, label="deploy-7", live_version="2.0.0", scratch_prefix=prefix))
    manifest = res["manifest"]
    assert res["verified"] and not manifest["bad"]
    assert manifest["tables"]["public.kinds"]["rows"] == 3 and manifest["tables"]["public.audit"]["rows"] == 3
    assert manifest["tables"]["other.Mixed Case"]["rows"] == 3
    assert manifest["objects"]["views"] == ["public.v_kinds"]
    assert manifest["objects"]["routines"] == ["public.audit_fn()"]
    assert manifest["objects"]["triggers"] == ["public.kinds.kinds_audit"]
    assert (Path(res["path"]) / "db.dump").read_bytes()[:5] == b"PGDMP"
    assert not pg(f"SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%'").strip()

    pg(
        "INSERT INTO kinds (txt) VALUES ('after'); DELETE FROM audit; DROP TABLE other.\"Mixed Case\"; "
        "DROP VIEW v_kinds; UPDATE kinds SET amount = 1 WHERE id = 1;",
        pg_db,
    )
    assert pg_snapshot(pg_db) != before
    # an idle application connection does not block the restore
    idle = subprocess.Popen(
        PSQL + ["-d", pg_db], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        idle.stdin.write(b"SELECT 1;\n")
        idle.stdin.flush()
        time.sleep(0.2)
        out = restore_set(dict(PG_LOGIN, backup_dir=str(backup_dir), set_id=res["set_id"]))
    finally:
        with contextlib.suppress(OSError):
            idle.stdin.close()
        idle.kill()
        idle.wait()
    assert out["changed"] and out["live_version"] == "2.0.0"
    assert pg_snapshot(pg_db) == before
    row = pg(
        "SELECT txt || '|' || encode(bin, 'hex') || '|' || amount || '|' || (js->'a'->>1) || '|' || "
        "array_to_string(nums, ',', '*') FROM kinds WHERE id = 1",
        pg_db,
    ).strip()
    assert row == f"Grüße 🚀 日本|{bytes(range(256)).hex()}|12345678901234567890.0123456789|ü|1,2,*"
    pg("INSERT INTO kinds (txt) VALUES ('x')", pg_db)
    assert pg("SELECT count(*) FROM audit", pg_db).strip() == "4"


@needs_pg
def test_postgres_counts_come_from_the_dumped_snapshot(pg_db, backup_dir):
    """Writes committed while the set is taken never cause a mismatch: counts, checksums and pg_dump share
    one exported snapshot."""
    pg(
        "CREATE TABLE t (id serial PRIMARY KEY, v text); INSERT INTO t (v) SELECT md5(g::text) "
        "FROM generate_series(1, 2000) g;",
        pg_db,
    )
    writer = subprocess.Popen(
        PSQL + ["-d", pg_db], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    stop = threading.Event()

    def write():
        while not stop.is_set():
            writer.stdin.write(
                b"INSERT INTO t (v) VALUES (md5(random()::text)); UPDATE t SET v = md5(v) WHERE id = 1;\n"
            )
            writer.stdin.flush()
            time.sleep(0.01)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        time.sleep(0.2)
        res = take_set(pg_params(pg_db, backup_dir))
    finally:
        stop.set()
        thread.join()
        writer.stdin.close()
        writer.wait()
    final = int(pg("SELECT count(*) FROM t", pg_db))
    assert res["verified"]
    assert 2000 < res["manifest"]["tables"]["public.t"]["rows"] < final


@needs_pg
def test_postgres_encrypted_set_and_pgpass(pg_db, backup_dir, tmp_path):
    pg(
        "CREATE TABLE t (id int PRIMARY KEY, v text); "
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 500) g;",
        pg_db,
    )
    pgpass = tmp_path / "pgpass"
    pgpass.write_text("127.0.0.1:5432:*:postgres:unused\n")
    pgpass.chmod(0o600)
    params = pg_params(pg_db, backup_dir, credentials_file=str(pgpass), encryption_key="pg-key")
    res = take_set(params)
    assert res["verified"] and (Path(res["path"]) / "db.dump").read_bytes().startswith(b"Salted__")
    pg("DELETE FROM t WHERE id > 10", pg_db)
    restore_set(dict(PG_LOGIN, backup_dir=str(backup_dir), set_id=res["set_id"], encryption_key="pg-key"))
    assert pg("SELECT count(*) FROM t", pg_db).strip() == "500"
    pgpass.chmod(0o640)
    with pytest.raises(BackupError, match="mode 0640"):
        take_set(params)


# --------------------------------------------------------------------------- SQLite


def test_sqlite_round_trip_with_files(tmp_path, backup_dir):
    db = tmp_path / "app.db"
    make_sqlite(db)
    conf = tmp_path / "etc" / "app"
    (conf / "conf.d").mkdir(parents=True)
    (conf / "main.ini").write_text("a=1\n")
    (conf / "conf.d" / "extra.ini").write_text("b=2\n")
    os.symlink("main.ini", conf / "current.ini")
    single = tmp_path / "secret.key"
    single.write_bytes(b"\x00\x01key")
    single.chmod(0o600)
    before = sqlite_snapshot(db)

    res = take_set(
        dict(
            engine="sqlite",
            database=str(db),
            backup_dir=str(backup_dir),
            set_id="s1",
            files=[str(conf), str(single)],
            live_version="3.1",
        )
    )
    manifest = res["manifest"]
    assert (
        res["verified"] and manifest["tables"]["items"]["rows"] == 3 and manifest["tables"]["kv"]["rows"] == 2
    )
    assert manifest["objects"]["views"] == ["cheap"] and manifest["objects"]["triggers"] == [
        "items.items_log"
    ]
    assert sorted(manifest["files"]) == ["db.dump", "files.tar.gz"]
    assert manifest["archived_paths"] == [str(conf), str(single)]
    assert stat_mode(Path(res["path"]) / "db.dump") == 0o600 and stat_mode(res["path"]) == 0o700

    conn = sqlite3.connect(db)
    conn.executescript("INSERT INTO items (name) VALUES ('new'); DELETE FROM kv; DROP VIEW cheap;")
    conn.close()
    (conf / "main.ini").write_text("a=2\n")
    (conf / "conf.d" / "extra.ini").unlink()
    (conf / "conf.d" / "added.ini").write_text("c=3\n")
    single.write_bytes(b"changed")

    restore_set({"backup_dir": str(backup_dir), "set_id": "s1"})
    assert sqlite_snapshot(db) == before
    assert (conf / "main.ini").read_text() == "a=1\n"
    assert sorted(os.listdir(conf / "conf.d")) == ["extra.ini"]
    assert os.readlink(conf / "current.ini") == "main.ini"
    assert single.read_bytes() == b"\x00\x01key" and stat_mode(single) == 0o600
    assert not [n for n in os.listdir(conf.parent) if n.startswith(".deployctl")]

    sets = run({"state": "listed", "backup_dir": str(backup_dir)})
    assert sets["changed"] is False
    assert [(s["set_id"], s["path"], s["live_version"]) for s in sets["sets"]] == [("s1", res["path"], "3.1")]


def stat_mode(path):
    return os.stat(path).st_mode & 0o777


def test_missing_file_is_an_error(tmp_path, backup_dir):
    db = tmp_path / "app.db"
    make_sqlite(db)
    with pytest.raises(BackupError, match="does not exist"):
        take_set(
            dict(
                engine="sqlite", database=str(db), backup_dir=str(backup_dir), files=[str(tmp_path / "nope")]
            )
        )
    assert listing(backup_dir) == []


def test_corrupted_dumps_are_detected(tmp_path, backup_dir):
    db = tmp_path / "app.db"
    make_sqlite(db)
    base = {"engine": "sqlite", "database": str(db), "backup_dir": str(backup_dir)}
    take_set(dict(base, set_id="trunc"))
    take_set(dict(base, set_id="flip"))
    dump = backup_dir / "trunc" / "db.dump"
    dump.write_bytes(dump.read_bytes()[: dump.stat().st_size // 2])
    dump = backup_dir / "flip" / "db.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))

    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM items")
    conn.commit()
    conn.close()
    for set_id in ("trunc", "flip"):
        with pytest.raises(BackupError, match="sha256 mismatch for db.dump"):
            restore_set({"backup_dir": str(backup_dir), "set_id": set_id})
        assert sqlite_snapshot(db)["items"] == []  # live database untouched
        with pytest.raises(VerifyError, match="sha256 mismatch") as err:
            run({"state": "verified", "backup_dir": str(backup_dir), "set_id": set_id})
        assert err.value.result["changed"] is True
        manifest = json.loads((backup_dir / set_id / "manifest.json").read_text())
        assert (
            manifest["bad"] is True and manifest["verified"] is False and "sha256" in manifest["verify_error"]
        )
        with pytest.raises(BackupError, match="marked bad"):
            restore_set({"backup_dir": str(backup_dir), "set_id": set_id})


def test_comparison_failure_marks_set_bad(tmp_path, backup_dir, monkeypatch):
    db = tmp_path / "app.db"
    make_sqlite(db)
    real = SqliteEngine.scratch_state

    def off_by_one(self, source, manifest, keep=None):
        state = real(self, source, manifest, keep)
        state["tables"]["items"]["rows"] += 1
        return state

    monkeypatch.setattr(SqliteEngine, "scratch_state", off_by_one)
    with pytest.raises(VerifyError, match="table items: 3 rows expected, 4 found"):
        run(
            {"engine": "sqlite", "database": str(db), "backup_dir": str(backup_dir), "set_id": "x", "keep": 1,
             "keep_scratch": True}
        )
    manifest = json.loads((backup_dir / "x" / "manifest.json").read_text())
    assert manifest["bad"] and not manifest["verified"] and "4 found" in manifest["verify_error"]
    assert not list(backup_dir.glob("*.sqlite")), "a copy of a set that failed verification is not kept"
    monkeypatch.undo()
    # a bad set is not counted by retention and is pruned after the next good set
    res = take_set({"engine": "sqlite", "database": str(db), "backup_dir": str(backup_dir), "keep": 1})
    assert res["pruned"] == ["x"]


def test_unverified_set_needs_force(tmp_path, backup_dir):
    db = tmp_path / "app.db"
    make_sqlite(db)
    res = take_set(
        {"engine": "sqlite", "database": str(db), "backup_dir": str(backup_dir), "verify": False}
    )
    assert res["manifest"]["verified"] is False and res["manifest"]["verify_seconds"] is None
    base = {"backup_dir": str(backup_dir), "set_id": res["set_id"]}
    with pytest.raises(BackupError, match="not verified"):
        restore_set(base)
    assert restore_set(dict(base, force=True))["changed"]
    out = verify_set(base)  # a successful re-verification marks it verified
    assert out["changed"] and out["manifest"]["verified"]
    assert restore_set(base)["changed"]


def test_retention(tmp_path, backup_dir):
    db = tmp_path / "app.db"
    make_sqlite(db)
    base = {
        "engine": "sqlite",
        "database": str(db),
        "backup_dir": str(backup_dir),
        "keep": 2,
        "protect": ["s1"],
    }
    pruned, predicted = {}, {}
    for i in range(1, 6):
        # check mode (deployctl release --plan) names what the set would make retention delete, and deletes nothing
        predicted[i] = take_set(dict(base, set_id=f"s{i}"), check_mode=True)["pruned"]
        pruned[i] = take_set(dict(base, set_id=f"s{i}"))["pruned"]
    assert pruned == {1: [], 2: [], 3: [], 4: ["s2"], 5: ["s3"]} and predicted == pruned
    assert [s["set_id"] for s in list_sets(str(backup_dir))] == ["s5", "s4", "s1"]

    old = backup_dir / "old-partial"
    old.mkdir()
    (old / "db.dump").write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    (backup_dir / "fresh-partial").mkdir()
    (backup_dir / "lost+found").mkdir()
    os.utime(backup_dir / "lost+found", (time.time() - 7200, time.time() - 7200))
    out = take_set(dict(base, set_id="s6", keep=1))
    assert sorted(out["pruned"]) == ["old-partial", "s4", "s5"]
    assert listing(backup_dir) == ["fresh-partial", "lost+found", "s1", "s6"]
    # default ids are timestamped and unique
    a = take_set(dict(base, label="rel 9/x"))
    b = take_set(dict(base, label="rel 9/x"))
    assert re.fullmatch(r"\d{8}T\d{6}Z-rel-9-x(-2)?", a["set_id"]) and a["set_id"] != b["set_id"]


def test_check_mode(tmp_path, backup_dir):
    db = tmp_path / "app.db"
    make_sqlite(db)
    res = run({"engine": "sqlite", "database": str(db), "backup_dir": str(backup_dir)}, check_mode=True)
    assert res["changed"] and not backup_dir.exists()
    take_set({"engine": "sqlite", "database": str(db), "backup_dir": str(backup_dir), "set_id": "s1"})
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM items")
    conn.commit()
    conn.close()
    res = run({"state": "restored", "backup_dir": str(backup_dir), "set_id": "s1"}, check_mode=True)
    assert res["changed"] and sqlite_snapshot(db)["items"] == []


# --------------------------------------------------------------------------- under Ansible


def run_ansible(tmp_path, args, check=False):
    # the "json" callback lives in ansible.posix since ansible-core 2.19; "minimal" prints
    # "localhost | CHANGED => {...json...}"
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_STDOUT_CALLBACK="minimal",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
        ANSIBLE_HOME=str(tmp_path / "ansible-home"),
    )
    argv = [
        str(Path(sys.executable).parent / "ansible"),
        "localhost",
        "-i",
        "localhost,",
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "-m",
        "deployctl.core.backup_set",
        "-a",
        json.dumps(args),
    ]
    if check:
        argv.append("--check")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    match = re.search(r"^localhost \| ([A-Z]+)!? => (\{.*)", proc.stdout, re.M | re.S)
    assert match, proc.stdout + proc.stderr
    return match.group(1), json.loads(match.group(2))


def test_module_runs_under_ansible(tmp_path, backup_dir):
    if not (Path(sys.executable).parent / "ansible").exists() and not shutil.which("ansible"):
        pytest.skip("ansible is not installed next to the test interpreter")
    db = tmp_path / "app.db"
    make_sqlite(db)
    args = {
        "engine": "sqlite",
        "database": str(db),
        "backup_dir": str(backup_dir),
        "label": "cli",
        "encryption_key": "cli-secret-key",
    }
    status, res = run_ansible(tmp_path, args)
    assert status == "CHANGED" and res["changed"] is True, res
    assert res["verified"] is True and res["manifest"]["encrypted"] is True
    assert res["set_id"].endswith("-cli") and os.path.isfile(Path(res["path"]) / "manifest.json")
    assert "cli-secret-key" not in json.dumps(res)

    status, failed = run_ansible(
        tmp_path,
        {
            "state": "restored",
            "backup_dir": str(backup_dir),
            "set_id": res["set_id"],
            "encryption_key": "not-the-key-123",
        },
    )
    assert status == "FAILED" and "wrong encryption_key? (bad decrypt)" in failed["msg"], failed

    status, checked = run_ansible(
        tmp_path, {"state": "restored", "backup_dir": str(backup_dir), "set_id": res["set_id"]}, check=True
    )
    assert status == "CHANGED" and checked["changed"] is True


# --------------------------------------------------------------------------- kept scratch copies (rehearsals)


def _kept_copy_life(params, write_into_copy, read_live, exists):
    """keep_scratch keeps the verified copy; writes into it leave the live database alone; scratch_dropped
    refuses anything that is not such a copy, drops the copy, and a later set drops what a dead run left."""
    before = read_live()
    try:
        _kept_copy_steps(params, write_into_copy, read_live, exists, before)
    finally:
        run(dict(params, state="scratch_dropped"))


def _kept_copy_steps(params, write_into_copy, read_live, exists, before):
    taken = take_set(dict(params, keep_scratch=True))
    copy = taken["scratch_database"]
    assert exists(copy) and taken["verified"]
    write_into_copy(copy)
    assert read_live() == before, "the live database changed with its scratch copy"

    with pytest.raises(BackupError, match="is not a scratch copy"):
        run(dict(params, state="scratch_dropped", scratch_database=params["database"]))
    assert read_live() == before

    left = take_set(dict(params, keep_scratch=True))["scratch_database"]  # the first copy: left by a "dead" run
    assert not exists(copy) and exists(left)
    dropped = run(dict(params, state="scratch_dropped", scratch_database=left))
    assert dropped["changed"] and not exists(left)
    assert run(dict(params, state="scratch_dropped"))["dropped"] == []
    assert take_set(params).get("scratch_database") is None, "kept only when asked"


@needs_mysql
def test_mysql_kept_scratch_copy(mysql_db, backup_dir):
    my("CREATE TABLE items (id INT PRIMARY KEY, name TEXT); INSERT INTO items VALUES (1, 'a'), (2, 'b');", mysql_db)
    _kept_copy_life(
        mysql_params(mysql_db, backup_dir),
        write_into_copy=lambda copy: my("ALTER TABLE items ADD COLUMN price INT; DELETE FROM items;", copy),
        read_live=lambda: my("SHOW CREATE TABLE items; SELECT * FROM items ORDER BY id;", mysql_db),
        exists=lambda copy: my_rows(f"SHOW DATABASES LIKE '{copy}'") != [],
    )


@needs_pg
def test_postgres_kept_scratch_copy(pg_db, backup_dir):
    pg("CREATE TABLE items (id INT PRIMARY KEY, name TEXT); INSERT INTO items VALUES (1, 'a'), (2, 'b');", pg_db)
    _kept_copy_life(
        pg_params(pg_db, backup_dir),
        write_into_copy=lambda copy: pg("ALTER TABLE items ADD COLUMN price INT; DELETE FROM items;", copy),
        read_live=lambda: pg("SELECT column_name FROM information_schema.columns WHERE table_name = 'items' "
                             "ORDER BY 1; SELECT * FROM items ORDER BY id;", pg_db),
        exists=lambda copy: pg(f"SELECT 1 FROM pg_database WHERE datname = '{copy}'").strip() == "1",
    )


def test_sqlite_kept_scratch_copy(tmp_path, backup_dir):
    live = tmp_path / "app.db"
    make_sqlite(live)

    def write_into_copy(copy):
        assert Path(copy).parent == backup_dir
        with contextlib.closing(sqlite3.connect(copy)) as conn:
            conn.executescript("ALTER TABLE items ADD COLUMN extra INT; DELETE FROM kv;")

    _kept_copy_life(dict(engine="sqlite", database=str(live), backup_dir=str(backup_dir)),
                    write_into_copy=write_into_copy, read_live=lambda: sqlite_snapshot(live),
                    exists=lambda copy: Path(copy).exists())
