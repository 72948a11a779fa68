# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""The states of deployctl.core.backup_set: take, verify, restore, inspect, check.

Standard library only: runs on the managed hosts (Python 3.8+)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import sqlite3
import subprocess
import tarfile
import time

from ansible_collections.deployctl.core.plugins.module_utils.backup_common import (
    DUMP_FILE,
    FILES_ARCHIVE,
    FORMAT_VERSION,
    SCRATCH_PREFIX_RE,
    SET_ID_RE,
    SPACE_FACTOR,
    BackupError,
    DiskFullError,
    TempSecrets,
    VerifyError,
    megabytes,
    tree_size,
)
from ansible_collections.deployctl.core.plugins.module_utils.backup_sets import (
    apply_retention,
    check_set_files,
    compare_states,
    default_set_id,
    list_all_sets,
    load_manifest,
    write_manifest,
)
from ansible_collections.deployctl.core.plugins.module_utils.db_mysql import (
    MysqlEngine,
)
from ansible_collections.deployctl.core.plugins.module_utils.db_postgresql import (
    PostgresEngine,
)
from ansible_collections.deployctl.core.plugins.module_utils.db_sqlite import (
    SqliteEngine,
)
from ansible_collections.deployctl.core.plugins.module_utils.file_archive import (
    archive_files,
    restore_files,
)
from ansible_collections.deployctl.core.plugins.module_utils.files import utc_stamp
from ansible_collections.deployctl.core.plugins.module_utils.redis_data import (
    RDB_FILE,
    REDIS_OPTIONS,
    RedisData,
)
from ansible_collections.deployctl.core.plugins.module_utils.redis_data import compare as redis_compare
from ansible_collections.deployctl.core.plugins.module_utils.redis_protocol import RedisError
from ansible_collections.deployctl.core.plugins.module_utils.sealed_streams import (
    OPENSSL_CIPHER,
    OPENSSL_DIGEST,
    OPENSSL_ITER,
    SetFileSource,
    Sink,
    passphrase_file,
)
from ansible_collections.deployctl.core.plugins.module_utils.tool_runners import ContainerTools, HostTools

STATES = ("present", "restored", "listed", "verified", "inspected", "checked", "scratch_dropped")
ENGINE_NAMES = ("sqlite", "mysql", "postgresql")

ARGUMENT_SPEC = dict(
    state=dict(type="str", default="present", choices=list(STATES)),
    engine=dict(type="str", choices=list(ENGINE_NAMES)),
    database=dict(type="str"),
    login_host=dict(type="str"),
    login_port=dict(type="int"),
    login_user=dict(type="str"),
    login_password=dict(type="str", no_log=True),
    credentials_file=dict(type="path"),
    backup_dir=dict(type="path", required=True),
    set_id=dict(type="str"),
    label=dict(type="str"),
    purpose=dict(type="str"),
    process_registry=dict(type="path"),
    live_version=dict(type="str"),
    files=dict(type="list", elements="path", default=[]),
    keep=dict(type="int", default=5),
    protect=dict(type="list", elements="str", default=[]),
    verify=dict(type="bool", default=True),
    encryption_key=dict(type="str", no_log=True),
    scratch_prefix=dict(type="str", default="deployctl_verify_"),
    keep_scratch=dict(type="bool", default=False),
    scratch_database=dict(type="str"),
    force=dict(type="bool", default=False),
    missing_ok=dict(type="bool", default=False),
    database_service=dict(type="str"),
    compose_project=dict(type="str"),
    redis=dict(type="dict", options=REDIS_OPTIONS),
)
REQUIRED_IF = [
    ("state", "present", ("engine", "database")),
    ("state", "inspected", ("engine", "database")),
    ("state", "restored", ("set_id",)),
    ("state", "verified", ("set_id",)),
    ("state", "scratch_dropped", ("engine", "database")),
]
# Callers other than AnsibleModule (the unit tests) get the same defaults.
DEFAULTS = {name: option.get("default") for name, option in ARGUMENT_SPEC.items()}


