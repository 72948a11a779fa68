"""Bad input and configuration are refused before maintenance goes up; the operator's files and Ansible
settings are respected. Each refusal: its exit code, one line, no maintenance phase, nothing changed."""

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.databases import database, use_database
from tests.support.faults import sqlite_state
from tests.support.project import DemoProject

pytestmark = pytest.mark.integration

ANSIBLE_VAULT = str(Path(sys.executable).with_name("ansible-vault"))


def phase_names(result) -> list[str]:
    deployment = result.data.get("deployment") or {}
    return [p["name"] for p in deployment.get("phases", [])]


@pytest.fixture
def live_v1(demo_project):
    project = demo_project()
    project.build("v1")
    project.build("v2")
    assert project.run("release", "v1").code == 0
    project.before = sqlite_state(project.app_root / "shared" / "data" / "demo.db")
    return project


@pytest.fixture(scope="module")
def _one_live_v1(tmp_path_factory):
    project = DemoProject(tmp_path_factory.mktemp("refused") / "project")
    project.build("v1")
    project.build("v2")
    assert project.run("release", "v1").code == 0
    project.before = sqlite_state(project.app_root / "shared" / "data" / "demo.db")
    settings = copy.deepcopy((project.group_vars, project.hosts, project.environment))
    artifacts = {path: path.read_bytes() for path in project.dist.iterdir()}
    yield project, settings, artifacts
    project.stop()


@pytest.fixture
def refused_v1(_one_live_v1):
    """The live v1 of live_v1, shared by the tests whose commands are all refused (a release takes most of a
    test's time). Each test starts from the settings and artifacts v1 was released with; after each, the
    state a refusal must leave is checked again, so what one test changed cannot pass into the next."""
    project, settings, artifacts = _one_live_v1
    project.group_vars, project.hosts, project.environment = copy.deepcopy(settings)
    project.write()
    for path, data in artifacts.items():
        if path.read_bytes() != data:
            path.write_bytes(data)
    yield project
    assert project.live() == "v1" and project.served_version() == "v1"
    assert not (project.app_root / "shared" / "maintenance.json").exists()
    assert sqlite_state(project.app_root / "shared" / "data" / "demo.db") == project.before


def assert_refused(project, result, code: int, words: str) -> None:
    assert result.code == code, result
    message = result.data.get("message") or result.data.get("error")
    assert words in message, message
    assert "maintenance on" not in phase_names(result), "maintenance went up"
    assert not (project.app_root / "shared" / "maintenance.json").exists()
    if project.app_root.exists() and (project.app_root / "current").exists():
        assert project.live() == "v1" and project.served_version() == "v1"
        assert sqlite_state(project.app_root / "shared" / "data" / "demo.db") == project.before
    # one line on stderr for the error itself (progress lines aside)
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- the operator's files are theirs


def test_an_operators_env_file_is_left_alone_without_deployctl_env(demo_project):
    project = demo_project()
    del project.group_vars["deployctl_env"]
    project.group_vars["deployctl_verify_checks"] = [{"name": "up", "type": "tcp", "port": project.port}]
    project.write()
    env = project.app_root / "shared" / ".env"
    env.parent.mkdir(parents=True)
    own = f"# the operator's own\nDEMO_PORT={project.port}\nDEMO_HOST=127.0.0.1\nOWN_SETTING='kept as is'\n"
    env.write_text(own)
    env.chmod(0o640)
    project.build("v1")
    assert project.run("release", "v1").code == 0
    assert env.read_text() == own and env.stat().st_mode & 0o777 == 0o640
    assert project.served_version() == "v1"


def test_deployctl_owns_only_its_block_and_a_failed_release_puts_it_back(demo_project):
    project = demo_project()
    env = project.app_root / "shared" / ".env"
    env.parent.mkdir(parents=True)
    env.write_text("OWN_SETTING=kept\n")
    project.build("v1")
    project.build("v2", broken="health")
    assert project.run("release", "v1").code == 0
    after_v1 = env.read_text()
    assert after_v1.startswith("OWN_SETTING=kept\n# BEGIN deployctl")
    with env.open("a") as handle:
        handle.write("ADDED_LATER=by the operator\n")

    project.group_vars["deployctl_env"]["NEW_IN_V2"] = "only for v2"
    project.write()
    failed = project.run("release", "v2")
    assert failed.code == 4, failed
    text = env.read_text()
    assert "NEW_IN_V2" not in text, "the block v1 ran with is back"
    assert text == after_v1 + "ADDED_LATER=by the operator\n", "lines deployctl did not write are never lost"


