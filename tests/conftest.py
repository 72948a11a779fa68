"""Shared fixtures, and the markers every test carries (pytest -m unit | integration | "not slow").

Where a test lives says what it needs:

    tests/unit/                         unit: no server, no ansible/ansible-playbook run
    tests/integration/, tests/faults/,  integration: real ansible-runner runs, services, hosts or engines
    tests/molecule/, tests/support/

A test under tests/unit that needs more is marked `integration` where it is (then it is not `unit`).
`slow` (longer than a minute on the CI machine) comes from SLOW below or from a mark on the test; the
summary of a run lists the tests that took longer than that without the mark.
"""

import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
# the repository (tests.support, demo) and the collection's module_utils, as the modules import them
for path in (REPO, REPO / "collections"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from tests.support.databases import database, use_database  # noqa: E402
from tests.support.project import DemoProject  # noqa: E402
from tests.support.telegram import FakeBotAPI  # noqa: E402

UNIT_DIRS = {"unit"}
INTEGRATION_DIRS = {"integration", "faults", "molecule", "support"}

# Longer than a minute on the CI machine (2 CPUs, suite on 3 workers). A release of the demo app to localhost
# takes 20-60 s there, so: molecule scenarios (five or more playbook runs each), SSH fleets, Docker Compose
# stacks, long migrations, and tests with more than two releases or rollbacks. Node id prefixes.
SLOW = (
    "tests/molecule/",
    "tests/integration/test_compose.py",
    "tests/integration/test_compose_ship.py",
    "tests/integration/test_init.py",
    "tests/integration/test_container_data.py",
    "tests/integration/test_container_release.py",
    "tests/integration/test_seed_stack.py",
    "tests/integration/test_many_hosts.py",
    "tests/faults/test_remote.py",
    "tests/faults/test_databases.py",
    "tests/faults/test_interrupted_migration.py",
    "tests/faults/test_rollback_data.py",
    "tests/integration/test_release_local.py::test_release_upgrade_and_rollback",
    "tests/integration/test_plan.py::test_a_plan_says_what_the_release_would_do_and_changes_nothing",
    "tests/integration/test_progress.py::test_plain_lines_when_stderr_is_not_a_terminal",
    "tests/integration/test_progress.py::test_a_live_line_on_a_terminal_and_ctrl_c_in_the_middle_of_it",
    "tests/integration/test_release_local.py::test_failed_verify_rolls_back_code_and_database",
    "tests/faults/test_targets.py::test_five_rolled_back_releases_never_prune_the_rollback_target",
    "tests/faults/test_one_owner.py::test_backups_never_push_out_the_set_a_rollback_needs",
    "tests/faults/test_history.py::test_the_history_breaks_mid_release",
    "tests/faults/test_recover.py::test_sigkill_mid_deploy_then_recover",
    "tests/faults/test_recover.py::test_a_control_node_dying_while_the_bot_is_paused_then_recover_resumes_it",
    "tests/integration/test_telegram_bot.py::test_a_rolled_back_release_sets_the_webhook_again",
)
SLOW_SECONDS = 60

# `--dist loadfile` hands whole files to the workers in collection order (scripts/test passes
# --no-loadscope-reorder; xdist would otherwise start with the files that have the most tests, and leave the
# long ones with few tests for the end): the files that take longest on the CI machine go first, heaviest
# first, so that the workers finish together. The rest follow as collected, unit tests last.
LONGEST_FIRST = (
    "tests/integration/test_seed_stack.py",
    "tests/integration/test_compose.py",
    "tests/integration/test_refuse_before_touching.py",
    "tests/faults/test_targets.py",
    "tests/integration/test_many_hosts.py",
    "tests/faults/test_remote.py",
    "tests/faults/test_rollback_data.py",
    "tests/integration/test_container_release.py",
    "tests/faults/test_recover.py",
    "tests/integration/test_compose_ship.py",
    "tests/integration/test_init.py",
    "tests/faults/test_interrupted_migration.py",
    "tests/integration/test_foreign_app.py",
    "tests/integration/test_release_local.py",
    "tests/faults/test_one_owner.py",
    "tests/faults/test_databases.py",
    "tests/integration/test_telegram_bot.py",
    "tests/integration/test_rehearsal.py",
    "tests/integration/test_plan.py",
    "tests/integration/test_progress.py",
)


def _place(item) -> str | None:
    try:
        return item.path.relative_to(TESTS).parts[0]
    except ValueError:
        return None


def pytest_collection_modifyitems(config, items):
    collected_files = {item.nodeid.split("::", 1)[0] for item in items}
    matched = set()
    for item in items:
        place = _place(item)
        if place in INTEGRATION_DIRS:
            item.add_marker(pytest.mark.integration)
        elif place in UNIT_DIRS and item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.unit)
        if item.get_closest_marker("unit") and item.get_closest_marker("integration"):
            raise pytest.UsageError(f"{item.nodeid} is marked both unit and integration: it needs a server or "
                                    "ansible-playbook (then it is not a unit test), or it does not")
        if not (item.get_closest_marker("unit") or item.get_closest_marker("integration")):
            raise pytest.UsageError(f"{item.nodeid} has neither the unit nor the integration marker: put it under "
                                    "tests/unit or tests/integration (tests/conftest.py says how markers are given)")
        for prefix in SLOW:
            if item.nodeid.startswith(prefix):
                matched.add(prefix)
                item.add_marker(pytest.mark.slow)
    rank = {path: index for index, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0],
                                         len(rank) + (_place(item) in UNIT_DIRS)))  # stable: a file keeps its order
    stale = [p for p in SLOW if p not in matched and p.split("::", 1)[0] in collected_files]
    stale += [p for p in LONGEST_FIRST if not (REPO / p).is_file()]
    if stale:
        warnings.warn(f"tests/conftest.py names tests that do not exist (any more): {', '.join(stale)}",
                      stacklevel=1)