def normalize_params(params):
    """Fill defaults and validate the parameters shared by all states."""
    p = dict(DEFAULTS)
    p.update({k: v for k, v in (params or {}).items() if v is not None or k not in DEFAULTS})
    if p["state"] not in STATES:
        raise BackupError("unknown state {!r}".format(p["state"]))
    if not p["backup_dir"]:
        raise BackupError("backup_dir is required")
    p["backup_dir"] = os.path.abspath(os.path.expanduser(p["backup_dir"]))
    if p["engine"] is not None and p["engine"] not in ENGINE_NAMES:
        raise BackupError("unknown engine {!r}".format(p["engine"]))
    p["files"] = list(p["files"] or [])
    p["protect"] = [str(x) for x in (p["protect"] or [])]
    if p["set_id"] is not None and not SET_ID_RE.match(p["set_id"]):
        raise BackupError("invalid set_id {!r} (allowed: letters, digits, '.', '_', '-')".format(p["set_id"]))
    if not SCRATCH_PREFIX_RE.match(p["scratch_prefix"] or ""):
        raise BackupError(
            "invalid scratch_prefix {!r} (allowed: letters, digits, '_')".format(p["scratch_prefix"])
        )
    key = p["encryption_key"]
    if key is not None and (key == "" or "\n" in key or "\r" in key):
        raise BackupError("encryption_key must be a non-empty single line")
    try:
        p["keep"] = int(p["keep"])
    except (TypeError, ValueError):
        raise BackupError("keep must be an integer") from None
    if p["keep"] < 1:
        raise BackupError("keep must be at least 1")
    if p["credentials_file"]:
        p["credentials_file"] = os.path.abspath(os.path.expanduser(p["credentials_file"]))
    if p["database_service"]:
        if p["engine"] == "sqlite":
            raise BackupError("database_service runs the tools of a database server's container: not for sqlite")
        if not p["compose_project"]:
            raise BackupError("database_service needs compose_project, the compose project the service belongs to")
    return p


def redis_of(p):
    """The Redis whose data the sets hold (None: there is none, or it is a cache), running: started again when
    a restore stopped it and did not live to start it."""
    config = p.get("redis") or {}
    if not config or config.get("role", "data") != "data":
        return None
    redis = RedisData(config, p.get("compose_project"))
    redis.started_again(p["backup_dir"])
    return redis


ENGINES = {"mysql": MysqlEngine, "postgresql": PostgresEngine, "sqlite": SqliteEngine}


@contextlib.contextmanager
def open_engine(params):
    tmp = TempSecrets()
    try:
        if params.get("database_service"):
            tools = ContainerTools(params["compose_project"], params["database_service"])
        else:
            tools = HostTools(tmp)
        yield ENGINES[params["engine"]](params, tools)
    finally:
        tmp.cleanup()


def source_of(set_dir, manifest, name, key_file):
    info = dict((manifest.get("files") or {}).get(name) or {})
    info["encrypted"] = bool(manifest.get("encrypted"))
    info["encryption"] = manifest.get("encryption")
    return SetFileSource(os.path.join(set_dir, name), info, key_file, set_dir)


def kept_scratch_prefix(p):
    """The names of the scratch copies kept for a rehearsal of `database`'s migrations: the scratch prefix,
    then a digest of the database's name (another database's copies on the same server are not its own)."""
    digest = hashlib.sha256(str(p["database"]).encode("utf-8")).hexdigest()[:8]
    return f"{p['scratch_prefix']}keep_{digest}_"


def verify_copy(engine, set_dir, manifest, key_file, keep=None, redis=None):
    """Check file hashes, restore into a scratch database and compare. Raises VerifyError. With `keep`, the
    scratch database of that name stays when the set verifies (it is dropped when it does not). Redis data
    is loaded into a scratch Redis (`redis`: the configured one, which says where that server runs), and the
    digest of its keys recorded in the manifest, or compared with the one recorded."""
    try:
        check_set_files(set_dir, manifest, key_file)
        actual = engine.scratch_state(source_of(set_dir, manifest, DUMP_FILE, key_file), manifest, keep=keep)
    except VerifyError:
        raise
    except BackupError as exc:
        raise VerifyError(exc.msg) from exc
    problems, fallback = compare_states(manifest, actual)
    if not problems and manifest.get("redis"):
        problems = verify_redis(redis, set_dir, manifest, key_file)
    if problems:
        if keep is not None:
            engine.drop_scratch(keep)
        raise VerifyError("scratch restore does not match the recorded state: " + "; ".join(problems[:20]))
    return fallback


