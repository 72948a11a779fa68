#!/usr/bin/python
# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""Take, verify, list and restore database backup sets (deployctl.core.backup_set)."""
# Ansible requires the documentation variables before the imports.
# ruff: noqa: E402

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_set
short_description: Take, verify, list and restore verified database backup sets
version_added: "0.1.0"
description:
  - Takes a consistent backup ("set") of one database before a release, verifies it by restoring it into a
    throw-away scratch database on the same server and comparing per-table row counts and checksums, and
    restores it into the live database on rollback.
  - One directory per set under O(backup_dir) containing C(db.dump), optionally C(files.tar.gz), and
    C(manifest.json). The manifest is written last, atomically; a directory without a manifest is an
    incomplete set and is ignored (and removed by retention once older than one hour).
  - Runs on the database host with only the Python standard library and the engine's command line clients
    (C(mariadb)/C(mysql) and C(mariadb-dump)/C(mysqldump); C(psql), C(pg_dump), C(pg_restore)).
    C(openssl) is needed for O(encryption_key).
  - Passwords are never put on a command line, in the environment of child processes, in the manifest or in
    returned values. MySQL/MariaDB clients get a temporary option file (C(--defaults-extra-file), mode 0600
    in a private 0700 directory), PostgreSQL clients a temporary pgpass file (E(PGPASSFILE)).
  - "MySQL/MariaDB: the dumper's consistent snapshot cannot be shared, so row counts and checksums are taken
    immediately before the C(--single-transaction) dump. Writes to the database while the set is taken can
    therefore produce a verification mismatch; that fails safe (the set is marked bad)."
  - "MySQL/MariaDB: both C(CHECKSUM TABLE) and an md5 over the rows (C(row_md5)) are recorded. C(CHECKSUM
    TABLE) depends on the physical row format; when it differs after a restore, the row md5 decides."
  - "PostgreSQL: row counts and checksums are computed inside the very snapshot that C(pg_dump) dumps
    (C(pg_export_snapshot) + C(pg_dump --snapshot))."
author:
  - deployctl maintainers
options:
  state:
    description:
      - V(present) takes a new set (dump, verify, manifest, retention).
      - V(restored) restores a set into the live database (and the archived files in place).
      - V(listed) returns the complete sets, newest first.
      - V(verified) re-verifies an existing set (file hashes plus a scratch restore).
      - V(inspected) returns the live database's state (per table its rows and a content digest, and its schema
        objects) without writing anything: what a rollback compares with the state a release left.
      - V(checked) proves, before anything changes, that a set can be taken and verified here (the backup
        directory is writable, the user may create and drop a scratch database; the message gives the grant
        it lacks) and, with O(set_id), that the set is complete and its files match their hashes.
    type: str
    choices: [present, restored, listed, verified, inspected, checked]
    default: present
  engine:
    description:
      - Database engine. Required for O(state=present); defaults to the set's engine otherwise.
    type: str
    choices: [sqlite, mysql, postgresql]
  database:
    description:
      - Database name; for V(sqlite) the path of the database file.
      - Required for O(state=present); defaults to the database recorded in the set otherwise.
    type: str
  login_host:
    description: Database server host.
    type: str
  login_port:
    description: Database server port.
    type: int
  login_user:
    description: Database user.
    type: str
  login_password:
    description: Database password. Never passed on a command line.
    type: str
  credentials_file:
    description:
      - Path of an existing file readable only by its owner (mode 0600 or stricter).
      - For V(mysql) an option file with a C([client]) section, for V(postgresql) a pgpass file.
      - A file accessible by group or others is refused.
    type: path
  backup_dir:
    description: Directory holding the sets, one sub-directory per set. Created (mode 0700) when missing.
    type: path
    required: true
  set_id:
    description:
      - Identifier (directory name) of the set. Required for O(state=restored) and O(state=verified).
      - For O(state=present) it defaults to C(<UTC yyyymmddTHHMMSSZ>-<label>).
    type: str
  label:
    description: Free label stored in the manifest and used in the default O(set_id), e.g. the deployment id.
    type: str
  purpose:
    description: Why the set is taken (pre-release, safety before a restore, manual), stored in the manifest.
    type: str
  process_registry:
    description:
      - Directory where the dump and restore tools are recorded while they run (see M(deployctl.core.tracked_processes)),
        so that recovery can stop them; not recorded when unset.
    type: path
  live_version:
    description: Application version that is live while the set is taken (stored in the manifest).
    type: str
  files:
    description:
      - Absolute paths (files or directories) archived with the database into C(files.tar.gz).
      - A missing path is an error. On O(state=restored) they are put back in place, replacing the current
        ones.
    type: list
    elements: path
    default: []
  keep:
    description: Retention. Keep the newest N good sets (sets marked bad do not count and are pruned).
    type: int
    default: 5
  protect:
    description: Set ids that retention never deletes.
    type: list
    elements: str
    default: []
  verify:
    description: Verify the new set by restoring it into a scratch database and comparing checksums.
    type: bool
    default: true
  encryption_key:
    description:
      - When given, C(db.dump) and C(files.tar.gz) are encrypted at rest with
        C(openssl enc -aes-256-cbc -pbkdf2 -salt); the pass phrase is handed to openssl through a private
        0600 file (C(-pass file:)), never on the command line.
      - Required to verify or restore an encrypted set.
    type: str
  scratch_prefix:
    description: Name prefix of the scratch databases used for verification (a random suffix is added).
    type: str
    default: deployctl_verify_
  force:
    description: With O(state=restored), restore a set that is marked bad or was never verified.
    type: bool
    default: false
notes:
  - Supports check mode. O(state=present) and O(state=restored) only report C(changed=true) in check mode.
  - O(state=verified) marks a set bad when verification fails, and marks a never-verified set verified when
    it succeeds; both are reported as changed.
  - "Free space is checked before anything is written: the estimated database size (MySQL: data and index
    length, or the InnoDB tablespace file sizes when larger; PostgreSQL: C(pg_database_size); SQLite: file
    size) times 1.2 plus the size of O(files) must be available in O(backup_dir)."
  - "PostgreSQL restore drops the live database (terminating its connections) and recreates it from the set
    with C(pg_restore --create), preserving owners, database settings and grants. MySQL/MariaDB restore
    drops and recreates the database with its recorded character set and collation, then loads the dump."
"""

EXAMPLES = r"""
- name: Back up the database and the uploaded config before the release
  deployctl.core.backup_set:
    state: present
    engine: postgresql
    database: shop
    login_host: 127.0.0.1
    login_user: deploy
    credentials_file: /etc/deployctl/pgpass
    backup_dir: /var/backups/deployctl/shop
    label: "{{ deployment_id }}"
    live_version: "{{ current_version }}"
    files:
      - /etc/shop/settings.ini
    keep: 5
  register: backup

- name: List the sets
  deployctl.core.backup_set:
    state: listed
    backup_dir: /var/backups/deployctl/shop
  register: sets

- name: Roll the database back
  deployctl.core.backup_set:
    state: restored
    backup_dir: /var/backups/deployctl/shop
    set_id: "{{ backup.set_id }}"
    login_host: 127.0.0.1
    login_user: deploy
    credentials_file: /etc/deployctl/pgpass

