#!/usr/bin/python
# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""Read and change which release is live on a host, and remember which releases really went live."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release_record
short_description: The live release of an app on one host, switched atomically and recorded ahead
version_added: "0.1.0"
description:
  - Keeps C(<app_root>/.deployctl/release.json), the host's own record of its releases. Each switch is an
    entry (version, deployment, time, status); C(pending) while the deployment that made it runs, C(live)
    once that deployment finished with the release live, C(undone) once it was rolled back. Only C(live)
    entries count as releases that went live; the rollback target (C(previous)) and pruning come from them,
    never from directory mtimes, and a release that failed is never a rollback target.
  - A deployment writes ahead what recovery needs (C(state=begun)) before it changes anything, so that
    C(deployctl recover) can finish it from the host's record when the control node died.
  - C(state=live) points C(<app_root>/current) at C(releases/<version>) with an atomic rename.
options:
  app_root: {description: "Root of the app (holds releases/, shared/, current).", type: path, required: true}
  state:
    description:
      - C(read) reports the host's release state, the unfinished deployment, the lock holder, the maintenance
        flag, free space and missing commands.
      - C(begun) records ahead that O(deployment_id) starts, with the version live now; it fails when another
        deployment did not finish on this host.
      - C(prepared) creates the directories and clears a partly unpacked O(version), leaving its directory
        empty for the unpacking.
      - C(staged) marks the unpacked O(version) complete (from O(artifact_digest)) and links the shared paths
        into it, so that it can run (its migrations) before it goes live. With O(archive) it first does what
        C(prepared) does and unpacks the archive, unless the release is already complete from this artifact;
        the whole stage in one module call.
      - C(live) links the shared paths into O(version), switches C(current) to it, records it and prunes.
      - C(rolled_back) makes O(version) live again (empty to take down a first release); the entries since
        it went live are undone, and returned (the deployments they came from, oldest first), so that what
        those deployments saved (M(deployctl.core.env_file)) can be put back.
      - C(absent) removes C(current).
    type: str
    choices: [read, begun, prepared, staged, live, rolled_back, absent]
    default: read
  version: {description: Release to prepare or make live., type: str}
  deployment_id: {description: Deployment that makes the change., type: str, default: ""}
  action: {description: "What the deployment is (release, rollback...), for C(begun).", type: str, default: ""}
  shared:
    description: Names under shared/ linked into the release (C(staged), C(live)) or created as directories (C(prepared)).
    type: list
    elements: str
    default: []
  keep: {description: Releases kept after a switch (the live one and the rollback target always stay)., type: int, default: 5}
  required_commands: {description: Commands whose absence C(read) reports., type: list, elements: str, default: []}
  check_writable:
    description:
      - Directories under O(app_root) that C(read) and C(begun) try to write a file into (the nearest existing
        parent for one that does not exist yet), reporting those that refuse in C(not_writable).
    type: list
    elements: str
    default: []
  artifact_digest:
    description:
      - The sha256 of the artifact O(version) is unpacked from. C(read), C(begun) and C(prepared) refuse a
        live release or the rollback target unpacked from a different artifact (a released version must not
        change); C(prepared) unpacks again a release that never went live.
    type: str
    default: ""
  env:
    description:
      - deployctl's block of C(shared/.env), as M(deployctl.core.env_file) writes it (the operator's lines stay;
        the same values are refused). C(staged) gives the release (unless it is the live one) its own copy of C(shared/.env) with this
        block (for commands that run in it before it goes live; with an empty dict, a plain copy); C(live)
        writes the block into C(shared/.env) itself before linking it, when it holds any value; C(read) and
        C(begun) write nothing and report in RV(env_problem) why the block could not be written.
    type: dict
  env_save_to:
    description: With C(live), where the block of C(shared/.env) as it was is saved first (see O(deployctl.core.env_file#module:save_to)).
    type: path
  archive:
    description:
      - With C(staged), the release tarball on the control node; the action plugin copies it to the host, and
        the module unpacks it into C(releases/<version>) with the host's C(tar). Left out, C(staged) marks what
        is already there (unpacked by M(ansible.builtin.unarchive) or checked out by M(ansible.builtin.git)
        after C(prepared)).
    type: path
  restart_cmd:
    description:
      - With C(live), the command that restarts the app, run in C(current) once the switch is made (split like a
        shell would, run without one, recorded like M(deployctl.core.tracked_command)'s commands with the label
        C(restart)). It runs when C(current) was switched, or always with O(restart_always); empty, nothing runs.
        A restart that fails fails the task with the switch already made, as RV(switched) says.
    type: str
    default: ""
  restart_always: {description: "With C(live), run O(restart_cmd) even when the version was live already.", type: bool, default: false}
  scrub: {description: Values masked in the restart command's output., type: list, elements: str, default: []}
  link:
    description:
      - With C(false) the live version is kept in the record only, for strategies without release directories
        (compose); C(live) then needs no C(releases/<version>), links nothing and prunes nothing, and C(absent)
        clears the recorded live version.
    type: bool
    default: true
author:
  - deployctl maintainers (@deployctl)
"""

EXAMPLES = r"""
- name: Record ahead that a release starts
  deployctl.core.release_record:
    app_root: /srv/app
    state: begun
    deployment_id: DEP-20261201-093000
    action: release

- name: Make v2 live
  deployctl.core.release_record:
    app_root: /srv/app
    state: live
    version: v2
    deployment_id: DEP-20261201-093000
    restart_cmd: bin/restart
"""

RETURN = r"""
live: {description: Version C(current) points at (null when none); with C(link=false) the recorded one., type: str, returned: always}
previous: {description: The release that went live before the live one (what a rollback goes to)., type: str, returned: always}
releases: {description: Release directories present on the host., type: list, returned: always}
history: {description: "Versions in the order they were switched to (undone ones left out), newest last.", type: list, returned: always}
entries: {description: "The last switches (version, deployment_id, at, status), newest last.", type: list, returned: always}
pending: {description: "The deployment that began and has not settled (deployment_id, action, before, at), or null.", type: dict, returned: always}
complete:
  description: Whether C(version) is fully unpacked, from O(artifact_digest) when given.
  type: bool
  returned: when state is prepared, or staged with O(archive); with read and begun, when O(version) and O(artifact_digest) are given
staged:
  description: "The version marked complete and linked, or in check mode to be (a later deploy in the run need not stage it)."
  type: str
  returned: when state is staged
env_staged:
  description: Whether the staged release got its own copy of C(shared/.env) (O(env) given, the version not live).
  type: bool
  returned: when state is staged
pruned: {description: Releases deleted after the switch., type: list, returned: when state is live}
switched: {description: "Whether C(current) was switched (C(live), C(rolled_back)).", type: bool, returned: when state is live or rolled_back}
restarted: {description: Whether O(restart_cmd) ran., type: bool, returned: when state is live}
restart:
  description:
    - "The restart command's C(rc), C(stdout), C(stderr) (their last 256 KiB, O(scrub) masked) and C(seconds)."
    - When it failed, its C(rc), C(stdout) and C(stderr) are also returned as such, as a failed command's are.
  type: dict
  returned: when O(restart_cmd) ran
undone: {description: "The deployments whose entries C(rolled_back) undid, oldest first.", type: list, returned: when state is rolled_back}
lock: {description: "Holder of the release lock, null when free.", type: dict, returned: when state is read or begun}
maintenance: {description: Whether the maintenance flag is up., type: bool, returned: when state is read or begun}
free_mb: {description: Free space where releases go., type: int, returned: when state is read or begun}
missing_commands: {description: Required commands not found on the host., type: list, returned: when state is read or begun}
not_writable: {description: "The O(check_writable) directories nothing can be written into, with why.", type: dict, returned: when state is read or begun}
env_problem:
  description: Why O(env) could not be written to C(shared/.env) exactly, null when it could.
  type: str
  returned: when state is read or begun and O(env) is given
unfinished: {description: "The deployment that did not finish on this host, when C(begun) fails because of it.", type: dict, returned: on failure}
"""

import os
import shutil

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.deployctl.core.plugins.module_utils import processes
from ansible_collections.deployctl.core.plugins.module_utils.envfile import EnvError, write_block
from ansible_collections.deployctl.core.plugins.module_utils.files import read_lock, utc_stamp, write_atomic
from ansible_collections.deployctl.core.plugins.module_utils.release_records import LIVE, PENDING, UNDONE, Record

COMPLETE_MARKER = ".deployctl-complete"


def _switch(current, target):
    tmp = f"{current}.{os.getpid()}.tmp"
    os.symlink(target, tmp)
    os.replace(tmp, current)  # rename(2) over the old link: readers see the old or the new, never none


def _link(source, dest):
    if os.path.islink(dest) and os.readlink(dest) == source:
        return False
    if os.path.isdir(dest) and not os.path.islink(dest):
        shutil.rmtree(dest)  # a directory shipped in the artifact gives way to the shared one
    elif os.path.lexists(dest):
        os.unlink(dest)
    os.symlink(source, dest)
    return True


def _prepare(params, record, check, result):
    """Create the directories; clear a partly unpacked or stale release of params' version, leaving it empty
    for the unpacking. Sets result["complete"]; returns whether anything changed."""
    changed = False
    root = params["app_root"]
    wanted = [root, record.releases_dir, os.path.join(root, "shared")]
    wanted += [os.path.join(root, "shared", name) for name in params["shared"]]
    for directory in wanted:
        if not os.path.isdir(directory):
            changed = True
            if not check:
                os.makedirs(directory, mode=0o755)
    release = os.path.join(record.releases_dir, params["version"])
    result["complete"] = os.path.exists(os.path.join(release, COMPLETE_MARKER)) and not result.get("stale_unpack")
    if os.path.isdir(release) and not result["complete"]:
        # left half unpacked by an interrupted deploy, or unpacked from another build that never went
        # live: start it again
        changed = True
        if not check:
            shutil.rmtree(release)
    if not result["complete"] and not check:
        changed = not os.path.isdir(release) or changed
        os.makedirs(release, mode=0o755, exist_ok=True)
    return changed


def _unpack(module, archive, target):
    """Unpack the tarball into the empty release directory with the host's tar, as ansible.builtin.unarchive
    does (every compression the host's tar reads; members never land outside `target`)."""
    rc, _out, err = module.run_command(["tar", "--extract", "--file", archive, "--directory", target])
    if rc != 0:
        shutil.rmtree(target, ignore_errors=True)
        why = (err.strip().splitlines() or [f"tar exited with {rc}"])[-1]
        module.fail_json(msg=f"could not unpack the release into {target}: {why}")


def _release_dir(module, record, version):
    target = os.path.join(record.releases_dir, version)
    if not os.path.isdir(target):
        module.fail_json(msg=f"release {version} is not on this host ({target} is missing)")
    return target


def _link_shared(params, target, check):
    """Link each shared path into the release directory `target`; whether any link changed."""
    changed = False
    for name in params["shared"]:
        source = os.path.join(params["app_root"], "shared", name)
        dest = os.path.join(target, name)
        if not (os.path.islink(dest) and os.readlink(dest) == source):
            changed = True
            if not check:
                _link(source, dest)
    return changed


def _write_env(module, params, dest=None, save_to=None):
    """Write deployctl's block of shared/.env (or, with `dest`, a copy with it); whether anything changed."""
    try:
        return write_block(os.path.join(params["app_root"], "shared", ".env"), params["env"], dest=dest,
                           save_to=save_to, check=module.check_mode)[0]
    except EnvError as exc:
        module.fail_json(msg=str(exc))


def _env_problem(params):
    """Why deployctl's block could not be written to shared/.env (nothing is written), or None."""
    try:
        write_block(os.path.join(params["app_root"], "shared", ".env"), params["env"], check=True)
    except EnvError as exc:
        return str(exc)
    return None


def _free_mb(path):
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free // (1024 * 1024)


def _not_writable(app_root, names):
    """{name: why} for the directories a file cannot be created in (read-only mounts, full disks, ...)."""
    refused = {}
    for name in names:
        path = os.path.join(app_root, name)
        while not os.path.isdir(path) and os.path.dirname(path) != path:
            path = os.path.dirname(path)
        probe = os.path.join(path, f".deployctl-writable-{os.getpid()}")
        try:
            with open(probe, "w") as handle:
                handle.write("x")
            os.unlink(probe)
        except OSError as exc:
            refused[name] = f"{path}: {exc.strerror}"
    return refused


def _read_lock(state_dir):
    lock = read_lock(os.path.join(state_dir, "lock"))
    if lock is None:
        return None
    return dict(lock.get("holder") or {}, since=lock.get("since"))


def _unpacked_digest(record, version):
    """The sha256 of the artifact releases/<version> was unpacked from ("" when not recorded), None when the
    release is not complete on the host."""
    try:
        with open(os.path.join(record.releases_dir, version, COMPLETE_MARKER)) as handle:
            lines = handle.read().split()
    except OSError:
        return None
    return lines[1] if len(lines) > 1 else ""


def _prune(record, keep):
    """Releases beyond the newest `keep` that went live; never the live one, the rollback target or the
    version live before an unfinished deployment. Releases never switched to (staged) stay; undone ones
    go first."""
    protected = {record.live(), record.previous(), (record.pending or {}).get("before")}
    switched = {e["version"] for e in record.entries}
    live_order = list(reversed(record.went_live()))
    present = record.releases()
    ranked = [v for v in present if v not in switched]
    ranked += [v for v in live_order if v in present and v not in ranked]
    undone = [v for v in present if v not in ranked]
    doomed = [v for v in ranked[keep:] + undone if v not in protected]
    return doomed


def _entry(record, version, deployment_id):
    # a deployment settles its entries when it ends; a switch outside one (a plain ansible-playbook run, an
    # AWX job without deployctl) is live at once, since nobody will settle it
    record.entries.append({"version": version, "deployment_id": deployment_id, "at": utc_stamp(),
                           "status": PENDING if deployment_id else LIVE})


def _restart(module, params, record, result):
    """The restart in the switch's own call: one module call less inside the maintenance window."""
    argv = processes.argv_of(params["restart_cmd"])
    processes.configure(processes.registry_dir(params["app_root"]), params["deployment_id"], "restart")
    try:
        result["restart"] = processes.run_command(argv, cwd=record.current, scrub=params["scrub"])
    except processes.CommandFailed as exc:
        module.fail_json(msg=str(exc), **{**result, **record.report(), "restart": exc.result, **exc.result})
    result["restarted"] = True
    if result["restart"]["rc"] != 0:
        # rc, stdout and stderr where a failed command's are, for whoever reads the failure
        module.fail_json(msg=processes.failure(argv, result["restart"]),
                         **{**result, **record.report(), **result["restart"]})


def main():
    module = AnsibleModule(
        argument_spec={
            "app_root": {"type": "path", "required": True},
            "state": {"type": "str", "default": "read",
                      "choices": ["read", "begun", "prepared", "staged", "live", "rolled_back", "absent"]},
            "version": {"type": "str"},
            "deployment_id": {"type": "str", "default": ""},
            "action": {"type": "str", "default": ""},
            "shared": {"type": "list", "elements": "str", "default": []},
            "keep": {"type": "int", "default": 5},
            "required_commands": {"type": "list", "elements": "str", "default": []},
            "check_writable": {"type": "list", "elements": "str", "default": []},
            "artifact_digest": {"type": "str", "default": ""},
            "link": {"type": "bool", "default": True},
            "env": {"type": "dict", "no_log": True},
            "env_save_to": {"type": "path"},
            "archive": {"type": "path"},
            "restart_cmd": {"type": "str", "default": ""},
            "restart_always": {"type": "bool", "default": False},
            "scrub": {"type": "list", "elements": "str", "default": [], "no_log": True},
        },
        required_if=[("state", "live", ["version"]), ("state", "prepared", ["version"]), ("state", "staged", ["version"]),
                     ("state", "begun", ["deployment_id"])],
        supports_check_mode=True,
    )
    params = module.params
    try:
        record = Record(params["app_root"], params["link"])
    except ValueError as exc:
        module.fail_json(msg=f"the release record of {params['app_root']} is unreadable: {exc}")
    state, check, deployment = params["state"], module.check_mode, params["deployment_id"]
    changed = False
    result = {}

    if state in ("read", "begun"):
        result["lock"] = _read_lock(record.state_dir)
        result["maintenance"] = os.path.exists(os.path.join(params["app_root"], "shared", "maintenance.json"))
        result["free_mb"] = _free_mb(params["app_root"])
        result["missing_commands"] = [c for c in params["required_commands"] if shutil.which(c) is None]
        result["not_writable"] = _not_writable(params["app_root"], params["check_writable"])
        if params["env"] is not None:
            result["env_problem"] = _env_problem(params)

    unpacking = state == "prepared" or (state == "staged" and params["archive"] is not None)
    if (state in ("read", "begun") or unpacking) and params["version"] and params["artifact_digest"]:
        unpacked = _unpacked_digest(record, params["version"])
        if unpacked not in (None, "", params["artifact_digest"]):
            if params["version"] in (record.live(), record.previous()):
                module.fail_json(msg=f"release {params['version']} is {'live' if params['version'] == record.live() else 'the rollback target'} "
                                     f"and was unpacked from a different artifact (sha256 {unpacked[:12]}..., now "
                                     f"{params['artifact_digest'][:12]}...): a released version must not change, "
                                     "release the new build under a new version", artifact_conflict=True,
                                 **record.report())
            result["stale_unpack"] = True
        # whether a stage in this run can leave the archive on the control node
        result["complete"] = unpacked == params["artifact_digest"]

    if state == "begun":
        pending = record.pending
        if pending and pending.get("deployment_id") != deployment:
            module.fail_json(msg=f"deployment {pending.get('deployment_id')} ({pending.get('action')}, started "
                                 f"{pending.get('at')}) did not finish on this host: run `deployctl recover`",
                             unfinished=pending, **record.report())
        if not pending:
            changed = True
            if not check:
                record.data["pending"] = {"deployment_id": deployment, "action": params["action"],
                                          "before": record.live(), "at": utc_stamp()}
                record.save()

    if unpacking:
        changed = _prepare(params, record, check, result)

    if state == "staged" and params["archive"] is not None and not result["complete"]:
        changed = True
        if not check:
            _unpack(module, params["archive"], os.path.join(record.releases_dir, params["version"]))

    if state == "staged":
        # the live release's .env stays the link to the shared one (a release of the live version again)
        result["env_staged"] = params["env"] is not None and record.live() != params["version"]
        if check and not os.path.isdir(os.path.join(record.releases_dir, params["version"])):
            changed = True  # it would be unpacked, marked complete, linked and given its .env
        else:
            target = _release_dir(module, record, params["version"])
            marker = os.path.join(target, COMPLETE_MARKER)
            if not os.path.exists(marker):
                changed = True
                if not check:
                    write_atomic(marker, f"{params['version']}\n{params['artifact_digest']}\n", mode=0o644)
            changed = _link_shared(params, target, check) or changed
            if result["env_staged"]:
                changed = _write_env(module, params, dest=os.path.join(target, ".env")) or changed
        result["staged"] = params["version"]

    if state == "live":
        version = params["version"]
        live = record.live()
        if params["env"]:
            changed = _write_env(module, params, save_to=params["env_save_to"]) or changed
        if record.link and check and not os.path.isdir(os.path.join(record.releases_dir, version)):
            target = None  # check mode: staging (in check mode too) only said it would unpack the release
        elif record.link:
            target = _release_dir(module, record, version)
            changed = _link_shared(params, target, check) or changed
        last = next((e for e in reversed(record.entries) if e["version"] == version), None)
        # already live (a batch run again, or a host a failed deployment switched before it was cut off):
        # this deployment still owns the entry, so that it settles with this deployment's outcome
        owned = live == version and last is not None and (last["status"] == LIVE or last["deployment_id"] == deployment)
        if live != version or not owned:
            changed = True
            if not check:
                if live != version and record.link:
                    _switch(record.current, target)
                elif live != version:
                    record.data["live"] = version
                _entry(record, version, deployment)
                record.save()
        result["switched"] = live != version
        doomed = _prune(record, params["keep"]) if record.link and not check else []
        for old in doomed:
            shutil.rmtree(os.path.join(record.releases_dir, old))
        changed = changed or bool(doomed)
        result["pruned"] = doomed
        result["restarted"] = False
        if params["restart_cmd"].strip() and (result["switched"] or params["restart_always"]) and not check:
            _restart(module, params, record, result)
            changed = True

    elif state == "rolled_back":
        target = params["version"] or None
        live = record.live()
        chain_positions = [i for i, e in enumerate(record.entries) if e["status"] == LIVE and e["version"] == target]
        since = chain_positions[-1] + 1 if chain_positions else 0
        undo = [e for e in record.entries[since:] if e["status"] != UNDONE and
                (chain_positions or e["status"] == PENDING or target is None)]
        if target is not None and record.link and not os.path.isdir(os.path.join(record.releases_dir, target)):
            module.fail_json(msg=f"release {target} is not on this host: nothing to roll back to")
        if undo or live != target:
            changed = True
            if not check:
                for entry in undo:
                    entry["status"] = UNDONE
                if live != target:
                    if not record.link:
                        record.data["live"] = target
                    elif target is None:
                        os.unlink(record.current)
                    else:
                        _switch(record.current, os.path.join(record.releases_dir, target))
                record.save()
        result["switched"] = live != target
        result["undone"] = list(dict.fromkeys(e["deployment_id"] for e in undo if e.get("deployment_id")))

    elif state == "absent":
        live = record.live()
        if live is not None:
            changed = True
            if not check:
                if record.link:
                    os.unlink(record.current)
                else:
                    record.data["live"] = None
                record.save()

    result.update(record.report())
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
