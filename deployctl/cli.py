"""The `deployctl` command line. Thin on purpose: it parses, confirms, and hands over to the pipeline."""

from __future__ import annotations

import os
import sys
import time
from importlib import metadata
from pathlib import Path

import click
from rich.markup import escape

from deployctl import __version__, reading, scaffold
from deployctl import project as projects
from deployctl import schedule as scheduling
from deployctl.console import Output, close_all, detach_dead_streams, table
from deployctl.errors import BadInput, DeployctlError, ExitCode
from deployctl.files import write_atomically
from deployctl.pipeline import Outcome, Pipeline
from deployctl.runner import strip_unsafe_environment

EXIT_CODES_HELP = """
\b
Exit codes:
  0  success                       6  locked by someone else, or an unfinished deployment
  1  unexpected error              7  verify: a check failed
  2  bad input or configuration    8  verify: could not run
  3  failed, nothing was changed   9  deployctl's own state (history) is unusable
  4  failed and rolled back      130  interrupted (what was changed is rolled back)
  5  failed and could not recover: needs a human
"""


class Context:
    def __init__(self, env: str, project_dir: Path | None, as_json: bool, yes: bool, quiet: bool, wide: bool):
        self.env_name, self.project_dir, self.yes = env, project_dir, yes
        self.output = Output(as_json=as_json, quiet=quiet, wide=wide)

    # the names of the global options, so that one given after the command can set them
    env = property(lambda self: self.env_name, lambda self, value: setattr(self, "env_name", value))
    as_json = property(lambda self: self.output.as_json, lambda self, value: setattr(self.output, "as_json", value))
    quiet = property(lambda self: self.output.quiet, lambda self, value: setattr(self.output, "quiet", value))
    wide = property(lambda self: self.output.wide, lambda self, value: setattr(self.output, "wide", value))

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


def _show(ctx: Context, view: reading.View) -> None:
    if view.error is not None:
        ctx.output.error(view.error)
    else:
        ctx.output.result(view.data, view.table, view.text)
    sys.exit(int(view.exit_code))


def _versions() -> str:
    found = []
    for package in ("ansible-core", "ansible-runner"):
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package} not installed")
    return ", ".join(found)


# Options every command takes, before the command or after it (`deployctl verify --json`), documented once.
GLOBAL_OPTIONS = (
    (("-e", "--env", "env"), {"default": "local", "show_default": True, "help": "Environment (an inventory)."}),
    (("--project-dir",), {"type": click.Path(file_okay=False, path_type=Path),
                          "help": "Project root (default: the nearest directory with a deployctl.yml)."}),
    (("--json", "as_json"), {"is_flag": True, "help": "Machine-readable output."}),
    (("-y", "--yes"), {"is_flag": True, "help": "Do not ask for confirmation on production environments."}),
    (("-q", "--quiet"), {"is_flag": True, "help": "No progress: the outcome line only (and errors)."}),
    (("--wide",), {"is_flag": True, "help": "Tables with every cell whole, however wide."}),
)


def _global_options(command):
    for declarations, options in reversed(GLOBAL_OPTIONS):
        command = click.option(*declarations, **options)(command)
    return command


def _also_after_the_command(group: click.Group) -> None:
    """Give every command of `group` the global options; one given there wins over the group's."""

    def given_after(click_ctx, param, value):
        if click_ctx.get_parameter_source(param.name) is not click.core.ParameterSource.DEFAULT:
            setattr(click_ctx.find_object(Context), param.name, value)

    for command in group.commands.values():
        if isinstance(command, click.Group):
            _also_after_the_command(command)
            continue
        for declarations, options in GLOBAL_OPTIONS:
            options = {**options, "default": False if options.get("is_flag") else None}
            options.pop("show_default", None)
            command.params.append(click.Option(declarations, expose_value=False, callback=given_after, hidden=True,
                                               **options))


@click.group(epilog=EXIT_CODES_HELP)
@click.version_option(__version__, message=f"%(prog)s %(version)s ({_versions()})")
@_global_options
@click.pass_context
def cli(click_ctx, env, project_dir, as_json, yes, quiet, wide):
    """Gated, auditable releases: the production checklist as one command.

    Progress goes to stderr: on a terminal one line updated in place, elsewhere a line per event.
    """
    click_ctx.obj = Context(env, project_dir, as_json, yes, quiet, wide)


@cli.command()
@click.argument("compose_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--host", "hosts", multiple=True,
              help="An app host of the environment, over SSH (repeat it; the first is also the db host). "
                   "Default: this machine, with the local connection.")
@click.option("--app-root", help="Where the compose project lives on the hosts (default /srv/<project>; with "
                                 "no --host, the compose file's directory).")
@click.pass_obj
def init(ctx: Context, compose_file, hosts, app_root):
    """Start a project from COMPOSE_FILE: deployctl.yml and an inventory for the environment (-e, default local).

    Detects the app's image and its services, workers, a Telegram bot, the database and Redis, the health URL
    and the secrets in the compose environment (written to a vault file to encrypt). The edits the compose
    file needs are written as compose-edits.patch, never made. Writes into --project-dir (default: here) and
    refuses, before writing anything, when a file it would write exists (exit 2).
    """
    done = scaffold.init(compose_file, ctx.project_dir or Path.cwd(), ctx.env_name, list(hosts), app_root)
    ctx.output.result(done.as_dict(), text=escape(done.text()))


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("version")
@click.option("--no-rollback", is_flag=True, help="On failure, stop and leave the hosts as they are.")
@click.option("--force", is_flag=True, help="Release VERSION again when it is already live (restarts it).")
@click.option("--plan", is_flag=True,
              help="Show what the release would do, per phase and host, and change nothing (Ansible's check mode).")
