"""`deployctl release VERSION --plan` against a live environment (the demo's v1 released to localhost): what
the release of v2 would do, and proof that nothing changed: the hosts' release records and lock, the app
root's files, the backup sets, the history and the database. The tests share one live v1 and change nothing."""

import hashlib
import json
import os
import stat

import pytest

from tests.support.project import DemoProject

pytestmark = pytest.mark.integration

ADD_PRICE = ["add_price:ALTER TABLE items ADD COLUMN price INTEGER"]


def tree(root) -> dict[str, tuple]:
    """Every entry under `root`: its type, mode, and content (a file's sha256, a link's target). The app's own
    logs and pid files are the running app's, not deployctl's, and are left out."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root)
            if relative.startswith(("srv/app/shared/log", "srv/app/shared/run")):
                continue
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                found[relative] = ("link", os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                with open(path, "rb") as handle:
                    found[relative] = ("file", stat.S_IMODE(info.st_mode), hashlib.sha256(handle.read()).hexdigest())
            else:
                found[relative] = ("dir", stat.S_IMODE(info.st_mode))
    return found


@pytest.fixture(scope="module")
def live_v1(tmp_path_factory):
    project = DemoProject(tmp_path_factory.mktemp("plan") / "project",
                          group_vars={"deployctl_migrate_pending_command": "bin/migrate --pending"})
    project.build("v1")
    project.build("v2", migrations=ADD_PRICE)
    released = project.run("release", "v1")
    assert released.code == 0, released
    project.released = released.data["deployment"]["id"]
    # what the release's one run left: no raw events, facts or command line (they can hold secrets)
    artifacts = project.root / ".deployctl" / "runs" / project.released / "artifacts" / "01-release"
    assert sorted(p.name for p in artifacts.iterdir()) == ["rc", "status", "stderr", "stdout"]
    yield project
    project.stop()


@pytest.fixture
def unchanged(live_v1):
    """The project as v1 left it: after the test, it must be byte for byte the same (the runs directory of the
    release aside, which a plan never writes into)."""
    before = tree(live_v1.root)
    yield live_v1
    after = tree(live_v1.root)
    assert {k: v for k, v in after.items() if k not in before} == {}, "a plan left something behind"
    assert {k: v for k, v in before.items() if after.get(k) != v} == {}, "a plan changed something"


def test_a_plan_says_what_the_release_would_do_and_changes_nothing(unchanged):
    project = unchanged
    planned = project.run("release", "v2", "--plan")
    assert planned.code == 0 and planned.outcome == "planned", planned
    plan = planned.data["plan"]
    phases = [p["phase"] for p in plan["phases"]]
    assert phases == ["lock", "preflight", "backup", "stage", "maintenance on", "migrate", "deploy", "verify",
                      "data state", "maintenance off", "unlock"], "the release's own phases"
    would = {p["phase"]: p["hosts"]["localhost"]["changes"] for p in plan["phases"]}
    assert would["lock"] and would["maintenance on"] and would["deploy"], would
    assert would["stage"] == ["Unpack the release, mark it complete, link the shared directories into it and give "
                              "it the .env it will have"]
    assert would["migrate"] == [], "the plan's own temporary unpack is not a change the release makes"
    assert all(p["hosts"]["localhost"]["problem"] is None for p in plan["phases"])
    assert plan["rollback_target"] == {"localhost": "v1"}
    assert plan["backup"]["host"] == "localhost" and plan["backup"]["pruned"] == []
    assert plan["migrations"] == {"host": "localhost", "status": "0001_create_items", "pending": ["0002_add_price"],
                                  "problem": ""}
    assert "v2" not in os.listdir(project.app_root / "releases") and project.served_version() == "v1"
    assert not [p for p in os.listdir("/tmp") if p.startswith("deployctl-plan-")], "the temporary unpack is removed"
    history = project.run("history").data
    assert [d["id"] for d in history] == [project.released], "no deployment in the history"


def test_a_plan_with_a_typo_in_the_version_stops_where_the_release_would(unchanged):
    planned = unchanged.run("release", "v2.0", "--plan")
    assert planned.code == 3 and planned.outcome == "unchanged", planned
    assert "demo-v2.0.tar.gz does not exist on the control node" in planned.data["message"]
    assert planned.data["message"].startswith("the release would stop: preflight failed")


def test_a_plan_while_another_deployment_holds_the_lock(unchanged):
    project = unchanged
    lock = project.app_root / ".deployctl" / "lock"
    holder = {"deployment_id": "DEP-20261201-090000", "user": "bob", "control_node": "ops-laptop", "pid": 4242}
    lock.write_text(json.dumps({"token": "theirs", "holder": holder, "since": "2026-12-01T09:00:00Z"}))
    try:
        held = lock.read_bytes()
        planned = project.run("release", "v2", "--plan")
        assert planned.code == 6 and planned.outcome == "locked", planned
        assert "locked by bob@ops-laptop (DEP-20261201-090000" in planned.data["message"]
        assert lock.read_bytes() == held, "the other deployment's lock is untouched"
    finally:
        lock.unlink()


def test_the_deployment_as_a_web_page(unchanged, tmp_path):
    page = tmp_path / "report.html"
    done = unchanged.run("report", unchanged.released, "--format", "html", "-o", str(page), as_json=False)
    assert done.code == 0, done
    text = page.read_text()
    assert f"{unchanged.released}: release v1 on local" in text
    assert text.count('class="phase passed"') == 11 and 'class="window"' in text
    assert 'class="verify passed" cx=' in text and "1 of 1 checks passed" in text
