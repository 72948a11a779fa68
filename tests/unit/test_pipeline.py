"""The pipeline's decisions, phase by phase, against a scripted runner: what runs, in which order, and why.

The same paths run for real in tests/faults; these pin the decisions down in milliseconds.
"""

import os
import socket

import pytest

from deployctl import processes
from deployctl.console import Output
from deployctl.errors import DeployctlError, ExitCode, StateError
from deployctl.history import Deployment, History
from deployctl.pipeline import Pipeline
from deployctl.project import Environment, Project
from deployctl.report import predicted_window
from tests.support.stub_runner import Answer, StubRunner

RELEASE = ["lock", "preflight", "backup", "stage", "maintenance on", "migrate", "deploy", "verify", "data state",
           "maintenance off", "unlock"]
# the one run's plays: a place for the rehearsal, and for the migrations before the switch and after the restart
PLAN = [*RELEASE[:4], "rehearse", *RELEASE[4:7], "migrate", *RELEASE[7:]]
DATA_A = {"tables": {"items": {"rows": 2, "digest": "a"}}, "objects": {}}
DATA_B = {"tables": {"items": {"rows": 3, "digest": "b"}}, "objects": {}}
DEAD_PROCESS = {"control_node": socket.gethostname(), "pid": 999999999, "start_ticks": 1, "run_id": "x"}


def host_state(live, previous=None, entries=(), maintenance=False, pending=None, releases=None):
    return {"state": {"live": live, "previous": previous, "releases": releases or [v for v in (live, previous) if v],
                      "entries": list(entries), "maintenance": maintenance, "pending": pending, "lock": None}}


def entry(version, deployment_id, status="live"):
    return {"version": version, "deployment_id": deployment_id, "status": status}


@pytest.fixture
def make(tmp_path):
    def build(backup=True, no_rollback=False):
        inventory = tmp_path / "inventory"
        inventory.mkdir(exist_ok=True)
        env = Environment(name="local", inventory=inventory, backup=backup)
        project = Project(root=tmp_path, app="demo", environments={"local": env})
        runner = StubRunner()
        pipeline = Pipeline(project, env, Output(as_json=True), no_rollback=no_rollback, runner=runner)
        return pipeline, runner

    return build


def release_answers(runner, live="v1", schema=("0001", "0002"), data_after=DATA_B):
    """What the phases of a release report (queued after any answer a test scripted first)."""
    runner.answer("preflight", Answer(reports={"localhost": host_state(live)}))
    runner.answer("backup", Answer(reports={"localhost": {"backup": {"set_id": "S1", "data": DATA_A}}}))
    runner.answer("migrate", Answer(reports={"localhost": {"schema": {"before": schema[0], "after": schema[1]}}}))
    runner.answer("data state", Answer(reports={"localhost": {"data": data_after}}))


def test_a_release_runs_the_checklist_and_writes_ahead(make):
    pipeline, runner = make()
    release_answers(runner)
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.OK and outcome.outcome == "live"
    assert runner.phases == RELEASE
    details = pipeline.history.get(outcome.deployment.id).details
    assert details["before"] == {"localhost": "v1"} and details["backup_set"] == "S1"
    assert details["data_before"] == DATA_A and details["data_after"] == DATA_B
    assert details["process"]["pid"] == os.getpid() and details["migrate_started"] is True
    assert runner.variables("preflight")["deployctl_begin"] is True
    assert runner.variables("unlock")["deployctl_settle"][0] == {"deployment_id": outcome.deployment.id,
                                                                 "outcome": "live"}


def test_preflight_failure_changes_nothing(make):
    pipeline, runner = make()
    runner.answer("preflight", Answer(failed={"localhost": "artifact missing"}))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.FAILED_UNCHANGED
    assert runner.phases == ["lock", "preflight", "unlock"]
    assert runner.variables("unlock")["deployctl_settle"][0]["outcome"] == "abandoned"


def test_an_unfinished_deployment_on_the_hosts_refuses_with_exit_6(make):
    pipeline, runner = make()
    runner.answer("preflight", Answer(failed={"localhost": "x"}, reports={"localhost": {
        "unfinished": {"deployment_id": "DEP-OLD", "action": "release", "at": "now"}}}))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.LOCKED and "DEP-OLD" in outcome.message and "recover" in outcome.message


def test_deploy_failure_after_the_migrations_rolls_back_code_and_data(make):
    pipeline, runner = make()
    release_answers(runner)
    runner.answer("deploy", Answer(failed={"localhost": "restart failed"}))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.ROLLED_BACK and "data restored from backup set S1" in outcome.message
    assert runner.phases[6:] == ["deploy", "stop commands", "rollback", "verify", "data state", "maintenance off",
                                 "unlock"]
    rollback = runner.variables("rollback")
    assert rollback["deployctl_rollback_targets"] == {"localhost": "v1"}
    assert rollback["deployctl_restore_set_id"] == "S1"


def test_deploy_failure_without_migrations_rolls_back_code_only(make):
    pipeline, runner = make()
    nothing_ran = {"schema": {"before": "", "after": ""}, "migration_ran": False}
    runner.answer("migrate", Answer(reports={"localhost": nothing_ran}))
    release_answers(runner)
    runner.answer("deploy", Answer(failed={"localhost": "restart failed"}))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.ROLLED_BACK and "restored" not in outcome.message
    rollback = runner.variables("rollback")
    assert rollback["deployctl_rollback_targets"] == {"localhost": "v1"}
    assert rollback["deployctl_restore_set_id"] == "", "no migration ran: the data stays"


def test_a_migration_that_fails_before_the_switch_restores_data_and_touches_no_code(make):
    pipeline, runner = make()
    runner.answer("migrate", Answer(failed={"localhost": "syntax error"}))
    release_answers(runner)
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.ROLLED_BACK
    assert "deploy" not in runner.phases
    rollback = runner.variables("rollback")
    assert rollback["deployctl_rollback_targets"] == {} and rollback["deployctl_rollback_only_targets"] is True
    assert rollback["deployctl_restore_set_id"] == "S1"


