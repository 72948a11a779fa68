"""Scheduled verification: a systemd timer or a cron entry on the control node, installed, removed, listed.

`deployctl schedule install --every 15m` installs a job running

    <deployctl> --project-dir <root> -e <env> verify [--prometheus-textfile <path>]  >> <log>

as a systemd timer + service (`/etc/systemd/system/deployctl-verify-<project>-<env>.{service,timer}`) when
systemd runs the machine (`/run/systemd/system` exists), else as a cron entry
(`/etc/cron.d/deployctl-verify-<project>-<env>` as root, the user's crontab otherwise).

For tests and unusual machines: DEPLOYCTL_SCHEDULER=systemd|cron picks the scheduler,
DEPLOYCTL_SYSTEMD_DIR and DEPLOYCTL_CRON_DIR move the files; `systemctl` is only called for the real
systemd directory.

Every file carries a `# deployctl-schedule: {json}` line, which `schedule list` and `schedule remove` read.
What verify writes for Prometheus (--prometheus-textfile) is in deployctl.reading.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from deployctl.errors import BadInput, DeployctlError
from deployctl.files import write_atomically

SYSTEMD_DIR = Path("/etc/systemd/system")
CRON_DIR = Path("/etc/cron.d")
SYSTEMD_RUNNING = Path("/run/systemd/system")
PREFIX = "deployctl-verify-"
MARK = "# deployctl-schedule: "
MIN_SECONDS, MAX_SECONDS = 60, 31 * 86400
CRON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_UNITS = {"m": 60, "h": 3600, "d": 86400}
_INTERVAL = re.compile(r"^([0-9]+)([a-z]+)$")


# ---------------------------------------------------------------- intervals


def parse_interval(text: str) -> int:
    """'15m', '1h', '1d' → seconds. The shortest interval is one minute."""
    match = _INTERVAL.match(str(text).strip().lower())
    if not match or match.group(2) not in _UNITS:
        if match and match.group(2) in ("s", "sec", "secs"):
            raise BadInput(f"invalid interval {text!r}: the shortest interval is 1m")
        raise BadInput(f"invalid interval {text!r}: use minutes, hours or days (15m, 1h, 1d)")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds < MIN_SECONDS:
        raise BadInput(f"invalid interval {text!r}: the shortest interval is 1m")
    if seconds > MAX_SECONDS:
        raise BadInput(f"invalid interval {text!r}: the longest interval is 31d")
    return seconds


def format_interval(seconds: int) -> str:
    """Seconds → the shortest exact form: 900 → '15m', 3600 → '1h', 172800 → '2d'."""
    for suffix, size in (("d", 86400), ("h", 3600)):
        if seconds % size == 0:
            return f"{seconds // size}{suffix}"
    return f"{seconds // 60}m"


def systemd_span(seconds: int) -> str:
    return format_interval(seconds).replace("m", "min")


def cron_schedule(seconds: int) -> str:
    """The cron fields for an interval; only intervals cron can keep exactly are accepted."""
    minutes, hours = seconds // 60, seconds // 3600
    if seconds % 86400 == 0 and seconds // 86400 == 1:
        return "0 0 * * *"
    if seconds % 3600 == 0 and 24 % hours == 0:
        return "0 * * * *" if hours == 1 else f"0 */{hours} * * *"
    if seconds % 60 == 0 and minutes < 60 and 60 % minutes == 0:
        return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
    raise BadInput(f"cron cannot run something exactly every {format_interval(seconds)}: use a divisor of 60 "
                   "minutes (1m, 5m, 15m, 30m), of 24 hours (1h, 2h, 6h, 12h) or 1d")


# ---------------------------------------------------------------- the job


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def job_name(project: str, environment: str) -> str:
    return f"{PREFIX}{slug(project)}-{slug(environment)}"


def executable() -> list[str]:
    """How to run this deployctl again from a timer: an absolute path, never relying on PATH."""
    argv0 = Path(sys.argv[0])
    if argv0.name.startswith("deployctl") and argv0.suffix != ".py" and argv0.is_file() \
            and os.access(argv0, os.X_OK):
        return [str(argv0.resolve())]
    found = shutil.which("deployctl")
    if found:
        return [str(Path(found).resolve())]
    return [sys.executable, "-m", "deployctl"]


def verify_command(project_root: Path, environment: str, textfile: Path | None = None,
                   program: list[str] | None = None) -> list[str]:
    command = [*(program or executable()), "--project-dir", str(project_root), "-e", environment, "verify"]
    if textfile is not None:
        command += ["--prometheus-textfile", str(textfile)]
    return command


@dataclass
class Job:
    project: str
    environment: str
    seconds: int
    command: list[str]
    log: Path
    project_dir: Path

    @property
    def name(self) -> str:
        return job_name(self.project, self.environment)

    def meta(self) -> str:
        return MARK + json.dumps({"project": self.project, "environment": self.environment,
                                  "every": format_interval(self.seconds),
                                  "project_dir": str(self.project_dir), "log": str(self.log)})


def _systemd_arg(arg: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_./:=@+,-]+", arg):
        arg = '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg.replace("%", "%%").replace("$", "$$")


def render_service(job: Job) -> str:
    log = str(job.log).replace("%", "%%")
    return (
        f"{job.meta()}\n"
        "# Installed by `deployctl schedule install`; remove with `deployctl schedule remove`.\n"
        "[Unit]\n"
        f"Description=deployctl verify of {job.project} {job.environment}\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"ExecStart={' '.join(_systemd_arg(a) for a in job.command)}\n"
        f"StandardOutput=append:{log}\n"
        f"StandardError=append:{log}\n"
    )


def render_timer(job: Job) -> str:
    return (
        f"{job.meta()}\n"
        "[Unit]\n"
        f"Description=deployctl verify of {job.project} {job.environment}, "
        f"every {format_interval(job.seconds)}\n"
        "\n"
        "[Timer]\n"
        "OnActiveSec=1min\n"
        f"OnUnitActiveSec={systemd_span(job.seconds)}\n"
        "AccuracySec=10s\n"
        f"Unit={job.name}.service\n"
        "\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )


def cron_command(job: Job) -> str:
    line = f"{shlex.join(job.command)} >> {shlex.quote(str(job.log))} 2>&1"
    return line.replace("%", "\\%")  # cron turns a bare % into a newline


def render_cron_file(job: Job, user: str) -> str:
    return (
        f"{job.meta()}\n"
        "# Installed by `deployctl schedule install`; remove with `deployctl schedule remove`.\n"
        "SHELL=/bin/sh\n"
        f"PATH={CRON_PATH}\n"
        f"{cron_schedule(job.seconds)} {user} {cron_command(job)}\n"
    )


def render_crontab_block(job: Job) -> str:
    return (f"# BEGIN {job.name}\n{job.meta()}\n{cron_schedule(job.seconds)} {cron_command(job)}\n"
            f"# END {job.name}\n")


# ---------------------------------------------------------------- where it goes


def scheduler() -> str:
    forced = os.environ.get("DEPLOYCTL_SCHEDULER", "").strip()
    if forced:
        if forced not in ("systemd", "cron"):
            raise BadInput(f"DEPLOYCTL_SCHEDULER must be systemd or cron, not {forced!r}")
        return forced
    return "systemd" if SYSTEMD_RUNNING.is_dir() else "cron"


def systemd_dir() -> Path:
    return Path(os.environ.get("DEPLOYCTL_SYSTEMD_DIR") or SYSTEMD_DIR)


def cron_dir() -> Path:
    return Path(os.environ.get("DEPLOYCTL_CRON_DIR") or CRON_DIR)


def _real_systemd() -> bool:
    return systemd_dir() == SYSTEMD_DIR


def _use_crontab() -> bool:
    """Non-root users without a cron directory of their own get their crontab."""
    return not os.environ.get("DEPLOYCTL_CRON_DIR") and os.geteuid() != 0


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        if check:
            raise DeployctlError(f"{' '.join(argv)} failed: {exc}") from None
        return subprocess.CompletedProcess(argv, 1, "", str(exc))
    if check and done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DeployctlError(f"{' '.join(argv)} failed (rc {done.returncode}): {last}")
    return done


def _crontab_text() -> str:
    if not shutil.which("crontab"):
        return ""
    done = _run("crontab", "-l", check=False)
    return done.stdout if done.returncode == 0 else ""


def _write_crontab(text: str) -> None:
    try:
        done = subprocess.run(["crontab", "-"], input=text, text=True, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeployctlError(f"crontab failed: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DeployctlError(f"crontab failed (rc {done.returncode}): {last}")


def _without_block(text: str, name: str) -> str:
    pattern = re.compile(rf"^# BEGIN {re.escape(name)}\n.*?^# END {re.escape(name)}\n?", re.M | re.S)
    return pattern.sub("", text)


# ---------------------------------------------------------------- commands


def install(project: str, environment: str, project_dir: Path, every: str, textfile: Path | None = None,
            log: Path | None = None, program: list[str] | None = None) -> dict:
    """Install (or replace) the verification job of one environment; returns what was installed."""
    seconds = parse_interval(every)
    kind = scheduler()
    if kind == "cron":
        cron_schedule(seconds)  # refuse an interval cron cannot keep before touching anything
    project_dir = project_dir.resolve()
    if textfile is not None:
        textfile = textfile.expanduser().resolve()
        if not textfile.parent.is_dir():
            raise BadInput(f"--textfile: directory {textfile.parent} does not exist")
    if log is None:
        log = project_dir / ".deployctl" / f"verify-{slug(environment)}.log"
    log = log.expanduser().resolve()
    log.parent.mkdir(parents=True, exist_ok=True)
    job = Job(project, environment, seconds, verify_command(project_dir, environment, textfile, program),
              log, project_dir)
    for other in list_jobs():
        if other["name"] == job.name and other.get("project_dir") not in (None, str(project_dir)):
            raise BadInput(f"{job.name} is installed for {other['project_dir']}; remove it there first")
    files: list[str] = []
    if kind == "systemd":
        directory = systemd_dir()
        if _real_systemd() and os.geteuid() != 0:
            raise BadInput("installing a systemd timer needs root "
                           "(or DEPLOYCTL_SCHEDULER=cron for your own crontab)")
        service, timer = directory / f"{job.name}.service", directory / f"{job.name}.timer"
        _write(service, render_service(job))
        _write(timer, render_timer(job))
        files = [str(service), str(timer)]
        if _real_systemd():
            _run("systemctl", "daemon-reload")
            _run("systemctl", "enable", "--now", timer.name)
        schedule = f"OnUnitActiveSec={systemd_span(seconds)}"
    elif _use_crontab():
        if not shutil.which("crontab"):
            raise BadInput("crontab is not installed (apt-get install cron)")
        current = _without_block(_crontab_text(), job.name)
        text = (current.rstrip("\n") + "\n" if current.strip() else "") + render_crontab_block(job)
        _write_crontab(text)
        files = ["crontab"]
        schedule = cron_schedule(seconds)
    else:
        path = cron_dir() / job.name
        _write(path, render_cron_file(job, getpass.getuser()))
        files = [str(path)]
        schedule = cron_schedule(seconds)
    result = {"name": job.name, "scheduler": kind, "every": format_interval(seconds), "schedule": schedule,
              "command": shlex.join(job.command), "log": str(log), "files": files}
    if kind == "cron" and cron_dir() == CRON_DIR and not (shutil.which("cron") or shutil.which("crond")):
        result["warning"] = "cron is not installed here: the entry runs once it is (apt-get install cron)"
    return result


def remove(project: str, environment: str) -> list[str]:
    """Remove the environment's verification job wherever it is installed; returns what was removed."""
    name = job_name(project, environment)
    removed: list[str] = []
    directory = systemd_dir()
    timer, service = directory / f"{name}.timer", directory / f"{name}.service"
    if timer.exists() or service.exists():
        if _real_systemd():
            _run("systemctl", "disable", "--now", timer.name, check=False)
        for path in (timer, service):
            if path.exists():
                path.unlink()
                removed.append(str(path))
        if _real_systemd():
            _run("systemctl", "daemon-reload", check=False)
    cron_file = cron_dir() / name
    if cron_file.exists():
        cron_file.unlink()
        removed.append(str(cron_file))
    if _use_crontab():
        current = _crontab_text()
        kept = _without_block(current, name)
        if kept != current:
            _write_crontab(kept)
            removed.append("crontab")
    return removed


