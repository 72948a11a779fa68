"""Redis data in the backup sets (deployctl.core.backup_set's `redis`), against redis-servers of the tests' own:
the snapshot, its proof in a scratch Redis, the restore with Redis stopped (with and without appendonly),
and the refusals before anything is touched."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from ansible_collections.deployctl.core.plugins.module_utils.backup_common import BackupError, VerifyError
from ansible_collections.deployctl.core.plugins.module_utils.backup_sets import load_manifest
from ansible_collections.deployctl.core.plugins.module_utils.set_operations import run

from tests.support.redis import RedisServer, fill

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


@pytest.fixture
def sqlite_db(tmp_path):
    """The set's database: an SQLite file (the Redis part is what these tests are about)."""
    import sqlite3

    path = tmp_path / "app.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO items VALUES (1, 'one')")
    return str(path)


@pytest.fixture(params=[False, True], ids=["rdb", "appendonly"])
def redis(request):
    # a short directory: a unix socket's path has at most 107 bytes
    root = Path("/tmp") / f"dctest-redis-{uuid.uuid4().hex[:8]}"
    server = RedisServer(root, appendonly=request.param).start()
    fill(server)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def params(tmp_path, sqlite_db, server, **extra):
    return {"engine": "sqlite", "database": sqlite_db, "backup_dir": str(tmp_path / "sets"),
            "redis": server.config(), **extra}


def test_a_set_holds_the_redis_data_and_a_restore_puts_it_back_byte_for_byte(tmp_path, sqlite_db, redis):
    before = redis.dump()
    taken = run(dict(params(tmp_path, sqlite_db, redis), encryption_key="k" * 32))
    manifest = taken["manifest"]
    assert taken["verified"] and manifest["redis"]["saved"] == {"0": {"keys": 206, "expires": 1},
                                                               "2": {"keys": 1, "expires": 0}}
    assert manifest["redis"]["databases"]["0"]["keys"] == 205  # the key with an expiry is counted, not digested
    assert taken["redis"] == {"role": "data", "keys": 207, "msg": "redis: 207 keys in the set"}
    assert set(taken["data"]["tables"]) == {"items", "redis db0", "redis db2"}
    assert b"value 1" not in (Path(taken["path"]) / "redis.rdb").read_bytes()  # sealed like the dump

    with redis.client() as conn:
        conn.command("SET", "user:1", "changed")
        conn.command("DEL", "queue")
        conn.command("HSET", "profile", "new", "1")
        conn.command("SET", "written-after", "x")
    assert redis.dump() != before
    changed = run(dict(params(tmp_path, sqlite_db, redis), state="inspected"))["data"]["tables"]
    assert changed["redis db0"] != taken["data"]["tables"]["redis db0"]
    old_pid = redis.pid()

    run(dict(params(tmp_path, sqlite_db, redis), encryption_key="k" * 32, state="restored",
             set_id=taken["set_id"]))
    assert redis.pid() != old_pid, "redis was not restarted"
    assert redis.dump() == before
    plain = subprocess.run(["openssl", "enc", "-d", "-aes-256-cbc", "-pbkdf2", "-iter", "100000", "-md", "sha256",
                            "-pass", "pass:" + "k" * 32, "-in", str(Path(taken["path"]) / "redis.rdb")],
                           capture_output=True, check=True).stdout
    assert (redis.data / "dump.rdb").read_bytes() == plain
    if redis.conf.read_text().count("appendonly yes"):
        aof = redis.data / "appendonlydir"
        assert (aof / "appendonly.aof.1.base.rdb").read_bytes() == plain
    assert run(dict(params(tmp_path, sqlite_db, redis), state="inspected"))["data"] == taken["data"]
    assert not list(Path(taken["path"]).glob(".deployctl-tmp-*")), "the decrypted copy was left behind"


def test_writes_during_the_snapshot_do_not_make_it_wrong(tmp_path, sqlite_db, redis):
    stop = threading.Event()
    written = []

    def writer():
        with redis.client() as conn:
            n = 0
            while not stop.is_set():
                # some keys expire before the scratch Redis loads the snapshot: counted as expired on load
                conn.pipeline([["SET", f"busy:{n + i}", "x"] for i in range(20)] + [["PEXPIRE", f"busy:{n}", 300]])
                n += 20
            written.append(n)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        taken = [run(dict(params(tmp_path, sqlite_db, redis))) for _ in range(3)]
    finally:
        stop.set()
        thread.join()
    assert written[0] > 1000, "the writer did not write while the sets were taken"
    assert all(t["verified"] for t in taken)
    counts = [t["redis"]["keys"] for t in taken]
    assert counts == sorted(counts) and len(set(counts)) == 3