def test_migrate_failure_restores_the_pre_release_set(make):
    pipeline, runner = make()
    runner.answer("migrate", Answer(failed={"localhost": "syntax error"}))
    release_answers(runner)
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.ROLLED_BACK and "data restored from backup set S1" in outcome.message
    rollback = runner.variables("rollback")
    assert rollback["deployctl_restore_set_id"] == "S1"
    assert "S1" in rollback["deployctl_backup_protect"]
    assert rollback["deployctl_live_version"] == "v1", "the safety set says what was live: the switch never came"


def test_a_command_that_survives_means_no_restore(make):
    pipeline, runner = make()
    runner.answer("migrate", Answer(status="timeout"))
    release_answers(runner)
    runner.answer("stop commands", Answer(failed={"localhost": "could not stop"}, reports={
        "localhost": {"survivors": [{"pid": 4242, "label": "migrate"}]}}))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.NEEDS_HUMAN
    assert "pid 4242 (migrate)" in outcome.message and "localhost" in outcome.message
    assert "rollback" not in runner.phases and "maintenance off" not in runner.phases


def test_an_unreachable_host_means_no_restore(make):
    pipeline, runner = make()
    runner.answer("migrate", Answer(unreachable={"localhost": "no route"}))
    release_answers(runner)
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.NEEDS_HUMAN and "nothing was restored" in outcome.message
    assert "rollback" not in runner.phases


def test_no_rollback_stops_commands_and_leaves_the_rest(make):
    pipeline, runner = make(no_rollback=True)
    release_answers(runner)
    runner.answer("verify", Answer(failed={"localhost": "503"}))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.NEEDS_HUMAN and "--no-rollback" in outcome.message
    assert runner.phases[-2:] == ["stop commands", "unlock"]


def test_interrupted_release_rolls_back_with_exit_130(make):
    pipeline, runner = make()
    release_answers(runner)
    runner.interrupt("deploy")
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.INTERRUPTED and outcome.outcome == "interrupted"
    assert "rollback" in runner.phases


def released(pipeline, runner, version="v2", schema=("0001", "0002")):
    release_answers(runner, schema=schema)
    outcome = pipeline.release(version)
    assert outcome.exit_code == ExitCode.OK
    runner.calls.clear()
    return outcome.deployment.id


def rollback_state(runner, ident, maintenance=False):
    runner.answer("state", Answer(reports={"localhost": host_state(
        "v2", "v1", entries=[entry("v1", "DEP-A"), entry("v2", ident)], maintenance=maintenance)}))
    sets_on_the_db_host(runner, "S1")


def sets_on_the_db_host(runner, *set_ids, broken=()):
    runner.answer("backups", Answer(reports={"localhost": {"backups": [
        {"set_id": s, "verified": s not in broken, **({"broken": "corrupted"} if s in broken else {})}
        for s in set_ids]}}))


def test_a_release_that_goes_well_is_one_ansible_run(make):
    pipeline, runner = make()
    release_answers(runner)
    assert pipeline.release("v2").exit_code == ExitCode.OK
    assert runner.streams == [[p.replace(" ", "-") for p in PLAN]] and runner.streamed == RELEASE


def test_migrations_after_the_restart_take_the_plans_other_place(make):
    pipeline, runner = make()
    runner.answer("preflight", Answer(reports={"localhost": {**host_state("v1"), "migrate_order": "after_restart"}}))
    release_answers(runner)
    assert pipeline.release("v2").exit_code == ExitCode.OK
    assert runner.streamed == [*RELEASE[:5], "deploy", "migrate", *RELEASE[7:]] and len(runner.streams) == 1


def test_hosts_that_disagree_on_the_migration_order_are_refused_before_anything_changes(make):
    pipeline, runner = make()
    runner.hosts = ["a", "b"]
    runner.answer("preflight", Answer(reports={"a": {**host_state("v1"), "migrate_order": "after_restart"},
                                               "b": {**host_state("v1"), "migrate_order": "before_switch"}}))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.FAILED_UNCHANGED and "deployctl_migrate_order" in outcome.message
    assert runner.phases == ["lock", "preflight", "unlock"]


def test_a_failed_phase_ends_the_run_and_the_recovery_is_a_run_of_its_own(make):
    pipeline, runner = make()
    release_answers(runner)
    runner.answer("deploy", Answer(failed={"localhost": "restart failed"}))
    assert pipeline.release("v2").exit_code == ExitCode.ROLLED_BACK
    recovery = ["stop commands", "rollback", "verify", "data state", "maintenance off", "unlock"]
    assert len(runner.streams) == 2 and runner.streamed == RELEASE[:7] + recovery
    assert runner.phases[7:] == recovery


def test_a_refusal_after_preflight_skips_to_the_unlock_in_the_same_run(make):
    pipeline, runner = make()
    runner.answer("preflight", Answer(reports={"localhost": host_state("v2")}))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.FAILED_UNCHANGED and "already live" in outcome.message
    assert runner.streamed == ["lock", "preflight", "unlock"] and len(runner.streams) == 1


def test_a_phase_that_fails_ends_the_run_and_what_follows_runs_on_its_own(make):
    pipeline, runner = make()
    runner.answer("preflight", Answer(failed={"localhost": "artifact missing"}))
    assert pipeline.release("v2").exit_code == ExitCode.FAILED_UNCHANGED
    assert runner.streamed == ["lock", "preflight"] and runner.phases == ["lock", "preflight", "unlock"]


def test_phases_a_rollback_does_not_need_are_skipped_in_its_run(make):
    pipeline, runner = make()
    ident = released(pipeline, runner)
    rollback_state(runner, ident)
    runner.streamed.clear()
    assert pipeline.rollback(data="keep").exit_code == ExitCode.OK
    assert runner.streamed == ["lock", "state", "maintenance on", "rollback", "verify", "data state",
                               "maintenance off", "unlock"]


def test_rollback_restores_when_nothing_was_written_since(make):
    pipeline, runner = make()
    ident = released(pipeline, runner)
    rollback_state(runner, ident)
    runner.answer("data check", Answer(reports={"localhost": {"data": DATA_B}}))
    outcome = pipeline.rollback()
    assert outcome.exit_code == ExitCode.OK and "nothing was written since" in outcome.message
    assert runner.phases == ["lock", "state", "backups", "data check", "stop commands", "maintenance on", "rollback",
                             "verify", "data state", "maintenance off", "unlock"]
    assert runner.variables("rollback")["deployctl_restore_set_id"] == "S1"
    assert runner.streams[-1][:3] == ["lock", "state", "data-check"] and "backups" not in runner.streamed