def _meta(text: str) -> dict:
    for line in text.splitlines():
        if line.startswith(MARK):
            try:
                return json.loads(line[len(MARK):])
            except ValueError:
                return {}
    return {}


def exec_start(service_text: str) -> list[str]:
    """The argv of a service's ExecStart= line (systemd's escapes undone)."""
    for line in service_text.splitlines():
        if line.startswith("ExecStart="):
            return shlex.split(line[len("ExecStart="):].replace("%%", "%").replace("$$", "$"))
    return []


def _cron_line_command(text: str, fields: int) -> str:
    """The command of the first schedule line: after the 5 time fields (and the user in /etc/cron.d)."""
    for line in text.splitlines():
        if not line.strip() or line.startswith("#") or re.match(r"^[A-Za-z_]+=", line):
            continue
        parts = line.split(None, fields)
        return parts[fields].replace("\\%", "%") if len(parts) > fields else ""
    return ""


def list_jobs() -> list[dict]:
    """Every deployctl verification job installed (any project), from its files."""
    jobs = []
    directory = systemd_dir()
    if directory.is_dir():
        for timer in sorted(directory.glob(f"{PREFIX}*.timer")):
            service = timer.with_suffix(".service")
            service_text = service.read_text() if service.exists() else ""
            meta = _meta(timer.read_text()) or _meta(service_text)
            jobs.append({"name": timer.stem, "scheduler": "systemd", **meta,
                         "command": shlex.join(exec_start(service_text)),
                         "files": [str(service), str(timer)]})
    directory = cron_dir()
    if directory.is_dir():
        for path in sorted(directory.glob(f"{PREFIX}*")):
            if path.name.startswith(".") or not path.is_file():
                continue
            text = path.read_text()
            command = _cron_line_command(text, fields=6)
            jobs.append({"name": path.name, "scheduler": "cron", **_meta(text), "command": command,
                         "files": [str(path)]})
    if _use_crontab():
        crontab = _crontab_text()
        for match in re.finditer(rf"^# BEGIN ({PREFIX}\S+)\n(.*?)^# END ", crontab, re.M | re.S):
            body = match.group(2)
            command = _cron_line_command(body, fields=5)
            jobs.append({"name": match.group(1), "scheduler": "crontab", **_meta(body), "command": command,
                         "files": ["crontab"]})
    return jobs
