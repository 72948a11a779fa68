"""A host's release record (.deployctl/release.json): which versions went live, through which deployments.

release_record changes it as a release goes; release_lock settles the deployments' entries in the same
call that releases the lock.
"""

from __future__ import annotations

import os
import shutil

from ansible_collections.deployctl.core.plugins.module_utils.files import read_json, write_json_atomic

HISTORY_LIMIT = 100
ENTRIES_REPORTED = 20
LIVE = "live"
PENDING = "pending"
UNDONE = "undone"


class Record:
    """release.json and the paths around it."""

    def __init__(self, app_root, link=True):
        self.app_root = app_root
        self.link = link
        self.state_dir = os.path.join(app_root, ".deployctl")
        self.path = os.path.join(self.state_dir, "release.json")
        self.releases_dir = os.path.join(app_root, "releases")
        self.current = os.path.join(app_root, "current")
        self.data = read_json(self.path, {}) or {}
        self.data.setdefault("history", [])
        for entry in self.data["history"]:
            entry.setdefault("status", LIVE)  # records written before entries had a status

    def save(self):
        self.data["history"] = self.data["history"][-HISTORY_LIMIT:]
        self.data.pop("previous", None)  # derived, never stored
        write_json_atomic(self.path, self.data)

    @property
    def entries(self):
        return self.data["history"]

    @property
    def pending(self):
        return self.data.get("pending")

    def live(self):
        if not self.link:
            return self.data.get("live")
        if not os.path.islink(self.current):
            return None
        return os.path.basename(os.path.normpath(os.readlink(self.current)))

    def went_live(self):
        """Versions that went live, in order, repeats in a row collapsed."""
        chain = []
        for entry in self.entries:
            if entry["status"] == LIVE and (not chain or chain[-1] != entry["version"]):
                chain.append(entry["version"])
        return chain

    def previous(self):
        live, chain = self.live(), self.went_live()
        if live in chain:
            index = len(chain) - 1 - chain[::-1].index(live)
            return chain[index - 1] if index > 0 else None
        return chain[-1] if chain else None

    def releases(self):
        if not os.path.isdir(self.releases_dir):
            return []
        return sorted(d for d in os.listdir(self.releases_dir)
                      if not d.startswith(".") and os.path.isdir(os.path.join(self.releases_dir, d)))

    def report(self):
        return {
            "live": self.live(),
            "previous": self.previous(),
            "releases": self.releases() if self.link else [],
            "history": [e["version"] for e in self.entries if e["status"] != UNDONE],
            "entries": self.entries[-ENTRIES_REPORTED:],
            "pending": self.pending,
        }


def prune_saved(record):
    """What deployments saved for their rollback (.deployctl/deployments/<id>), once they left the record."""
    root = os.path.join(record.state_dir, "deployments")
    known = {e.get("deployment_id") for e in record.entries} | {(record.pending or {}).get("deployment_id")}
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        if name not in known:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def settle(record, deployment_id, outcome):
    """End a deployment in the record: its pending entries become live (outcome live) or undone, or stay as
    they are (abandoned); it is no longer the host's pending deployment. Returns whether anything changed;
    the caller saves."""
    changed = False
    for entry in record.entries:
        if entry.get("deployment_id") == deployment_id and entry["status"] == PENDING and outcome != "abandoned":
            entry["status"] = LIVE if outcome == "live" else UNDONE
            changed = True
    if (record.pending or {}).get("deployment_id") == deployment_id:
        record.data.pop("pending")
        changed = True
    return changed
