"""Scheduled verification: intervals, systemd units, cron lines, install/list/remove in tmp dirs."""

import os
import shlex
import stat
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from deployctl import schedule  # noqa: E402
from deployctl.errors import BadInput  # noqa: E402

PROGRAM = ["/opt/deployctl/bin/deployctl"]


@pytest.mark.parametrize("text, seconds", [
    ("1m", 60), ("15m", 900), ("90m", 5400), ("1h", 3600), ("12h", 43200), ("1d", 86400), (" 2D ", 172800),
])
def test_parse_interval(text, seconds):
    assert schedule.parse_interval(text) == seconds


@pytest.mark.parametrize("text, words", [
    ("30s", "shortest interval is 1m"), ("0m", "shortest interval is 1m"), ("15", "use minutes"),
    ("m", "use minutes"), ("1w", "use minutes"), ("-5m", "use minutes"), ("32d", "longest"),
])
def test_bad_intervals(text, words):
    with pytest.raises(BadInput, match=words):
        schedule.parse_interval(text)


def test_interval_forms():
    forms = [schedule.format_interval(s) for s in (60, 900, 3600, 5400, 86400)]
    assert forms == ["1m", "15m", "1h", "90m", "1d"]
    assert schedule.systemd_span(900) == "15min"
    assert schedule.systemd_span(3600) == "1h"


@pytest.mark.parametrize("every, line", [
    ("1m", "* * * * *"), ("5m", "*/5 * * * *"), ("15m", "*/15 * * * *"), ("60m", "0 * * * *"),
    ("1h", "0 * * * *"), ("6h", "0 */6 * * *"), ("1d", "0 0 * * *"),
])
def test_cron_schedules(every, line):
    assert schedule.cron_schedule(schedule.parse_interval(every)) == line


@pytest.mark.parametrize("every", ["45m", "90m", "7h", "2d"])
def test_cron_refuses_what_it_cannot_keep(every):
    with pytest.raises(BadInput, match="cron cannot run"):
        schedule.cron_schedule(schedule.parse_interval(every))


def job(tmp_path, every="15m", textfile=None, project_dir=None):
    project_dir = project_dir or tmp_path / "my project%1"
    command = schedule.verify_command(project_dir, "prod", textfile, PROGRAM)
    return schedule.Job("demo", "prod", schedule.parse_interval(every), command,
                        project_dir / ".deployctl" / "verify-prod.log", project_dir)


def test_verify_command():
    command = schedule.verify_command(Path("/srv/p"), "prod", Path("/var/lib/node/d.prom"), PROGRAM)
    assert command == [*PROGRAM, "--project-dir", "/srv/p", "-e", "prod", "verify",
                       "--prometheus-textfile", "/var/lib/node/d.prom"]
    assert schedule.verify_command(Path("/srv/p"), "prod", None, PROGRAM)[-1] == "verify"


def test_systemd_units(tmp_path):
    unit = job(tmp_path, textfile=Path("/var/lib/prom/x.prom"))
    service = schedule.render_service(unit)
    timer = schedule.render_timer(unit)
    assert "Type=oneshot" in service
    # % is a systemd specifier: escaped in the file, and the argv reads back unchanged
    assert "%%1" in service
    assert schedule.exec_start(service) == unit.command
    assert f"StandardOutput=append:{str(unit.log).replace('%', '%%')}" in service
    assert "OnUnitActiveSec=15min" in timer
    assert "Unit=deployctl-verify-demo-prod.service" in timer
    assert "WantedBy=timers.target" in timer


def test_cron_line(tmp_path):
    unit = job(tmp_path, every="1h")
    text = schedule.render_cron_file(unit, "root")
    line = [x for x in text.splitlines() if x and not x.startswith("#") and "=" not in x.split()[0]][0]
    fields = line.split(None, 6)
    assert fields[:6] == ["0", "*", "*", "*", "*", "root"]
    assert "\\%" in fields[6], "a bare % would end the cron command"
    command = fields[6].replace("\\%", "%")
    assert command.endswith(f">> {shlex.quote(str(unit.log))} 2>&1")
    assert shlex.split(command)[:len(unit.command)] == unit.command
    assert text.endswith("\n")


def test_job_names_are_file_safe():
    assert schedule.job_name("my.app", "prod eu/1") == "deployctl-verify-my-app-prod-eu-1"


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    systemd, cron = tmp_path / "systemd", tmp_path / "cron.d"
    monkeypatch.setenv("DEPLOYCTL_SYSTEMD_DIR", str(systemd))
    monkeypatch.setenv("DEPLOYCTL_CRON_DIR", str(cron))

    def no_systemctl(*argv, check=True):
        raise AssertionError(f"systemctl must not run for a test directory: {argv}")

    monkeypatch.setattr(schedule, "_run", no_systemctl)
    return systemd, cron