@click.pass_obj
def release(ctx: Context, version, no_rollback, force, plan):
    """Release VERSION: preflight, backup, maintenance on, deploy, migrate, verify, maintenance off."""
    projects.check_version(version)
    if plan:
        _show(ctx, reading.plan(ctx.pipeline().plan(version)))

    def again(live: str) -> bool:
        if force or ctx.yes:
            return True
        if not sys.stdin.isatty():
            return False
        with ctx.output.paused():
            try:
                return click.confirm(f"{live} is already live on every host. Release it again (restart, new "
                                     "backup set)?", err=True)
            except click.exceptions.Abort:  # Ctrl-C or end of input: no, and the question stays on its line
                click.echo(err=True)
                return False

    _finish(ctx, ctx.pipeline(f"Release {version}", no_rollback=no_rollback).release(version, again))


def data_options(command):
    """--keep-data / --restore-data, as one `data` argument: auto, keep or restore (never both)."""

    def choose(click_ctx, param, value):
        keep = click_ctx.params.pop("keep_data", False)
        if keep and value:
            raise click.BadParameter("choose one of --keep-data and --restore-data", ctx=click_ctx, param=param)
        return "restore" if value else ("keep" if keep else "auto")

    command = click.option("--restore-data", "data", is_flag=True, callback=choose,
                           help="Restore the backup set taken before what is undone, losing writes made since "
                                "(a safety set is taken first).")(command)
    return click.option("--keep-data", "keep_data", is_flag=True, is_eager=True,
                        help="Never restore the database: code only.")(command)


@cli.command(epilog=EXIT_CODES_HELP)
@click.option("--to", "to", help="Version to go back to (default: the release that went live before the live one).")
@data_options
@click.pass_obj
def rollback(ctx: Context, to, data):
    """Make the previous release (or --to VERSION) live again.

    The database is restored only when a release being undone changed the schema and restoring loses
    nothing: the live data is still what that release left. When users wrote since, the rollback refuses
    before touching anything and names the tables; choose --restore-data or --keep-data.
    """
    if to is not None:
        projects.check_version(to)
    _finish(ctx, ctx.pipeline("Roll back").rollback(to, data))


@cli.command(epilog=EXIT_CODES_HELP)
@click.option("--resolve", is_flag=True, help="Accept the hosts as the deployment left them, instead of rolling back.")
@click.option("--force", is_flag=True, help="Recover a deployment that ran on another control node.")
@data_options
@click.pass_obj
def recover(ctx: Context, resolve, force, data):
    """Finish a deployment whose deployctl died (killed, crashed, control node gone).

    Stops what it left running on every host, then rolls back exactly what it changed, to the versions it
    recorded, with its own backup set where it may have changed data; works from the hosts' own records
    when the history is lost.
    """
    _finish(ctx, ctx.pipeline("Recover the unfinished deployment").recover(resolve, data, force))


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
        reading.export_metrics(textfile, pipeline.history, outcome, pipeline.env.name, started,
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
    _show(ctx, reading.backups(ctx.pipeline()))


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


@cli.command(epilog=EXIT_CODES_HELP)
@click.option("--force", is_flag=True, help="Also break a lock another control node holds.")
@click.pass_obj
def unlock(ctx: Context, force):
    """Break the environment's lock left by a dead deployment (never one whose deployctl still runs).

    The dead deployment itself still needs `deployctl recover` to put back what it changed.
    """
    _finish(ctx, ctx.pipeline("Break the lock").unlock(force))


@cli.command()
@click.pass_obj
def status(ctx: Context):
    """What is live on each host, the maintenance flag, the lock holder, unfinished and last deployments."""
    _show(ctx, reading.status(ctx.pipeline()))


@cli.command()
@click.option("--limit", default=20, show_default=True)
@click.pass_obj
def history(ctx: Context, limit):
    """Past deployments of the environment, newest first."""
    project = projects.load(ctx.project_dir)
    _show(ctx, reading.history(project, project.environment(ctx.env_name).name, limit))


@cli.command()
@click.argument("deployment_id")
@click.option("--format", "fmt", type=click.Choice(["markdown", "json", "html"]),
              help="Output format (default markdown; json with --json; html: one page with the timeline).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the report to this file (whole or not at all) instead of stdout.")
@click.pass_obj
def report(ctx: Context, deployment_id, fmt, output):
    """DEPLOYMENT_ID against the checklist's targets: time, downtime, error rate, response time."""
    project = projects.load(ctx.project_dir)
    text = reading.report(project, deployment_id, fmt or ("json" if ctx.output.as_json else "markdown"))
    if output is None:
        click.echo(text.rstrip("\n"))
        return
    try:
        write_atomically(output, text)
    except OSError as exc:
        raise BadInput(f"cannot write {output}: {exc.strerror or exc}") from None
    ctx.output.progress(f"wrote {output}")


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
                                                              "project", "log"], rows, shorten=("log",)))


_also_after_the_command(cli)


def main() -> None:
    try:
        _main()
    finally:
        detach_dead_streams()


def _main() -> None:
    for name in strip_unsafe_environment():
        Output().progress(f"[yellow]{name} is ignored: it makes Ansible print or keep module arguments, "
                          "secrets included[/yellow]")
    try:
        try:
            cli.main(standalone_mode=False)
        finally:
            close_all()  # a live line still up when an error ends the command goes before the error is printed
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
    except Exception as exc:  # a bug: one line, the traceback only when asked for
        if os.environ.get("DEPLOYCTL_DEBUG"):
            raise
        Output(as_json="--json" in sys.argv).error(
            f"unexpected error: {exc.__class__.__name__}: {exc} (DEPLOYCTL_DEBUG=1 shows the traceback)")
        sys.exit(int(ExitCode.ERROR))
