# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""Redis as data in a backup set: a consistent RDB snapshot, proven by loading it into a scratch Redis, and
put back with Redis stopped.

The snapshot: writes (and key expiry) are paused (CLIENT PAUSE WRITE) while INFO keyspace counts the keys and
BGSAVE forks, so the counts are exactly what the RDB holds; the file is then read once the save is done (and
read again when another save replaced it meanwhile). The proof: a scratch redis-server (no port, a unix
socket in a private directory; for a Redis in a container, its own image with no network) loads the RDB,
its keys loaded plus expired on load must be the keys saved, the keys without expiry of every database the
ones saved, and a digest of those keys and their values is recorded. Putting back: the data directory and
file names are read from the running Redis, Redis is stopped (the compose service, or the stop command),
the RDB (and, with appendonly, an AOF whose base is that RDB: Redis would load the AOF instead) replaces the
files, Redis is started and must come back with the keys and digest recorded.

Keys with an expiry are counted, not digested: they change by themselves.

Standard library only: runs on the managed hosts (Python 3.8+)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import time

from ansible_collections.deployctl.core.plugins.module_utils import processes
from ansible_collections.deployctl.core.plugins.module_utils.backup_common import (
    TMP_PREFIX,
    BackupError,
    TempSecrets,
    read_tail,
)
from ansible_collections.deployctl.core.plugins.module_utils.compose_containers import (
    ContainerError,
    docker_command,
    service_container,
)
from ansible_collections.deployctl.core.plugins.module_utils.files import utc_stamp, write_atomic
from ansible_collections.deployctl.core.plugins.module_utils.redis_protocol import (
    RedisConnection,
    RedisError,
    keyspace,
)
from ansible_collections.deployctl.core.plugins.module_utils.sealed_streams import run_with_stdin
from ansible_collections.deployctl.core.plugins.module_utils.tool_runners import WRAPPER, ContainerTools, HostTools

RDB_FILE = "redis.rdb"
ONEOFF_LABEL = "org.deployctl.oneoff"
# in the backup directory while a restore has Redis stopped
STOPPED_MARKER = ".redis-stopped-for-restore"
MIN_VERSION = (7, 0)
PAUSE_MS = 10000  # the longest writes stay paused should deployctl die between PAUSE and UNPAUSE
SNAPSHOT_ATTEMPTS = 3
SCAN_COUNT = 1000
BATCH = 500

REDIS_OPTIONS = dict(
    role=dict(type="str", choices=["data", "cache"], default="data"),
    host=dict(type="str", default="127.0.0.1"),
    port=dict(type="int", default=6379),
    socket=dict(type="path"),
    username=dict(type="str"),
    password=dict(type="str", no_log=True),
    service=dict(type="str"),
    stop_command=dict(type="raw"),
    start_command=dict(type="raw"),
    server_command=dict(type="str", default="redis-server"),
    timeout=dict(type="int", default=60),
)

# Runs with sh where the data directory is (the host, or a one-off container with the stopped Redis
# container's volumes), the RDB's plaintext on stdin: checked (size, sha256) before anything is replaced,
# given the owner and mode of the file it replaces, and with appendonly also made the base of a new AOF.
PUT_BACK = r"""set -u
dir=$1 file=$2 size=$3 sha=$4 aof=$5 aofdir=$6 aofname=$7
tmp=$dir/.deployctl-restore.$$
trap 'rm -f "$tmp"' EXIT
cat > "$tmp" || exit 1
got=$(wc -c < "$tmp")
if [ "$got" -ne "$size" ]; then echo "the RDB arrived with $got of its $size bytes" >&2; exit 1; fi
if command -v sha256sum >/dev/null 2>&1; then
    set -- $(sha256sum "$tmp")
    if [ "$1" != "$sha" ]; then echo "the RDB arrived corrupted (sha256 $1)" >&2; exit 1; fi
fi
like=$dir/$file
[ -e "$like" ] || like=$dir
chown "$(stat -c %u:%g "$like")" "$tmp" && chmod 600 "$tmp" || exit 1
[ "$like" = "$dir" ] || chmod "$(stat -c %a "$like")" "$tmp" || exit 1
if [ "$aof" = yes ]; then
    new=$dir/.deployctl-aof.$$ old=$dir/.deployctl-aof-old.$$
    rm -rf "$new" "$old"
    mkdir "$new" || exit 1
    cp -p "$tmp" "$new/$aofname.1.base.rdb" || exit 1
    printf 'file %s seq 1 type b\n' "$aofname.1.base.rdb" > "$new/$aofname.manifest" || exit 1
    like=$dir/$aofdir
    [ -d "$like" ] || like=$dir
    chown -R "$(stat -c %u:%g "$like")" "$new" && chmod "$(stat -c %a "$like")" "$new" || exit 1
    if [ -e "$dir/$aofdir" ]; then mv "$dir/$aofdir" "$old" || exit 1; fi
    mv "$new" "$dir/$aofdir" || exit 1
    rm -rf "$old"
fi
mv -f "$tmp" "$dir/$file" || exit 1
sync
"""


