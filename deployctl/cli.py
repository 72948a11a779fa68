"""The `deployctl` command line. Thin on purpose: it parses, confirms, and hands over to the pipeline."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from deployctl import __version__
from deployctl import project as projects
from deployctl import report as reports
from deployctl import schedule as scheduling
from deployctl.console import Output, table
from deployctl.errors import BadInput, DeployctlError, ExitCode
from deployctl.history import History
from deployctl.pipeline import Outcome, Pipeline, gate

EXIT_CODES_HELP = """
\b
Exit codes:
  0  success                       5  failed and could not recover: needs a human
  1  unexpected error              6  the environment is locked by someone else
  2  bad input or configuration    7  verify: a check failed
  3  failed, nothing was changed   8  verify: could not run
  4  failed and rolled back      130  interrupted (what was changed is rolled back)
"""


class Context:
    def __init__(self, env: str, project_dir: Path | None, as_json: bool, yes: bool):
        self.env_name, self.project_dir, self.yes = env, project_dir, yes
        self.output = Output(as_json=as_json)

    def pipeline(self, confirm: str | None = None, **options) -> Pipeline:
        project = projects.load(self.project_dir)
        environment = project.environment(self.env_name)
        if confirm and environment.production and not self.yes:
            if not sys.stdin.isatty():
                raise BadInput(f"{environment.name} is a production environment: confirm with --yes")
            click.confirm(f"{confirm} on production environment {environment.name}?", abort=True, err=True)
        return Pipeline(project, environment, self.output, **options)


def _finish(ctx: Context, outcome: Outcome) -> None:
    ctx.output.result(outcome.as_dict(), text=f"{outcome.outcome}: {outcome.message}")
    sys.exit(int(outcome.exit_code))


@click.group(epilog=EXIT_CODES_HELP)
@click.version_option(__version__)
@click.option("-e", "--env", "env", default="local", show_default=True, help="Environment (an inventory).")
@click.option("--project-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Project root (default: the nearest directory with a deployctl.yml).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation on production environments.")
@click.pass_context
def cli(click_ctx, env, project_dir, as_json, yes):
    """Gated, auditable releases: the production checklist as one command."""
    click_ctx.obj = Context(env, project_dir, as_json, yes)


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("version")
@click.option("--no-rollback", is_flag=True, help="On failure, stop and leave the hosts as they are.")
@click.pass_obj
def release(ctx: Context, version, no_rollback):
    """Release VERSION: preflight, backup, maintenance on, deploy, migrate, verify, maintenance off."""
    projects.check_version(version)
    _finish(ctx, ctx.pipeline(f"Release {version}", no_rollback=no_rollback).release(version))


@cli.command(epilog=EXIT_CODES_HELP)
@click.option("--to", "to", help="Version to go back to (default: the one before the last release).")
@click.option("--keep-data", "data", flag_value="keep", help="Never restore the database.")
@click.option("--restore-data", "data", flag_value="restore",
              help="Restore the database set taken when the target version was live.")
@click.pass_obj
def rollback(ctx: Context, to, data):
    """Make the previous release (or --to VERSION) live again.

    By default the database is restored only when the release being undone ran migrations.
    """
    if to is not None:
        projects.check_version(to)
    _finish(ctx, ctx.pipeline("Roll back").rollback(to, data or "auto"))


@cli.command(epilog=EXIT_CODES_HELP)
@click.option("--prometheus-textfile", "textfile", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the result as node_exporter textfile-collector metrics (atomically).")
@click.pass_obj
def verify(ctx: Context, textfile):
    """Run the verification checks now (made for cron and systemd timers: deployctl schedule).

    A notification is sent when the environment's health changes (the first run only when it fails).
    """
    pipeline = ctx.pipeline()
    started, clock = time.time(), time.monotonic()
    outcome = pipeline.verify()
    if textfile is not None:
        scheduling.export_metrics(textfile, pipeline.history, outcome, pipeline.env.name, started,
                                  time.monotonic() - clock, ctx.output.progress)
    _finish(ctx, outcome)


@cli.command()
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option("--message", help="Shown to users while maintenance is on.")
@click.option("--until", help="When maintenance is expected to end (shown to users).")
@click.pass_obj
def maintenance(ctx: Context, state, message, until):
    """Turn maintenance mode on or off (workers stop while it is on)."""
    _finish(ctx, ctx.pipeline(f"Maintenance {state}").maintenance(state, message, until))


@cli.command()
@click.pass_obj
def backup(ctx: Context):
    """Take a verified backup set of the database and files now."""
    _finish(ctx, ctx.pipeline().backup())


@cli.command()
@click.pass_obj
def backups(ctx: Context):
    """List the backup sets."""
    result, sets = ctx.pipeline().backups()
    if not gate(result):
        ctx.output.error(f"could not list the backup sets: {result.problem()}")
        sys.exit(int(ExitCode.COULD_NOT_RUN))
    rows = [[s.get("set_id"), s.get("created_at"), s.get("live_version"), s.get("size_bytes"),
             "yes" if s.get("verified") else "NO"] for s in sets]
    ctx.output.result({"sets": sets}, table("Backup sets", ["id", "taken", "live version", "bytes", "verified"], rows))


@cli.command()
@click.argument("set_id")
@click.pass_obj
def restore(ctx: Context, set_id):
    """Restore backup set SET_ID (a safety set is taken first; maintenance is on meanwhile)."""
    pipeline = ctx.pipeline()
    if not ctx.yes:
        if not sys.stdin.isatty():
            raise BadInput("restoring replaces the live database: confirm with --yes")
        click.confirm(f"Replace the live database of {pipeline.env.name} with {set_id}?", abort=True, err=True)
    _finish(ctx, pipeline.restore(set_id))


@cli.command()
@click.pass_obj
def unlock(ctx: Context):
    """Remove the environment's lock, whoever holds it (after a control node died mid-release)."""
    _finish(ctx, ctx.pipeline("Break the lock").unlock())