@pytest.mark.parametrize("value, why", [("x\nDEMO_PORT=18096", "newline"), ("${HOME}", "expand")])
def test_a_value_that_cannot_be_written_safely_is_refused_before_maintenance(refused_v1, value, why):
    refused_v1.group_vars["deployctl_env"]["INJECTED"] = value
    refused_v1.write()
    refused = refused_v1.run("release", "v2")
    assert_refused(refused_v1, refused, 3, why)
    assert "INJECTED" in refused.data["message"] and value not in refused.stdout + refused.stderr


def test_every_problem_with_the_settings_is_named_in_one_refusal(refused_v1):
    """Two mistakes, one preflight: the operator does not fix them one release attempt at a time."""
    refused_v1.group_vars["deployctl_migrate_rehearse"] = True  # and no deployctl_migrate_rehearsal_env
    refused_v1.group_vars["deployctl_redis"] = {"host": "127.0.0.1", "port": 6379}  # role data, by default
    refused_v1.group_vars["deployctl_database"] = {"engine": "none"}
    refused_v1.write()
    refused = refused_v1.run("release", "v2")
    assert_refused(refused_v1, refused, 3, "deployctl_redis with role data goes into the database's backup sets")
    assert "deployctl_migrate_rehearse needs the release_dir strategy" in refused.data["message"]


def test_every_problem_on_a_host_is_named_in_one_refusal(refused_v1):
    refused_v1.group_vars["deployctl_preflight_min_free_mb"] = 10**9
    refused_v1.group_vars["deployctl_env"]["INJECTED"] = "x\nDEMO_PORT=1"
    refused_v1.write()
    refused = refused_v1.run("release", "v2")
    assert_refused(refused_v1, refused, 3, "MB free for")
    assert "(need 1000000000); missing commands: none; not writable: none" in refused.data["message"]
    assert "INJECTED" in refused.data["message"] and "newline" in refused.data["message"]


# ---------------------------------------------------------------- checked before maintenance


@pytest.mark.parametrize("check, words", [
    ({"name": "typo", "type": "htp", "url": "http://x/"}, "htp"),
    ({"name": "no-url", "type": "http"}, "'no-url' (http) needs a url"),
    ({"name": "bad-body", "type": "http", "url": "http://127.0.0.1:1/", "body": "(unclosed"}, "not a valid regular"),
    ({"name": "bad-port", "type": "tcp", "port": "eighty"}, "port"),
])
def test_a_verify_check_that_cannot_run_costs_no_downtime(refused_v1, check, words):
    """The checks' configuration is checked on the control node in preflight; verify itself refuses it too."""
    refused_v1.group_vars["deployctl_verify_checks"].append(check)
    refused_v1.write()
    assert_refused(refused_v1, refused_v1.run("release", "v2"), 3, words)
    assert_refused(refused_v1, refused_v1.run("rollback", "--to", "v1"), 3, words)
    verify = refused_v1.run("verify")
    assert verify.code == 2, verify
    assert words in verify.data["message"]


def test_restore_of_a_missing_or_corrupted_set_is_refused_before_maintenance(live_v1):
    assert_refused(live_v1, live_v1.run("--yes", "restore", "20990101T000000Z-nothing"), 3, "does not exist")
    assert live_v1.run("backup").code == 0
    set_id = live_v1.run("backups").data["sets"][0]["set_id"]
    dump = live_v1.backups / set_id / "db.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    assert_refused(live_v1, live_v1.run("--yes", "restore", set_id), 3, "corrupted")
    listed = {s["set_id"]: s for s in live_v1.run("backups").data["sets"]}
    assert listed[set_id]["verified"] is False and "corrupted" in listed[set_id]["broken"]


def test_a_set_with_a_broken_manifest_is_shown_as_broken(live_v1):
    assert live_v1.run("backup").code == 0
    set_id = live_v1.run("backups").data["sets"][0]["set_id"]
    (live_v1.backups / set_id / "manifest.json").write_text("{ not json")
    listed = {s["set_id"]: s for s in live_v1.run("backups").data["sets"]}
    assert "not valid JSON" in listed[set_id]["broken"]
    text = live_v1.run("backups", as_json=False).stdout
    assert "BROKEN" in text