def settings(config):
    """The module's `redis` option with its defaults (callers other than AnsibleModule skip them)."""
    cfg = {name: option.get("default") for name, option in REDIS_OPTIONS.items()}
    cfg.update({k: v for k, v in (config or {}).items() if v is not None})
    for name in ("stop_command", "start_command"):
        cfg[name] = processes.argv_of(cfg[name]) if cfg[name] else []
    return cfg


def version_tuple(text):
    parts = []
    for part in str(text).split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _canonical(reply):
    """A reply as bytes that no other reply has (length-prefixed, typed)."""
    if isinstance(reply, bytes):
        return b"$%d:" % len(reply) + reply
    if isinstance(reply, int):
        return b":%d;" % reply
    if reply is None:
        return b"_;"
    if isinstance(reply, list):
        return b"*%d:" % len(reply) + b"".join(_canonical(r) for r in reply)
    raise RedisError(f"unexpected reply {reply!r}")


def _pairs(reply):
    return sorted(zip(reply[0::2], reply[1::2]))


# type -> (the commands that read a key's value, how their replies become one canonical value)
READERS = {
    b"string": (lambda k: [["GET", k]], lambda r: r[0]),
    b"list": (lambda k: [["LRANGE", k, 0, -1]], lambda r: r[0]),
    b"set": (lambda k: [["SMEMBERS", k]], lambda r: sorted(r[0])),
    b"zset": (lambda k: [["ZRANGE", k, 0, -1, "WITHSCORES"]], lambda r: r[0]),
    b"hash": (lambda k: [["HGETALL", k]], lambda r: [list(p) for p in _pairs(r[0])]),
    b"stream": (lambda k: [["XRANGE", k, "-", "+"], ["XINFO", "GROUPS", k]], lambda r: r),
}
# a module's type: its own serialisation
OTHER_READER = (lambda k: [["DUMP", k]], lambda r: r[0])


def digest(conn, databases):
    """{db: {keys, digest}} of the keys without expiry in `databases` (db indexes), their values read type by
    type into one canonical form (set members and hash fields sorted), per key a sha256, per database a sha256
    of the sorted key digests. Databases without such keys are left out."""
    found = {}
    for db in sorted(databases):
        conn.command("SELECT", db)
        keys, cursor = set(), b"0"
        while True:
            cursor, batch = conn.command("SCAN", cursor, "COUNT", SCAN_COUNT)
            keys.update(batch)
            if cursor == b"0":
                break
        sums = []
        ordered = sorted(keys)
        for start in range(0, len(ordered), BATCH):
            chunk = ordered[start:start + BATCH]
            meta = conn.pipeline([c for k in chunk for c in (["TYPE", k], ["PTTL", k])])
            wanted = []
            for key, kind, ttl in zip(chunk, meta[0::2], meta[1::2]):
                if isinstance(kind, RedisError) or kind == b"none" or ttl != -1:
                    continue  # gone meanwhile, or expires by itself
                commands, shape = READERS.get(kind, OTHER_READER)
                wanted.append((key, kind, commands(key), shape))
            replies = conn.pipeline([c for _k, _t, commands, _s in wanted for c in commands])
            at = 0
            for key, kind, commands, shape in wanted:
                part = replies[at:at + len(commands)]
                at += len(commands)
                errors = [r for r in part if isinstance(r, RedisError)]
                if errors:
                    raise RedisError(f"reading key {key!r} of db {db} failed: {errors[0].msg}")
                value = _canonical(shape(part))
                sums.append(hashlib.sha256(_canonical([kind, key]) + value).hexdigest())
        if sums:
            found[str(db)] = {"keys": len(sums), "digest": hashlib.sha256("".join(sorted(sums)).encode()).hexdigest()}
    return found


