"""The deployment history: one SQLite file per project, on the control node.

Every release, rollback, restore, recovery and verification is a row in `deployments` with one row per
phase in `phases`. It is written ahead: a deployment's row exists before its first phase runs, and what
recovery needs (the version live before on each host, the backup set, the schema) is saved the moment
it is known, so a control node that dies mid-release leaves a record `deployctl recover` can finish.
Nothing secret is ever stored (versions, host names, counts, checksums and messages only). Each
`deployctl verify` run is also a row in `verifications`, which health changes are detected against.
"""

from __future__ import annotations

import getpass
import json
import sqlite3
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from deployctl import processes
from deployctl.errors import StateError

SCHEMA = """
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY,
    environment TEXT NOT NULL,
    action TEXT NOT NULL,
    version TEXT,
    user TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    outcome TEXT NOT NULL DEFAULT 'running',
    exit_code INTEGER,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS phases (
    deployment_id TEXT NOT NULL REFERENCES deployments(id),
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    seconds REAL NOT NULL,
    changed_hosts TEXT NOT NULL,
    failed_hosts TEXT NOT NULL,
    unreachable_hosts TEXT NOT NULL,
    started_at TEXT,
    PRIMARY KEY (deployment_id, seq)
);
CREATE INDEX IF NOT EXISTS deployments_env ON deployments(environment, started_at);
CREATE TABLE IF NOT EXISTS verifications (
    deployment_id TEXT NOT NULL,
    environment TEXT NOT NULL,
    healthy INTEGER NOT NULL,
    exit_code INTEGER NOT NULL,
    outcome TEXT,
    seconds REAL,
    checks TEXT NOT NULL DEFAULT '{}',
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS verifications_env ON verifications(environment);
"""

RUNNING = "running"


def now(timespec: str = "seconds") -> str:
    return datetime.now(UTC).isoformat(timespec=timespec)


@dataclass
class Deployment:
    id: str
    environment: str
    action: str
    version: str | None
    user: str
    started_at: str
    finished_at: str | None = None
    outcome: str = RUNNING
    exit_code: int | None = None
    details: dict = field(default_factory=dict)
    phases: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    @property
    def abandoned(self) -> bool:
        """Running in the history, but its deployctl process on this control node is gone (`deployctl
        recover` finishes it)."""
        return self.outcome == RUNNING and processes.alive(self.details.get("process")) is False