def verify_redis(redis, set_dir, manifest, key_file):
    """Problems of the set's Redis snapshot loaded into a scratch Redis; records its digest when it has none."""
    recorded = manifest["redis"]
    try:
        with source_of(set_dir, manifest, RDB_FILE, key_file).as_file() as path:
            databases = redis.verify(path, recorded.get("saved") or {}, set_dir)
    except BackupError as exc:
        return [exc.msg]
    except RedisError as exc:
        return [f"the scratch Redis: {exc.msg}"]
    if recorded.get("databases") is not None:
        return redis_compare(recorded["databases"], databases, "redis")
    recorded["databases"] = databases
    return []


def drop_kept_scratch(engine, p, check_mode=False):
    """Drop the scratch copies kept for `database` (one named, or all its own): returns the names dropped."""
    prefix = kept_scratch_prefix(p)
    if p["scratch_database"]:
        names = [engine.scratch_name_of(p["scratch_database"])]
        if not names[0].startswith(prefix):
            raise BackupError(f"{p['scratch_database']} is not a scratch copy of {p['database']} (its name would "
                              f"start with {prefix}): not dropped")
    else:
        names = engine.scratch_names(prefix)
    if not check_mode:
        for name in names:
            engine.drop_scratch(name)
    return names


def take_set(params, hooks=None, check_mode=False):
    """state=present: dump, record, verify, write the manifest, apply retention."""
    p = normalize_params(params)
    hooks = hooks or {}
    if not p["engine"] or not p["database"]:
        raise BackupError("engine and database are required for state=present")
    for path in p["files"]:
        if not os.path.isabs(path):
            raise BackupError(f"files entries must be absolute paths: {path}")
        if not os.path.lexists(path):
            raise BackupError(f"file to archive does not exist: {path}")
    backup_dir = p["backup_dir"]
    now = time.time()
    if p["set_id"]:
        set_id = p["set_id"]
        if os.path.lexists(os.path.join(backup_dir, set_id)):
            raise BackupError(f"set {set_id} already exists in {backup_dir}")
    else:
        set_id = default_set_id(backup_dir, p["label"], now)
    set_dir = os.path.join(backup_dir, set_id)
    if check_mode:
        return {"changed": True, "set_id": set_id, "path": set_dir, "msg": "check mode: set not taken",
                "pruned": apply_retention(backup_dir, p["keep"], p["protect"], current=set_id, dry_run=True)}
    os.makedirs(backup_dir, mode=0o700, exist_ok=True)

    redis = redis_of(p)
    with open_engine(p) as engine:
        server_version = engine.server_version()
        estimate = engine.estimate_size() + (redis.estimate_size() if redis else 0)
        files_size = sum(tree_size(path) for path in p["files"])
        need = int(estimate * SPACE_FACTOR) + files_size
        free = shutil.disk_usage(backup_dir).free
        if free < need:
            raise BackupError(
                f"not enough space at {backup_dir}: need ~{megabytes(need)} MB, {megabytes(free)} MB free"
            )
        db_options = engine.database_options()

        os.mkdir(set_dir, 0o700)
        keep = kept_scratch_prefix(p) + secrets.token_hex(4) if p["keep_scratch"] and p["verify"] else None
        keep_dir = False
        sinks = []
        try:
            with passphrase_file(p["encryption_key"]) as key_file:
                t0 = time.monotonic()
                sink = Sink(os.path.join(set_dir, DUMP_FILE), key_file)
                sinks.append(sink)
                state = engine.dump(sink)
                files = {DUMP_FILE: sink.close()}
                if p["files"]:
                    sink = Sink(os.path.join(set_dir, FILES_ARCHIVE), key_file)
                    sinks.append(sink)
                    archive_files(p["files"], sink)
                    files[FILES_ARCHIVE] = sink.close()
                redis_state = None
                if redis:
                    files[RDB_FILE], saved = redis.snapshot(lambda: Sink(os.path.join(set_dir, RDB_FILE), key_file))
                    redis_state = {"server_version": redis.facts()["version"], "service": redis.cfg["service"],
                                   "appendonly": redis.facts()["config"].get("appendonly") == "yes",
                                   "saved": saved, "databases": None}
                dump_seconds = round(time.monotonic() - t0, 3)
                manifest = {
                    "format_version": FORMAT_VERSION,
                    "set_id": set_id,
                    "label": p["label"],
                    "purpose": p["purpose"],
                    "created_at": utc_stamp(now, precise=True),
                    "engine": engine.name,
                    "server_version": server_version,
                    "database": engine.database,
                    "database_options": db_options,
                    "live_version": p["live_version"],
                    "tables": state["tables"],
                    "objects": state["objects"],
                    "files": files,
                    "size_bytes": sum(f["size"] for f in files.values()),
                    "dump_seconds": dump_seconds,
                    "verify_seconds": None,
                    "verified": False,
                    "bad": False,
                    "verify_error": None,
                    "encrypted": key_file is not None,
                    "archived_paths": list(p["files"]),
                    **({"redis": redis_state} if redis_state else {}),
                }
                if key_file is not None:
                    manifest["encryption"] = {
                        "tool": "openssl enc",
                        "cipher": OPENSSL_CIPHER,
                        "kdf": "pbkdf2",
                        "md": OPENSSL_DIGEST,
                        "iter": OPENSSL_ITER,
                    }
                if hooks.get("after_dump"):
                    hooks["after_dump"](set_dir, manifest)
                fallback = []
                if p["verify"]:
                    t1 = time.monotonic()
                    if keep:
                        drop_kept_scratch(engine, dict(p, scratch_database=None))  # left by a run that died
                    try:
                        fallback = verify_copy(engine, set_dir, manifest, key_file, keep=keep, redis=redis)
                    except VerifyError as exc:
                        manifest.update(
                            verified=False,
                            bad=True,
                            verify_error=exc.msg,
                            verify_seconds=round(time.monotonic() - t1, 3),
                        )
                        write_manifest(set_dir, manifest)
                        keep_dir = True
                        raise VerifyError(
                            f"verification of set {set_id} failed: {exc.msg}",
                            set_id=set_id,
                            path=set_dir,
                            manifest=manifest,
                            verified=False,
                        ) from exc
                    manifest.update(
                        verified=True,
                        verified_at=utc_stamp(precise=True),
                        verify_seconds=round(time.monotonic() - t1, 3),
                    )
                    if fallback:
                        manifest["checksum_fallback"] = fallback
                write_manifest(set_dir, manifest)
                keep_dir = True
        except DiskFullError as exc:
            raise DiskFullError(
                f"backup dir {backup_dir} is full (no space left on device) while writing set {set_id}; the "
                f"partial set was removed: {exc.msg}"
            ) from exc
        finally:
            for sink in sinks:
                sink.abort()
            if not keep_dir:
                shutil.rmtree(set_dir, ignore_errors=True)

    pruned = apply_retention(backup_dir, p["keep"], p["protect"], current=set_id)
    return {
        "changed": True,
        "set_id": set_id,
        "path": set_dir,
        "manifest": manifest,
        "pruned": pruned,
        "verified": manifest["verified"],
        "checksum_fallback": fallback,
        "data": data_digest(manifest),
        **({"scratch_database": engine.scratch_location(keep)} if keep else {}),
        **({"redis": redis_summary(p, manifest)} if p.get("redis") else {}),
    }


