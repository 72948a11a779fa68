from deployctl.pipeline import Run, gate
from deployctl.runner import PhaseResult


def stats(**overrides):
    base = {k: {} for k in ("ok", "changed", "failures", "dark", "skipped", "ignored", "rescued", "processed")}
    base["ok"] = {"h1": 3}
    base["processed"] = {"h1": 1}
    base.update(overrides)
    return base


def result(status="successful", rc=0, stats_=None, error=None, **kwargs):
    return PhaseResult("deploy", status, rc, stats() if stats_ is None else stats_, error=error, **kwargs)


def test_successful_run_passes():
    assert gate(result())


def test_failed_or_unreachable_host_fails_even_with_rc_zero():
    assert not gate(result(stats_=stats(failures={"h1": 1})))
    assert not gate(result(stats_=stats(dark={"h2": 1})))


def test_rescued_and_ignored_hosts_pass():
    assert gate(result(stats_=stats(rescued={"h1": 1}, ignored={"h1": 1})))


def test_no_stats_is_a_failure():
    # timeout, cancel, a parse error or a --limit matching nothing leave no stats behind
    for status, rc in (("timeout", 254), ("canceled", 254), ("failed", 4), ("successful", 0)):
        assert not gate(PhaseResult("deploy", status, rc, None))


def test_status_and_rc_must_both_say_success():
    assert not gate(result(status="failed", rc=2))
    assert not gate(result(status="successful", rc=4))
    assert not gate(result(error="ansible-runner failed: TIMEOUT"))


def test_problem_names_the_hosts():
    failed = result(stats_=stats(failures={"h2": 1}, dark={"h3": 1}), failed={"h2": "boom"},
                    unreachable={"h3": "no route"})
    assert failed.problem() == "h2: boom; h3: unreachable: no route"
    assert PhaseResult("verify", "timeout", 254, None).problem() == "timed out"


def test_reports_are_read_per_host():
    reported = result(reports={"h1": {"state": {"live": "v1"}}, "h2": {"state": {"live": None}, "x": 1}})
    assert reported.report("state") == {"h1": {"live": "v1"}, "h2": {"live": None}}
    assert reported.report("missing") == {}


def test_run_limit_leaves_out_unreachable_hosts():
    run = Run(deployment=None, token="t")
    assert run.limit() is None
    assert run.limit(["h1", "h2"]) == "h1:h2"
    run.unreachable["h3"] = "down"
    assert run.limit() == "all:!h3"
    assert run.limit(["h1"]) == "h1:!h3"