def test_rollback_refuses_when_users_wrote_since(make):
    pipeline, runner = make()
    ident = released(pipeline, runner)
    rollback_state(runner, ident)
    changed = {"tables": {"items": {"rows": 4, "digest": "c"}}, "objects": {}}
    runner.answer("data check", Answer(reports={"localhost": {"data": changed}}))
    outcome = pipeline.rollback()
    assert outcome.exit_code == ExitCode.FAILED_UNCHANGED
    assert "items changed" in outcome.message and "--restore-data" in outcome.message
    assert "maintenance on" not in runner.phases


@pytest.mark.parametrize("data, restored", [("keep", ""), ("restore", "S1")])
def test_rollback_does_what_it_is_told_with_the_data(make, data, restored):
    pipeline, runner = make()
    ident = released(pipeline, runner)
    rollback_state(runner, ident)
    outcome = pipeline.rollback(data=data)
    assert outcome.exit_code == ExitCode.OK
    assert "data check" not in runner.phases
    assert runner.variables("rollback")["deployctl_restore_set_id"] == restored


def test_rollback_keeps_data_when_the_schema_did_not_change(make):
    pipeline, runner = make()
    ident = released(pipeline, runner, schema=("0002", "0002"))
    rollback_state(runner, ident)
    outcome = pipeline.rollback()
    assert outcome.exit_code == ExitCode.OK and "data kept" in outcome.message
    assert runner.variables("rollback")["deployctl_restore_set_id"] == ""


def test_rollback_of_a_release_that_ended_in_maintenance_restores_without_comparing(make):
    pipeline, runner = make(no_rollback=True)
    release_answers(runner)
    runner.answer("verify", Answer(failed={"localhost": "503"}))
    ident = pipeline.release("v2").deployment.id
    runner.calls.clear()
    pipeline.no_rollback = False
    runner.answer("state", Answer(reports={"localhost": host_state(
        "v2", "v1", entries=[entry("v1", "DEP-A"), entry("v2", ident, "pending")], maintenance=True)}))
    sets_on_the_db_host(runner, "S1")
    outcome = pipeline.rollback()
    assert outcome.exit_code == ExitCode.OK, outcome.message
    assert "data check" not in runner.phases, "maintenance held writes off: nothing to compare"
    assert runner.variables("rollback")["deployctl_restore_set_id"] == "S1"


def test_rollback_refuses_without_a_release_to_go_back_to(make):
    pipeline, runner = make()
    runner.answer("state", Answer(reports={"localhost": host_state(None)}))
    outcome = pipeline.rollback()
    assert outcome.exit_code == ExitCode.FAILED_UNCHANGED and "nothing to roll back" in outcome.message
    runner.calls.clear()
    runner.answer("state", Answer(reports={"localhost": host_state("v1")}))
    outcome = pipeline.rollback()
    assert outcome.exit_code == ExitCode.FAILED_UNCHANGED and "first one" in outcome.message
    assert "maintenance on" not in runner.phases


def test_an_unfinished_deployment_blocks_every_changing_command(make):
    pipeline, runner = make()
    dead = pipeline.history.start("local", "release", "v2", {"process": {
        "control_node": socket.gethostname(), "pid": 999999999, "start_ticks": 1}})
    for command in (lambda: pipeline.release("v3"), pipeline.rollback, pipeline.backup,
                    lambda: pipeline.maintenance("off", None, None), lambda: pipeline.restore("S1")):
        with pytest.raises(DeployctlError) as refused:
            command()
        assert refused.value.exit_code == ExitCode.LOCKED and dead.id in str(refused.value)
    assert runner.phases == []


def test_recover_adopts_the_lock_stops_commands_and_rolls_back(make):
    pipeline, runner = make()
    dead = pipeline.history.start("local", "release", "v2", {
        "process": {"control_node": socket.gethostname(), "pid": 999999999, "start_ticks": 1, "run_id": "x"},
        "before": {"localhost": "v1"}, "backup_set": "S1", "migrate_started": True})
    state = Answer(reports={"localhost": host_state(
        "v2", "v1", maintenance=True, pending={"deployment_id": dead.id, "action": "release", "before": "v1"})})
    runner.answer("state", state, state)  # read first (is there anything to recover?), then under the lock
    outcome = pipeline.recover()
    assert outcome.exit_code == ExitCode.OK and outcome.outcome == "rolled-back", outcome.message
    assert runner.phases == ["state", "state", "lock", "stop commands", "maintenance on", "rollback", "verify",
                             "data state", "maintenance off", "unlock"]
    assert runner.variables("lock")["deployctl_lock_adopt"] == dead.id
    assert runner.variables("rollback")["deployctl_rollback_targets"] == {"localhost": "v1"}
    assert runner.variables("rollback")["deployctl_restore_set_id"] == "S1"
    settle = runner.variables("unlock")["deployctl_settle"]
    assert {"deployment_id": dead.id, "outcome": "undone"} in settle
    assert pipeline.history.get(dead.id).outcome == "recovered"


def test_recover_refuses_a_deployment_that_still_runs_or_ran_elsewhere(make):
    pipeline, runner = make()
    pipeline.history.start("local", "release", "v2", {"process": {"control_node": "elsewhere", "pid": 1}})
    holder = {"deployment_id": "DEP-ELSEWHERE", "control_node": "elsewhere", "pid": 1, "user": "ada"}
    state = Answer(reports={"localhost": host_state("v2", "v1", pending={
        "deployment_id": "DEP-ELSEWHERE", "action": "release", "before": "v1"})})
    state.reports["localhost"]["state"]["lock"] = holder
    runner.answer("state", state, state)
    outcome = pipeline.recover()
    assert outcome.exit_code == ExitCode.LOCKED and "--force" in outcome.message
    assert "rollback" not in runner.phases


def test_recover_of_a_deployment_that_changed_no_code_touches_no_code(make):
    """Killed during its backup: nothing to put back but its lock; no host goes to an older release."""
    pipeline, runner = make()
    dead = pipeline.history.start("local", "release", "v3", {
        "process": {"control_node": socket.gethostname(), "pid": 999999999, "start_ticks": 1, "run_id": "x"},
        "before": {"localhost": "v2"}})
    state = Answer(reports={"localhost": host_state(
        "v2", "v1", pending={"deployment_id": dead.id, "action": "release", "before": "v2"})})
    runner.answer("state", state, state)
    outcome = pipeline.recover()
    assert outcome.exit_code == ExitCode.OK and "changed no code" in outcome.message, outcome.message
    assert "rollback" not in runner.phases


