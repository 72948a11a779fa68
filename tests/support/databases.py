"""The machine's MariaDB and PostgreSQL for tests: a database and a user of its own per test, dropped after.

The user has what an app's user has (its own database), plus what the backup verification needs: scratch
databases under deployctl_verify_ (MariaDB: a grant on the prefix; PostgreSQL: CREATEDB).
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import subprocess
import uuid

MARIADB = ["mariadb", "--protocol=tcp", "-h", "127.0.0.1", "-u", "root", "--batch", "--skip-column-names"]
PSQL = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"]


def mariadb(sql: str, database: str | None = None) -> str:
    return subprocess.run([*MARIADB, *([database] if database else []), "-e", sql], check=True, capture_output=True,
                          text=True).stdout


def psql(sql: str, database: str = "postgres") -> str:
    return subprocess.run([*PSQL, "-d", database, "-c", sql], check=True, capture_output=True, text=True).stdout


def mariadb_state(database: str) -> str:
    dump = subprocess.run(["mariadb-dump", "--protocol=tcp", "-h", "127.0.0.1", "-u", "root", "--skip-dump-date",
                           "--skip-comments", "--order-by-primary", database], check=True, capture_output=True).stdout
    return hashlib.sha256(dump).hexdigest()


def postgresql_state(database: str) -> str:
    dump = subprocess.run(["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "--no-owner", "--no-privileges",
                           database], check=True, capture_output=True).stdout
    lines = [line for line in dump.splitlines() if not line.startswith(b"--") and b"restrict" not in line.lower()]
    return hashlib.sha256(b"\n".join(lines)).hexdigest()


@contextlib.contextmanager
def database(engine: str):
    """(name, password) of a fresh database and its user on `engine` (mysql or postgresql)."""
    name = f"dctest_{uuid.uuid4().hex[:8]}"
    password = "pw-" + secrets.token_hex(12)
    if engine == "mysql":
        mariadb(f"CREATE DATABASE {name}; CREATE USER '{name}'@'127.0.0.1' IDENTIFIED BY '{password}';"
                f"GRANT ALL ON {name}.* TO '{name}'@'127.0.0.1'; GRANT PROCESS, RELOAD ON *.* TO '{name}'@'127.0.0.1';"
                f"GRANT ALL ON `deployctl\\_verify\\_%`.* TO '{name}'@'127.0.0.1';")
    else:
        psql(f"CREATE ROLE {name} LOGIN CREATEDB PASSWORD '{password}'")
        psql(f"CREATE DATABASE {name} OWNER {name}")
    try:
        yield name, password
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            if engine == "mysql":
                mariadb(f"DROP DATABASE IF EXISTS {name}; DROP USER IF EXISTS '{name}'@'127.0.0.1'")
            else:
                psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                psql(f"DROP ROLE IF EXISTS {name}")


def use_database(project, engine: str, name: str, password: str) -> None:
    """Point the demo project (the app and deployctl's backups) at the database."""
    port, scheme = (3306, "mysql") if engine == "mysql" else (5432, "postgresql")
    project.group_vars["deployctl_env"].update(
        DEMO_DATABASE_URL=f"{scheme}://{name}@127.0.0.1:{port}/{name}", DEMO_DATABASE_PASSWORD=password)
    project.group_vars["deployctl_database"] = {"engine": engine, "name": name, "host": "127.0.0.1", "port": port,
                                                "user": name, "password": password}
    project.write()
    project.database, project.password = name, password


def state_of(project) -> str:
    engine = project.group_vars["deployctl_database"]["engine"]
    return mariadb_state(project.database) if engine == "mysql" else postgresql_state(project.database)