def test_rollback_with_nothing_to_go_back_to(demo_project):
    project = demo_project()
    project.build("v1")
    never = project.run("rollback")
    assert never.code == 3 and "nothing to roll back" in never.data["message"], never
    assert project.run("release", "v1").code == 0
    first = project.run("rollback")
    assert first.code == 3 and "first one" in first.data["message"], first
    assert "maintenance on" not in phase_names(first)
    assert project.live() == "v1" and project.served_version() == "v1"


def test_a_read_only_releases_directory_is_caught_by_preflight(refused_v1):
    releases = refused_v1.app_root / "releases"
    subprocess.run(["mount", "--bind", str(releases), str(releases)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(releases)], check=True)
    try:
        assert_refused(refused_v1, refused_v1.run("release", "v2"), 3, "Read-only file system")
    finally:
        subprocess.run(["umount", str(releases)], check=False)


@pytest.mark.parametrize("config, words", [
    ({"environments": {"local": {"inventory": "/etc/passwd"}}}, "not an Ansible inventory"),
    ({"environments": {"local": {"inventory": "inventory/local"}}, "enviroments": {}}, "unknown setting"),
    ({"environments": {"local": {"inventory": "inventory/local", "phase_timout": 10}}}, "phase_timout"),
])
def test_configuration_mistakes_are_one_line_and_exit_2(refused_v1, config, words):
    (refused_v1.root / "deployctl.yml").write_text(json.dumps(config))
    for args in (("release", "v2"), ("status",), ("verify",)):
        refused = refused_v1.run(*args)
        assert refused.code == 2, refused
        assert words in refused.data["error"] and refused.stderr.count("\n") == 1, refused.stderr


def test_a_database_user_without_scratch_privileges_gets_the_grant_to_run(demo_project):
    project = demo_project()
    with database("mysql") as (name, password):
        use_database(project, "mysql", name, password)
        subprocess.run(["mariadb", "-h", "127.0.0.1", "-u", "root", "-e",
                        f"REVOKE ALL ON `deployctl\\_verify\\_%`.* FROM '{name}'@'127.0.0.1'"], check=True)
        project.build("v1")
        refused = project.run("release", "v1")
        assert refused.code == 3, refused
        assert "GRANT ALL ON `deployctl\\_verify\\_%`.*" in refused.data["message"]
        assert "maintenance on" not in phase_names(refused) and not project.app_root.joinpath("current").exists()
        project.stop()


# ---------------------------------------------------------------- messages say why


def test_a_failed_command_says_why(live_v1):
    live_v1.group_vars["deployctl_restart_command"] = (
        "sh -c 'test \"$(cat VERSION)\" != v2 || { echo the port is taken by someone else >&2; exit 3; }; bin/restart'")
    live_v1.write()
    failed = live_v1.run("release", "v2")
    assert failed.code == 4, failed
    assert "the port is taken by someone else" in failed.data["message"]
    output = failed.data["failure"]
    assert output["phase"] == "deploy"
    assert "the port is taken" in output["hosts"]["localhost"]["stderr"]


def test_a_lock_that_was_never_taken_is_not_said_to_be_held(demo_project):
    project = demo_project()
    project.build("v1")
    project.app_root.mkdir(parents=True)
    (project.app_root / ".deployctl").write_text("a file where deployctl's directory goes")
    refused = project.run("release", "v1")
    assert refused.code == 3, refused
    assert "could not take the lock" in refused.data["message"]
    assert "could not be released" not in refused.data["message"]


# ---------------------------------------------------------------- the Ansible the user already has


def vaulted_project(project, tmp_path):
    """The database password and a secret of the app in a vault, the password file named in the project's
    own ansible.cfg by a path relative to it, as Ansible users do."""
    (project.root / ".vault_pass").write_text("correct horse battery staple\n")
    (project.root / ".vault_pass").chmod(0o600)
    (project.root / "ansible.cfg").write_text("[defaults]\nvault_password_file = .vault_pass\n")
    secret = "s3cret-from-the-vault-" + os.urandom(4).hex()
    vault = project.root / "inventory" / "local" / "group_vars" / "all" / "vault.yml"
    vault.parent.mkdir(parents=True, exist_ok=True)
    plain = project.root / "inventory" / "local" / "group_vars" / "all.yml"
    plain.rename(vault.parent / "main.yml")
    vault.write_text(f"vault_api_token: {secret}\n")
    subprocess.run([ANSIBLE_VAULT, "encrypt", "--vault-password-file", str(project.root / ".vault_pass"),
                    str(vault)], check=True, capture_output=True)
    project.group_vars["deployctl_env"]["API_TOKEN"] = "{{ vault_api_token }}"
    (vault.parent / "main.yml").write_text(json.dumps(project.group_vars))
    assert secret.encode() not in vault.read_bytes()
    return secret