def test_nothing_unfinished_means_nothing_recorded(make):
    pipeline, runner = make()
    runner.answer("state", Answer(reports={"localhost": host_state("v2", "v1")}))
    outcome = pipeline.recover()
    assert outcome.exit_code == ExitCode.OK and "nothing to recover" in outcome.message
    assert pipeline.history.recent("local") == [] and runner.phases == ["state"]


def test_a_restore_the_set_is_gone_for_is_refused_before_maintenance(make):
    pipeline, runner = make()
    ident = released(pipeline, runner)
    runner.answer("state", Answer(reports={"localhost": host_state(
        "v2", "v1", entries=[entry("v1", "DEP-A"), entry("v2", ident)])}))
    sets_on_the_db_host(runner, "S1", broken=("S1",))
    outcome = pipeline.rollback(data="restore")
    assert outcome.exit_code == ExitCode.FAILED_UNCHANGED and "corrupted" in outcome.message
    assert "maintenance on" not in runner.phases


def test_a_phase_that_ran_on_no_host_did_not_pass(make):
    pipeline, runner = make()
    release_answers(runner)
    runner.hosts = []
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.FAILED_UNCHANGED, outcome.message


def test_unknown_inventory_variables_are_named_with_what_was_meant(make):
    pipeline, runner = make()
    runner.answer("preflight", Answer(failed={"localhost": "unknown"}, reports={
        "localhost": {"unknown_variables": ["deployctl_migrate_comand"]}}))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.FAILED_UNCHANGED
    assert "deployctl_migrate_comand (did you mean deployctl_migrate_command?)" in outcome.message


def test_unlock_never_breaks_a_live_holder_and_another_node_only_with_force(make):
    pipeline, runner = make()
    mine = {"deployment_id": "DEP-LIVE", **processes.identity(), "user": "me"}
    runner.answer("state", Answer(reports={"localhost": {"state": {"lock": mine}}}))
    assert pipeline.unlock().exit_code == ExitCode.LOCKED
    other = {"deployment_id": "DEP-X", "control_node": "elsewhere", "pid": 1, "user": "ada", "since": "t"}
    runner.answer("state", Answer(reports={"localhost": {"state": {"lock": other}}}))
    refused = pipeline.unlock()
    assert refused.exit_code == ExitCode.LOCKED and "ada@elsewhere" in refused.message
    runner.answer("state", Answer(reports={"localhost": {"state": {"lock": other}}}))
    assert pipeline.unlock(force=True).exit_code == ExitCode.OK
    assert runner.variables("unlock")["deployctl_unlock_holders"] == ["DEP-X"]


def test_a_broken_history_is_refused_before_anything_runs(make, tmp_path):
    pipeline, runner = make()
    (tmp_path / ".deployctl").mkdir()
    (tmp_path / ".deployctl" / "history.db").write_bytes(b"not a database" * 100)
    with pytest.raises(StateError) as refused:
        pipeline.release("v2")
    assert "mv " in str(refused.value)
    assert runner.phases == []


def test_retention_protects_the_set_rollback_would_restore(make):
    pipeline, runner = make()
    released(pipeline, runner)
    runner.answer("backup", Answer(reports={"localhost": {"backup": {"set_id": "S2"}}}))
    pipeline.backup()
    assert runner.variables("backup")["deployctl_backup_protect"] == ["S1"]


def test_releasing_the_live_version_again_keeps_the_set_rollback_restores(make):
    """A rollback from v2 undoes both releases of v2 and restores the set taken before the first."""
    pipeline, runner = make()
    released(pipeline, runner, "v2")
    runner.answer("preflight", Answer(reports={"localhost": host_state("v2", "v1")}))
    runner.answer("backup", Answer(reports={"localhost": {"backup": {"set_id": "S2", "data": DATA_B}}}))
    runner.answer("migrate", Answer(reports={"localhost": {"schema": {"before": "0002", "after": "0002"}}}))
    assert pipeline.release("v2", again=lambda version: True).exit_code == ExitCode.OK
    runner.answer("backup", Answer(reports={"localhost": {"backup": {"set_id": "S3"}}}))
    pipeline.backup()
    assert runner.variables("backup")["deployctl_backup_protect"] == ["S1", "S2"]


def test_releasing_the_live_version_again_asks_first(make):
    pipeline, runner = make()
    runner.answer("preflight", Answer(reports={"localhost": host_state("v2", "v1")}))
    asked = []
    outcome = pipeline.release("v2", again=lambda version: asked.append(version) or False)
    assert asked == ["v2"] and outcome.exit_code == ExitCode.FAILED_UNCHANGED
    assert "v2 is already live on every host" in outcome.message
    assert runner.phases == ["lock", "preflight", "unlock"], "no backup, no maintenance"


def test_history_ids_are_unique_within_a_second(tmp_path):
    history = History(tmp_path / "h.db")
    ids = {history.start("local", "verify", None).id for _ in range(20)}
    assert len(ids) == 20


# ---------------------------------------------------------------- a release's recovery decisions (_recover)


def test_a_failed_backup_stops_the_release_before_anything_changes(make):
    pipeline, runner = make()
    runner.answer("preflight", Answer(reports={"localhost": host_state("v1")}))
    runner.answer("backup", Answer(failed={"localhost": "disk full"}))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.FAILED_UNCHANGED and "backup failed" in outcome.message
    assert runner.phases == ["lock", "preflight", "backup", "unlock"]


def test_interrupted_before_anything_changed_exits_130_with_nothing_to_put_back(make):
    pipeline, runner = make()
    runner.interrupt("preflight")
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.INTERRUPTED and "nothing was changed" in outcome.message
    assert runner.phases == ["lock", "preflight", "unlock"]


def test_a_failed_rollback_needs_a_human_and_leaves_maintenance_on(make):
    pipeline, runner = make()
    release_answers(runner)
    runner.answer("verify", Answer(failed={"localhost": "503"}))
    runner.answer("rollback", Answer(failed={"localhost": "release dir gone"}))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.NEEDS_HUMAN and "the rollback failed too" in outcome.message
    assert runner.phases[-3:] == ["stop commands", "rollback", "unlock"]
    # the recovery's run ends at the failed rollback; the unlock runs on its own
    assert len(runner.streams) == 2 and runner.streamed[-2:] == ["stop commands", "rollback"]


