#!/usr/bin/python
"""Read and change which release is live on a host, and remember the order releases went live."""

from __future__ import annotations

DOCUMENTATION = r"""
module: release_record
short_description: The live release of an app on one host, switched atomically and recorded
description:
  - Keeps C(<app_root>/.deployctl/release.json) with the live version, the version before it and the order
    in which releases went live, so that rollback targets and pruning never depend on directory mtimes.
  - C(state=live) points C(<app_root>/current) at C(releases/<version>) with an atomic rename.
options:
  app_root: {description: Root of the app (holds releases/, shared/, current)., type: path, required: true}
  state:
    description:
      - C(read) reports the host's release state, lock holder, free space and missing commands.
      - C(prepared) creates the directories and clears a partly unpacked C(version).
      - C(live) links the shared paths into C(version), switches C(current) to it, records it and prunes.
      - C(absent) removes C(current) (taking down a first release).
    type: str
    choices: [read, prepared, live, absent]
    default: read
  version: {description: Release to prepare or make live., type: str}
  deployment_id: {description: Deployment that made the change, recorded in the history., type: str}
  shared: {description: Names under shared/ linked into the release (C(live)) or created as directories (C(prepared))., type: list, elements: str, default: []}
  keep: {description: Releases kept after a switch (the live one and the rollback target always stay)., type: int, default: 5}
  required_commands: {description: Commands whose absence C(read) reports., type: list, elements: str, default: []}
  link:
    description:
      - With C(false) the live version is kept in the record only, for strategies without release directories
        (compose); C(live) then needs no C(releases/<version>), links nothing and prunes nothing, and C(absent)
        clears the recorded live version.
    type: bool
    default: true
author: deployctl maintainers
"""

EXAMPLES = r"""
- name: Make v2 live
  deployctl.core.release_record:
    app_root: /srv/app
    state: live
    version: v2

- name: Record the image tag v2 as live (no release directories)
  deployctl.core.release_record:
    app_root: /srv/app
    state: live
    version: v2
    link: false
"""

RETURN = r"""
live: {description: Version C(current) points at (null when none); with C(link=false) the recorded one., type: str, returned: always}
previous: {description: Version that was live before the live one., type: str, returned: always}
releases: {description: Release directories present on the host., type: list, returned: always}
history: {description: Versions in the order they went live, newest last., type: list, returned: always}
complete: {description: Whether C(version) is fully unpacked (C(prepared))., type: bool, returned: when state is prepared}
pruned: {description: Releases deleted after the switch., type: list, returned: when state is live}
lock: {description: Holder of the release lock, null when free., type: dict, returned: when state is read}
free_mb: {description: Free space where releases go., type: int, returned: when state is read}
missing_commands: {description: Required commands not found on the host., type: list, returned: when state is read}
"""

import json
import os
import shutil
import time

COMPLETE_MARKER = ".deployctl-complete"

from ansible.module_utils.basic import AnsibleModule

HISTORY_LIMIT = 100


def _paths(app_root):
    return {
        "record": os.path.join(app_root, ".deployctl", "release.json"),
        "releases": os.path.join(app_root, "releases"),
        "current": os.path.join(app_root, "current"),
    }