def test_a_snapshot_that_does_not_hold_what_was_saved_is_marked_bad(tmp_path, sqlite_db, redis):
    def tamper(set_dir, manifest):
        manifest["redis"]["saved"]["0"]["keys"] += 1  # one key more than the RDB holds

    with pytest.raises(VerifyError) as failed:
        run(params(tmp_path, sqlite_db, redis), hooks={"after_dump": tamper})
    assert "208 keys saved, 207 loaded" in failed.value.msg
    assert load_manifest(failed.value.result["path"])["bad"] is True


def test_a_restored_set_is_checked_against_its_digest(tmp_path, sqlite_db, redis):
    taken = run(params(tmp_path, sqlite_db, redis))
    path = Path(taken["path"]) / "manifest.json"
    manifest = load_manifest(taken["path"])
    manifest["redis"]["databases"]["0"]["digest"] = "0" * 64
    path.write_text(json.dumps(manifest))
    with pytest.raises(BackupError) as failed:
        run(dict(params(tmp_path, sqlite_db, redis), state="restored", set_id=taken["set_id"]))
    assert "does not hold the set's data: redis db0: the keys' values differ" in failed.value.msg


def test_refusals_before_anything_is_touched(tmp_path, sqlite_db, redis):
    base = params(tmp_path, sqlite_db, redis)
    assert run(dict(base, state="checked")) == {"changed": False}

    wrong = dict(base, redis=redis.config(password="not-the-password"))
    with pytest.raises(BackupError, match="refused the credentials"):
        run(dict(wrong, state="checked"))
    gone = dict(base, redis=redis.config(socket=str(tmp_path / "nothing.sock")))
    with pytest.raises(BackupError, match="cannot be reached"):
        run(dict(gone, state="checked"))
    with pytest.raises(BackupError, match="stop_command and redis.start_command are needed"):
        run(dict(base, state="checked", redis=redis.config(stop_command=None)))
    with pytest.raises(BackupError, match="not installed"):
        run(dict(base, state="checked", redis=redis.config(server_command="no-such-redis-server")))
    for refused in (wrong, gone):
        with pytest.raises(BackupError):
            run(refused)
    assert not (tmp_path / "sets").exists() or os.listdir(tmp_path / "sets") == []

    # a set with Redis data is not restored where no Redis with role data is configured
    taken = run(base)
    for config in (None, {"role": "cache"}):
        with pytest.raises(BackupError, match="holds Redis data, and no Redis with role data"):
            run(dict(base, redis=config, state="checked", set_id=taken["set_id"]))


def test_a_redis_that_does_not_stop_is_not_touched(tmp_path, sqlite_db, redis):
    taken = run(params(tmp_path, sqlite_db, redis))
    redis.command("SET", "written-after", "x")
    before = redis.dump()
    stubborn = redis.config(stop_command=["true"], timeout=2)
    with pytest.raises(BackupError, match="still answers"):
        run(dict(params(tmp_path, sqlite_db, redis), redis=stubborn, state="restored", set_id=taken["set_id"]))
    assert redis.dump() == before


def test_a_cache_needs_nothing_and_the_set_says_so(tmp_path, sqlite_db, redis):
    taken = run(dict(params(tmp_path, sqlite_db, redis), redis={"role": "cache"}))
    assert taken["redis"] == {"role": "cache", "msg": "redis is a cache: not backed up"}
    assert "redis" not in taken["manifest"] and not (Path(taken["path"]) / "redis.rdb").exists()


def test_a_put_back_that_fails_leaves_redis_running_on_the_data_it_had(tmp_path, sqlite_db, redis, monkeypatch):
    from ansible_collections.deployctl.core.plugins.module_utils import redis_data

    taken = run(params(tmp_path, sqlite_db, redis))
    redis.command("SET", "written-after", "x")
    before = redis.dump()
    monkeypatch.setattr(redis_data, "PUT_BACK", 'cat > /dev/null; echo "No space left on device" >&2; exit 1')
    with pytest.raises(BackupError) as failed:
        run(dict(params(tmp_path, sqlite_db, redis), state="restored", set_id=taken["set_id"]))
    assert "No space left on device" in failed.value.msg and "redis runs again with the data it had" in failed.value.msg
    assert redis.dump() == before