def test_a_rollback_that_does_not_verify_needs_a_human(make):
    pipeline, runner = make()
    release_answers(runner)
    runner.answer("verify", Answer(failed={"localhost": "503"}), Answer(failed={"localhost": "still 503"}))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.NEEDS_HUMAN and "maintenance mode stays on" in outcome.message
    assert "maintenance off" not in runner.phases


def test_an_unreachable_host_is_left_out_and_named_while_the_others_are_rolled_back(make):
    pipeline, runner = make()
    runner.hosts = ["web1", "web2"]
    runner.answer("preflight", Answer(reports={"web1": host_state("v1"), "web2": host_state("v1")}))
    runner.answer("deploy", Answer(unreachable={"web2": "no route"}))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.NEEDS_HUMAN
    assert "rolled back the reachable hosts" in outcome.message and "needs attention: web2" in outcome.message
    rollback = next(call for call in runner.calls if call.phase == "rollback")
    assert rollback.variables["deployctl_rollback_targets"] == {"web1": "v1"} and rollback.limit == "all:!web2"
    assert rollback.variables["deployctl_restore_set_id"] == ""
    assert pipeline.history.get(outcome.deployment.id).details["needs_attention"] == ["web2"]


def test_maintenance_that_cannot_be_turned_off_after_a_release_needs_a_human(make):
    pipeline, runner = make()
    release_answers(runner)
    runner.answer("maintenance off", Answer(failed={"localhost": "flag file"}))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.NEEDS_HUMAN and "v2 is live but maintenance" in outcome.message
    assert "rollback" not in runner.phases


def test_no_rollback_before_anything_changed_is_a_plain_refusal(make):
    pipeline, runner = make(no_rollback=True)
    runner.answer("preflight", Answer(failed={"localhost": "artifact missing"}))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.FAILED_UNCHANGED and "nothing was changed" in outcome.message


def test_a_deploy_that_ran_on_no_host_fails_and_puts_back_nothing(make):
    """A group missing from the inventory: the phase "succeeds" on no host, which the gate fails."""
    pipeline, runner = make()
    release_answers(runner)
    runner.answer("deploy", Answer(hosts=[]))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.ROLLED_BACK
    assert "deploy failed: no host of the inventory is in the group" in outcome.message
    assert runner.variables("rollback")["deployctl_rollback_targets"] == {}, "no host deployed: no code to put back"
    assert runner.phases[-4:] == ["verify", "data state", "maintenance off", "unlock"]


def test_a_lock_phase_that_ran_on_no_host_takes_no_lock(make):
    pipeline, runner = make()
    runner.hosts = []
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.FAILED_UNCHANGED and "could not take the lock" in outcome.message
    assert runner.phases == ["lock"]


# ---------------------------------------------------------------- the lock


def held(holder, host="localhost"):
    return Answer(failed={host: "held"}, reports={host: {"held_by_other": True, "lock": holder}})


def test_a_stale_lock_of_a_finished_deployment_here_is_cleared_with_its_token_then_taken(make):
    pipeline, runner = make()
    earlier = pipeline.history.start("local", "release", "v1", {"lock_token": "T-EARLIER"})
    pipeline.history.finish(earlier, "live", 0)
    runner.answer("lock", held({"deployment_id": earlier.id, "control_node": socket.gethostname(), "pid": 1}))
    release_answers(runner)
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.OK, outcome.message
    assert runner.phases[:4] == ["lock", "clear stale lock", "lock", "preflight"]
    clear = runner.calls[1]
    assert clear.variables["deployctl_lock_token"] == "T-EARLIER" and clear.limit == "localhost"
    assert clear.variables["deployctl_settle"] == [{"deployment_id": earlier.id, "outcome": "abandoned"}]


def test_a_lock_held_from_another_control_node_is_never_cleared(make):
    pipeline, runner = make()
    runner.answer("lock", held({"deployment_id": "DEP-X", "control_node": "elsewhere", "user": "ada",
                                "since": "t"}))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.LOCKED and "ada@elsewhere" in outcome.message
    assert runner.phases == ["lock"]


def test_a_lock_taken_on_some_hosts_only_is_released_there(make):
    pipeline, runner = make()
    runner.hosts = ["web1", "web2"]
    runner.answer("lock", Answer(failed={"web2": "held"}, reports={
        "web1": {"held_by_other": False, "lock": {"deployment_id": "mine"}},
        "web2": {"held_by_other": True, "lock": {"deployment_id": "DEP-X", "control_node": "elsewhere"}}}))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.LOCKED
    assert runner.phases == ["lock", "unlock"] and runner.calls[1].limit == "web1"


def test_a_lock_held_by_a_deployment_that_died_meanwhile_says_to_recover(make):
    """It was running when the release started, and its deployctl died before the release took the lock."""
    pipeline, runner = make()

    def died(_):
        dead = pipeline.history.start("local", "release", "v2", {"process": DEAD_PROCESS})
        return held({"deployment_id": dead.id, **DEAD_PROCESS})

    runner.answer("lock", died)
    with pytest.raises(DeployctlError) as refused:
        pipeline.release("v3")
    assert refused.value.exit_code == ExitCode.LOCKED and "deployctl recover" in str(refused.value)
    assert runner.phases == ["lock"]


# ---------------------------------------------------------------- backup and restore


def test_backup_takes_the_lock_records_what_is_live_and_takes_a_manual_set(make):
    pipeline, runner = make()
    runner.answer("state", Answer(reports={"localhost": host_state("v2")}))
    runner.answer("backup", Answer(reports={"localhost": {"backup": {"set_id": "S7", "data": DATA_A}}}))
    outcome = pipeline.backup()
    assert outcome.exit_code == ExitCode.OK and outcome.message == "backup set S7 taken and verified"
    assert runner.phases == ["lock", "state", "backup", "unlock"]
    assert runner.variables("backup")["deployctl_backup_purpose"] == "manual"
    assert runner.variables("backup")["deployctl_live_version"] == "v2"