@cli.command()
@click.pass_obj
def status(ctx: Context):
    """The version live on each host, who holds the lock, and the last deployment."""
    pipeline = ctx.pipeline()
    result, hosts = pipeline.state()
    last = pipeline.history.recent(pipeline.env.name, limit=1)
    data = {"environment": pipeline.env.name, "hosts": hosts,
            "unreachable": result.unreachable, "last_deployment": last[0].as_dict() if last else None}
    rows = [[h, s.get("live") or "-", s.get("previous") or "-",
             (s.get("lock") or {}).get("deployment_id", "")] for h, s in sorted(hosts.items())]
    rows += [[h, "UNREACHABLE", "", ""] for h in sorted(result.unreachable)]
    headers = ["host", "live", "previous", "locked by"]
    if any("containers" in s for s in hosts.values()):  # compose strategy: what each container runs, its health
        headers.append("containers")
        for row in rows:
            row.append(", ".join(f"{c.get('service')} {c.get('tag')} {c.get('health') or c.get('state')}"
                                 for c in hosts.get(row[0], {}).get("containers", [])))
    summary = (f"last: {last[0].id} {last[0].action} {last[0].version or ''} → {last[0].outcome}"
               if last else "no deployments yet")
    data["last_verification"] = pipeline.history.last_verification(pipeline.env.name)
    summary += "\n" + scheduling.verification_line(data["last_verification"])
    ctx.output.result(data, table(f"{pipeline.env.name}", headers, rows), summary)
    sys.exit(int(ExitCode.OK if gate(result) else ExitCode.COULD_NOT_RUN))


@cli.command()
@click.option("--limit", default=20, show_default=True)
@click.pass_obj
def history(ctx: Context, limit):
    """Past deployments of the environment, newest first."""
    project = projects.load(ctx.project_dir)
    env = project.environment(ctx.env_name)
    deployments = History(project.state_dir / "history.db").recent(env.name, limit=limit)
    rows = [[d.id, d.action, d.version or "", d.user, d.started_at, d.outcome, d.details.get("message", "")]
            for d in deployments]
    ctx.output.result([d.as_dict() for d in deployments],
                      table(f"History of {env.name}", ["id", "action", "version", "user", "started", "outcome",
                                                       "message"], rows))


@cli.command()
@click.argument("deployment_id")
@click.option("--format", "fmt", type=click.Choice(["markdown", "json"]),
              help="Output format (default markdown; json with --json).")
@click.pass_obj
def report(ctx: Context, deployment_id, fmt):
    """DEPLOYMENT_ID against the checklist's targets: time, downtime, error rate, response time."""
    project = projects.load(ctx.project_dir)
    history_db = History(project.state_dir / "history.db")
    text = reports.render(history_db, deployment_id, fmt or ("json" if ctx.output.as_json else "markdown"))
    click.echo(text.rstrip("\n"))


@cli.group()
def schedule():
    """Run `deployctl verify` on a timer on this control node (a systemd timer, else cron)."""


@schedule.command("install")
@click.option("--every", default="15m", show_default=True, help="Interval: Nm, Nh or Nd (at least 1m).")
@click.option("--textfile", type=click.Path(dir_okay=False, path_type=Path),
              help="Have verify write Prometheus textfile-collector metrics to this file.")
@click.option("--log", type=click.Path(dir_okay=False, path_type=Path),
              help="Where the runs' output goes (default .deployctl/verify-ENV.log).")
@click.pass_obj
def schedule_install(ctx: Context, every, textfile, log):
    """Install (or replace) the timer that runs verify on this environment."""
    project = projects.load(ctx.project_dir)
    env = project.environment(ctx.env_name)
    done = scheduling.install(project.app, env.name, project.root, every, textfile, log)
    if done.get("warning"):
        ctx.output.progress(f"[yellow]{done['warning']}[/yellow]")
    ctx.output.result(done, text=f"installed {done['name']} ({done['scheduler']}, every {done['every']}): "
                                 f"{', '.join(done['files'])}")


@schedule.command("remove")
@click.pass_obj
def schedule_remove(ctx: Context):
    """Remove this environment's timer."""
    project = projects.load(ctx.project_dir)
    env = project.environment(ctx.env_name)
    removed = scheduling.remove(project.app, env.name)
    ctx.output.result({"removed": removed}, text=f"removed {', '.join(removed)}" if removed else
                      f"nothing installed for {project.app} {env.name}")


@schedule.command("list")
@click.pass_obj
def schedule_list(ctx: Context):
    """The verification timers installed on this control node (every project)."""
    jobs = scheduling.list_jobs()
    rows = [[j["name"], j["scheduler"], j.get("every", "?"), j.get("environment", "?"),
             j.get("project_dir", "?"), j.get("log", "")] for j in jobs]
    ctx.output.result(jobs, table("Scheduled verifications", ["name", "scheduler", "every", "environment",
                                                              "project", "log"], rows))


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(int(ExitCode.BAD_INPUT))
    except click.exceptions.ClickException as exc:
        Output(as_json="--json" in sys.argv).error(exc.format_message())
        sys.exit(int(ExitCode.BAD_INPUT))
    except DeployctlError as exc:
        Output(as_json="--json" in sys.argv).error(str(exc))
        sys.exit(int(exc.exit_code))
    except SystemExit:
        raise
