#!/usr/bin/env python3
"""Time deployctl's verified backup sets against the bare dump and restore tools, per database engine.

For each engine it creates a uniquely named database (deployctl_bench_<random>) and fills it with
about --size-mb MB of mixed rows: a wide `orders` table (integers, a short string, a decimal, a
timestamp, a nullable flag, text of varying length and a small binary value, with a secondary index)
and a narrow `events` table. It then times, on that database:

  take_set       deployctl.core.backup_set's take_set: counts and checksums, dump, verify (restore
                 into a scratch database and compare); dump_seconds and verify_seconds come from the
                 set's manifest
  bare dump      mariadb-dump --single-transaction DB > FILE   or   pg_dump -Fc -f FILE DB
  restore_set    restore_set of that set into the database (drop, recreate, load, compare)
  bare restore   drop and create the database, then mariadb DB < FILE   or   pg_restore -d DB FILE

and prints the sizes (MB), seconds and ratios. The database, the scratch databases and the temporary
backup directory are removed at the end, also after a failure or Ctrl-C.

Connects as root to MariaDB/MySQL on 127.0.0.1:3306 and as postgres to PostgreSQL on 127.0.0.1:5432
(no password; see --mysql-* and --pg-*). Run on an otherwise idle machine:

    .venv/bin/python bench/backup_engines.py --size-mb 1000
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import ratio, secs, table

MODULE_PATH = benchlib.REPO / "collections/ansible_collections/deployctl/core/plugins/modules/backup_set.py"
ENGINES = ("mysql", "postgresql")
MB = 1024 * 1024

# Rough bytes per row on disk (data + index), used only to choose how many rows to insert.
ORDERS_ROW_BYTES = 330
EVENTS_ROW_BYTES = 70
ORDERS_SHARE = 0.8  # of the target size, the rest is events
BATCH_ROWS = 100_000


def load_backup_set():
    spec = importlib.util.spec_from_file_location("deployctl_backup_set", MODULE_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(argv: list[str], what: str, stdin=None, stdout=None, sql: str | None = None) -> str:
    proc = subprocess.run(argv, input=sql.encode() if sql is not None else None,
                          stdin=stdin if sql is None else None, stdout=stdout or subprocess.PIPE,
                          stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}")
    return proc.stdout.decode(errors="replace") if proc.stdout is not None else ""


def timed(func, *args, **kwargs):
    started = time.monotonic()
    value = func(*args, **kwargs)
    return time.monotonic() - started, value


def row_counts(size_mb: float) -> tuple[int, int]:
    target = size_mb * MB
    orders = max(1, int(target * ORDERS_SHARE / ORDERS_ROW_BYTES))
    events = max(1, int(target * (1 - ORDERS_SHARE) / EVENTS_ROW_BYTES))
    return orders, events


def batches(total: int):
    for start in range(1, total + 1, BATCH_ROWS):
        yield start, min(start + BATCH_ROWS - 1, total)


# ------------------------------------------------------------------------------------------ engines


class MariaDB:
    name = "mysql"
    label = "MariaDB/MySQL"

    def __init__(self, args: argparse.Namespace, database: str):
        self.db = database
        self.login = {"login_host": args.mysql_host, "login_port": args.mysql_port, "login_user": args.mysql_user}
        self.connect = ["-h", args.mysql_host, "-P", str(args.mysql_port), "-u", args.mysql_user]
        self.client = shutil.which("mariadb") or shutil.which("mysql") or "mariadb"
        self.dumper = shutil.which("mariadb-dump") or shutil.which("mysqldump") or "mariadb-dump"

    def sql(self, statements: str, db: str | None = None) -> str:
        argv = [self.client, *self.connect, "--batch", "--skip-column-names"] + ([db] if db else [])
        return run(argv, "mariadb", sql=statements)

    def available(self) -> str | None:
        try:
            self.sql("SELECT 1;")
        except (OSError, RuntimeError) as exc:
            return str(exc).strip().splitlines()[-1] if str(exc).strip() else "not reachable"
        return None

    def create(self) -> None:
        self.sql(f"CREATE DATABASE `{self.db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;")

    def fill(self, orders: int, events: int) -> None:
        self.sql("""
            CREATE TABLE orders (
              id BIGINT NOT NULL PRIMARY KEY,
              customer_id INT NOT NULL,
              status VARCHAR(16) NOT NULL,
              amount DECIMAL(12,2) NOT NULL,
              created_at DATETIME NOT NULL,
              paid TINYINT(1) NULL,
              note TEXT NULL,
              payload VARBINARY(64) NOT NULL,
              KEY orders_customer (customer_id)
            ) ENGINE=InnoDB;
            CREATE TABLE events (
              id BIGINT NOT NULL PRIMARY KEY,
              order_id BIGINT NOT NULL,
              kind VARCHAR(12) NOT NULL,
              at DATETIME NOT NULL
            ) ENGINE=InnoDB;
        """, self.db)
        for low, high in batches(orders):
            self.sql(f"""
                INSERT INTO orders
                SELECT seq, seq % 50000, ELT(1 + seq % 4, 'new', 'paid', 'shipped', 'cancelled'),
                       (seq % 100000) / 7, '2024-01-01' + INTERVAL (seq % 31536000) SECOND,
                       IF(seq % 5 = 0, NULL, seq % 2),
                       IF(seq % 7 = 0, NULL, LEFT(REPEAT(SHA2(seq, 256), 8), seq % 400)),
                       UNHEX(SHA2(seq, 256))
                FROM seq_{low}_to_{high};
            """, self.db)
        for low, high in batches(events):
            self.sql(f"""
                INSERT INTO events
                SELECT seq, 1 + seq % {orders}, ELT(1 + seq % 3, 'created', 'updated', 'mailed'),
                       '2024-01-01' + INTERVAL (seq % 31536000) SECOND
                FROM seq_{low}_to_{high};
            """, self.db)
        self.sql("ANALYZE TABLE orders, events;", self.db)

    def size_bytes(self) -> int:
        out = self.sql("SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables "
                       f"WHERE table_schema = '{self.db}';")
        return int(float(out.strip() or 0))

    def bare_dump(self, path: Path) -> None:
        with open(path, "wb") as out:
            run([self.dumper, *self.connect, "--single-transaction", self.db], "mariadb-dump", stdout=out)

    def bare_restore(self, path: Path) -> None:
        self.drop()
        self.create()
        with open(path, "rb") as dump:
            run([self.client, *self.connect, self.db], "mariadb < dump", stdin=dump)

    def drop(self) -> None:
        self.sql(f"DROP DATABASE IF EXISTS `{self.db}`;")

    def leftover_scratch(self, prefix: str) -> list[str]:
        out = self.sql(f"SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE '{prefix}%';")
        return out.split()

    def drop_named(self, name: str) -> None:
        self.sql(f"DROP DATABASE IF EXISTS `{name}`;")


class PostgreSQL:
    name = "postgresql"
    label = "PostgreSQL"

    def __init__(self, args: argparse.Namespace, database: str):
        self.db = database
        self.login = {"login_host": args.pg_host, "login_port": args.pg_port, "login_user": args.pg_user}
        self.connect = ["-h", args.pg_host, "-p", str(args.pg_port), "-U", args.pg_user, "-w"]

    def sql(self, statements: str, db: str = "postgres") -> str:
        argv = ["psql", *self.connect, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db]
        return run(argv, "psql", sql=statements)

    def available(self) -> str | None:
        try:
            self.sql("SELECT 1;")
        except (OSError, RuntimeError) as exc:
            return str(exc).strip().splitlines()[-1] if str(exc).strip() else "not reachable"
        return None

    def create(self) -> None:
        self.sql(f'CREATE DATABASE "{self.db}";')

    def fill(self, orders: int, events: int) -> None:
        self.sql("""
            CREATE TABLE orders (
              id bigint PRIMARY KEY,
              customer_id integer NOT NULL,
              status varchar(16) NOT NULL,
              amount numeric(12,2) NOT NULL,
              created_at timestamptz NOT NULL,
              paid boolean,
              note text,
              payload bytea NOT NULL
            );
            CREATE INDEX orders_customer ON orders (customer_id);
            CREATE TABLE events (
              id bigint PRIMARY KEY,
              order_id bigint NOT NULL,
              kind varchar(12) NOT NULL,
              at timestamptz NOT NULL
            );
        """, self.db)
        for low, high in batches(orders):
            self.sql(f"""
                INSERT INTO orders
                SELECT g, g % 50000, (ARRAY['new', 'paid', 'shipped', 'cancelled'])[1 + g % 4],
                       (g % 100000) / 7.0, timestamptz '2024-01-01 00:00:00+00' + (g % 31536000) * interval '1 s',
                       CASE WHEN g % 5 = 0 THEN NULL ELSE g % 2 = 1 END,
                       CASE WHEN g % 7 = 0 THEN NULL ELSE left(repeat(md5(g::text) || md5((g + 1)::text), 8),
                                                               (g % 400)::int) END,
                       sha256(g::text::bytea)
                FROM generate_series({low}, {high}) AS g;
            """, self.db)
        for low, high in batches(events):
            self.sql(f"""
                INSERT INTO events
                SELECT g, 1 + g % {orders}, (ARRAY['created', 'updated', 'mailed'])[1 + g % 3],
                       timestamptz '2024-01-01 00:00:00+00' + (g % 31536000) * interval '1 s'
                FROM generate_series({low}, {high}) AS g;
            """, self.db)
        self.sql("VACUUM ANALYZE;", self.db)

    def size_bytes(self) -> int:
        # tables and indexes only, like MariaDB's data_length + index_length (no catalog)
        out = self.sql("SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                       "JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE c.relkind = 'r' AND n.nspname = 'public';", self.db)
        return int(out.strip() or 0)

    def bare_dump(self, path: Path) -> None:
        run(["pg_dump", *self.connect, "-Fc", "-f", str(path), "-d", self.db], "pg_dump")

    def bare_restore(self, path: Path) -> None:
        self.drop()
        self.create()
        run(["pg_restore", *self.connect, "-d", self.db, str(path)], "pg_restore")

    def drop(self) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE);')

    def leftover_scratch(self, prefix: str) -> list[str]:
        return self.sql(f"SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%';").split()

    def drop_named(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE);')


# ------------------------------------------------------------------------------------------ benchmark


def bench_engine(engine, backup_set, size_mb: float, workdir: Path) -> dict:
    figures: dict = {}
    scratch_prefix = f"{engine.db}_v_"
    backup_dir = workdir / engine.name / "sets"
    bare_file = workdir / engine.name / ("bare.sql" if engine.name == "mysql" else "bare.dump")
    bare_file.parent.mkdir(parents=True)
    params = {"engine": engine.name, "database": engine.db, "backup_dir": str(backup_dir),
              "label": "bench", "scratch_prefix": scratch_prefix, **engine.login}
    try:
        engine.create()
        orders, events = row_counts(size_mb)
        print(f"{engine.label}: filling {engine.db} with {orders} orders and {events} events", flush=True)
        figures["fill"], _ = timed(engine.fill, orders, events)
        figures["db_mb"] = engine.size_bytes() / MB
        print(f"  filled in {figures['fill']:.1f} s: {figures['db_mb']:.1f} MB of tables and indexes", flush=True)

        figures["take"], taken = timed(backup_set.take_set, params)
        manifest = taken["manifest"]
        figures["dump"], figures["verify"] = manifest["dump_seconds"], manifest["verify_seconds"]
        figures["set_mb"] = manifest["files"]["db.dump"]["size"] / MB
        print(f"  take_set {figures['take']:.2f} s (dump {figures['dump']:.2f} s, verify {figures['verify']:.2f} s)",
              flush=True)

        figures["bare_dump"], _ = timed(engine.bare_dump, bare_file)
        figures["bare_mb"] = bare_file.stat().st_size / MB
        print(f"  bare dump {figures['bare_dump']:.2f} s", flush=True)

        restore_params = {"backup_dir": str(backup_dir), "set_id": taken["set_id"], **engine.login}
        figures["restore"], _ = timed(backup_set.restore_set, restore_params)
        print(f"  restore_set {figures['restore']:.2f} s", flush=True)

        figures["bare_restore"], _ = timed(engine.bare_restore, bare_file)
        print(f"  bare restore {figures['bare_restore']:.2f} s", flush=True)
    finally:
        with contextlib.suppress(Exception):
            engine.drop()
        with contextlib.suppress(Exception):
            for name in engine.leftover_scratch(scratch_prefix):
                engine.drop_named(name)
    return figures


def report(results: dict[str, dict], size_mb: float) -> None:
    print()
    print(f"Backup and restore of ~{size_mb:g} MB of mixed rows, seconds (ratios: deployctl / bare tool)")
    print()
    rows = []
    for label, f in results.items():
        rows.append([label, "database (tables + indexes)", f"{f['db_mb']:.1f}", "", ""])
        rows.append(["", "take_set (dump + verify)", f"{f['set_mb']:.1f}", secs(f["take"]),
                     ratio(f["take"], f["bare_dump"])])
        rows.append(["", "  dump_seconds", "", secs(f["dump"]), ratio(f["dump"], f["bare_dump"])])
        rows.append(["", "  verify_seconds", "", secs(f["verify"]), ""])
        rows.append(["", "bare dump", f"{f['bare_mb']:.1f}", secs(f["bare_dump"]), ""])
        rows.append(["", "restore_set", "", secs(f["restore"]), ratio(f["restore"], f["bare_restore"])])
        rows.append(["", "bare restore", "", secs(f["bare_restore"]), ""])
    print(table(["engine", "step", "MB", "seconds", "ratio"], rows, left=2))
    print()
    print("bare dump: mariadb-dump --single-transaction / pg_dump -Fc; "
          "bare restore: drop + create + mariadb < dump / pg_restore")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=1000, metavar="MB",
                        help="approximate size of the generated data, per engine (default: %(default)g)")
    parser.add_argument("--engines", default=",".join(ENGINES), metavar="E,E",
                        help="comma-separated engines among mysql, postgresql (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the temporary backup directory is made (default: the system's tmp); "
                             "it needs about three times --size-mb free")
    parser.add_argument("--mysql-host", default="127.0.0.1")
    parser.add_argument("--mysql-port", type=int, default=3306)
    parser.add_argument("--mysql-user", default="root")
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    args = parser.parse_args()
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(args.engines) - set(ENGINES))
    if unknown or not args.engines:
        parser.error(f"--engines takes mysql and/or postgresql, not {', '.join(unknown) or 'nothing'}")
    if args.size_mb <= 0:
        parser.error("--size-mb must be positive")
    return args


def main() -> None:
    args = parse_args()
    backup_set = load_backup_set()
    suffix = secrets.token_hex(4)
    classes = {"mysql": MariaDB, "postgresql": PostgreSQL}
    engines = [classes[name](args, f"deployctl_bench_{suffix}") for name in args.engines]
    for engine in engines:
        problem = engine.available()
        if problem:
            sys.exit(f"{engine.label} is not usable: {problem}")
    results: dict[str, dict] = {}
    workdir = Path(tempfile.mkdtemp(prefix="deployctl-bench-backup-", dir=args.workdir))
    try:
        for engine in engines:
            results[engine.label] = bench_engine(engine, backup_set, args.size_mb, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if results:
            report(results, args.size_mb)


if __name__ == "__main__":
    main()