def _load(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return {"previous": None, "history": []}


def _live(current):
    if not os.path.islink(current):
        return None
    return os.path.basename(os.path.normpath(os.readlink(current)))


def _releases(releases_dir):
    if not os.path.isdir(releases_dir):
        return []
    return sorted(d for d in os.listdir(releases_dir)
                  if not d.startswith(".") and os.path.isdir(os.path.join(releases_dir, d)))


def _write_atomic(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _switch(current, target):
    tmp = f"{current}.{os.getpid()}.tmp"
    os.symlink(target, tmp)
    os.replace(tmp, current)  # rename(2) over the old link: readers see the old or the new, never none


def _record_live(paths, record, version, deployment_id):
    """Record `version` as live without a current link (link=false)."""
    record["previous"] = record.get("live")
    record["live"] = version
    record.setdefault("history", []).append({
        "version": version,
        "deployment_id": deployment_id,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    record["history"] = record["history"][-HISTORY_LIMIT:]
    _write_atomic(paths["record"], record)


def _report(paths, record, link=True):
    return {
        "live": _live(paths["current"]) if link else record.get("live"),
        "previous": record.get("previous"),
        "releases": _releases(paths["releases"]),
        "history": [entry["version"] for entry in record.get("history", [])],
    }


def _prune(paths, record, keep):
    live = _live(paths["current"])
    protected = {live, record.get("previous")}
    order = [entry["version"] for entry in record.get("history", [])]
    present = _releases(paths["releases"])
    # newest first by the order they went live; releases never made live count as newest (just unpacked)
    ranked = [v for v in present if v not in order] + [v for v in reversed(order) if v in present]
    seen = []
    for version in ranked:
        if version not in seen:
            seen.append(version)
    return [v for v in seen[keep:] if v not in protected]


def _link(source, dest):
    if os.path.islink(dest) and os.readlink(dest) == source:
        return False
    if os.path.isdir(dest) and not os.path.islink(dest):
        shutil.rmtree(dest)  # a directory shipped in the artifact gives way to the shared one
    elif os.path.lexists(dest):
        os.unlink(dest)
    os.symlink(source, dest)
    return True


def _free_mb(path):
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free // (1024 * 1024)


def _read_lock(app_root):
    try:
        with open(os.path.join(app_root, ".deployctl", "lock")) as handle:
            lock = json.load(handle)
        return dict(lock.get("holder") or {}, since=lock.get("since"))
    except FileNotFoundError:
        return None
    except ValueError:
        return {"error": "unreadable lock file"}


def main():
    module = AnsibleModule(
        argument_spec={
            "app_root": {"type": "path", "required": True},
            "state": {"type": "str", "default": "read", "choices": ["read", "prepared", "live", "absent"]},
            "version": {"type": "str"},
            "deployment_id": {"type": "str"},
            "shared": {"type": "list", "elements": "str", "default": []},
            "keep": {"type": "int", "default": 5},
            "required_commands": {"type": "list", "elements": "str", "default": []},
            "link": {"type": "bool", "default": True},
        },
        required_if=[("state", "live", ["version"]), ("state", "prepared", ["version"])],
        supports_check_mode=True,
    )
    params = module.params
    app_root = params["app_root"]
    paths = _paths(app_root)
    record = _load(paths["record"])
    state = params["state"]
    check = module.check_mode
    changed = False
    result = {}

    if state == "read":
        result["lock"] = _read_lock(app_root)
        result["free_mb"] = _free_mb(app_root)
        result["missing_commands"] = [c for c in params["required_commands"] if shutil.which(c) is None]
    elif state == "prepared":
        wanted = [app_root, paths["releases"], os.path.join(app_root, "shared")]
        wanted += [os.path.join(app_root, "shared", name) for name in params["shared"]]
        for directory in wanted:
            if not os.path.isdir(directory):
                changed = True
                if not check:
                    os.makedirs(directory, mode=0o755)
        release = os.path.join(paths["releases"], params["version"])
        result["complete"] = os.path.exists(os.path.join(release, COMPLETE_MARKER))
        if os.path.isdir(release) and not result["complete"]:
            changed = True  # left half unpacked by an interrupted deploy: start it again
            if not check:
                shutil.rmtree(release)
    elif state == "live" and not params["link"]:
        live = record.get("live")
        if live != params["version"]:
            changed = True
            if not check:
                _record_live(paths, record, params["version"], params["deployment_id"])
        result["switched"] = live != params["version"]
        result["pruned"] = []
    elif state == "live":
        version = params["version"]
        target = os.path.join(paths["releases"], version)
        if not os.path.isdir(target):
            module.fail_json(msg=f"release {version} is not on this host ({target} is missing)")
        for name in params["shared"]:
            source = os.path.join(app_root, "shared", name)
            dest = os.path.join(target, name)
            if not (os.path.islink(dest) and os.readlink(dest) == source):
                changed = True
                if not check:
                    _link(source, dest)
        live = _live(paths["current"])
        if live != version:
            changed = True
            if not check:
                _switch(paths["current"], target)
                record["previous"] = live
                record.setdefault("history", []).append({
                    "version": version,
                    "deployment_id": params["deployment_id"],
                    "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                })
                record["history"] = record["history"][-HISTORY_LIMIT:]
                _write_atomic(paths["record"], record)
        result["switched"] = live != version
        doomed = [] if check else _prune(paths, record, params["keep"])
        for old in doomed:
            shutil.rmtree(os.path.join(paths["releases"], old))
        changed = changed or bool(doomed)
        result["pruned"] = doomed
    elif state == "absent" and not params["link"]:
        if record.get("live") is not None:
            changed = True
            if not check:
                record["previous"] = record["live"]
                record["live"] = None
                _write_atomic(paths["record"], record)
    elif state == "absent":
        live = _live(paths["current"])
        if live is not None:
            changed = True
            if not check:
                os.unlink(paths["current"])
                record["previous"] = live
                _write_atomic(paths["record"], record)

    result.update(_report(paths, record, params["link"]))
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