- name: MariaDB with an encrypted set
  deployctl.core.backup_set:
    engine: mysql
    database: shop
    login_host: 127.0.0.1
    login_user: deploy
    login_password: "{{ vault_db_password }}"
    backup_dir: /var/backups/deployctl/shop
    encryption_key: "{{ vault_backup_key }}"
    protect: ["20240101T000000Z-golden"]
"""

RETURN = r"""
set_id:
  description: Id of the set taken, verified or restored.
  returned: when state is present, restored or verified
  type: str
  sample: 20240521T101500Z-deploy-42
path:
  description: Directory of the set.
  returned: when state is present, restored or verified
  type: str
  sample: /var/backups/deployctl/shop/20240521T101500Z-deploy-42
manifest:
  description:
    - Content of C(manifest.json). C(tables) maps each table to C(rows) and C(checksum) (MySQL also
      C(row_md5)); C(objects) lists views, routines, triggers and events; C(files) maps C(db.dump) and
      C(files.tar.gz) to C(sha256) and C(size).
  returned: when state is present, restored or verified
  type: dict
pruned:
  description: Set ids (and incomplete set directories) deleted by retention.
  returned: when state is present
  type: list
  elements: str
sets:
  description: Manifests of the complete sets, newest first, each with an added C(path).
  returned: when state is listed
  type: list
  elements: dict
verified:
  description: Whether the set passed verification.
  returned: when state is present or verified
  type: bool
checksum_fallback:
  description: Tables whose C(CHECKSUM TABLE) value differed and which were compared by row md5 instead.
  returned: when state is present, restored or verified
  type: list
  elements: str
"""

import contextlib
import errno
import hashlib
import json
import os
import queue
import re
import secrets as _random
import shutil
import sqlite3
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
from datetime import datetime, timezone

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.deployctl.core.plugins.module_utils import processes

MANIFEST = "manifest.json"
DUMP_FILE = "db.dump"
FILES_ARCHIVE = "files.tar.gz"
FORMAT_VERSION = 1
CHUNK = 1 << 20
INCOMPLETE_MAX_AGE = 3600
SPACE_FACTOR = 1.2
OPENSSL_CIPHER = "aes-256-cbc"
OPENSSL_DIGEST = "sha256"
OPENSSL_ITER = 100000
TMP_PREFIX = ".deployctl-tmp-"

SET_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
SCRATCH_PREFIX_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")
DISK_FULL_MARKERS = ("no space left", "errno 28", "errcode: 28", "disk is full", "enospc", "disk full")

DEFAULTS = {
    "state": "present",
    "engine": None,
    "database": None,
    "login_host": None,
    "login_port": None,
    "login_user": None,
    "login_password": None,
    "credentials_file": None,
    "backup_dir": None,
    "set_id": None,
    "label": None,
    "purpose": None,
    "process_registry": None,
    "live_version": None,
    "files": [],
    "keep": 5,
    "protect": [],
    "verify": True,
    "encryption_key": None,
    "scratch_prefix": "deployctl_verify_",
    "force": False,
}

PG_SESSION_SETTINGS = (
    "SET TimeZone TO 'UTC'; SET DateStyle TO 'ISO, YMD'; SET IntervalStyle TO 'postgres'; "
    "SET extra_float_digits TO 3; SET bytea_output TO 'hex'; SET search_path TO pg_catalog;"
)


class BackupError(Exception):
    """A failure reported to the caller; ``result`` holds extra return values (set_id, manifest, ...)."""

    def __init__(self, msg, **result):
        super().__init__(msg)
        self.msg = msg
        self.result = result


class DiskFullError(BackupError):
    """The backup directory ran out of space while a set was being written."""


class VerifyError(BackupError):
    """A set failed verification."""


# --------------------------------------------------------------------------------------------------------
# small helpers


def _now():
    return datetime.now(timezone.utc)


def _iso(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _mb(n):
    return "%.1f" % (n / 1048576.0)


def _looks_disk_full(text):
    low = (text or "").lower()
    return any(m in low for m in DISK_FULL_MARKERS)


def _read_tmp(fh, limit=4000):
    try:
        fh.flush()
        fh.seek(0)
        data = fh.read()
    except (OSError, ValueError):
        return ""
    text = data.decode("utf-8", "replace").strip()
    return text[-limit:]


def _which(names):
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise BackupError("none of {} found on PATH".format(", ".join(names)))


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(CHUNK)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tree_size(path):
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _check_credentials_file(path):
    try:
        st = os.stat(path)
    except OSError as exc:
        raise BackupError(f"credentials_file {path} cannot be read: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise BackupError(f"credentials_file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise BackupError(
            f"credentials_file {path} has mode {stat.S_IMODE(st.st_mode):04o}: it must not be accessible "
            "by group or others (chmod 600 it)"
        )


def normalize_params(params):
    """Fill defaults and validate the parameters shared by all states."""
    p = dict(DEFAULTS)
    p.update({k: v for k, v in (params or {}).items() if v is not None or k not in DEFAULTS})
    if p["state"] not in ("present", "restored", "listed", "verified", "inspected", "checked"):
        raise BackupError("unknown state {!r}".format(p["state"]))
    if not p["backup_dir"]:
        raise BackupError("backup_dir is required")
    p["backup_dir"] = os.path.abspath(os.path.expanduser(p["backup_dir"]))
    if p["engine"] is not None and p["engine"] not in ("sqlite", "mysql", "postgresql"):
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
    return p


class _TempSecrets:
    """Private 0700 directory for short-lived credential files; ``cleanup()`` removes it."""

    def __init__(self):
        self._dir = None

    def write(self, name, data):
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="deployctl-")
            os.chmod(self._dir, 0o700)
        path = os.path.join(self._dir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
        return path

    def cleanup(self):
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _openssl_argv(decrypt, key_file, enc_info=None):
    info = enc_info or {}
    argv = [
        _which(("openssl",)),
        "enc",
        "-d" if decrypt else "-e",
        "-" + info.get("cipher", OPENSSL_CIPHER),
        "-pbkdf2",
        "-iter",
        str(info.get("iter", OPENSSL_ITER)),
        "-md",
        info.get("md", OPENSSL_DIGEST),
    ]
    if not decrypt:
        argv.append("-salt")
    argv += ["-pass", "file:" + key_file]
    return argv


class _Sink:
    """Destination of one set file: a plain file or an ``openssl enc`` pipe.

    Tracks the sha256 of the plaintext (used to tell a wrong key from a corrupted file on restore).
    """

    def __init__(self, path, key_file=None):
        self.path = path
        self.key_file = key_file
        self.plain = hashlib.sha256()
        self.plain_size = 0
        self._fh = None
        self._out = None
        self._proc = None
        self._err = None
        self._adopted = False

    def _open(self):
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        if self.key_file is None:
            self._fh = os.fdopen(fd, "wb")
            return
        self._out = os.fdopen(fd, "wb")
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in abort()
        self._proc = processes.popen(
            _openssl_argv(False, self.key_file), stdin=subprocess.PIPE, stdout=self._out, stderr=self._err
        )
        self._fh = self._proc.stdin

    def _openssl_failure(self, what):
        rc = self._proc.wait()
        err = _read_tmp(self._err)
        if _looks_disk_full(err) or self._dir_full():
            return DiskFullError(f"no space left on device while writing {self.path}: {err}")
        return BackupError(f"openssl failed (exit {rc}) while {what} {self.path}: {err}")

    def _dir_full(self):
        try:
            return shutil.disk_usage(os.path.dirname(self.path)).free < 65536
        except OSError:
            return False

    def write(self, data):
        if self._fh is None:
            self._open()
        self.plain.update(data)
        self.plain_size += len(data)
        try:
            self._fh.write(data)
        except BrokenPipeError:
            raise self._openssl_failure("encrypting") from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(f"no space left on device while writing {self.path}") from exc
            raise
        return len(data)

    def write_from(self, path):
        with open(path, "rb") as fh:
            while True:
                chunk = fh.read(CHUNK)
                if not chunk:
                    break
                self.write(chunk)

    def adopt(self, path):
        """Take over a finished plaintext file: moved into place, or streamed through openssl."""
        if self.key_file is None and self._fh is None:
            os.chmod(path, 0o600)
            os.replace(path, self.path)
            self._adopted = True
        else:
            self.write_from(path)

    def close(self):
        """Finish the file and return its manifest entry."""
        if self._adopted:
            return {"sha256": _sha256_file(self.path), "size": os.path.getsize(self.path)}
        if self._fh is None:
            self._open()
        try:
            if self._proc is None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()
            else:
                try:
                    self._fh.close()
                except BrokenPipeError:
                    raise self._openssl_failure("encrypting") from None
                if self._proc.wait() != 0:
                    raise self._openssl_failure("encrypting")
                self._out.flush()
                os.fsync(self._out.fileno())
                self._out.close()
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(f"no space left on device while writing {self.path}") from exc
            raise
        finally:
            self.abort()
        info = {"sha256": _sha256_file(self.path), "size": os.path.getsize(self.path)}
        if self.key_file is not None:
            info["plain_sha256"] = self.plain.hexdigest()
            info["plain_size"] = self.plain_size
        return info

    def abort(self):
        for fh in (self._fh, self._out):
            if fh is not None:
                with contextlib.suppress(OSError):
                    fh.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._err is not None:
            self._err.close()
            self._err = None


def _pump(argv, sink, what, env=None):
    """Run a dump command and stream its stdout into ``sink``."""
    errf = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finally
    try:
        proc = processes.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf, env=env)
        try:
            while True:
                chunk = proc.stdout.read(CHUNK)
                if not chunk:
                    break
                sink.write(chunk)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            proc.stdout.close()
        rc = proc.wait()
        if rc != 0:
            err = _read_tmp(errf)
            if _looks_disk_full(err):
                raise DiskFullError(f"{what}: no space left on device: {err}")
            raise BackupError(f"{what} failed (exit {rc}): {err}")
    finally:
        errf.close()


class _DumpSource:
    """Read access to the plaintext of a set file (decrypting on the fly when needed)."""

    def __init__(self, path, info, key_file, tmp_root):
        self.path = path
        self.info = info or {}
        self.key_file = key_file
        self.tmp_root = tmp_root
        self.encrypted = bool(self.info.get("encrypted"))

    @contextlib.contextmanager
    def stream(self):
        if not self.encrypted:
            with open(self.path, "rb") as fh:
                yield fh
            return
        errf = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finally
        proc = processes.popen(
            _openssl_argv(True, self.key_file, self.info.get("encryption")) + ["-in", self.path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errf,
        )
        ok = False
        try:
            yield proc.stdout
            ok = True
            # a consumer may stop before EOF; drain so openssl's exit status reflects the decryption only
            while proc.stdout.read(CHUNK):
                pass
        finally:
            proc.stdout.close()
            if not ok and proc.poll() is None:
                proc.kill()
            rc = proc.wait()
            err = _read_tmp(errf)
            errf.close()
            if ok and rc != 0:
                raise BackupError(
                    f"decrypting {self.path} failed (wrong encryption_key?): {_openssl_reason(err)}"
                )

    @contextlib.contextmanager
    def as_file(self):
        """A path to the plaintext (a private temporary copy when the set is encrypted)."""
        if not self.encrypted:
            yield self.path
            return
        tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.tmp_root)
        try:
            os.chmod(tmp, 0o700)
            target = os.path.join(tmp, "plain")
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out, self.stream() as src:
                shutil.copyfileobj(src, out, CHUNK)
            yield target
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _openssl_reason(err):
    """The useful part of openssl's error output ("bad decrypt" rather than a provider stack)."""
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    for line in lines:
        if "bad decrypt" in line or "bad magic" in line:
            return "bad decrypt" if "bad decrypt" in line else "bad magic number"
    return lines[0] if lines else "no error output"