class History:
    """The history file. Every failure to read or write it is a StateError with what to do about it."""

    def __init__(self, path: Path):
        self.path = path
        with self._db(transaction=False) as db:
            db.executescript(SCHEMA)
            # phases recorded before their start times were
            if "started_at" not in {row["name"] for row in db.execute("PRAGMA table_info(phases)")}:
                db.execute("ALTER TABLE phases ADD COLUMN started_at TEXT")

    def _problem(self, exc: Exception) -> StateError:
        return StateError(
            f"the history {self.path} cannot be used ({exc}); move it aside (mv {self.path} {self.path}.broken) "
            "to start a new one: the hosts keep their own records, `deployctl status` and `deployctl recover` "
            "work from those"
        )

    @contextmanager
    def _db(self, immediate: bool = False, transaction: bool = True):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
                db.row_factory = sqlite3.Row
                if not transaction:
                    yield db
                    return
                db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            raise self._problem(exc) from None

    def check_writable(self) -> None:
        """Before anything changes: the file is a sound database this user can write."""
        with self._db(immediate=True) as db:
            result = db.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {result}")

    def start(self, environment: str, action: str, version: str | None, details: dict | None = None) -> Deployment:
        stamp = datetime.now(UTC).strftime("DEP-%Y%m%d-%H%M%S")
        # BEGIN IMMEDIATE serialises two commands started in the same second: each sees the other's id
        with self._db(immediate=True) as db:
            taken = {r[0] for r in db.execute("SELECT id FROM deployments WHERE id LIKE ?", (stamp + "%",))}
            ident, n = stamp, 1
            while ident in taken:
                n += 1
                ident = f"{stamp}-{n}"
            deployment = Deployment(ident, environment, action, version, getpass.getuser(), now(),
                                    details=dict(details or {}))
            db.execute(
                "INSERT INTO deployments (id, environment, action, version, user, started_at, details) "
                "VALUES (?,?,?,?,?,?,?)",
                (ident, environment, action, version, deployment.user, deployment.started_at,
                 json.dumps(deployment.details)),
            )
        return deployment

    def add_phase(self, deployment: Deployment, name: str, status: str, seconds: float,
                  changed: list[str], failed: dict[str, str], unreachable: dict[str, str],
                  started_at: str | None = None) -> None:
        """Append a phase to the deployment (in memory always, on disk with its details)."""
        deployment.phases.append({"name": name, "status": status, "seconds": round(seconds, 2),
                                  "changed_hosts": changed, "failed_hosts": failed,
                                  "unreachable_hosts": unreachable, "started_at": started_at})
        self.save(deployment)

    def save(self, deployment: Deployment) -> None:
        """Write the deployment as it stands now: details, outcome, and every phase not yet on disk."""
        with self._db(immediate=True) as db:
            db.execute(
                "UPDATE deployments SET outcome=?, exit_code=?, finished_at=?, details=? WHERE id=?",
                (deployment.outcome, deployment.exit_code, deployment.finished_at, json.dumps(deployment.details),
                 deployment.id),
            )
            for seq, phase in enumerate(deployment.phases, 1):
                db.execute(
                    "INSERT OR IGNORE INTO phases (deployment_id, seq, name, status, seconds, changed_hosts, "
                    "failed_hosts, unreachable_hosts, started_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (deployment.id, seq, phase["name"], phase["status"], phase["seconds"],
                     json.dumps(phase["changed_hosts"]), json.dumps(phase["failed_hosts"]),
                     json.dumps(phase["unreachable_hosts"]), phase.get("started_at")),
                )

    def finish(self, deployment: Deployment, outcome: str, exit_code: int) -> None:
        deployment.outcome, deployment.exit_code, deployment.finished_at = outcome, exit_code, now()
        self.save(deployment)

    def get(self, ident: str) -> Deployment | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM deployments WHERE id=?", (ident,)).fetchone()
            return self._deployment(db, row) if row else None

    def recent(self, environment: str | None = None, limit: int = 20, action: str | None = None,
               outcome: str | None = None) -> list[Deployment]:
        query, args = "SELECT * FROM deployments WHERE 1=1", []
        for column, value in (("environment", environment), ("action", action), ("outcome", outcome)):
            if value is not None:
                query += f" AND {column}=?"
                args.append(value)
        query += " ORDER BY started_at DESC, id DESC LIMIT ?"
        args.append(limit)
        with self._db() as db:
            return [self._deployment(db, row) for row in db.execute(query, args).fetchall()]

    def unfinished(self, environment: str) -> list[Deployment]:
        """The environment's deployments whose deployctl process on this control node is gone, newest first."""
        return [d for d in self.recent(environment, limit=50, outcome=RUNNING) if d.abandoned]

    def _deployment(self, db: sqlite3.Connection, row: sqlite3.Row) -> Deployment:
        values = dict(row)
        values["details"] = json.loads(values["details"])
        deployment = Deployment(**values)
        for phase in db.execute("SELECT * FROM phases WHERE deployment_id=? ORDER BY seq", (row["id"],)):
            phase = dict(phase)
            for key in ("changed_hosts", "failed_hosts", "unreachable_hosts"):
                phase[key] = json.loads(phase[key])
            del phase["deployment_id"], phase["seq"]
            deployment.phases.append(phase)
        return deployment

    # ------------------------------------------------------------ verifications (deployctl verify runs)

    def record_verification(self, deployment_id: str, environment: str, healthy: bool, exit_code: int,
                            checks: dict | None = None, outcome: str | None = None,
                            seconds: float | None = None, at: str | None = None) -> dict:
        row = {"deployment_id": deployment_id, "environment": environment, "healthy": bool(healthy),
               "exit_code": int(exit_code), "outcome": outcome,
               "seconds": None if seconds is None else round(seconds, 2), "checks": checks or {},
               "at": at or now()}
        with self._db(immediate=True) as db:
            db.execute(
                "INSERT INTO verifications (deployment_id, environment, healthy, exit_code, outcome, "
                "seconds, checks, at) VALUES (?,?,?,?,?,?,?,?)",
                (deployment_id, environment, int(row["healthy"]), row["exit_code"], outcome, row["seconds"],
                 json.dumps(row["checks"]), row["at"]),
            )
        return row

    def verifications(self, environment: str, limit: int = 20) -> list[dict]:
        """The environment's verifications, newest (last recorded) first."""
        return self._verifications("environment=?", (environment,), limit)

    def verification_of(self, deployment_id: str) -> dict | None:
        found = self._verifications("deployment_id=?", (deployment_id,), 1)
        return found[0] if found else None

    def _verifications(self, where: str, args: tuple, limit: int) -> list[dict]:
        with self._db() as db:
            rows = db.execute(f"SELECT * FROM verifications WHERE {where} ORDER BY rowid DESC LIMIT ?",
                              (*args, limit)).fetchall()
        result = []
        for row in rows:
            values = dict(row)
            values["healthy"] = bool(values["healthy"])
            values["checks"] = json.loads(values["checks"] or "{}")
            result.append(values)
        return result

    def last_verification(self, environment: str) -> dict | None:
        last = self.verifications(environment, limit=1)
        return last[0] if last else None