def test_the_projects_ansible_cfg_and_vault_are_honoured_also_on_a_timer(demo_project, tmp_path):
    project = demo_project()
    secret = vaulted_project(project, tmp_path)
    project.build("v1")
    released = project.run("release", "v1")
    assert released.code == 0, released
    assert secret in (project.app_root / "shared" / ".env").read_text()

    # a scheduled verify: cron's empty environment, started from elsewhere
    cron_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    timer = subprocess.run([str(Path(sys.executable).with_name("deployctl")), "--project-dir", str(project.root),
                            "--json", "verify"], capture_output=True, text=True, env=cron_env, cwd="/")
    assert timer.returncode == 0, timer.stderr[-2000:]
    state = project.root / ".deployctl"
    assert [p for p in state.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()] == []
    assert secret not in released.stdout + released.stderr + timer.stdout + timer.stderr


def test_debug_settings_of_the_caller_never_put_secrets_in_kept_files(demo_project, tmp_path):
    project = demo_project()
    secret = "api-" + os.urandom(8).hex()
    project.group_vars["deployctl_env"]["API_TOKEN"] = secret
    project.write()
    project.build("v1")
    home = tmp_path / "home"
    home.mkdir()
    unsafe = {"ANSIBLE_DEBUG": "1", "ANSIBLE_KEEP_REMOTE_FILES": "1", "ANSIBLE_VERBOSITY": "4", "HOME": str(home)}
    released = project.run("release", "v1", env=unsafe)
    assert released.code == 0, released
    for name in ("ANSIBLE_DEBUG", "ANSIBLE_KEEP_REMOTE_FILES", "ANSIBLE_VERBOSITY"):
        assert f"{name} is ignored" in released.stderr
    kept = [p for root in (project.root / ".deployctl", home) for p in root.rglob("*") if p.is_file()]
    assert [str(p) for p in kept if secret.encode() in p.read_bytes()] == []
    assert secret not in released.stdout + released.stderr
    assert not list(home.rglob("AnsiballZ_*")), "no module payload was kept"


def test_status_tells_the_truth(refused_v1):
    status = refused_v1.run("status")
    host = status.data["hosts"]["localhost"]
    assert (host["live"], host["reported_version"], host["maintenance"]) == ("v1", "v1", False)
    assert refused_v1.run("maintenance", "on").code == 0
    host = refused_v1.run("status").data["hosts"]["localhost"]
    assert host["maintenance"] is True
    assert refused_v1.run("maintenance", "off").code == 0


@pytest.fixture(autouse=True)
def _no_leftover_mounts(tmp_path, tmp_path_factory):
    yield
    mounts = Path("/proc/mounts").read_text()
    for line in mounts.splitlines():
        target = line.split()[1]
        if target.startswith((str(tmp_path), str(tmp_path_factory.getbasetemp() / "refused"))):
            subprocess.run(["umount", "-l", target], check=False)
    shutil.rmtree(tmp_path / "home", ignore_errors=True)


# ---------------------------------------------------------------- inventory mistakes


def test_a_missing_db_group_with_backups_on_is_refused(refused_v1):
    del refused_v1.hosts["all"]["children"]["db"]
    refused_v1.write()
    assert_refused(refused_v1, refused_v1.run("release", "v2"), 3, "exactly one host in group db")


def test_a_typo_in_the_app_group_is_refused(refused_v1):
    children = refused_v1.hosts["all"]["children"]
    children["ap"] = children.pop("app")
    refused_v1.write()
    assert_refused(refused_v1, refused_v1.run("release", "v2"), 3, "needs hosts in group app")


def test_a_typo_in_a_variable_name_is_refused_with_what_was_meant(refused_v1):
    refused_v1.group_vars["deployctl_migrate_comand"] = refused_v1.group_vars.pop("deployctl_migrate_command")
    refused_v1.write()
    assert_refused(refused_v1, refused_v1.run("release", "v2"), 3,
                   "deployctl_migrate_comand (did you mean deployctl_migrate_command?)")


def test_a_typo_in_a_database_setting_is_refused_with_what_was_meant(refused_v1):
    """`hots:` would have sent the backups and restores to the default host."""
    refused_v1.group_vars["deployctl_database"] = {**refused_v1.group_vars["deployctl_database"], "hots": "127.0.0.1"}
    refused_v1.write()
    assert_refused(refused_v1, refused_v1.run("release", "v2"), 3,
                   "deployctl_database.hots (did you mean deployctl_database.host?)")


