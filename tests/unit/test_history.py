from deployctl.history import History


def test_records_deployments_and_phases(tmp_path):
    history = History(tmp_path / "state" / "history.db")
    first = history.start("staging", "release", "v1")
    second = history.start("staging", "release", "v2")
    assert first.id.startswith("DEP-") and first.id != second.id
    history.add_phase(first, "deploy", "passed", 1.234, ["h1"], {}, {})
    history.add_phase(first, "verify", "failed", 2.0, [], {"h1": "503"}, {"h2": "no route"})
    first.details["before"] = {"h1": "v0"}
    history.finish(first, "rolled-back", 4)

    again = history.get(first.id)
    assert again.outcome == "rolled-back" and again.exit_code == 4 and again.finished_at
    assert again.details == {"before": {"h1": "v0"}}
    assert [p["name"] for p in again.phases] == ["deploy", "verify"]
    assert again.phases[1]["failed_hosts"] == {"h1": "503"}
    assert again.phases[1]["unreachable_hosts"] == {"h2": "no route"}
    assert again.phases[0]["seconds"] == 1.23

    assert [d.id for d in history.recent("staging")] == [second.id, first.id]
    assert [d.id for d in history.recent("staging", outcome="rolled-back")] == [first.id]
    assert history.recent("production") == []
    assert history.get("DEP-none") is None