def test_a_failed_backup_command_changes_nothing(make):
    pipeline, runner = make()
    runner.answer("backup", Answer(failed={"localhost": "dump failed"}))
    outcome = pipeline.backup()
    assert outcome.exit_code == ExitCode.FAILED_UNCHANGED and "backup failed" in outcome.message


def test_restore_stops_commands_takes_a_safety_set_then_restores_under_maintenance(make):
    pipeline, runner = make()
    runner.answer("backup", Answer(reports={"localhost": {"backup": {"set_id": "SAFE"}}}))
    outcome = pipeline.restore("S1")
    assert outcome.exit_code == ExitCode.OK and outcome.outcome == "restored"
    assert "safety set taken first: SAFE" in outcome.message
    assert runner.phases == ["lock", "preflight", "stop commands", "backup", "maintenance on", "restore", "verify",
                             "data state", "maintenance off", "unlock"]
    assert runner.variables("preflight")["deployctl_restore_set_id"] == "S1"
    assert runner.variables("restore")["deployctl_restore_set_id"] == "S1"
    assert runner.variables("backup")["deployctl_backup_purpose"] == "safety"


def test_a_failed_safety_set_means_no_restore(make):
    pipeline, runner = make()
    runner.answer("backup", Answer(failed={"localhost": "disk full"}))
    outcome = pipeline.restore("S1")
    assert outcome.exit_code == ExitCode.FAILED_UNCHANGED and "safety backup failed" in outcome.message
    assert "maintenance on" not in runner.phases


def test_a_failed_restore_names_the_safety_set_and_keeps_maintenance_on(make):
    pipeline, runner = make()
    runner.answer("backup", Answer(reports={"localhost": {"backup": {"set_id": "SAFE"}}}))
    runner.answer("restore", Answer(failed={"localhost": "checksum mismatch"}))
    outcome = pipeline.restore("S1")
    assert outcome.exit_code == ExitCode.NEEDS_HUMAN and "the safety set is SAFE" in outcome.message
    assert runner.phases[-2:] == ["restore", "unlock"]


def test_an_interrupted_restore_stops_what_it_started_and_leaves_the_rest_to_a_human(make):
    pipeline, runner = make()
    runner.interrupt("restore")
    outcome = pipeline.restore("S1")
    assert outcome.exit_code == ExitCode.NEEDS_HUMAN and "`deployctl restore` again" in outcome.message
    assert runner.phases[-3:] == ["restore", "stop commands", "unlock"]


# ---------------------------------------------------------------- recover


def dead_release(pipeline, schema=("0001", "0002"), **details):
    return pipeline.history.start("local", "release", "v2", {
        "process": DEAD_PROCESS, "before": {"localhost": "v1"}, "backup_set": "S1", "migrate_started": True,
        "schema": {"localhost": {"before": schema[0], "after": schema[1]}}, "data_after": DATA_B, **details})


def left_by(runner, ident, maintenance=True, lock=None):
    state = Answer(reports={"localhost": host_state(
        "v2", "v1", maintenance=maintenance, pending={"deployment_id": ident, "action": "release", "before": "v1"})})
    state.reports["localhost"]["state"]["lock"] = lock
    runner.answer("state", state, state)


def test_recover_resolve_accepts_the_hosts_and_settles_the_deployment_live(make):
    pipeline, runner = make()
    dead = dead_release(pipeline)
    left_by(runner, dead.id)
    outcome = pipeline.recover(resolve=True)
    assert outcome.exit_code == ExitCode.OK and outcome.outcome == "resolved"
    assert "maintenance mode is still on on localhost" in outcome.message
    assert runner.phases == ["state", "state", "lock", "stop commands", "unlock"]
    assert {"deployment_id": dead.id, "outcome": "live"} in runner.variables("unlock")["deployctl_settle"]
    assert pipeline.history.get(dead.id).outcome == "resolved"


def test_recover_keeps_the_data_of_a_release_that_did_not_change_the_schema(make):
    pipeline, runner = make()
    dead = dead_release(pipeline, schema=("0002", "0002"))
    left_by(runner, dead.id)
    outcome = pipeline.recover()
    assert outcome.exit_code == ExitCode.OK and "did not change the schema" in outcome.message
    assert runner.variables("rollback")["deployctl_restore_set_id"] == ""


@pytest.mark.parametrize("data, restored", [("keep", ""), ("restore", "S1")])
def test_recover_does_what_it_is_told_with_the_data(make, data, restored):
    pipeline, runner = make()
    dead = dead_release(pipeline)
    left_by(runner, dead.id, maintenance=False)
    outcome = pipeline.recover(data=data)
    assert outcome.exit_code == ExitCode.OK, outcome.message
    assert "data check" not in runner.phases
    assert runner.variables("rollback")["deployctl_restore_set_id"] == restored


def test_recover_refuses_to_restore_over_writes_made_since(make):
    pipeline, runner = make()
    dead = dead_release(pipeline)
    left_by(runner, dead.id, maintenance=False)
    runner.answer("data check", Answer(reports={"localhost": {"data": {"tables": {"items": {"rows": 9}}}}}))
    outcome = pipeline.recover()
    assert outcome.exit_code == ExitCode.FAILED_UNCHANGED and "could lose data written since" in outcome.message
    assert "maintenance on" not in runner.phases and "rollback" not in runner.phases


def test_recover_with_force_takes_over_a_deployment_of_another_control_node(make):
    pipeline, runner = make()
    holder = {"deployment_id": "DEP-ELSEWHERE", "control_node": "elsewhere", "pid": 1, "user": "ada"}
    left_by(runner, "DEP-ELSEWHERE", lock=holder)
    sets_on_the_db_host(runner)
    outcome = pipeline.recover(force=True)
    assert outcome.exit_code == ExitCode.OK and outcome.outcome == "rolled-back", outcome.message
    assert runner.variables("lock")["deployctl_lock_adopt"] == "DEP-ELSEWHERE"
    assert runner.variables("rollback")["deployctl_rollback_targets"] == {"localhost": "v1"}