def _run_with_stdin(argv, src, what, env=None):
    """Run ``argv`` reading ``src`` (a file object) on stdin; raise BackupError on failure."""
    with tempfile.TemporaryFile() as errf, tempfile.TemporaryFile() as outf:
        rc = processes.popen(argv, stdin=src, stdout=outf, stderr=errf, env=env).wait()
        if rc != 0:
            raise BackupError(f"{what} failed (exit {rc}): {_read_tmp(errf) or _read_tmp(outf)}")


# --------------------------------------------------------------------------------------------------------
# engines


def _empty_objects():
    return {"views": [], "routines": [], "triggers": [], "events": []}


def _sorted_objects(objects):
    return {k: sorted(set(objects.get(k, []))) for k in ("views", "routines", "triggers", "events")}


class _Engine:
    name = None

    def __init__(self, params, tmp):
        self.p = params
        self.tmp = tmp
        self.database = params["database"]

    def close(self):
        pass


# ---- MySQL / MariaDB


def _my_ident(name):
    return "`" + name.replace("`", "``") + "`"


def _my_lit(value):
    return "CONVERT(X'{}' USING utf8mb4)".format(value.encode("utf-8").hex())


def _my_opt_value(value):
    value = str(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class MysqlEngine(_Engine):
    name = "mysql"

    def __init__(self, params, tmp):
        super().__init__(params, tmp)
        self.client = _which(("mariadb", "mysql"))
        self.dumper = _which(("mariadb-dump", "mysqldump"))
        parts = []
        if params["credentials_file"]:
            _check_credentials_file(params["credentials_file"])
            with open(params["credentials_file"], encoding="utf-8") as fh:
                parts.append(fh.read())
        parts.append("[client]")
        for opt, key in (
            ("host", "login_host"),
            ("port", "login_port"),
            ("user", "login_user"),
            ("password", "login_password"),
        ):
            if params[key] is not None:
                parts.append(f"{opt}={_my_opt_value(params[key])}")
        self.defaults = tmp.write("client.cnf", "\n".join(parts) + "\n")

    def _argv(self, binary):
        # --defaults-extra-file must be the first argument
        return [binary, "--defaults-extra-file=" + self.defaults]

    def query(self, sql, db=None):
        argv = self._argv(self.client) + [
            "--batch",
            "--raw",
            "--skip-column-names",
            "--default-character-set=utf8mb4",
        ]
        if db is not None:
            argv.append("--database=" + db)
        res = processes.run(argv, input=sql.encode("utf-8"))
        if res.returncode != 0:
            err = res.stderr.decode("utf-8", "replace").strip()
            raise BackupError(f"mysql query failed (exit {res.returncode}): {err}")
        text = res.stdout.decode("utf-8", "replace")
        return [line.split("\t") for line in text.split("\n") if line != ""]

    def server_version(self):
        return self.query("SELECT VERSION();")[0][0]

    def estimate_size(self):
        lit = _my_lit(self.database)
        rows = self.query(
            "SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables "
            f"WHERE table_schema = {lit};"
        )
        size = int(float(rows[0][0])) if rows else 0
        # InnoDB statistics lag behind recent writes; the tablespace files are a safer upper bound.
        like = self.database.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "/%"
        for table in ("information_schema.innodb_sys_tablespaces", "information_schema.innodb_tablespaces"):
            try:
                rows = self.query(
                    f"SELECT COALESCE(SUM(file_size), 0) FROM {table} WHERE name LIKE {_my_lit(like)};"
                )
            except BackupError:
                continue
            if rows:
                size = max(size, int(float(rows[0][0])))
            break
        return size

    def database_options(self, db=None):
        rows = self.query(
            "SELECT default_character_set_name, default_collation_name "
            f"FROM information_schema.schemata WHERE schema_name = {_my_lit(db or self.database)};"
        )
        if not rows:
            raise BackupError("database %s does not exist" % (db or self.database))
        return {"charset": rows[0][0], "collation": rows[0][1]}

    def _meta(self, db):
        lit = _my_lit(db)
        sql = (
            f"SELECT 'T', HEX(table_name) FROM information_schema.tables WHERE table_schema = {lit} "
            "AND table_type IN ('BASE TABLE', 'SYSTEM VERSIONED');\n"
            f"SELECT 'views', HEX(table_name) FROM information_schema.views WHERE table_schema = {lit};\n"
            "SELECT 'routines', HEX(CONCAT(routine_type, ' ', routine_name)) "
            f"FROM information_schema.routines WHERE routine_schema = {lit};\n"
            "SELECT 'triggers', HEX(CONCAT(event_object_table, '.', trigger_name)) "
            f"FROM information_schema.triggers WHERE trigger_schema = {lit};\n"
            f"SELECT 'events', HEX(event_name) FROM information_schema.events WHERE event_schema = {lit};\n"
            "SELECT 'C', HEX(table_name), HEX(column_name) FROM information_schema.columns "
            f"WHERE table_schema = {lit} ORDER BY table_name, ordinal_position;\n"
        )
        tables, columns, objects = [], {}, _empty_objects()
        for row in self.query(sql):
            kind = row[0]
            if kind == "T":
                tables.append(bytes.fromhex(row[1]).decode("utf-8"))
            elif kind == "C":
                columns.setdefault(bytes.fromhex(row[1]).decode("utf-8"), []).append(
                    bytes.fromhex(row[2]).decode("utf-8")
                )
            else:
                objects[kind].append(bytes.fromhex(row[1]).decode("utf-8"))
        return sorted(tables), columns, _sorted_objects(objects)

    _PRELUDE = "SET SESSION time_zone = '+00:00'; SET SESSION group_concat_max_len = 4294967295;\n"

    def _row_md5_sql(self, db, table, columns, idx):
        exprs = ", ".join(f"IFNULL(HEX(CAST({_my_ident(c)} AS BINARY)), 'N')" for c in columns) or "''"
        return (
            f"SELECT {idx:d}, COUNT(*), IFNULL(MD5(GROUP_CONCAT(m ORDER BY m SEPARATOR '')), '') FROM "
            f"(SELECT MD5(CONCAT_WS('|', {exprs})) AS m FROM {_my_ident(db)}.{_my_ident(table)}) AS x;\n"
        )

    def _row_md5(self, db, tables, columns):
        if not tables:
            return {}
        sql = self._PRELUDE + "START TRANSACTION WITH CONSISTENT SNAPSHOT;\n"
        sql += "".join(self._row_md5_sql(db, t, columns.get(t, []), i) for i, t in enumerate(tables))
        sql += "COMMIT;\n"
        out = {}
        for row in self.query(sql):
            out[tables[int(row[0])]] = {"rows": int(row[1]), "row_md5": row[2]}
        return out

    def _counts_and_checksums(self, db, tables):
        if not tables:
            return {}
        sql = self._PRELUDE + "START TRANSACTION WITH CONSISTENT SNAPSHOT;\n"
        sql += "".join(
            f"SELECT {i:d}, COUNT(*) FROM {_my_ident(db)}.{_my_ident(t)};\n" for i, t in enumerate(tables)
        )
        sql += "COMMIT;\n"
        sql += "".join(f"CHECKSUM TABLE {_my_ident(db)}.{_my_ident(t)};\n" for t in tables)
        rows = self.query(sql)
        n = len(tables)
        if len(rows) != 2 * n:
            raise BackupError(f"unexpected CHECKSUM TABLE output for database {db}")
        out = {}
        for i, t in enumerate(tables):
            out[t] = {"rows": int(rows[i][1]), "checksum": rows[n + i][-1]}
        return out

    def inspect(self, db, expected=None, record=False):
        """Counts, checksums and object names of ``db``.

        ``record``: also compute the row md5 of every table (done at dump time). Otherwise the row md5 is
        computed only for tables whose CHECKSUM TABLE value differs from ``expected``.
        """
        tables, columns, objects = self._meta(db)
        state = self._counts_and_checksums(db, tables)
        if record:
            for t, v in self._row_md5(db, tables, columns).items():
                state[t]["row_md5"] = v["row_md5"]
        elif expected:
            redo = [
                t
                for t in tables
                if t in expected
                and expected[t].get("row_md5")
                and state[t]["checksum"] != expected[t].get("checksum")
            ]
            for t, v in self._row_md5(db, redo, columns).items():
                state[t]["row_md5"] = v["row_md5"]
        return {"tables": state, "objects": objects}

    def dump(self, sink):
        state = self.inspect(self.database, record=True)
        argv = self._argv(self.dumper) + [
            "--single-transaction",
            "--routines",
            "--triggers",
            "--events",
            "--hex-blob",
            "--default-character-set=utf8mb4",
            "--no-tablespaces",
            "--skip-dump-date",
            "--quick",
        ]
        if self._is_oracle_mysqldump():
            argv.append("--set-gtid-purged=OFF")
        argv.append(self.database)
        _pump(argv, sink, os.path.basename(self.dumper))
        return state

    def _is_oracle_mysqldump(self):
        if "mariadb" in os.path.basename(self.dumper):
            return False
        res = processes.run([self.dumper, "--version"])
        return b"mariadb" not in res.stdout.lower()

    def _load(self, source, db):
        argv = self._argv(self.client) + ["--default-character-set=utf8mb4", "--database=" + db]
        with source.stream() as src:
            _run_with_stdin(argv, src, f"loading the dump into {db}")

    def scratch_state(self, source, manifest):
        scratch = self.p["scratch_prefix"] + _random.token_hex(6)
        opts = manifest.get("database_options") or {}
        create = f"CREATE DATABASE {_my_ident(scratch)}"
        if opts.get("charset"):
            create += " CHARACTER SET {} COLLATE {}".format(opts["charset"], opts["collation"])
        try:
            self.query(create + ";")
            self._load(source, scratch)
            return self.inspect(scratch, expected=manifest.get("tables"))
        finally:
            self.query(f"DROP DATABASE IF EXISTS {_my_ident(scratch)};")

    def restore_live(self, source, manifest):
        db = self.database
        opts = manifest.get("database_options") or {}
        if not opts.get("charset"):
            with contextlib.suppress(BackupError):
                opts = self.database_options(db)
        create = f"CREATE DATABASE {_my_ident(db)}"
        if opts.get("charset"):
            create += " CHARACTER SET {} COLLATE {}".format(opts["charset"], opts["collation"])
        self.query(f"DROP DATABASE IF EXISTS {_my_ident(db)}; {create};")
        self._load(source, db)

    def live_state(self, manifest):
        return self.inspect(self.database, expected=manifest.get("tables"))

    def current_state(self):
        return self.inspect(self.database, record=True)

    def check_scratch(self):
        scratch = self.p["scratch_prefix"] + _random.token_hex(6)
        try:
            self.query(f"CREATE DATABASE {_my_ident(scratch)}; DROP DATABASE {_my_ident(scratch)};")
        except BackupError as exc:
            account = self.query("SELECT CURRENT_USER();")[0][0]
            user, _, host = account.rpartition("@")
            prefix = self.p["scratch_prefix"].replace("_", "\\_")
            raise BackupError(
                f"{account} cannot create the scratch databases the backup verification restores into "
                f"({exc.msg.strip().splitlines()[-1]}); "
                f"grant it: GRANT ALL ON `{prefix}%`.* TO '{user}'@'{host}';"
            ) from None


# ---- PostgreSQL


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
        self._proc = processes.popen(
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
        return BackupError(f"psql failed (exit {rc}): {_read_tmp(self._err)}")

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


class PostgresEngine(_Engine):
    name = "postgresql"
    maintenance_db = "postgres"

    def __init__(self, params, tmp):
        super().__init__(params, tmp)
        for tool in ("psql", "pg_dump", "pg_restore"):
            _which((tool,))
        env = dict(os.environ)
        env.pop("PGPASSWORD", None)
        env.update({"PGCLIENTENCODING": "UTF8", "PGAPPNAME": "deployctl", "PGCONNECT_TIMEOUT": "30"})
        for var, key in (("PGHOST", "login_host"), ("PGPORT", "login_port"), ("PGUSER", "login_user")):
            if params[key] is not None:
                env[var] = str(params[key])
        cred = params["credentials_file"]
        if cred:
            _check_credentials_file(cred)
        if params["login_password"] is not None:
            content = "*:*:*:*:{}\n".format(_pgpass_field(params["login_password"]))
            if cred:
                with open(cred, encoding="utf-8") as fh:
                    content += fh.read()
            env["PGPASSFILE"] = tmp.write("pgpass", content)
        elif cred:
            env["PGPASSFILE"] = cred
        self.env = env
        self._version_num = None

    def psql_argv(self, db):
        return [
            _which(("psql",)),
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
        res = processes.run(
            self.psql_argv(db or self.database), input=sql.encode("utf-8"), env=self.env
        )
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
        tables, objects = [], _empty_objects()
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
        return {"tables": state, "objects": _sorted_objects(objects)}

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
                _which(("pg_dump",)),
                "-w",
                "-Fc",
                "--snapshot=" + snapshot,
                "-d",
                _pg_conninfo(self.database),
            ]
            _pump(argv, sink, "pg_dump", env=self.env)
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
        argv = [_which(("pg_restore",)), "-w", "--exit-on-error"] + args
        with source.stream() as src:
            _run_with_stdin(argv, src, what, env=self.env)

    def scratch_state(self, source, manifest):
        scratch = self.p["scratch_prefix"] + _random.token_hex(6)
        opts = manifest.get("database_options") or {}
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
            return self.inspect(scratch)
        finally:
            self._drop(scratch)

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


# ---- SQLite


def _sqlite_ident(name):
    return '"' + name.replace('"', '""') + '"'


def _sqlite_uri(path, mode="ro"):
    from urllib.parse import quote

    return f"file:{quote(os.path.abspath(path))}?mode={mode}"


def _sqlite_value(v):
    if v is None:
        return b"N;"
    if isinstance(v, int):
        return b"i" + str(v).encode() + b";"
    if isinstance(v, float):
        return b"f" + repr(v).encode() + b";"
    if isinstance(v, str):
        v = v.encode("utf-8", "surrogatepass")
    return b"b" + str(len(v)).encode() + b":" + bytes(v)


class SqliteEngine(_Engine):
    name = "sqlite"

    def __init__(self, params, tmp):
        super().__init__(params, tmp)
        self.database = os.path.abspath(os.path.expanduser(params["database"]))

    def _require_live(self):
        if not os.path.isfile(self.database):
            raise BackupError(f"sqlite database {self.database} does not exist")

    def server_version(self):
        return sqlite3.sqlite_version

    def estimate_size(self):
        self._require_live()
        size = os.path.getsize(self.database)
        wal = self.database + "-wal"
        if os.path.exists(wal):
            size += os.path.getsize(wal)
        return size

    def database_options(self):
        return {}

    @staticmethod
    def _inspect_conn(conn):
        conn.text_factory = bytes
        rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
        tables, objects = [], _empty_objects()
        for typ, name, tbl, sql in rows:
            name = name.decode("utf-8", "surrogateescape")
            sql = (sql or b"").decode("utf-8", "replace")
            if typ == b"table":
                if name.startswith("sqlite_") or sql.upper().startswith("CREATE VIRTUAL"):
                    continue
                tables.append((name, bool(re.search(r"\)\s*WITHOUT\s+ROWID\s*;?\s*$", sql, re.I))))
            elif typ == b"view":
                objects["views"].append(name)
            elif typ == b"trigger":
                objects["triggers"].append("{}.{}".format(tbl.decode("utf-8", "surrogateescape"), name))
        state = {}
        for name, without_rowid in sorted(tables):
            q = _sqlite_ident(name)
            if without_rowid:
                pk = [
                    r[1].decode("utf-8", "surrogateescape")
                    for r in sorted(conn.execute(f"PRAGMA table_info({q})").fetchall(), key=lambda r: r[5])
                    if r[5]
                ]
                order = ", ".join(_sqlite_ident(c) for c in pk) or "1"
            else:
                order = "rowid"
            h, n = hashlib.md5(), 0
            for row in conn.execute(f"SELECT * FROM {q} ORDER BY {order}"):
                h.update(hashlib.md5(b"".join(_sqlite_value(v) for v in row)).digest())
                n += 1
            state[name] = {"rows": n, "checksum": h.hexdigest() if n else ""}
        return {"tables": state, "objects": _sorted_objects(objects)}

    def inspect(self, path, readonly=True):
        conn = sqlite3.connect(_sqlite_uri(path, "ro" if readonly else "rw"), uri=True, isolation_level=None)
        try:
            return self._inspect_conn(conn)
        finally:
            conn.close()

    def dump(self, sink):
        self._require_live()
        tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=os.path.dirname(sink.path))
        try:
            copy = os.path.join(tmp, "copy.sqlite")
            live = sqlite3.connect(_sqlite_uri(self.database), uri=True, isolation_level=None)
            try:
                live.execute("BEGIN")
                state = self._inspect_conn(live)  # the read transaction pins the snapshot the backup copies
                dst = sqlite3.connect(copy)
                try:
                    live.backup(dst)
                finally:
                    dst.close()
                live.execute("COMMIT")
            finally:
                live.close()
            sink.adopt(copy)
            return state
        except sqlite3.OperationalError as exc:
            if _looks_disk_full(str(exc)):
                raise DiskFullError(f"sqlite backup: {exc}") from exc
            raise BackupError(f"sqlite backup of {self.database} failed: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def scratch_state(self, source, manifest):
        with source.as_file() as path:
            conn = sqlite3.connect(_sqlite_uri(path), uri=True, isolation_level=None)
            try:
                res = conn.execute("PRAGMA integrity_check").fetchall()
                if [r[0] for r in res] != ["ok"]:
                    raise BackupError(f"integrity_check of the copy failed: {res[:5]}")
                return self._inspect_conn(conn)
            except sqlite3.DatabaseError as exc:
                raise BackupError(f"the copy is not a valid sqlite database: {exc}") from exc
            finally:
                conn.close()

    def restore_live(self, source, manifest):
        with source.as_file() as path:
            src = sqlite3.connect(_sqlite_uri(path), uri=True)
            try:
                dst = sqlite3.connect(self.database, timeout=30)
                try:
                    src.backup(dst)
                finally:
                    dst.close()
            except sqlite3.Error as exc:
                raise BackupError(f"restoring {self.database} failed: {exc}") from exc
            finally:
                src.close()

    def live_state(self, manifest):
        return self.inspect(self.database)

    def current_state(self):
        self._require_live()
        return self.inspect(self.database)

    def check_scratch(self):
        """Scratch copies of a SQLite set are files in the backup directory, checked writable already."""


ENGINES = {"mysql": MysqlEngine, "postgresql": PostgresEngine, "sqlite": SqliteEngine}


@contextlib.contextmanager
def _engine(params):
    tmp = _TempSecrets()
    try:
        yield ENGINES[params["engine"]](params, tmp)
    finally:
        tmp.cleanup()


@contextlib.contextmanager
def _key_file(key):
    if key is None:
        yield None
        return
    tmp = _TempSecrets()
    try:
        yield tmp.write("pass", key)
    finally:
        tmp.cleanup()


# --------------------------------------------------------------------------------------------------------
# manifests, comparison, retention


def _write_manifest(set_dir, manifest):
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")
    tmp = os.path.join(set_dir, "." + MANIFEST + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, os.path.join(set_dir, MANIFEST))
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(f"no space left on device while writing the manifest in {set_dir}") from exc
        raise
    _fsync_dir(set_dir)


def load_manifest(set_dir):
    path = os.path.join(set_dir, MANIFEST)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise BackupError(f"set {set_dir} is incomplete or does not exist (no {MANIFEST})") from None
    except ValueError as exc:
        raise BackupError(f"manifest {path} is not valid JSON: {exc}") from exc


def compare_states(expected, actual):
    """Return (problems, fallback_tables) comparing a recorded state with an observed one."""
    problems, fallback = [], []
    exp_t, act_t = expected.get("tables", {}), actual.get("tables", {})
    for name in sorted(set(exp_t) - set(act_t)):
        problems.append(f"table {name} is missing")
    for name in sorted(set(act_t) - set(exp_t)):
        problems.append(f"unexpected table {name}")
    for name in sorted(set(exp_t) & set(act_t)):
        e, a = exp_t[name], act_t[name]
        if e.get("rows") != a.get("rows"):
            problems.append("table {}: {} rows expected, {} found".format(name, e.get("rows"), a.get("rows")))
        elif e.get("checksum") != a.get("checksum"):
            if e.get("row_md5") and a.get("row_md5") == e.get("row_md5"):
                fallback.append(name)
            else:
                problems.append(f"table {name}: checksum mismatch")
    exp_o, act_o = expected.get("objects", {}), actual.get("objects", {})
    for kind in ("views", "routines", "triggers", "events"):
        e, a = set(exp_o.get(kind, [])), set(act_o.get(kind, []))
        if e - a:
            problems.append("{} missing: {}".format(kind, ", ".join(sorted(e - a))))
        if a - e:
            problems.append("unexpected {}: {}".format(kind, ", ".join(sorted(a - e))))
    return problems, fallback


def list_sets(backup_dir):
    """Manifests of the complete sets in ``backup_dir``, newest first, each with ``path``."""
    sets = []
    if not os.path.isdir(backup_dir):
        return sets
    for name in os.listdir(backup_dir):
        set_dir = os.path.join(backup_dir, name)
        if not SET_ID_RE.match(name) or not os.path.isdir(set_dir):
            continue
        try:
            manifest = load_manifest(set_dir)
        except BackupError:
            continue
        if not isinstance(manifest, dict):
            continue
        manifest = dict(manifest)
        manifest["set_id"] = name
        manifest["path"] = set_dir
        sets.append(manifest)
    sets.sort(key=lambda m: (str(m.get("created_at", "")), m["set_id"]), reverse=True)
    return sets


def list_all_sets(backup_dir):
    """Every set, as `backups` shows them: the good ones with their files checked against their hashes
    (cached by size and mtime), and the broken ones (unreadable manifest, missing or corrupted file) with
    the reason, never hidden."""
    sets = list_sets(backup_dir)
    for manifest in sets:
        problem = _files_problem(manifest["path"], manifest)
        if problem:
            manifest.update(broken=problem, verified=False)
    listed = {m["set_id"] for m in sets}
    for name in sorted(os.listdir(backup_dir)) if os.path.isdir(backup_dir) else []:
        set_dir = os.path.join(backup_dir, name)
        if name in listed or not SET_ID_RE.match(name) or not os.path.isfile(os.path.join(set_dir, MANIFEST)):
            continue
        try:
            load_manifest(set_dir)
            why = "the manifest is not a JSON object"
        except BackupError as exc:
            why = exc.msg
        created = datetime.fromtimestamp(os.path.getmtime(set_dir), timezone.utc)
        sets.append({"set_id": name, "path": set_dir, "created_at": _iso(created), "verified": False, "broken": why})
    sets.sort(key=lambda m: (str(m.get("created_at", "")), m["set_id"]), reverse=True)
    return sets


def _files_problem(set_dir, manifest):
    """Why a set's files do not match its manifest, or None; a sidecar remembers files found sound."""
    checked_path = os.path.join(set_dir, ".checked.json")
    try:
        with open(checked_path) as fh:
            checked = json.load(fh)
    except (OSError, ValueError):
        checked = {}
    sound = {}
    for name, info in sorted((manifest.get("files") or {}).items()):
        path = os.path.join(set_dir, name)
        try:
            st = os.stat(path)
        except OSError:
            return f"{name} is missing"
        if st.st_size != info.get("size"):
            return f"{name} has {st.st_size} bytes, the manifest says {info.get('size')}"
        stamp = [st.st_size, st.st_mtime_ns]
        if checked.get(name) != stamp and _sha256_file(path) != info.get("sha256"):
            return f"{name} does not match its sha256: the set is corrupted"
        sound[name] = stamp
    if sound != checked:
        with contextlib.suppress(OSError), open(checked_path, "w") as fh:
            json.dump(sound, fh)
    return None


def apply_retention(backup_dir, keep, protect=(), current=None, now=None):
    """Delete good sets beyond the newest ``keep``, bad sets and stale incomplete sets.

    Never deletes a set listed in ``protect`` or ``current``. Returns the deleted names.
    """
    now = time.time() if now is None else now
    protect = set(protect or ())
    pruned = []
    kept = 0
    for m in list_sets(backup_dir):
        sid = m["set_id"]
        if sid == current or sid in protect:
            if not m.get("bad"):
                kept += 1
            continue
        if not m.get("bad") and kept < keep:
            kept += 1
            continue
        shutil.rmtree(m["path"], ignore_errors=True)
        pruned.append(sid)
    for name in sorted(os.listdir(backup_dir)):
        path = os.path.join(backup_dir, name)
        if name == current or name in protect or not os.path.isdir(path) or os.path.islink(path):
            continue
        if not (SET_ID_RE.match(name) or name.startswith(TMP_PREFIX)):
            continue
        if os.path.exists(os.path.join(path, MANIFEST)):
            continue
        try:
            age = now - os.lstat(path).st_mtime
        except OSError:
            continue
        if age > INCOMPLETE_MAX_AGE:
            shutil.rmtree(path, ignore_errors=True)
            pruned.append(name)
    return pruned


def _check_set_files(set_dir, manifest, key_file):
    """Detect missing, truncated or corrupted files (and a wrong key) before anything else."""
    files = manifest.get("files") or {}
    if DUMP_FILE not in files:
        raise BackupError(f"manifest of {set_dir} lists no {DUMP_FILE}")
    for name, info in sorted(files.items()):
        path = os.path.join(set_dir, name)
        if not os.path.isfile(path):
            raise BackupError(f"{name} is missing from set {set_dir}")
        size = os.path.getsize(path)
        digest = _sha256_file(path)
        if digest != info.get("sha256"):
            raise BackupError(
                f"sha256 mismatch for {name} in set {set_dir} (size {size}, expected {info.get('size')}): "
                "the set is corrupted"
            )
    if manifest.get("encrypted"):
        if key_file is None:
            raise BackupError(f"set {set_dir} is encrypted: encryption_key is required")
        for name, info in sorted(files.items()):
            src = _DumpSource(
                os.path.join(set_dir, name),
                dict(info, encrypted=True, encryption=manifest.get("encryption")),
                key_file,
                set_dir,
            )
            h = hashlib.sha256()
            try:
                with src.stream() as fh:
                    while True:
                        chunk = fh.read(CHUNK)
                        if not chunk:
                            break
                        h.update(chunk)
            except BackupError as exc:
                raise BackupError(
                    f"cannot decrypt {name} of set {set_dir}: wrong encryption_key? "
                    f"({exc.msg.rsplit(': ', 1)[-1]})"
                ) from None
            if info.get("plain_sha256") and h.hexdigest() != info["plain_sha256"]:
                raise BackupError(f"decrypted {name} of set {set_dir} does not match: wrong encryption_key?")


def _source(set_dir, manifest, name, key_file):
    info = dict((manifest.get("files") or {}).get(name) or {})
    info["encrypted"] = bool(manifest.get("encrypted"))
    info["encryption"] = manifest.get("encryption")
    return _DumpSource(os.path.join(set_dir, name), info, key_file, set_dir)


def _verify(engine, set_dir, manifest, key_file):
    """Check file hashes, restore into a scratch database and compare. Raises VerifyError."""
    try:
        _check_set_files(set_dir, manifest, key_file)
        actual = engine.scratch_state(_source(set_dir, manifest, DUMP_FILE, key_file), manifest)
    except VerifyError:
        raise
    except BackupError as exc:
        raise VerifyError(exc.msg) from exc
    problems, fallback = compare_states(manifest, actual)
    if problems:
        raise VerifyError("scratch restore does not match the recorded state: " + "; ".join(problems[:20]))
    return fallback


# --------------------------------------------------------------------------------------------------------
# files archive


def _archive_files(paths, sink):
    with tarfile.open(fileobj=sink, mode="w|gz", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            tar.add(path, arcname=path.lstrip("/"), recursive=True)


def _owner_of(name, archived):
    best = None
    for path in archived:
        rel = path.lstrip("/")
        inside = name == rel or name.startswith(rel.rstrip("/") + "/")
        if inside and (best is None or len(rel) > len(best.lstrip("/"))):
            best = path
    return best


def _restore_files(source, archived):
    """Put the archived paths back in place, replacing the current ones (staged next to each path)."""
    archived = [os.path.normpath(p) for p in archived]
    with source.as_file() as archive, tarfile.open(archive, mode="r:gz") as tar:
        members = {p: [] for p in archived}
        links = set()
        for m in tar.getmembers():
            name = os.path.normpath(m.name)
            parts = name.split("/")
            if name.startswith("/") or ".." in parts:
                raise BackupError(f"unsafe member {m.name!r} in {FILES_ARCHIVE}")
            if any("/".join(parts[:i]) in links for i in range(1, len(parts))):
                raise BackupError(f"member {m.name!r} of {FILES_ARCHIVE} lies below a symlink")
            if m.issym():
                links.add(name)
            owner = _owner_of(name, archived)
            if owner is None:
                raise BackupError(f"unexpected member {m.name!r} in {FILES_ARCHIVE}")
            rel = name[len(owner.lstrip("/")) :].lstrip("/")
            m.name = "root" + ("/" + rel if rel else "")
            if m.islnk():
                target = os.path.normpath(m.linkname)
                if _owner_of(target, [owner]) is None:
                    raise BackupError(f"hard link {m.name!r} in {FILES_ARCHIVE} crosses archived paths")
                trel = target[len(owner.lstrip("/")) :].lstrip("/")
                m.linkname = "root" + ("/" + trel if trel else "")
            members[owner].append(m)
        extra = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
        for path in archived:
            if not members[path]:
                raise BackupError(f"{FILES_ARCHIVE} has no entry for {path}")
            parent = os.path.dirname(path)
            os.makedirs(parent, exist_ok=True)
            staging = tempfile.mkdtemp(prefix=".deployctl-restore-", dir=parent)
            try:
                tar.extractall(staging, members=members[path], numeric_owner=True, **extra)
                old = None
                if os.path.lexists(path):
                    old = os.path.join(staging, "old")
                    os.rename(path, old)
                os.rename(os.path.join(staging, "root"), path)
            finally:
                shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------
# states


def _default_set_id(backup_dir, label, now):
    base = now.strftime("%Y%m%dT%H%M%SZ")
    if label:
        clean = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.")[:64]
        if clean:
            base += "-" + clean
    candidate, n = base, 1
    while os.path.lexists(os.path.join(backup_dir, candidate)):
        n += 1
        candidate = f"{base}-{n}"
    return candidate


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
    now = _now()
    if p["set_id"]:
        set_id = p["set_id"]
        if os.path.lexists(os.path.join(backup_dir, set_id)):
            raise BackupError(f"set {set_id} already exists in {backup_dir}")
    else:
        set_id = _default_set_id(backup_dir, p["label"], now)
    set_dir = os.path.join(backup_dir, set_id)
    if check_mode:
        return {"changed": True, "set_id": set_id, "path": set_dir, "msg": "check mode: set not taken"}
    os.makedirs(backup_dir, mode=0o700, exist_ok=True)

    with _engine(p) as engine:
        server_version = engine.server_version()
        estimate = engine.estimate_size()
        files_size = sum(_tree_size(path) for path in p["files"])
        need = int(estimate * SPACE_FACTOR) + files_size
        free = shutil.disk_usage(backup_dir).free
        if free < need:
            raise BackupError(f"not enough space at {backup_dir}: need ~{_mb(need)} MB, {_mb(free)} MB free")
        db_options = engine.database_options()

        os.mkdir(set_dir, 0o700)
        keep_dir = False
        sinks = []
        try:
            with _key_file(p["encryption_key"]) as key_file:
                t0 = time.monotonic()
                sink = _Sink(os.path.join(set_dir, DUMP_FILE), key_file)
                sinks.append(sink)
                state = engine.dump(sink)
                files = {DUMP_FILE: sink.close()}
                if p["files"]:
                    sink = _Sink(os.path.join(set_dir, FILES_ARCHIVE), key_file)
                    sinks.append(sink)
                    _archive_files(p["files"], sink)
                    files[FILES_ARCHIVE] = sink.close()
                dump_seconds = round(time.monotonic() - t0, 3)
                manifest = {
                    "format_version": FORMAT_VERSION,
                    "set_id": set_id,
                    "label": p["label"],
                    "purpose": p["purpose"],
                    "created_at": _iso(now),
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
                    try:
                        fallback = _verify(engine, set_dir, manifest, key_file)
                    except VerifyError as exc:
                        manifest.update(
                            verified=False,
                            bad=True,
                            verify_error=exc.msg,
                            verify_seconds=round(time.monotonic() - t1, 3),
                        )
                        _write_manifest(set_dir, manifest)
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
                        verified_at=_iso(_now()),
                        verify_seconds=round(time.monotonic() - t1, 3),
                    )
                    if fallback:
                        manifest["checksum_fallback"] = fallback
                _write_manifest(set_dir, manifest)
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
    }


def data_digest(state):
    """A database state as rollbacks compare it: per table the row count and one content digest (the row
    md5 where the engine records one, else its checksum), and the schema objects."""
    tables = {name: {"rows": t.get("rows"), "digest": t.get("row_md5") or t.get("checksum")}
              for name, t in (state.get("tables") or {}).items()}
    return {"tables": tables, "objects": state.get("objects") or {}}


def inspect_live(params):
    """state=inspected: the live database's state, read only."""
    p = normalize_params(dict(params, state="inspected"))
    if not p["engine"] or not p["database"]:
        raise BackupError("engine and database are required for state=inspected")
    with _engine(p) as engine:
        return {"changed": False, "data": data_digest(engine.current_state())}


def check_ready(params):
    """state=checked: what a backup or a restore needs, proven without changing anything."""
    p = normalize_params(dict(params, state="checked"))
    result = {"changed": False}
    if p["set_id"]:
        set_dir, manifest = _load_for(p)
        with _key_file(p["encryption_key"]) as key_file:
            _check_set_files(set_dir, manifest, key_file)
        if manifest.get("bad"):
            raise BackupError(f"set {p['set_id']} is marked bad: {manifest.get('verify_error')}")
        result["set"] = {k: manifest.get(k) for k in ("set_id", "created_at", "live_version", "verified")}
        return result
    if not p["engine"] or not p["database"]:
        raise BackupError("engine and database are required for state=checked")
    directory = p["backup_dir"]
    while not os.path.isdir(directory):
        directory = os.path.dirname(directory)
    if not os.access(directory, os.W_OK):
        raise BackupError(f"the backup directory {p['backup_dir']} cannot be written ({directory} is not writable)")
    with _engine(p) as engine:
        engine.server_version()
        if p["verify"]:
            engine.check_scratch()
    return result


def _load_for(p):
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
    set_dir, manifest = _load_for(p)
    with _engine(p) as engine, _key_file(p["encryption_key"]) as key_file:
        t1 = time.monotonic()
        try:
            fallback = _verify(engine, set_dir, manifest, key_file)
        except VerifyError as exc:
            changed = not manifest.get("bad") or manifest.get("verify_error") != exc.msg
            manifest.update(verified=False, bad=True, verify_error=exc.msg)
            if changed and not check_mode:
                _write_manifest(set_dir, manifest)
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
            verified=True, verified_at=_iso(_now()), verify_seconds=round(time.monotonic() - t1, 3)
        )
        changed = True
        if not check_mode:
            _write_manifest(set_dir, manifest)
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
    set_dir, manifest = _load_for(p)
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
    with _engine(p) as engine, _key_file(p["encryption_key"]) as key_file:
        _check_set_files(set_dir, manifest, key_file)
        engine.restore_live(_source(set_dir, manifest, DUMP_FILE, key_file), manifest)
        if manifest.get("archived_paths"):
            _restore_files(_source(set_dir, manifest, FILES_ARCHIVE, key_file), manifest["archived_paths"])
        actual = engine.live_state(manifest)
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


def run(params, check_mode=False, hooks=None):
    """Dispatch on ``state``; secrets are scrubbed from error messages."""
    p = dict(params)
    state = p.get("state") or "present"
    try:
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
        if state == "listed":
            normalize_params(p)
            return {"changed": False, "sets": list_all_sets(os.path.abspath(p["backup_dir"]))}
        raise BackupError(f"unknown state {state!r}")
    except BackupError as exc:
        error = exc
    except (OSError, sqlite3.Error, subprocess.SubprocessError, tarfile.TarError) as exc:
        error = BackupError(f"{state} failed: {type(exc).__name__}: {exc}")
    for secret in (p.get("login_password"), p.get("encryption_key")):
        if secret:
            error.msg = error.msg.replace(secret, "********")
    raise error


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="present",
                       choices=["present", "restored", "listed", "verified", "inspected", "checked"]),
            engine=dict(type="str", choices=["sqlite", "mysql", "postgresql"]),
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
            force=dict(type="bool", default=False),
        ),
        required_if=[
            ("state", "present", ("engine", "database")),
            ("state", "inspected", ("engine", "database")),
            ("state", "restored", ("set_id",)),
            ("state", "verified", ("set_id",)),
        ],
        supports_check_mode=True,
    )
    processes.configure(module.params["process_registry"], module.params["label"], "backup " + module.params["state"])
    try:
        result = run(module.params, check_mode=module.check_mode)
    except BackupError as exc:
        module.fail_json(msg=exc.msg, **exc.result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