def test_an_archive_under_one_top_level_directory_is_refused_before_maintenance(refused_v1, tmp_path):
    """Unpacked as it is, bin/restart would be releases/v2/demo-v2/bin/restart: the app could not start."""
    archive = refused_v1.dist / "demo-v2.tar.gz"
    unpacked = tmp_path / "demo-v2"
    unpacked.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(unpacked)], check=True)
    subprocess.run(["tar", "-czf", str(archive), "-C", str(tmp_path), "demo-v2"], check=True)
    assert_refused(refused_v1, refused_v1.run("release", "v2"), 3,
                   "has no bin/restart, bin/stop, bin/migrate at its root")


def test_a_truncated_archive_is_refused_before_maintenance(refused_v1):
    archive = refused_v1.dist / "demo-v2.tar.gz"
    archive.write_bytes(archive.read_bytes()[:200])
    assert_refused(refused_v1, refused_v1.run("release", "v2"), 3, "is not a whole tar archive")


# ---------------------------------------------------------------- a version is one build


def test_a_rebuilt_artifact_of_a_version_that_never_went_live_is_unpacked_again(demo_project):
    project = demo_project()
    project.build("v1")
    project.build("v2", broken="health")
    assert project.run("release", "v1").code == 0
    assert project.run("release", "v2").code == 4
    project.build("v2")  # the fixed build, same version
    again = project.run("release", "v2")
    assert again.code == 0, again
    assert project.served_version() == "v2"


def test_a_live_version_rebuilt_differently_is_refused(live_v1):
    assert live_v1.run("release", "v2").code == 0
    live_v1.build("v2", broken="health")
    refused = live_v1.run("release", "v2")
    assert refused.code == 3 and "must not change" in refused.data["message"], refused
    assert "maintenance on" not in phase_names(refused) and live_v1.served_version() == "v2"


def test_releasing_the_live_version_again_asks_then_restarts_its_app(live_v1):
    refused = live_v1.run("release", "v1")
    assert_refused(live_v1, refused, 3, "v1 is already live on every host; release it again with --force")
    assert "backup" not in phase_names(refused), "no backup set taken: it would push older ones out"
    live_v1.stop()  # the app died
    again = live_v1.run("release", "v1", "--force")
    assert again.code == 0, again
    assert live_v1.served_version() == "v1"
    # staged again, the live release kept its .env: the link to the shared one, never a copy of it
    env = live_v1.app_root / "releases" / "v1" / ".env"
    assert env.is_symlink() and os.readlink(env) == str(live_v1.app_root / "shared" / ".env")


# ---------------------------------------------------------------- rollback input


def test_rollback_data_choices_are_one_or_the_other(refused_v1):
    both = refused_v1.run("rollback", "--keep-data", "--restore-data")
    assert both.code == 2 and "choose one" in both.data["error"], both


def test_rolling_back_to_the_live_version_does_nothing(refused_v1):
    nothing = refused_v1.run("rollback", "--to", "v1")
    assert nothing.code == 0 and "already live" in nothing.data["message"], nothing
    assert "maintenance on" not in phase_names(nothing)


def test_restore_data_from_a_set_that_is_gone_is_refused_before_maintenance(demo_project):
    project = demo_project()
    project.build("v1")
    project.build("v2", migrations=["add_price:ALTER TABLE items ADD COLUMN price INTEGER"])
    assert project.run("release", "v1").code == 0
    second = project.run("release", "v2")
    shutil.rmtree(project.backups / second.data["deployment"]["details"]["backup_set"])
    refused = project.run("rollback", "--restore-data")
    assert refused.code == 3 and "cannot be restored" in refused.data["message"], refused
    assert "maintenance on" not in phase_names(refused) and project.live() == "v2"


def test_a_manual_backup_records_the_live_version(refused_v1):
    taken = refused_v1.run("backup")
    assert taken.code == 0, taken
    newest = refused_v1.run("backups").data["sets"][0]
    assert (newest["live_version"], newest["purpose"]) == ("v1", "manual")


def test_recover_with_nothing_to_recover_leaves_no_record(refused_v1):
    before = refused_v1.run("history").data
    nothing = refused_v1.run("recover")
    assert nothing.code == 0 and "nothing to recover" in nothing.data["message"], nothing
    assert refused_v1.run("history").data == before