def test_recover_from_the_hosts_records_finds_the_set_by_its_label(make):
    """The history does not know the deployment: the hosts say what it was, the sets' labels which set."""
    pipeline, runner = make()
    left_by(runner, "DEP-GONE", lock={"deployment_id": "DEP-GONE", **DEAD_PROCESS})
    runner.answer("backups", Answer(reports={"localhost": {"backups": [
        {"set_id": "S9", "label": "DEP-GONE", "purpose": "pre-release", "verified": True}]}}))
    outcome = pipeline.recover()
    assert outcome.exit_code == ExitCode.OK, outcome.message
    assert runner.variables("rollback")["deployctl_restore_set_id"] == "S9"


def test_recover_without_a_record_of_the_data_refuses_to_restore_once_users_could_write(make):
    pipeline, runner = make()
    left_by(runner, "DEP-GONE", maintenance=False, lock={"deployment_id": "DEP-GONE", **DEAD_PROCESS})
    runner.answer("backups", Answer(reports={"localhost": {"backups": [
        {"set_id": "S9", "label": "DEP-GONE", "purpose": "pre-release", "verified": True}]}}))
    outcome = pipeline.recover()
    assert outcome.exit_code == ExitCode.FAILED_UNCHANGED and "no record of it" in outcome.message


def test_recover_works_from_the_hosts_when_the_history_is_unusable(make, tmp_path):
    pipeline, runner = make()
    (tmp_path / ".deployctl").mkdir()
    (tmp_path / ".deployctl" / "history.db").write_bytes(b"not a database" * 100)
    left_by(runner, "DEP-GONE", lock={"deployment_id": "DEP-GONE", **DEAD_PROCESS})
    sets_on_the_db_host(runner)
    outcome = pipeline.recover(data="keep")
    assert outcome.exit_code == ExitCode.OK and outcome.outcome == "rolled-back", outcome.message
    assert "the history could not be written" in outcome.message
    assert runner.variables("rollback")["deployctl_rollback_targets"] == {"localhost": "v1"}


def test_recover_refuses_while_another_deployment_holds_the_lock(make):
    pipeline, runner = make()
    dead = dead_release(pipeline)
    left_by(runner, dead.id, lock={"deployment_id": "DEP-OTHER", "user": "ada", "control_node": "elsewhere"})
    outcome = pipeline.recover()
    assert outcome.exit_code == ExitCode.LOCKED and "DEP-OTHER" in outcome.message
    assert runner.phases == ["state", "state"]


def failed_before_the_switch(pipeline, runner, maintenance=True):
    """A release whose host dropped off mid-migration: v1 still live, the data perhaps half migrated."""
    runner.answer("migrate", Answer(unreachable={"localhost": "no route"}))
    release_answers(runner)
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.NEEDS_HUMAN and "`deployctl rollback` (it restores S1" in outcome.message
    runner.calls.clear()
    runner.answer("state", Answer(reports={"localhost": host_state("v1", maintenance=maintenance)}))
    sets_on_the_db_host(runner, "S1")
    return outcome.deployment.id


def test_rollback_after_a_release_that_switched_no_host_puts_its_data_back(make):
    pipeline, runner = make()
    ident = failed_before_the_switch(pipeline, runner)
    outcome = pipeline.rollback()
    assert outcome.exit_code == ExitCode.OK, outcome.message
    assert ident in outcome.message and "v1 still live" in outcome.message
    assert "restored from backup set S1" in outcome.message
    assert runner.phases == ["lock", "state", "backups", "stop commands", "maintenance on", "rollback", "verify",
                             "data state", "maintenance off", "unlock"]
    rollback = runner.variables("rollback")
    assert rollback["deployctl_rollback_targets"] == {} and rollback["deployctl_restore_set_id"] == "S1"


def test_rollback_after_a_release_that_switched_no_host_keeps_data_when_told(make):
    pipeline, runner = make()
    failed_before_the_switch(pipeline, runner)
    outcome = pipeline.rollback(data="keep")
    assert outcome.exit_code == ExitCode.OK and "nothing to roll back" in outcome.message
    assert "rollback" not in runner.phases and "maintenance on" not in runner.phases


def test_rollback_after_a_release_that_switched_no_host_refuses_when_users_wrote_since(make):
    pipeline, runner = make()
    ident = failed_before_the_switch(pipeline, runner, maintenance=False)  # someone took maintenance off
    runner.answer("data check", Answer(reports={"localhost": {"data": DATA_B}}))
    outcome = pipeline.rollback()
    assert outcome.exit_code == ExitCode.FAILED_UNCHANGED and ident in outcome.message
    assert "--restore-data" in outcome.message and "rollback" not in runner.phases


def rehearsal_answers(runner, rehearsal, live="v1"):
    """A release with deployctl_migrate_rehearse: preflight says so, the backup kept its scratch copy."""
    runner.answer("preflight", Answer(reports={"localhost": {**host_state(live), "migrate_rehearse": True}}))
    runner.answer("backup", Answer(reports={"localhost": {"backup": {"set_id": "S1", "data": DATA_A,
                                                                     "scratch_database": "scratch_1"}}}))
    if rehearsal is not None:
        runner.answer("rehearse", rehearsal)
    release_answers(runner, live=live)


REHEARSED = {"seconds": 2.5, "schema": {"before": "0001", "after": "0002"},
             "live": {"before": "0001", "after": "0001"}, "problem": ""}


def test_the_migrations_are_rehearsed_on_the_scratch_copy_before_maintenance(make):
    pipeline, runner = make()
    rehearsal_answers(runner, Answer(reports={"localhost": {"rehearsal": REHEARSED}}))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.OK
    assert runner.phases == [*RELEASE[:4], "rehearse", *RELEASE[4:]]
    assert runner.variables("rehearse")["deployctl_scratch_database"] == "scratch_1"
    details = pipeline.history.get(outcome.deployment.id).details
    assert details["rehearsal"]["seconds"] == 2.5 and details["predicted_window"] == 2.5  # no release before


def test_a_migration_that_fails_its_rehearsal_stops_the_release_with_no_downtime(make):
    pipeline, runner = make()
    failed = {**REHEARSED, "problem": "the migrations failed their rehearsal on a copy of the data: boom"}
    rehearsal_answers(runner, Answer(failed={"localhost": failed["problem"]},
                                     reports={"localhost": {"rehearsal": failed}}))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.FAILED_UNCHANGED
    assert "failed their rehearsal" in outcome.message and "boom" in outcome.message
    assert runner.phases == ["lock", "preflight", "backup", "stage", "rehearse", "unlock"]