def redis_summary(p, manifest):
    """What the set holds of the configured Redis: its keys, or nothing for a cache."""
    if not manifest.get("redis"):
        return {"role": "cache", "msg": "redis is a cache: not backed up"}
    saved = manifest["redis"]["saved"]
    keys = sum(db["keys"] for db in saved.values())
    return {"role": "data", "keys": keys, "msg": f"redis: {keys} keys in the set"}


def data_digest(state):
    """A database state as rollbacks compare it: per table the row count and one content digest (the row
    md5 where the engine records one, else its checksum), and the schema objects."""
    tables = {name: {"rows": t.get("rows"), "digest": t.get("row_md5") or t.get("checksum")}
              for name, t in (state.get("tables") or {}).items()}
    # Redis data: a database's keys without expiry count as one table's rows
    for db, keys in sorted(((state.get("redis") or {}).get("databases") or {}).items()):
        tables[f"redis db{db}"] = {"rows": keys["keys"], "digest": keys["digest"]}
    return {"tables": tables, "objects": state.get("objects") or {}}


def inspect_live(params):
    """state=inspected: the live database's state, read only."""
    p = normalize_params(dict(params, state="inspected"))
    if not p["engine"] or not p["database"]:
        raise BackupError("engine and database are required for state=inspected")
    redis = redis_of(p)
    with open_engine(p) as engine:
        state = engine.current_state()
    if redis:
        state["redis"] = {"databases": redis.current_state()}
    return {"changed": False, "data": data_digest(state)}


