"""What a rollback may do to the database: restore only what loses nothing, unless told otherwise.

A database state is what the hosts report for it (deployctl.core.backup_set): per table its row count
and a content digest, and the names of its views, routines, triggers and events. Backup sets carry the
state at dump time; every release, rollback and restore records the state it left.
"""

from __future__ import annotations

from deployctl.history import Deployment
from deployctl.phases import Phase


def changed_tables(recorded: dict | None, live: dict | None) -> list[str]:
    """Tables (and schema objects) whose content differs between two states."""
    recorded, live = recorded or {}, live or {}
    before, after = recorded.get("tables") or {}, live.get("tables") or {}
    changed = sorted(t for t in set(before) | set(after) if before.get(t) != after.get(t))
    objects_before, objects_after = recorded.get("objects") or {}, live.get("objects") or {}
    for kind in sorted(set(objects_before) | set(objects_after)):
        if sorted(objects_before.get(kind) or []) != sorted(objects_after.get(kind) or []):
            changed.append(f"({kind})")
    return changed


def migrated(deployment: Deployment) -> bool | None:
    """Whether a deployment changed the schema: True, False, or None when nobody can tell.

    "Migrated" means the schema version differs before and after, as the migration tool reported it,
    not that a migrate phase ran.
    """
    schema = deployment.details.get("schema") or {}
    if not deployment.details.get("migrate_started"):
        return False
    versions = [v for v in schema.values() if isinstance(v, dict)]
    if not versions or any(not v.get("before") or not v.get("after") for v in versions):
        return None
    return any(v["before"] != v["after"] for v in versions)


def reopened(deployment: Deployment) -> bool:
    """Whether the deployment took maintenance down again (users could write after it)."""
    return any(p["name"] == Phase.MAINTENANCE_OFF and p["status"] == "passed" for p in deployment.phases)


def unexplained_changes(undone: list[Deployment], live: dict | None) -> tuple[list[str], str | None]:
    """What restoring the set taken before the first of `undone` would lose.

    Restoring it loses nothing when every change since that set was made by the deployments being
    undone: each one started from the state the one before it left, and the live database is still what
    the last one left (`live` None: the last one ended inside maintenance, which still holds writes off).
    Returns (changed tables, None), or ([], why it cannot be told).
    """
    for earlier, later in zip(undone, undone[1:], strict=False):
        after, before = earlier.details.get("data_after"), later.details.get("data_before")
        if after is None or before is None:
            return [], f"{earlier.id if after is None else later.id} recorded no state of the data"
        gap = changed_tables(after, before)
        if gap:
            return gap, None
    if live is None:
        return [], None
    last = undone[-1].details.get("data_after")
    if last is None:
        return [], f"{undone[-1].id} recorded no state of the data it left"
    return changed_tables(last, live), None
