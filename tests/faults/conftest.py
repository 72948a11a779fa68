"""The fault suite: every test injects a real fault (a signal, a timeout, a dead control node, a second
terminal, a lost connection, a broken history) and checks that nothing was lost. The summary at the end
of a run counts them."""


def pytest_terminal_summary(terminalreporter):
    outcomes = {}
    for kind in ("passed", "failed", "error"):
        for report in terminalreporter.stats.get(kind, []):
            nodeid = getattr(report, "nodeid", "")
            if nodeid.startswith("tests/faults/") and getattr(report, "when", "call") == "call":
                outcomes[nodeid] = kind
    if outcomes:
        survived = sum(1 for kind in outcomes.values() if kind == "passed")
        terminalreporter.write_sep("-", f"faults tried: {len(outcomes)}, survived with nothing lost: {survived}")