def check_ready(params):
    """state=checked: what a backup or a restore needs, proven without changing anything."""
    p = normalize_params(dict(params, state="checked"))
    result = {"changed": False}
    if p["set_id"]:
        set_dir, manifest = load_for(p)
        with passphrase_file(p["encryption_key"]) as key_file:
            check_set_files(set_dir, manifest, key_file)
        if manifest.get("bad"):
            raise BackupError(f"set {p['set_id']} is marked bad: {manifest.get('verify_error')}")
        if manifest.get("redis"):
            redis_to_restore(p, manifest).check()
        result["set"] = {k: manifest.get(k) for k in ("set_id", "created_at", "live_version", "verified")}
        return result
    if not p["engine"] or not p["database"]:
        raise BackupError("engine and database are required for state=checked")
    directory = p["backup_dir"]
    while not os.path.isdir(directory):
        directory = os.path.dirname(directory)
    if not os.access(directory, os.W_OK):
        raise BackupError(f"the backup directory {p['backup_dir']} cannot be written ({directory} is not writable)")
    with open_engine(p) as engine:
        engine.server_version()
        if p["verify"]:
            engine.check_scratch()
    redis = redis_of(p)
    if redis:
        redis.check()
    return result


def redis_to_restore(p, manifest):
    """The configured Redis data a set's Redis snapshot goes back into (or is verified like); refused when there
    is none."""
    redis = redis_of(p)
    if redis is None:
        raise BackupError(f"set {p['set_id']} holds Redis data, and no Redis with role data is configured "
                          "(deployctl_redis) to restore it into")
    return redis


def load_for(p):
    if not p["set_id"]:
        raise BackupError("set_id is required for state={}".format(p["state"]))
    set_dir = os.path.join(p["backup_dir"], p["set_id"])
    manifest = load_manifest(set_dir)
    if p["engine"] and p["engine"] != manifest.get("engine"):
        raise BackupError(
            "set {} was taken from engine {}, not {}".format(p["set_id"], manifest.get("engine"), p["engine"])
        )
    p["engine"] = manifest.get("engine")
    if p["engine"] not in ENGINES:
        raise BackupError("set {} has an unknown engine {!r}".format(p["set_id"], p["engine"]))
    if not p["database"]:
        p["database"] = manifest.get("database")
    return set_dir, manifest


def verify_set(params, check_mode=False):
    """state=verified: re-check file hashes and restore the set into a scratch database."""
    p = normalize_params(dict(params, state="verified"))
    set_dir, manifest = load_for(p)
    redis = redis_to_restore(p, manifest) if manifest.get("redis") else None  # it says where its scratch runs
    with open_engine(p) as engine, passphrase_file(p["encryption_key"]) as key_file:
        t1 = time.monotonic()
        try:
            fallback = verify_copy(engine, set_dir, manifest, key_file, redis=redis)
        except VerifyError as exc:
            changed = not manifest.get("bad") or manifest.get("verify_error") != exc.msg
            manifest.update(verified=False, bad=True, verify_error=exc.msg)
            if changed and not check_mode:
                write_manifest(set_dir, manifest)
            raise VerifyError(
                "set {} failed verification: {}".format(p["set_id"], exc.msg),
                set_id=p["set_id"],
                path=set_dir,
                manifest=manifest,
                verified=False,
                changed=changed,
            ) from exc
    changed = False
    if not manifest.get("verified") and not manifest.get("bad"):
        manifest.update(
            verified=True, verified_at=utc_stamp(precise=True), verify_seconds=round(time.monotonic() - t1, 3)
        )
        changed = True
        if not check_mode:
            write_manifest(set_dir, manifest)
    return {
        "changed": changed,
        "set_id": p["set_id"],
        "path": set_dir,
        "manifest": manifest,
        "verified": True,
        "checksum_fallback": fallback,
    }