def test_a_rehearsal_that_reached_the_live_database_needs_a_human(make):
    pipeline, runner = make()
    touched = {**REHEARSED, "live": {"before": "0001", "after": "0002"},
               "problem": "the live database's schema version changed during the rehearsal (0001 -> 0002)"}
    rehearsal_answers(runner, Answer(failed={"localhost": "x"}, reports={"localhost": {"rehearsal": touched}}))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.NEEDS_HUMAN and "changed during the rehearsal" in outcome.message
    assert "maintenance on" not in runner.phases and "deploy" not in runner.phases


def test_a_first_release_has_nothing_to_rehearse_against(make):
    pipeline, runner = make()
    rehearsal_answers(runner, None, live=None)
    outcome = pipeline.release("v1")
    assert outcome.exit_code == ExitCode.OK and "rehearse" not in runner.phases


def test_the_predicted_window_replaces_the_last_releases_migrations_with_the_rehearsed_ones():
    last = Deployment("D", "local", "release", "v1", "me", "t", phases=[
        {"name": "maintenance on", "status": "passed", "seconds": 1.0},
        {"name": "migrate", "status": "passed", "seconds": 4.0},
        {"name": "deploy", "status": "passed", "seconds": 2.0},
        {"name": "maintenance off", "status": "passed", "seconds": 1.0}])
    assert predicted_window(last, 0.5) == 3.5  # 2 s of deploy + 1 s to turn maintenance off, + 0.5 s migrating
    assert predicted_window(None, 0.5) == 0.5


# ---------------------------------------------------------------- release --plan


def test_a_plan_runs_the_releases_own_phases_in_check_mode_and_writes_nothing(make):
    pipeline, runner = make()
    released(pipeline, runner, "v2")  # its set S1 is the one a rollback from v2 restores
    history = pipeline.history_path.read_bytes()
    runner.answer("preflight", Answer(reports={"localhost": host_state("v2", "v1")}))
    runner.answer("backup", Answer(reports={"localhost": {"backup_plan": {"set_id": "S2", "pruned": ["S0"]}}},
                                   changed=["localhost"]))
    runner.answer("migrate", Answer(reports={"localhost": {"migrate_plan": {
        "status": "0002", "pending": ["0003_add_price"], "problem": ""}}}))
    outcome = pipeline.plan("v3")
    assert outcome.exit_code == ExitCode.OK and outcome.outcome == "planned", outcome.message
    assert outcome.message == "release v3 would run 11 phases on localhost; nothing was changed"
    assert runner.check is True, "every phase in Ansible's check mode"
    assert runner.streams[-1] == [p.replace(" ", "-") for p in PLAN] and runner.streamed[-11:] == RELEASE, \
        "the release's own sequence, in one run"
    plan = outcome.data["plan"]
    assert [p["phase"] for p in plan["phases"]] == RELEASE
    assert plan["phases"][2]["hosts"] == {"localhost": {"changes": ["a task of backup"], "problem": None,
                                                        "report": {"backup_plan": {"set_id": "S2",
                                                                                   "pruned": ["S0"]}}}}
    assert plan["rollback_target"] == {"localhost": "v2"}
    assert plan["backup"] == {"host": "localhost", "set_id": "S2", "pruned": ["S0"], "kept_for_rollback": ["S1"]}
    assert plan["migrations"] == {"host": "localhost", "status": "0002", "pending": ["0003_add_price"], "problem": ""}
    assert outcome.deployment is None and pipeline.history_path.read_bytes() == history, "no history written"
    assert runner.variables("preflight")["deployctl_deployment_id"].startswith("PLAN-")


def test_a_plan_of_the_live_version_says_the_release_would_ask(make):
    pipeline, runner = make()
    runner.answer("preflight", Answer(reports={"localhost": host_state("v2", "v1")}))
    outcome = pipeline.plan("v2")
    assert outcome.exit_code == ExitCode.OK and "already live on every host: releasing it again asks" in outcome.message
    assert outcome.data["plan"]["rollback_target"] == {"localhost": "v1"}, "released again, v2 still goes back to v1"
    assert runner.phases == RELEASE


def test_a_plan_reports_where_the_release_would_stop_with_its_exit_code(make):
    pipeline, runner = make()
    runner.answer("preflight", Answer(failed={"localhost": "artifact demo-v3.tar.gz does not exist"}))
    refused = pipeline.plan("v3")
    assert refused.exit_code == ExitCode.FAILED_UNCHANGED and refused.outcome == "unchanged"
    assert refused.message == ("the release would stop: preflight failed: localhost: artifact demo-v3.tar.gz does "
                               "not exist; nothing was changed")
    assert runner.phases == ["lock", "preflight", "unlock"]

    pipeline, runner = make()
    release_answers(runner)
    runner.answer("deploy", Answer(failed={"localhost": "release v3 is not on this host"}))
    failed = pipeline.plan("v3")
    assert failed.exit_code == ExitCode.ROLLED_BACK and failed.outcome == "would-roll-back"
    assert "deploy failed: localhost: release v3 is not on this host" in failed.message
    assert runner.phases == RELEASE[:7] + ["unlock"], "no recovery runs for a plan"
    assert failed.data["plan"]["phases"][-2]["problem"] == "localhost: release v3 is not on this host"


def test_a_plan_while_someone_holds_the_lock_is_refused_like_the_release(make):
    pipeline, runner = make()
    runner.answer("lock", held({"deployment_id": "DEP-OTHER", "user": "bob", "control_node": "laptop", "pid": 7}))
    outcome = pipeline.plan("v3")
    assert outcome.exit_code == ExitCode.LOCKED and "locked by bob@laptop" in outcome.message
    assert outcome.message.startswith("the release would stop: ") and outcome.message.endswith("nothing was changed")
    assert runner.phases == ["lock"]


def test_ctrl_c_during_a_plan_stops_it_and_recovers_nothing(make):
    pipeline, runner = make()
    runner.answer("preflight", Answer(reports={"localhost": host_state("v2", "v1")}))
    runner.interrupt("maintenance on")
    outcome = pipeline.plan("v3")
    assert outcome.exit_code == ExitCode.INTERRUPTED and outcome.outcome == "interrupted"
    assert outcome.message == "the plan was interrupted; nothing was changed"
    assert runner.phases == [*RELEASE[:5], "unlock"], "no stop commands, no rollback"
