"""The pipeline's decisions, phase by phase, against a scripted runner: what runs, in which order, and why.

The same paths run for real in tests/faults; these pin the decisions down in milliseconds.
"""

import os
import socket

import pytest

from deployctl import processes
from deployctl.console import Output
from deployctl.errors import DeployctlError, ExitCode, StateError
from deployctl.history import History
from deployctl.pipeline import Pipeline
from deployctl.project import Environment, Project
from tests.support.stub_runner import Answer, StubRunner

pytestmark = pytest.mark.unit

RELEASE = ["lock", "preflight", "backup", "maintenance on", "deploy", "migrate", "verify", "data state",
           "maintenance off", "unlock"]
DATA_A = {"tables": {"items": {"rows": 2, "digest": "a"}}, "objects": {}}
DATA_B = {"tables": {"items": {"rows": 3, "digest": "b"}}, "objects": {}}


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


def test_deploy_failure_stops_commands_then_rolls_back_code_only(make):
    pipeline, runner = make()
    release_answers(runner)
    runner.answer("deploy", Answer(failed={"localhost": "restart failed"}))
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.ROLLED_BACK
    assert runner.phases[4:] == ["deploy", "stop commands", "rollback", "verify", "data state", "maintenance off",
                                 "unlock"]
    rollback = runner.variables("rollback")
    assert rollback["deployctl_rollback_targets"] == {"localhost": "v1"}
    assert rollback["deployctl_restore_set_id"] == "", "migrate never started: the data stays"


def test_migrate_failure_restores_the_pre_release_set(make):
    pipeline, runner = make()
    runner.answer("migrate", Answer(failed={"localhost": "syntax error"}))
    release_answers(runner)
    outcome = pipeline.release("v2")
    assert outcome.exit_code == ExitCode.ROLLED_BACK and "database restored from S1" in outcome.message
    rollback = runner.variables("rollback")
    assert rollback["deployctl_restore_set_id"] == "S1"
    assert "S1" in rollback["deployctl_backup_protect"]
    assert rollback["deployctl_live_version"] == "v2", "the safety set says what was live"


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

    def interrupted(_):
        runner.cancel.set()
        return Answer(status="canceled")

    runner.answer("deploy", interrupted)
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


def test_history_ids_are_unique_within_a_second(tmp_path):
    history = History(tmp_path / "h.db")
    ids = {history.start("local", "verify", None).id for _ in range(20)}
    assert len(ids) == 20