_durations: dict[str, list] = {}


def pytest_runtest_logreport(report):
    seconds, slow = _durations.get(report.nodeid, (0.0, False))
    _durations[report.nodeid] = [seconds + report.duration, slow or "slow" in report.keywords]


def pytest_terminal_summary(terminalreporter):
    # here, not in tests/faults/conftest.py: under xdist only this conftest reaches the summary
    faults = {}
    for kind in ("passed", "failed", "error"):
        for report in terminalreporter.stats.get(kind, []):
            nodeid = getattr(report, "nodeid", "")
            if nodeid.startswith("tests/faults/") and getattr(report, "when", "call") == "call":
                faults[nodeid] = kind
    if faults:
        survived = sum(1 for kind in faults.values() if kind == "passed")
        terminalreporter.write_sep("-", f"faults tried: {len(faults)}, survived with nothing lost: {survived}")
    unmarked = sorted((s, n) for n, (s, slow) in _durations.items() if s > SLOW_SECONDS and not slow)
    if unmarked:
        terminalreporter.write_sep("-", f"over {SLOW_SECONDS} s but not marked slow (tests/conftest.py SLOW)")
        for seconds, nodeid in reversed(unmarked):
            terminalreporter.write_line(f"{seconds:7.1f}s {nodeid}")


@pytest.fixture
def demo_project(tmp_path):
    """A fresh demo project; call it with settings to change them before the first run."""
    projects = []

    def make(**kwargs) -> DemoProject:
        project = DemoProject(tmp_path / f"project{len(projects)}", **kwargs)
        projects.append(project)
        return project

    yield make
    for project in projects:
        project.stop()


@pytest.fixture
def bot_api():
    """The local stand-in of the Telegram Bot API (tests/support/telegram.py), on a port of its own."""
    api = FakeBotAPI()
    yield api
    api.close()


@pytest.fixture
def mariadb_project(demo_project):
    """The demo app on its own MariaDB database and user (a password the app and the backup need)."""
    project = demo_project()
    with database("mysql") as (name, password):
        use_database(project, "mysql", name, password)
        try:
            yield project
        finally:
            project.stop()