def restore_set(params, check_mode=False):
    """state=restored: restore a set into the live database and the archived files in place."""
    p = normalize_params(dict(params, state="restored"))
    set_dir, manifest = load_for(p)
    if (manifest.get("bad") or not manifest.get("verified")) and not p["force"]:
        why = (
            "marked bad ({})".format(manifest.get("verify_error")) if manifest.get("bad") else "not verified"
        )
        raise BackupError(
            "refusing to restore set {}: it is {}; use force=true to override".format(p["set_id"], why)
        )
    if check_mode:
        return {
            "changed": True,
            "set_id": p["set_id"],
            "path": set_dir,
            "msg": "check mode: set not restored",
        }
    redis = redis_to_restore(p, manifest) if manifest.get("redis") else None
    with open_engine(p) as engine, passphrase_file(p["encryption_key"]) as key_file:
        check_set_files(set_dir, manifest, key_file)
        engine.restore_live(source_of(set_dir, manifest, DUMP_FILE, key_file), manifest)
        if manifest.get("archived_paths"):
            restore_files(source_of(set_dir, manifest, FILES_ARCHIVE, key_file), manifest["archived_paths"])
        actual = engine.live_state(manifest)
        if redis:
            info = manifest["files"][RDB_FILE]
            plain = {"size": info.get("plain_size", info["size"]), "sha256": info.get("plain_sha256", info["sha256"])}
            redis.restore(source_of(set_dir, manifest, RDB_FILE, key_file), plain, manifest["redis"], p["backup_dir"])
    problems, fallback = compare_states(manifest, actual)
    if problems:
        raise BackupError(
            "set {} was restored but the live database does not match it: {}".format(
                p["set_id"], "; ".join(problems[:20])
            ),
            set_id=p["set_id"],
            path=set_dir,
            changed=True,
        )
    return {
        "changed": True,
        "set_id": p["set_id"],
        "path": set_dir,
        "manifest": manifest,
        "live_version": manifest.get("live_version"),
        "checksum_fallback": fallback,
    }


def _dispatch(p, state, check_mode, hooks):
    if state == "present":
        return take_set(p, hooks=hooks, check_mode=check_mode)
    if state == "restored":
        return restore_set(p, check_mode=check_mode)
    if state == "verified":
        return verify_set(p, check_mode=check_mode)
    if state == "inspected":
        return inspect_live(p)
    if state == "checked":
        return check_ready(p)
    if state == "scratch_dropped":
        p = normalize_params(p)
        with open_engine(p) as engine:
            dropped = drop_kept_scratch(engine, p, check_mode)
        return {"changed": bool(dropped), "dropped": dropped}
    if state == "listed":
        normalize_params(p)
        return {"changed": False, "sets": list_all_sets(os.path.abspath(p["backup_dir"]))}
    raise BackupError(f"unknown state {state!r}")


MISSING_SKIPS = {"present": "back up", "inspected": "inspect", "checked": "check"}


def missing_sqlite(p, state):
    """True when missing_ok lets a state skip an SQLite database whose file does not exist (yet)."""
    return bool(p.get("missing_ok") and p.get("engine") == "sqlite" and p.get("database")
                and state in MISSING_SKIPS and not (state == "checked" and p.get("set_id"))
                and not os.path.exists(p["database"]))


def run(params, check_mode=False, hooks=None):
    """Dispatch on ``state``; secrets are scrubbed from error messages."""
    p = dict(params)
    state = p.get("state") or "present"
    if missing_sqlite(p, state):
        return {"changed": False, "skipped": True, "missing": True,
                "msg": f"{p['database']} does not exist (yet): nothing to {MISSING_SKIPS[state]}"}
    try:
        return _dispatch(p, state, check_mode, hooks)
    except BackupError as exc:
        error = exc
    except RedisError as exc:
        error = BackupError(exc.msg)
    except (OSError, sqlite3.Error, subprocess.SubprocessError, tarfile.TarError) as exc:
        error = BackupError(f"{state} failed: {type(exc).__name__}: {exc}")
    for secret in (p.get("login_password"), p.get("encryption_key"), (p.get("redis") or {}).get("password")):
        if secret:
            error.msg = error.msg.replace(secret, "********")
    raise error