def test_install_list_remove_systemd(tmp_path, dirs, monkeypatch):
    systemd, _ = dirs
    monkeypatch.setenv("DEPLOYCTL_SCHEDULER", "systemd")
    project = tmp_path / "project"
    done = schedule.install("demo", "prod", project, "1h", program=PROGRAM)
    assert done["scheduler"] == "systemd" and done["every"] == "1h"
    service = systemd / "deployctl-verify-demo-prod.service"
    timer = systemd / "deployctl-verify-demo-prod.timer"
    assert done["files"] == [str(service), str(timer)]
    assert stat.S_IMODE(service.stat().st_mode) == 0o644
    assert schedule.exec_start(service.read_text()) == [*PROGRAM, "--project-dir", str(project), "-e", "prod",
                                                        "verify"]
    listed = schedule.list_jobs()
    assert [(j["name"], j["scheduler"], j["every"], j["environment"], j["project_dir"]) for j in listed] == [
        ("deployctl-verify-demo-prod", "systemd", "1h", "prod", str(project))]
    # installing again replaces the job
    schedule.install("demo", "prod", project, "15m", program=PROGRAM)
    assert "OnUnitActiveSec=15min" in timer.read_text()
    assert len(schedule.list_jobs()) == 1
    # the same name from another project directory is refused
    with pytest.raises(BadInput, match="remove it there first"):
        schedule.install("demo", "prod", tmp_path / "other", "15m", program=PROGRAM)
    assert schedule.remove("demo", "prod") == [str(timer), str(service)]
    assert schedule.list_jobs() == [] and schedule.remove("demo", "prod") == []


def test_install_list_remove_cron(tmp_path, dirs, monkeypatch):
    _, cron = dirs
    monkeypatch.setenv("DEPLOYCTL_SCHEDULER", "cron")
    project = tmp_path / "project"
    textfile = tmp_path / "metrics" / "demo.prom"
    with pytest.raises(BadInput, match="does not exist"):
        schedule.install("demo", "prod", project, "15m", textfile=textfile, program=PROGRAM)
    textfile.parent.mkdir()
    with pytest.raises(BadInput, match="cron cannot run"):
        schedule.install("demo", "prod", project, "45m", program=PROGRAM)
    assert not cron.exists() or not list(cron.iterdir())
    done = schedule.install("demo", "prod", project, "15m", textfile=textfile, program=PROGRAM)
    path = cron / "deployctl-verify-demo-prod"
    assert done["files"] == [str(path)] and done["schedule"] == "*/15 * * * *"
    listed = schedule.list_jobs()
    assert listed[0]["scheduler"] == "cron" and listed[0]["every"] == "15m"
    expected = [*PROGRAM, "--project-dir", str(project), "-e", "prod", "verify", "--prometheus-textfile",
                str(textfile)]
    assert shlex.split(listed[0]["command"])[:len(expected)] == expected
    assert [p.name for p in cron.iterdir()] == ["deployctl-verify-demo-prod"], "no temporary files left"
    assert schedule.remove("demo", "prod") == [str(path)]
    assert schedule.list_jobs() == []


def test_scheduler_detection(monkeypatch, tmp_path):
    monkeypatch.setenv("DEPLOYCTL_SCHEDULER", "upstart")
    with pytest.raises(BadInput):
        schedule.scheduler()
    monkeypatch.delenv("DEPLOYCTL_SCHEDULER")
    monkeypatch.setattr(schedule, "SYSTEMD_RUNNING", tmp_path / "nothing")
    assert schedule.scheduler() == "cron"
    monkeypatch.setattr(schedule, "SYSTEMD_RUNNING", tmp_path)
    assert schedule.scheduler() == "systemd"


def test_executable(monkeypatch, tmp_path):
    program = tmp_path / "bin" / "deployctl"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(program), "schedule", "install"])
    assert schedule.executable() == [str(program.resolve())]
    monkeypatch.setattr(sys, "argv", ["/usr/bin/pytest"])
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert schedule.executable() == [str(program.resolve())]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert schedule.executable() == [sys.executable, "-m", "deployctl"]


def test_non_root_users_get_their_crontab(tmp_path, monkeypatch):
    """A fake `crontab` keeps the table in a file; other entries of the user's crontab are left alone."""
    table = tmp_path / "table"
    table.write_text("MAILTO=ops\n0 3 * * * /usr/local/bin/backup\n")
    fake = tmp_path / "bin" / "crontab"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nif [ \"$1\" = -l ]; then cat {table}; else cat > {table}; fi\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    monkeypatch.setenv("DEPLOYCTL_SCHEDULER", "cron")
    monkeypatch.delenv("DEPLOYCTL_CRON_DIR", raising=False)
    monkeypatch.setenv("DEPLOYCTL_SYSTEMD_DIR", str(tmp_path / "systemd"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    project = tmp_path / "project"
    done = schedule.install("demo", "prod", project, "30m", program=PROGRAM)
    assert done["files"] == ["crontab"]
    text = table.read_text()
    original = "MAILTO=ops\n0 3 * * * /usr/local/bin/backup\n"
    assert text.startswith(original + "# BEGIN deployctl-verify-demo-prod\n")
    assert "\n*/30 * * * * /opt/deployctl/bin/deployctl --project-dir" in text
    schedule.install("demo", "prod", project, "1h", program=PROGRAM)
    assert table.read_text().count("# BEGIN deployctl-verify-demo-prod") == 1
    listed = schedule.list_jobs()
    assert [(j["scheduler"], j["every"]) for j in listed] == [("crontab", "1h")]
    assert listed[0]["command"].startswith("/opt/deployctl/bin/deployctl --project-dir")
    assert schedule.remove("demo", "prod") == ["crontab"]
    assert table.read_text() == original