def compare(recorded, actual, what):
    """Problems between two digests ({db: {keys, digest}})."""
    problems = []
    for db in sorted(set(recorded) | set(actual), key=int):
        want, got = recorded.get(db) or {"keys": 0}, actual.get(db) or {"keys": 0}
        if want.get("keys") != got.get("keys"):
            problems.append(f"{what} db{db}: {want.get('keys')} keys without expiry expected, {got.get('keys')} found")
        elif want.get("digest") != got.get("digest"):
            problems.append(f"{what} db{db}: the keys' values differ")
    return problems


class RedisData:
    """The Redis of the `redis` option; `project`: the compose project of its service, for one in a container."""

    def __init__(self, config, project=None):
        self.cfg = settings(config)
        self.project = project
        if self.cfg["service"] and not project:
            raise BackupError("redis.service needs compose_project, the compose project the service belongs to")
        self._facts = None

    # ------------------------------------------------------------------ the live server

    def connect(self, timeout=10.0):
        cfg = self.cfg
        return RedisConnection(host=cfg["host"], port=cfg["port"], socket_path=cfg["socket"],
                               username=cfg["username"], password=cfg["password"], timeout=timeout)

    def facts(self):
        """The live server's version, role, and where its files are (read before it is stopped)."""
        if self._facts is None:
            with self.connect() as conn:
                server = conn.info("server")
                role = conn.info("replication").get("role")
                try:
                    reply = conn.command("CONFIG", "GET", "dir", "dbfilename", "appendonly", "appenddirname",
                                         "appendfilename")
                except RedisError as exc:
                    raise BackupError(f"redis at {conn.where} does not answer CONFIG GET ({exc.msg}): deployctl "
                                      "reads from it where the RDB and the AOF are") from None
            config = {k.decode(): v.decode("utf-8", "surrogateescape") for k, v in zip(reply[0::2], reply[1::2])}
            version = server.get("redis_version", "0")
            if version_tuple(version) < MIN_VERSION:
                raise BackupError(f"redis at {self.cfg['socket'] or self.cfg['host']} is version {version}: "
                                  "backing up Redis data needs Redis 7.0 or later")
            if role != "master":
                raise BackupError(f"redis is a {role}: back up and restore its master")
            if not config.get("dir") or not config.get("dbfilename"):
                raise BackupError("CONFIG GET does not say where redis keeps its RDB (is CONFIG renamed?)")
            self._facts = {"version": version, "config": config}
        return self._facts

    def rdb_path(self):
        config = self.facts()["config"]
        return os.path.join(config["dir"], config["dbfilename"])

    def tools(self):
        return ContainerTools(self.project, self.cfg["service"]) if self.cfg["service"] else HostTools(TempSecrets())

    def _label(self):
        """What names deployctl's one-off containers (the scratch server, the put-back) of the service."""
        return ["--label", f"{ONEOFF_LABEL}={self.project}/{self.cfg['service']}"]

    def container(self, running=True):
        try:
            return service_container(self.project, self.cfg["service"], running=running)
        except ContainerError as exc:
            raise BackupError(str(exc)) from None

    def check(self):
        """What a backup and a restore need, proven without changing anything."""
        self.facts()
        if self.cfg["service"]:
            self.container()
            return
        if not self.cfg["stop_command"] or not self.cfg["start_command"]:
            raise BackupError("redis.stop_command and redis.start_command are needed to restore a Redis on the "
                              "host (or redis.service for one in a compose project)")
        if shutil.which(self.cfg["server_command"]) is None:
            raise BackupError(f"{self.cfg['server_command']} (redis.server_command) is not installed: the "
                              "verification loads each snapshot into a scratch redis-server")
        path = self.rdb_path()
        if not os.path.isdir(os.path.dirname(path)):
            raise BackupError(f"redis keeps its RDB in {os.path.dirname(path)}, which is not on this host: Redis "
                              "data is backed up on the db host, where Redis must run")
        if not os.access(path if os.path.exists(path) else os.path.dirname(path), os.R_OK) or \
                not os.access(os.path.dirname(path), os.W_OK):
            raise BackupError(f"{path} cannot be read, or its directory written, by uid {os.getuid()}: back up "
                              "and restore as its owner (become)")

    def estimate_size(self):
        with self.connect() as conn:
            return int(conn.info("memory").get("used_memory_dataset", 0))

    # ------------------------------------------------------------------ snapshot

    def _wait(self, conn, ready, what):
        deadline = time.monotonic() + self.cfg["timeout"]
        while True:
            info = conn.info("persistence")
            if ready(info):
                return info
            if time.monotonic() >= deadline:
                raise BackupError(f"redis: {what} within {self.cfg['timeout']} s")
            time.sleep(0.1)

    def snapshot(self, new_sink):
        """Save, then stream the RDB into a sink of `new_sink()`: (its manifest entry, the counts saved)."""
        path = self.rdb_path()
        tools = self.tools()
        with self.connect() as conn:
            for _attempt in range(SNAPSHOT_ATTEMPTS):
                idle = self._wait(conn, lambda i: i.get("rdb_bgsave_in_progress") == "0"
                                  and i.get("aof_rewrite_in_progress") == "0", "a save in progress did not end")
                saves = int(idle["rdb_saves"])
                pause, counts, save, unpause = conn.pipeline([
                    ["CLIENT", "PAUSE", PAUSE_MS, "WRITE"], ["INFO", "keyspace"], ["BGSAVE"], ["CLIENT", "UNPAUSE"]])
                for reply in (pause, counts, unpause):
                    if isinstance(reply, RedisError):
                        raise BackupError(f"redis refused to pause writes for the snapshot: {reply.msg}")
                if isinstance(save, RedisError):
                    continue  # a save or rewrite started meanwhile
                saved = keyspace(dict(line.split(":", 1) for line in counts.decode().splitlines() if ":" in line))
                done = self._wait(conn, lambda i: i.get("rdb_bgsave_in_progress") == "0", "BGSAVE did not end")
                if done.get("rdb_last_bgsave_status") != "ok":
                    raise BackupError("redis BGSAVE failed (its log says why)")
                if int(done["rdb_saves"]) != saves + 1:
                    continue  # another save came too: the file may be that one
                sink = new_sink()
                try:
                    tools.pump(["cat", path], sink, f"reading {path}")
                    after = conn.info("persistence")
                    if after["rdb_saves"] != done["rdb_saves"] or \
                            after["rdb_last_save_time"] != done["rdb_last_save_time"]:
                        continue  # replaced while it was read
                    info = sink.close()
                finally:
                    sink.abort()
                return info, {str(db): counts for db, counts in sorted(saved.items())}
        raise BackupError(f"redis: other saves kept replacing {path}; no snapshot after {SNAPSHOT_ATTEMPTS} attempts")

    # ------------------------------------------------------------------ scratch server

    @contextlib.contextmanager
    def scratch(self, rdb_path, databases, tmp_root):
        """A scratch redis-server that loaded `rdb_path`, on a unix socket of a private directory: a connection."""
        data = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=tmp_root)
        sockets = tempfile.mkdtemp(prefix="deployctl-redis-")  # short: a socket path has at most 107 bytes
        proc = None
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finally
        try:
            os.chmod(data, 0o700)
            os.chmod(sockets, 0o700)
            inside = self.cfg["service"] is not None
            data_at, sockets_at = ("/deployctl-scratch", "/deployctl-socket") if inside else (data, sockets)
            shutil.copyfile(rdb_path, os.path.join(data, "dump.rdb"))
            conf = ["port 0", f"unixsocket {sockets_at}/redis.sock", "unixsocketperm 777", f"dir {data_at}",
                    "dbfilename dump.rdb", 'save ""', "appendonly no", "daemonize no", 'logfile ""',
                    f"databases {max([16] + [int(db) + 1 for db in databases])}"]
            with open(os.path.join(data, "redis.conf"), "w") as handle:
                handle.write("\n".join(conf) + "\n")
            if inside:
                image = self.container(running=False)["image"]
                argv = [docker_command(), "run", "--rm", "-i", "--network", "none", "--user", "0:0", *self._label(),
                        "-v", f"{data}:{data_at}", "-v", f"{sockets}:{sockets_at}", "--entrypoint", "sh", image,
                        "-c", WRAPPER, "deployctl", "lifeline", "0", "redis-server", f"{data_at}/redis.conf"]
            else:
                argv = [self.cfg["server_command"], os.path.join(data, "redis.conf")]
            proc = processes.popen(argv, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
            conn = self._scratch_connection(proc, os.path.join(sockets, "redis.sock"), log)
            try:
                yield conn
            finally:
                with contextlib.suppress(RedisError):
                    conn.pipeline([["SHUTDOWN", "NOSAVE"]])
                conn.close()
        finally:
            if proc is not None:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill_group()
            log.close()
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(sockets, ignore_errors=True)

    def _scratch_connection(self, proc, socket_path, log):
        deadline = time.monotonic() + self.cfg["timeout"]
        while True:
            if proc.poll() is not None:
                raise BackupError(f"the scratch redis-server did not load the snapshot: {read_tail(log, 1500)}")
            if os.path.exists(socket_path):
                try:
                    conn = RedisConnection(socket_path=socket_path, timeout=max(10.0, self.cfg["timeout"]))
                    if conn.info("persistence").get("loading") == "0":
                        return conn
                    conn.close()
                except RedisError:
                    pass
            if time.monotonic() >= deadline:
                raise BackupError(f"the scratch redis-server did not load the snapshot within {self.cfg['timeout']} s")
            time.sleep(0.1)

    def verify(self, rdb_path, saved, tmp_root):
        """Load the snapshot into a scratch Redis: the keys saved must all be there (or have expired on load);
        returns the digest of the keys without expiry."""
        with self.scratch(rdb_path, saved, tmp_root) as conn:
            problems = loaded_problems(conn, saved)
            if problems:
                raise BackupError("the Redis snapshot does not hold what was saved: " + "; ".join(problems))
            return digest(conn, keyspace(conn.info("keyspace")))

    # ------------------------------------------------------------------ putting it back

    def _run(self, argv, what):
        done = processes.run(argv, timeout=self.cfg["timeout"] + 30)
        if done.returncode != 0:
            why = (done.stderr or done.stdout).decode("utf-8", "replace").strip().splitlines()[-3:]
            raise BackupError(f"redis {what} ({argv[0]}) exited with {done.returncode}: {' / '.join(why)}")

    def _stop(self):
        if self.cfg["service"]:
            container = self.container()["id"]
            self._run([docker_command(), "stop", "-t", str(self.cfg["timeout"]), container], "docker stop")
            return
        self._run(self.cfg["stop_command"], "stop_command")
        deadline = time.monotonic() + self.cfg["timeout"]
        while True:
            try:
                self.connect(timeout=2).close()
            except RedisError:
                return
            if time.monotonic() >= deadline:
                raise BackupError(f"redis still answers {self.cfg['timeout']} s after its stop_command")
            time.sleep(0.2)

    def _start(self):
        if self.cfg["service"]:
            self._run([docker_command(), "start", self.container(running=False)["id"]], "docker start")
        else:
            self._run(self.cfg["start_command"], "start_command")
        deadline = time.monotonic() + self.cfg["timeout"]
        while True:
            try:
                with self.connect(timeout=5) as conn:
                    if conn.info("persistence").get("loading") == "0":
                        return
            except RedisError as exc:
                if exc.reply and "LOADING" not in exc.msg:
                    raise BackupError(str(exc)) from None
            if time.monotonic() >= deadline:
                raise BackupError(f"redis did not come back within {self.cfg['timeout']} s of its start")
            time.sleep(0.2)

    def _put_back(self, source, plain):
        config = self.facts()["config"]
        args = [config["dir"], config["dbfilename"], str(plain["size"]), plain["sha256"],
                config.get("appendonly", "no"), config.get("appenddirname") or "appendonlydir",
                config.get("appendfilename") or "appendonly.aof"]
        if self.cfg["service"]:
            container = self.container(running=False)
            argv = [docker_command(), "run", "--rm", "-i", "--network", "none", "--user", "0:0", *self._label(),
                    "--volumes-from", container["id"], "--entrypoint", "sh", container["image"],
                    "-c", PUT_BACK, "deployctl", *args]
        else:
            argv = ["sh", "-c", PUT_BACK, "deployctl", *args]
        with source.stream() as src:
            run_with_stdin(argv, src, f"putting the RDB back into {config['dir']}")

    def started_again(self, backup_dir):
        """Start Redis when a restore stopped it and did not live to start it (killed, its host lost): the
        marker it left in `backup_dir` says so. Returns whether it did; every call that needs Redis asks first."""
        marker = os.path.join(backup_dir, STOPPED_MARKER)
        if not os.path.exists(marker):
            return False
        self._start()
        os.unlink(marker)
        return True

    def restore(self, source, plain, recorded, backup_dir):
        """Stop Redis, put the set's RDB (`source`, whose plaintext is `plain`: size, sha256) in place, start it
        and check it holds what `recorded` says (the set's manifest entry)."""
        self.facts()
        if self.cfg["service"]:
            self.container()
        marker = os.path.join(backup_dir, STOPPED_MARKER)
        write_atomic(marker, f"redis stopped for a restore at {utc_stamp()}\n", mode=0o600)
        self._stop()
        try:
            self._put_back(source, plain)
        except BackupError as exc:
            try:
                self._start()
            except BackupError as down:
                raise BackupError(f"{exc.msg}; and redis, stopped for it, did not start again: {down.msg}") from None
            os.unlink(marker)
            raise BackupError(f"{exc.msg}; redis runs again with the data it had") from None
        self._start()
        os.unlink(marker)
        with self.connect() as conn:
            problems = loaded_problems(conn, recorded.get("saved") or {})
            if recorded.get("databases") is not None:
                problems += compare(recorded["databases"], digest(conn, keyspace(conn.info("keyspace"))), "redis")
        if problems:
            raise BackupError("redis was restored but does not hold the set's data: " + "; ".join(problems[:10]))

    def current_state(self):
        with self.connect() as conn:
            return digest(conn, keyspace(conn.info("keyspace")))


def loaded_problems(conn, saved):
    """What a server that just loaded a snapshot lacks of what was saved (`saved`: {db: {keys, expires}})."""
    info = conn.info("persistence")
    total = sum(c["keys"] for c in saved.values())
    loaded = int(info.get("rdb_last_load_keys_loaded", -1)) + int(info.get("rdb_last_load_keys_expired", 0))
    problems = [] if loaded == total else [f"{total} keys saved, {loaded} loaded (or expired on load)"]
    now = keyspace(conn.info("keyspace"))
    for db in sorted(set(saved) | {str(d) for d in now}, key=int):
        want = saved.get(db) or {"keys": 0, "expires": 0}
        got = now.get(int(db)) or {"keys": 0, "expires": 0}
        if want["keys"] - want["expires"] != got["keys"] - got["expires"]:
            problems.append(f"db{db}: {want['keys'] - want['expires']} keys without expiry saved, "
                            f"{got['keys'] - got['expires']} loaded")
    return problems
