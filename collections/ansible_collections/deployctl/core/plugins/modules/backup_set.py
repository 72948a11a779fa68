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
  - With O(database_service) the client tools are the ones in the running container of that Docker Compose
    service (C(docker exec -i); the container is found by its compose labels), and the dump streams through
    this host into the set. Their credential files are written inside the container by a wrapper that reads
    them from its stdin (umask 077, a private directory) and removes them when the tool ends, so they appear
    on no command line, in no environment and not in C(docker inspect). A tool that only writes (the dump) is
    stopped when C(docker exec) ends, so a killed run leaves nothing running in the container.
  - "MySQL/MariaDB: the dumper's consistent snapshot cannot be shared, so row counts and checksums are taken
    immediately before the C(--single-transaction) dump. Writes to the database while the set is taken can
    therefore produce a verification mismatch; that fails safe (the set is marked bad)."
  - "MySQL/MariaDB: both C(CHECKSUM TABLE) and an md5 over the rows (C(row_md5)) are recorded. C(CHECKSUM
    TABLE) depends on the physical row format; when it differs after a restore, the row md5 decides."
  - "PostgreSQL: row counts and checksums are computed inside the very snapshot that C(pg_dump) dumps
    (C(pg_export_snapshot) + C(pg_dump --snapshot))."
author:
  - deployctl maintainers (@deployctl)
options:
  state:
    description:
      - V(present) takes a new set (dump, verify, manifest, retention).
      - V(restored) restores a set into the live database (and the archived files in place).
      - V(listed) returns the complete sets, newest first.
      - V(verified) re-verifies an existing set (file hashes plus a scratch restore).
      - V(inspected) returns the live database's state (per table its rows and a content digest, and its schema
        objects) without writing anything; this is what a rollback compares with the state a release left.
      - V(checked) proves, before anything changes, that a set can be taken and verified here (the backup
        directory is writable, the user may create and drop a scratch database; the message gives the grant
        it lacks) and, with O(set_id), that the set is complete and its files match their hashes.
      - V(scratch_dropped) drops the scratch copy O(scratch_database) that O(keep_scratch) kept, or without it
        every copy kept for O(database); a name that is not such a copy is refused, never dropped.
    type: str
    choices: [present, restored, listed, verified, inspected, checked, scratch_dropped]
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
  keep_scratch:
    description:
      - With O(state=present), keep the scratch database the new set was verified in (its name is
        C(scratch_database); for SQLite a file beside the sets), for example to rehearse migrations on it.
        Copies an earlier run kept for the same database are dropped first. O(state=scratch_dropped) drops it.
    type: bool
    default: false
  scratch_database:
    description: With O(state=scratch_dropped), the kept copy to drop (as C(scratch_database) returned it).
    type: str
  force:
    description: With O(state=restored), restore a set that is marked bad or was never verified.
    type: bool
    default: false
  missing_ok:
    description:
      - For an SQLite O(database) whose file does not exist (yet, before a first release), O(state=present),
        O(state=inspected) and O(state=checked) (without O(set_id)) skip the task (C(skipped=true),
        C(missing=true)) instead of failing.
    type: bool
    default: false
  database_service:
    description:
      - The Docker Compose service whose container runs the database server; its own client tools dump,
        verify and restore. Not for V(sqlite).
    type: str
  compose_project:
    description: The compose project of O(database_service) (and of O(redis.service)).
    type: str
  redis:
    description:
      - A Redis whose data belongs in the sets (O(redis.role=data)); a cache (V(cache)) is left alone.
      - Its RDB snapshot (C(redis.rdb)) is taken after the database, while writes are paused for the instant
        BGSAVE forks, sealed like the dump, and verified by loading it into a scratch redis-server (on a unix
        socket in a private directory, no port; for O(redis.service) in a container of the service's image
        with no network); restoring stops Redis, replaces its RDB (and with appendonly its AOF, whose base
        becomes that RDB), starts it and checks its keys. Needs Redis 7.0 or later, running on this host.
    type: dict
    suboptions:
      role:
        description: V(data) backs it up and restores it; V(cache) needs nothing.
        type: str
        choices: [data, cache]
        default: data
      host: {description: "Where this host reaches it (for a compose service too).", type: str, default: 127.0.0.1}
      port: {description: Its port., type: int, default: 6379}
      socket: {description: Its unix socket (instead of O(redis.host) and O(redis.port))., type: path}
      username: {description: Its ACL user (with O(redis.password))., type: str}
      password:
        description: Its password, sent with AUTH over the connection (never on a command line).
        type: str
      service:
        description:
          - The compose service that runs it (of O(compose_project)). Its container, found by its compose labels, is
            stopped and started with C(docker stop) and C(docker start) for a restore.
        type: str
      stop_command:
        description: For a Redis on the host, the command (a list, or a string split like a shell would) that stops it.
        type: raw
      start_command:
        description: For a Redis on the host, the command that starts it.
        type: raw
      server_command:
        description: The redis-server the verification of a Redis on the host loads each snapshot into.
        type: str
        default: redis-server
      timeout:
        description: Seconds a save, a stop, a start or a scratch server's load may take.
        type: int
        default: 60
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
redis:
  description: What the new set holds of O(redis) (C(role), C(keys) for data) and a line saying so (C(msg)).
  returned: when state is present and redis is given
  type: dict
scratch_database:
  description: The scratch copy kept (O(keep_scratch)); a database name, or for SQLite the file's path.
  returned: when state is present and keep_scratch is true
  type: str
dropped:
  description: The scratch copies dropped.
  returned: when state is scratch_dropped
  type: list
  elements: str
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
      C(row_md5)); C(objects) lists views, routines, triggers and events; C(files) maps C(db.dump),
      C(files.tar.gz) and C(redis.rdb) to C(sha256) and C(size).
    - With O(redis), C(redis) holds per Redis database the keys and keys with an expiry saved (C(saved)) and
      the count and digest of its keys without expiry (C(databases)).
  returned: when state is present, restored or verified
  type: dict
pruned:
  description: Set ids (and incomplete set directories) deleted by retention (in check mode, that it would delete).
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

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.deployctl.core.plugins.module_utils import processes
from ansible_collections.deployctl.core.plugins.module_utils.backup_common import BackupError
from ansible_collections.deployctl.core.plugins.module_utils.set_operations import ARGUMENT_SPEC, REQUIRED_IF, run


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_if=REQUIRED_IF,
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
