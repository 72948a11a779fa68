"""How a phase's events become its result when the run ends early or at the next gate."""

from deployctl.runner import PhaseEvents


def test_a_run_that_ended_without_final_stats_is_explained_by_its_last_error(tmp_path):
    stdout = tmp_path / "stdout"
    stdout.write_text("PLAY [x]\nERROR! the role 'typo' was not found\n\n")
    result = PhaseEvents("deploy").ended("failed", 4, 1.0, None, stdout)
    assert result.stats is None
    assert result.error == "ansible-playbook ended without a result (status failed, rc 4): " \
                           "ERROR! the role 'typo' was not found"


def test_a_phase_that_ends_at_the_next_gate_has_no_error():
    result = PhaseEvents("deploy").ended("successful", 0, 1.0, None)
    assert result.error is None and result.stats is not None


def test_a_timeout_is_not_explained_by_the_output(tmp_path):
    stdout = tmp_path / "stdout"
    stdout.write_text("ERROR! something\n")
    result = PhaseEvents("deploy").ended("timeout", None, 1.0, None, stdout)
    assert result.error is None and result.problem() == "timed out"


def test_an_error_already_known_is_kept(tmp_path):
    result = PhaseEvents("deploy").ended("error", None, 1.0, "ansible-runner failed: OSError: x", tmp_path / "none")
    assert result.error == "ansible-runner failed: OSError: x"


def test_a_failed_tasks_report_reaches_deployctl_as_a_passed_ones_does():
    """An action reports in its own result (plugin_utils/reports.py); a refused lock must still name its holder."""
    def event(kind: str, host: str, report: dict, **res) -> dict:
        stats = {"data": {"deployctl": {host: report}}, "per_host": False, "aggregate": True}
        return {"event": kind, "event_data": {"host": host, "task": "Change the release lock",
                                              "res": {"ansible_stats": stats, **res}}}

    events = PhaseEvents("lock")
    events.add(event("runner_on_ok", "h1", {"lock": {"deployment_id": "DEP-1"}, "held_by_other": False}))
    events.add(event("runner_on_failed", "h2", {"lock": {"deployment_id": "DEP-0"}, "held_by_other": True},
                     failed=True, msg="locked by DEP-0"))
    result = events.ended("failed", 2, 1.0, None)
    assert result.report("held_by_other") == {"h1": False, "h2": True}
    assert result.report("lock") == {"h1": {"deployment_id": "DEP-1"}, "h2": {"deployment_id": "DEP-0"}}
    assert result.failed == {"h2": "locked by DEP-0"}