def test_the_put_back_replaces_nothing_with_an_rdb_that_did_not_arrive_whole(tmp_path):
    from ansible_collections.deployctl.core.plugins.module_utils.redis_data import PUT_BACK

    data = tmp_path / "data"
    data.mkdir()
    (data / "dump.rdb").write_bytes(b"the old one")
    rdb = b"REDIS0010" + os.urandom(5000)

    args = [str(data), "dump.rdb", str(len(rdb)), hashlib.sha256(rdb).hexdigest(), "yes", "appendonlydir",
            "appendonly.aof"]
    for sent, why in ((rdb[:-100], "arrived with 4909 of its 5009 bytes"), (rdb[:-1] + b"!", "arrived corrupted")):
        done = subprocess.run(["sh", "-c", PUT_BACK, "deployctl", *args], input=sent, capture_output=True)
        assert done.returncode == 1 and why in done.stderr.decode(), done.stderr
        assert sorted(p.name for p in data.iterdir()) == ["dump.rdb"]
        assert (data / "dump.rdb").read_bytes() == b"the old one"
    done = subprocess.run(["sh", "-c", PUT_BACK, "deployctl", *args], input=rdb, capture_output=True)
    assert done.returncode == 0, done.stderr
    aof = data / "appendonlydir"
    assert (data / "dump.rdb").read_bytes() == rdb == (aof / "appendonly.aof.1.base.rdb").read_bytes()
    assert (aof / "appendonly.aof.manifest").read_text() == "file appendonly.aof.1.base.rdb seq 1 type b\n"


def test_a_set_is_verified_again_against_the_digest_it_recorded(tmp_path, sqlite_db, redis):
    taken = run(params(tmp_path, sqlite_db, redis))
    again = run(dict(params(tmp_path, sqlite_db, redis), state="verified", set_id=taken["set_id"]))
    assert again["verified"] and not again["changed"]
    # without the Redis it was taken from, nothing says where its scratch server runs: refused, not marked bad
    with pytest.raises(BackupError, match="holds Redis data"):
        run(dict(params(tmp_path, sqlite_db, redis), redis=None, state="verified", set_id=taken["set_id"]))
    assert load_manifest(taken["path"])["bad"] is False


def test_a_redis_elsewhere_or_without_config_get_is_refused(tmp_path, sqlite_db, redis, monkeypatch):
    from ansible_collections.deployctl.core.plugins.module_utils.redis_data import RedisData

    base = params(tmp_path, sqlite_db, redis)
    redis.command("ACL", "SETUSER", "noconfig", "on", ">pw-noconfig", "~*", "+@all", "-config")
    with pytest.raises(BackupError, match="does not answer CONFIG GET"):
        run(dict(base, state="checked", redis=redis.config(username="noconfig", password="pw-noconfig")))
    # a Redis whose files are on another machine: a directory this host does not have (Redis 7 protects `dir`
    # from CONFIG SET, so the answer is what changes here)
    real = RedisData.facts

    def elsewhere(self):
        facts = real(self)
        facts["config"]["dir"] = str(tmp_path / "on-another-host")
        return facts

    monkeypatch.setattr(RedisData, "facts", elsewhere)
    with pytest.raises(BackupError, match="which is not on this host"):
        run(dict(base, state="checked"))


def test_a_restore_killed_while_redis_is_stopped_leaves_it_to_the_next_call_to_start(tmp_path, sqlite_db, redis):
    base = params(tmp_path, sqlite_db, redis)
    taken = run(base)
    before = redis.dump()
    script = ("import json, sys; from ansible_collections.deployctl.core.plugins.module_utils import redis_data; "
              "from ansible_collections.deployctl.core.plugins.module_utils.set_operations import run; "
              "redis_data.PUT_BACK = 'sleep 60'; run(json.loads(sys.argv[1]))")
    restore = subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(dict(base, state="restored", set_id=taken["set_id"]))],
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "collections")),
        start_new_session=True)
    deadline = time.time() + 60
    while redis.pid() is not None:
        assert restore.poll() is None and time.time() < deadline
        time.sleep(0.1)
    os.killpg(restore.pid, signal.SIGKILL)  # deployctl dies while Redis is stopped
    restore.wait()
    assert redis.pid() is None and (tmp_path / "sets" / ".redis-stopped-for-restore").exists()
    assert [s["set_id"] for s in run(dict(base, state="listed"))["sets"]] == [taken["set_id"]]

    assert run(dict(base, state="checked")) == {"changed": False}  # the next call starts it first
    assert redis.pid() is not None and redis.dump() == before
    assert not (tmp_path / "sets" / ".redis-stopped-for-restore").exists()
