"""The release pipeline: phases in checklist order, a gate after each, recovery when a gate fails.

Every command that changes servers runs here as a sequence of phases (deployctl.phases). `gate` decides
whether a phase passed; `Pipeline` decides what happens next, writes every fact recovery needs into the
history the moment it is known, and recovers: it stops what the deployment started, on the control node
and on every host, before it puts back code and data.
"""

from __future__ import annotations

import getpass
import shutil
import signal
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from deployctl import processes, variables
from deployctl.console import Output
from deployctl.data import migrated, reopened, unexplained_changes
from deployctl.errors import DeployctlError, ExitCode, StateError
from deployctl.history import RUNNING, Deployment, History, now
from deployctl.notify import ANNOUNCED_ACTIONS, Notifier, finish_event, verification_event
from deployctl.phases import PHASES, Phase
from deployctl.project import Environment, Project
from deployctl.report import predicted_window
from deployctl.runner import AnsibleRunner, PhaseResult, Stream, content_dir

# How a deployment's entries end in the hosts' records, by its outcome (deployctl.core.release_record).
SETTLED = {"live": "live", "rolled-back": "undone", "interrupted": "undone", "recovered": "undone"}


def gate(result: PhaseResult) -> bool:
    """A phase passes only when ansible-runner finished successfully and no host failed or vanished.

    rc alone is not enough (4 means both "unreachable" and "parser error"), and stats are None after a
    timeout, a cancel or a playbook that never started: all of those are failures. So is a phase that ran
    on no host at all (a group missing from the inventory): it did nothing it was meant to.
    """
    if result.error is not None or result.stats is None:
        return False
    if result.status != "successful" or result.rc != 0:
        return False
    return bool(result.stats["processed"]) and not result.stats["failures"] and not result.stats["dark"]


@dataclass
class Outcome:
    exit_code: ExitCode
    outcome: str  # live, unchanged, rolled-back, needs-human, locked, interrupted, ok, checks-failed...
    message: str
    deployment: Deployment | None = None
    data: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        result = {"outcome": self.outcome, "exit_code": int(self.exit_code), "message": self.message}
        if self.deployment is not None:
            result["deployment"] = self.deployment.as_dict()
        result.update(self.data)
        return result


class Interrupted(Exception):
    pass


class Refused(Exception):
    """A command stops before it changes anything; carries the outcome to report."""

    def __init__(self, code: ExitCode, outcome: str, message: str):
        super().__init__(message)
        self.code, self.outcome, self.message = code, outcome, message


@dataclass
class Run:
    """One deployment in progress. What recovery decides from lives in `deployment.details`, written ahead."""

    deployment: Deployment
    token: str
    locked: bool = False
    touched: bool = False
    unreachable: dict[str, str] = field(default_factory=dict)
    checks: dict | None = None  # structured results of the first verify phase: {host: [check, ...]}
    settle: dict[str, str] = field(default_factory=dict)  # other deployments to settle on the hosts
    failure_output: dict[str, dict] = field(default_factory=dict)  # the failed phase's tasks and their output
    plan: list[Phase] = field(default_factory=list)  # the phases the command means to run, when all goes well
    stream: Stream | None = None  # the one ansible-playbook run of the plan, while it goes as planned
    stream_vars: dict = field(default_factory=dict)  # the extra vars it was started with
    predicted: list[dict] = field(default_factory=list)  # a plan's phases: what each would do on each host

    @property
    def details(self) -> dict:
        return self.deployment.details

    @property
    def before(self) -> dict[str, str | None]:
        return self.details.get("before") or {}

    def limit(self, hosts: list[str] | None = None) -> str | None:
        """Host pattern for the next phase: the given hosts (or all), never the unreachable ones."""
        pattern = ":".join(hosts) if hosts is not None else "all"
        if self.unreachable:
            pattern += "".join(f":!{host}" for host in sorted(self.unreachable))
        return None if pattern == "all" else pattern


class Pipeline:
    def __init__(self, project: Project, environment: Environment, output: Output,
                 no_rollback: bool = False, runner: AnsibleRunner | None = None):
        self.project = project
        self.env = environment
        self.output = output
        self.no_rollback = no_rollback
        self.runner = runner or AnsibleRunner(
            inventory=environment.inventory,
            runs_dir=project.state_dir / "runs",
            project_root=project.root,
            forks=environment.forks or 50,
            timeout=environment.phase_timeout,
            on_event=output.on_event,
        )
        self._history: History | None = None
        self._history_error: str | None = None
        self._recovering = False
        self.planning = False  # `release --plan`: check mode, no history, no notification, no recovery
        self._runs: list[Run] = []  # the runs this pipeline started
        self.planned_again: str | None = None  # the version a plan found live already
        self.notifier = Notifier(environment.notify, project.app, environment.name, output.progress)

    @property
    def history_path(self) -> Path:
        return self.project.state_dir / "history.db"

    @property
    def history(self) -> History:
        if self._history is None:
            self._history = History(self.history_path)
        return self._history

    # ---------------------------------------------------------------- commands

    def release(self, version: str, again: Callable[[str], bool] = lambda version: False) -> Outcome:
        """Release `version`; when it is already live on every host, only if `again(version)` says so."""
        return self._command("release", version, lambda run: self._release(run, version, again), self._recover)

    def plan(self, version: str) -> Outcome:
        """What releasing `version` would do, phase by phase and host by host, changing nothing: the release's
        own sequence and gates, its phases in Ansible's check mode. No deployment reaches the history or the
        hosts' records, no lock is taken, no notification goes out, and a phase that would fail is reported,
        not recovered from. The exit code is the one the release would end with, as far as a plan can tell."""
        self.planning = self.runner.check = True

        def again(live: str) -> bool:
            self.planned_again = live
            return True

        try:
            return self._command("release", version, lambda run: self._release(run, version, again), self._recover)
        finally:
            for run in self._runs:  # ansible-runner's private directory of the run: nothing stays behind
                shutil.rmtree(self.runner.runs_dir / run.deployment.id, ignore_errors=True)

    def rollback(self, to: str | None = None, data: str = "auto") -> Outcome:
        """Go back to the release before the live one (or to `to`), with its data when that loses nothing."""
        return self._command("rollback", to, lambda run: self._rollback(run, to, data), self._stop_interrupted)

    def restore(self, set_id: str) -> Outcome:
        return self._command("restore", None, lambda run: self._restore(run, set_id), self._stop_interrupted)

    def recover(self, resolve: bool = False, data: str = "auto", force: bool = False) -> Outcome:
        result, hosts = self.state()
        if result.stats is not None and self._find_unfinished(hosts) is None:
            return Outcome(ExitCode.OK, "ok", "no unfinished deployment: nothing to recover")
        return self._command("recover", None, lambda run: self._recover_unfinished(run, resolve, data, force),
                             self._stop_interrupted, needs_history=False)

    def backup(self) -> Outcome:
        def body(run: Run) -> Outcome:
            run.plan = [Phase.LOCK, Phase.STATE, Phase.BACKUP, Phase.UNLOCK]
            self._lock(run)
            state = self._phase(run, Phase.STATE, {})
            self._note(run, before={h: s.get("live") for h, s in state.report("state").items()})
            result = self._backup(run, "manual")
            if not gate(result):
                return self._finish(run, ExitCode.FAILED_UNCHANGED, "failed", f"backup failed: {result.problem()}")
            return self._finish(run, ExitCode.OK, "ok", f"backup set {run.details['backup_set']} taken and verified")

        return self._command("backup", None, body, self._stop_interrupted)

    def maintenance(self, state: str, message: str | None, until: str | None) -> Outcome:
        variables = {}
        if message:
            variables["deployctl_maintenance_message"] = message
        if until:
            variables["deployctl_maintenance_until"] = until
        phase = Phase.MAINTENANCE_ON if state == "on" else Phase.MAINTENANCE_OFF

        def body(run: Run) -> Outcome:
            self._lock(run)
            result = self._phase(run, phase, variables)
            if not gate(result):
                return self._finish(run, ExitCode.ERROR, "failed", f"maintenance {state} failed: {result.problem()}")
            return self._finish(run, ExitCode.OK, "ok", f"maintenance mode is {state}")

        return self._command(f"maintenance-{state}", None, body, self._stop_interrupted)

    def unlock(self, force: bool = False) -> Outcome:
        """Break the environment's lock: never a live holder on this control node, another's only with force."""

        def body(run: Run) -> Outcome:
            state = self._phase(run, Phase.STATE, {})
            if state.stats is None:
                return self._finish(run, ExitCode.ERROR, "failed", f"could not read the locks: {state.problem()}")
            holders = {h: s["lock"] for h, s in state.report("state").items() if s.get("lock")}
            if not holders:
                return self._finish(run, ExitCode.OK, "ok", "the environment is not locked")
            for host, holder in sorted(holders.items()):
                who = _holder(holder)
                if processes.alive(holder):
                    raise Refused(ExitCode.LOCKED, "locked", f"{host} is locked by {who}, which is still running "
                                                             f"(pid {holder.get('pid')}): it will release the lock")
                leftovers = processes.marked(holder.get("run_id")) if processes.is_local(holder) else []
                if leftovers:
                    raise Refused(ExitCode.LOCKED, "locked",
                                  f"{host} is locked by {who}, whose deployctl is gone but whose Ansible still runs "
                                  f"(pids {', '.join(map(str, leftovers))}): `deployctl recover` stops it and puts "
                                  "back what it changed")
                if not processes.is_local(holder) and not force:
                    raise Refused(ExitCode.LOCKED, "locked",
                                  f"{host} is locked by {who} from another control node: if that deployment "
                                  "is dead, break it with `deployctl unlock --force`")
            ids = sorted({str(h.get("deployment_id")) for h in holders.values()})
            result = self._phase(run, Phase.UNLOCK, {"deployctl_unlock_state": "broken",
                                                     "deployctl_unlock_holders": ids})
            if not gate(result):
                return self._finish(run, ExitCode.ERROR, "failed", f"unlock failed: {result.problem()}")
            note = ""
            unfinished = [d for d in ids if self._unfinished_in_history(d)]
            if unfinished:
                note = f"; {', '.join(unfinished)} did not finish: run `deployctl recover` to put back what it changed"
            return self._finish(run, ExitCode.OK, "ok", f"the environment's lock ({', '.join(ids)}) is broken{note}")

        return self._command("unlock", None, body, self._stop_interrupted, needs_history=False)

    def verify(self) -> Outcome:
        run = self._start("verify", None, needs_history=False)
        result = self._phase(run, Phase.VERIFY, {})
        invalid = next((msg for msg in result.report("invalid_checks").values() if msg), None)
        if invalid:
            code, verdict, message = ExitCode.BAD_INPUT, "invalid", f"deployctl_verify_checks: {invalid}"
        elif gate(result):
            code, verdict, message = ExitCode.OK, "healthy", "all checks passed"
        elif result.failed and not result.unreachable and result.stats is not None:
            code, verdict, message = ExitCode.CHECKS_FAILED, "checks-failed", result.problem()
        else:
            code, verdict, message = ExitCode.COULD_NOT_RUN, "could-not-run", result.problem()
        change = self._record_verification(run, code, verdict)
        outcome = self._finish(run, code, verdict, message, event=change)
        # one structured result per check and host (roles/verify, deployctl.core.probe), for --json
        outcome.data["checks"] = [check for _, host_checks in sorted(result.report("checks").items())
                                  for check in host_checks]
        return outcome

    def state(self) -> tuple[PhaseResult, dict]:
        """Read-only: what is live on each host and who holds the lock. Leaves nothing behind."""
        result = self.runner.read(PHASES[Phase.STATE].playbook, {"deployctl_report_version": True})
        return result, result.report("state")

    def backups(self) -> tuple[PhaseResult, list[dict]]:
        result = self.runner.read("backups.yml", {})
        sets = [s for host_sets in result.report("backups").values() for s in host_sets]
        return result, sorted(sets, key=lambda s: s.get("created_at", ""), reverse=True)

    def unfinished(self) -> list[Deployment]:
        """Deployments of this environment whose deployctl process on this control node is gone."""
        return self.history.unfinished(self.env.name)

    # ---------------------------------------------------------------- command bodies

    def _release(self, run: Run, version: str, again: Callable[[str], bool]) -> Outcome:
        extra = {"deployctl_version": version, "deployctl_deploy_restart_always": True}
        # the migrations run before the switch or after the restart (deployctl_migrate_order, which preflight
        # reports): the one run of the plan has a place for both, and skips the other
        run.plan = [Phase.LOCK, Phase.PREFLIGHT, *([Phase.BACKUP] if self.env.backup else []), Phase.STAGE,
                    *([Phase.REHEARSE] if self.env.backup else []), Phase.MAINTENANCE_ON, Phase.MIGRATE,
                    Phase.DEPLOY, Phase.MIGRATE, Phase.VERIFY, Phase.DATA_STATE, Phase.MAINTENANCE_OFF,
                    Phase.UNLOCK]
        self._lock(run)
        preflight = self._phase(run, Phase.PREFLIGHT, {**extra, "deployctl_begin": True})
        if not gate(preflight):
            return self._preflight_refused(run, preflight, "preflight failed")
        orders = set(preflight.report("migrate_order").values()) or {"before_switch"}
        if len(orders) > 1:
            return self._stop_unchanged(run, "preflight failed: the hosts set different deployctl_migrate_order "
                                             f"values ({', '.join(sorted(orders))}); set one for the environment")
        window = ((Phase.MIGRATE, Phase.DEPLOY) if orders == {"before_switch"} else (Phase.DEPLOY, Phase.MIGRATE))
        rehearse = any(preflight.report("migrate_rehearse").values())
        if rehearse and not self.env.backup:
            return self._stop_unchanged(run, "preflight failed: deployctl_migrate_rehearse runs the migrations on "
                                             "the backup's scratch copy, and this environment takes no backups "
                                             "(backup: false)")
        self._note(run, before={h: s.get("live") for h, s in preflight.report("state").items()})
        if run.details["before"] and set(run.details["before"].values()) == {version} and not again(version):
            return self._stop_unchanged(run, f"{version} is already live on every host; release it again with "
                                             "--force (that restarts it and takes a new backup set)")
        if self.env.backup:
            backup = self._backup(run, "pre-release")
            if not gate(backup):
                return self._stop_unchanged(run, f"backup failed: {backup.problem()}")
        stage = self._phase(run, Phase.STAGE, extra)
        if not gate(stage):
            return self._stop_unchanged(run, f"stage failed: {stage.problem()}")
        if rehearse:
            refused = self._rehearse(run, extra)
            if refused is not None:
                return refused
        self._touch(run)
        for phase in (Phase.MAINTENANCE_ON, *window, Phase.VERIFY):
            if phase is Phase.MIGRATE:
                self._note(run, migrate_started=True)
            result = self._phase(run, phase, extra)
            if phase is Phase.MIGRATE:
                ran = result.report("migration_ran")
                # no migration command ran (none configured): this release leaves the data alone
                self._note(run, schema=result.report("schema"),
                           migrate_started=not gate(result) or not ran or any(ran.values()))
            if not gate(result):
                return self._recover(run, f"{phase} failed: {result.problem()}")
        self._record_data_state(run)
        off = self._phase(run, Phase.MAINTENANCE_OFF, {})
        if not gate(off):
            return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                f"{version} is live but maintenance off failed: {off.problem()}")
        self._note(run, after={h: version for h in run.details.get("deployed_hosts", [])})
        return self._finish(run, ExitCode.OK, "live", f"{version} is live")

    def _rehearse(self, run: Run, extra: dict) -> Outcome | None:
        """Run the release's migrations on the scratch copy of the pre-release set, before maintenance goes up:
        an outcome when they failed (nothing served changed) or reached the live database."""
        scratch = run.details.get("scratch_database")
        if self.planning:
            self.output.progress("no rehearsal in a plan: it runs the migrations on the backup set's scratch copy")
            return None
        if not scratch or not any(run.before.values()):
            self.output.progress("no rehearsal of the migrations: " + (
                "no release is live yet" if scratch else "no scratch copy of the data was kept"))
            return None
        result = self._phase(run, Phase.REHEARSE, {**extra, "deployctl_scratch_database": scratch})
        rehearsal = next(iter(result.report("rehearsal").values()), {})
        live = rehearsal.get("live") or {}
        if live.get("before") is not None and live.get("before") != live.get("after"):
            self._note(run, needs_attention=sorted(result.report("rehearsal")))
            return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                f"rehearsal: {rehearsal.get('problem')}; maintenance never went up and no code "
                                "changed: check the live database before releasing again")
        if not gate(result):
            return self._stop_unchanged(run, f"rehearsal failed: {rehearsal.get('problem') or result.problem()}"
                                             "; no downtime")
        seconds = float(rehearsal.get("seconds") or 0)
        previous = next((d for d in self.history.recent(self.env.name, limit=20, action="release", outcome="live")
                         if d.id != run.deployment.id), None)
        predicted = round(predicted_window(previous, seconds), 3)
        self._note(run, rehearsal={"seconds": seconds, "schema": rehearsal.get("schema")}, predicted_window=predicted)
        self.output.progress(f"rehearsal: the migrations took {seconds:.1f} s on a copy of the data; "
                             f"predicted maintenance window {predicted:.1f} s")
        return None

    def _rollback(self, run: Run, to: str | None, data: str) -> Outcome:
        run.plan = [Phase.LOCK, Phase.STATE, Phase.DATA_CHECK, Phase.STOP_COMMANDS, Phase.MAINTENANCE_ON,
                    Phase.ROLLBACK, Phase.VERIFY, Phase.DATA_STATE, Phase.MAINTENANCE_OFF, Phase.UNLOCK]
        self._lock(run)
        state = self._phase(run, Phase.STATE, {"deployctl_begin": True, "deployctl_preflight_validate": True})
        if not gate(state):
            return self._preflight_refused(run, state, "preflight failed")
        hosts = state.report("state")
        live = {h: s.get("live") for h, s in hosts.items()}
        self._note(run, before=live)
        if not any(live.values()):
            return self._stop_unchanged(run, "no release is live: there is nothing to roll back")
        unswitched = None
        if to is not None:
            missing = sorted(h for h, s in hosts.items() if s.get("live") and to not in (s.get("releases") or []))
            if missing:
                return self._stop_unchanged(run, f"{to} is not on {', '.join(missing)}; release it instead")
            targets = {h: to for h, v in live.items() if v}
        elif unswitched := self._unswitched_release(run, live):
            targets = {}  # its data is all there is to undo
        else:
            lacking = sorted(h for h, s in hosts.items() if s.get("live") and not s.get("previous"))
            if lacking:
                return self._stop_unchanged(run, f"no earlier release to go back to on {', '.join(lacking)} "
                                                 "(its live release is the first one)")
            targets = {h: s["previous"] for h, s in hosts.items() if s.get("live")}
        if not unswitched and all(live.get(h) == v for h, v in targets.items()) and data != "restore":
            return self._finish(run, ExitCode.OK, "unchanged",
                                f"{', '.join(sorted(set(targets.values())))} is already live: nothing to roll back")
        restore, note = self._data_to_restore(run, hosts, targets, data, to, unswitched)
        if unswitched and not restore:
            return self._finish(run, ExitCode.OK, "unchanged",
                                f"{unswitched.id} switched no host and {note}: nothing to roll back")
        self._note(run, targets=targets, restored_set=restore)
        if restore:
            # a command an earlier deployment left running (its connection lost, say) must not write under it
            stopped = self._stop_commands(run, run.deployment.id)
            if stopped is not None:
                return stopped
        self._touch(run)
        on = self._phase(run, Phase.MAINTENANCE_ON, {})
        if not gate(on):
            return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                f"maintenance on failed: {on.problem()}; nothing was rolled back")
        rollback = self._phase(run, Phase.ROLLBACK, self._rollback_variables(targets, restore, live.values()))
        self._note_safety_set(run, rollback)
        if not gate(rollback):
            return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                f"rollback failed: {rollback.problem()}; maintenance mode stays on")
        if not self._verify_and_reopen(run, sorted(targets) or None):
            return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                "rolled back, but verify or maintenance off failed; maintenance mode stays on")
        if unswitched:
            what = f"{unswitched.id} switched no host: {', '.join(sorted({v for v in live.values() if v}))} still live"
        else:
            what = "rolled back to " + (to or ", ".join(sorted(set(targets.values()))))
        return self._finish(run, ExitCode.OK, "rolled-back", f"{what}; {note}")

    def _unswitched_release(self, run: Run, live: dict) -> Deployment | None:
        """The last deployment, when it is a release that may have migrated the data but switched no host and
        restored nothing: what rolling it back undoes is its data alone."""
        last = next((d for d in self.history.recent(self.env.name, limit=10)
                     if d.id != run.deployment.id and d.action != "backup"), None)
        if last is None or last.action != "release" or last.outcome in (RUNNING, "live"):
            return None
        details = last.details
        if details.get("deployed_hosts") or details.get("restored_set") or not details.get("backup_set"):
            return None
        still_live = all(live.get(h) == v for h, v in (details.get("before") or {}).items())
        return last if still_live and migrated(last) is not False else None

    def _restore(self, run: Run, set_id: str) -> Outcome:
        self._note(run, restored_set=set_id)
        run.plan = [Phase.LOCK, Phase.PREFLIGHT, Phase.STOP_COMMANDS, Phase.BACKUP, Phase.MAINTENANCE_ON, Phase.RESTORE,
                    Phase.VERIFY, Phase.DATA_STATE, Phase.MAINTENANCE_OFF, Phase.UNLOCK]
        self._lock(run)
        preflight = self._phase(run, Phase.PREFLIGHT, {"deployctl_restore_set_id": set_id})
        if not gate(preflight):
            return self._preflight_refused(run, preflight, "preflight failed")
        stopped = self._stop_commands(run, run.deployment.id)
        if stopped is not None:
            return stopped
        safety = self._backup(run, "safety")
        if not gate(safety):
            return self._stop_unchanged(run, f"safety backup failed: {safety.problem()}")
        self._touch(run)
        on = self._phase(run, Phase.MAINTENANCE_ON, {})
        restore = self._phase(run, Phase.RESTORE, {"deployctl_restore_set_id": set_id}) if gate(on) else on
        if not gate(restore):
            return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                f"restore of {set_id} failed: {restore.problem()}; the safety set is "
                                f"{run.details.get('backup_set')}; maintenance mode stays on")
        if not self._verify_and_reopen(run, None):
            return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                f"{set_id} restored, but verify or maintenance off failed")
        return self._finish(run, ExitCode.OK, "restored",
                            f"restored {set_id} (safety set taken first: {run.details.get('backup_set')})")

    def _recover_unfinished(self, run: Run, resolve: bool, data: str, force: bool) -> Outcome:
        """Finish a deployment whose control node died: roll back what it changed, or accept it as it stands."""
        state = self._phase(run, Phase.STATE, {})
        if state.stats is None:
            return self._stop_unchanged(run, f"could not read the hosts' state: {state.problem()}")
        hosts = state.report("state")
        target = self._find_unfinished(hosts)
        if target is None:
            return self._finish(run, ExitCode.OK, "ok", "no unfinished deployment: nothing to recover")
        ident, dead = target
        self._note(run, recovering=ident)
        holders = [s["lock"] for s in hosts.values() if s.get("lock")]
        foreign = [h for h in holders if str(h.get("deployment_id")) != ident]
        if foreign:
            raise Refused(ExitCode.LOCKED, "locked", f"the environment is locked by {_holder(foreign[0])}")
        process = (dead.details.get("process") if dead else None) or next(
            (h for h in holders if str(h.get("deployment_id")) == ident), None)
        if processes.alive(process):
            raise Refused(ExitCode.LOCKED, "locked", f"{ident} is still running (pid {process.get('pid')})")
        if process and not processes.is_local(process) and not force:
            raise Refused(ExitCode.LOCKED, "locked",
                          f"{ident} ran on control node {process.get('control_node')}: recover it there, or here "
                          "with --force if that control node is gone for good")
        leftovers = processes.kill_marked(process.get("run_id")) if processes.is_local(process) else []
        if leftovers:
            return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                f"{ident}'s Ansible processes on this control node survived SIGKILL: pids "
                                f"{', '.join(map(str, leftovers))}")
        self._lock(run, adopt=ident)
        stopped = self._stop_commands(run, ident)
        if stopped is not None:
            return stopped
        if resolve:
            run.settle[ident] = "live"
            if dead is not None:
                self._close_unfinished(dead, "resolved", run.deployment.id)
            flags = sorted(h for h, s in hosts.items() if s.get("maintenance"))
            note = f"; maintenance mode is still on on {', '.join(flags)} (deployctl maintenance off)" if flags else ""
            return self._finish(run, ExitCode.OK, "resolved", f"{ident} is resolved as it stands{note}")
        before = {h: (s.get("pending") or {}).get("before") for h, s in hosts.items()
                  if (s.get("pending") or {}).get("deployment_id") == ident}
        if dead is not None:
            before = {**(dead.details.get("before") or {}), **before}
        live = {h: s.get("live") for h, s in hosts.items()}
        targets = {h: before.get(h) or "" for h in live if h in before and live[h] != before.get(h)}
        restore, note = self._data_to_recover(run, dead, ident, hosts, data)
        self._note(run, before=live, targets=targets, restored_set=restore)
        self._touch(run)
        on = self._phase(run, Phase.MAINTENANCE_ON, {})
        if not gate(on):
            return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human", f"maintenance on failed: {on.problem()}")
        if targets or restore:
            rollback = self._phase(run, Phase.ROLLBACK, self._rollback_variables(targets, restore, live.values()))
            self._note_safety_set(run, rollback)
            if not gate(rollback):
                return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                    f"rolling back {ident} failed: {rollback.problem()}; maintenance mode stays on")
        run.settle[ident] = "undone"
        if dead is not None:
            self._close_unfinished(dead, "recovered", run.deployment.id)
        live_hosts = sorted(h for h, v in before.items() if v) or None
        if not self._verify_and_reopen(run, live_hosts):
            return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                f"{ident} rolled back, but verify or maintenance off failed; maintenance stays on")
        code = (f"the code back to {', '.join(sorted({v or 'nothing' for v in targets.values()}))}" if targets
                else "it had changed no code")
        return self._finish(run, ExitCode.OK, "rolled-back", f"{ident} is undone: {code}; {note}")

    # ---------------------------------------------------------------- recovery

    def _recover(self, run: Run, reason: str) -> Outcome:
        """Put back what this release changed: stop what it started, then data (if it migrated) and code."""
        interrupted = reason == "interrupted"
        self._recovering = True
        self.runner.cancel.clear()
        if self.planning and not interrupted:
            return self._finish(run, ExitCode.ROLLED_BACK, "would-roll-back",
                                f"{reason}: the release would roll back from there")
        if not run.touched or self.planning:
            return self._finish(run, ExitCode.INTERRUPTED if interrupted else ExitCode.FAILED_UNCHANGED,
                                "interrupted" if interrupted else "unchanged", f"{reason}; nothing was changed")
        self._note(run, failure=reason)
        if self.no_rollback:
            stopped = self._stop_commands(run, run.deployment.id)
            return stopped or self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                           f"{reason}; not rolled back (--no-rollback), maintenance mode stays on")
        self.output.progress(f"[yellow]rolling back: {reason}[/yellow]")
        # "migrated" as rollbacks judge it: the schema version changed, or nobody can tell
        restore = run.details.get("backup_set") if migrated(run.deployment) is not False else None
        # the rollback in one ansible-playbook run too (a new one: Ansible keeps the failed hosts out of the
        # rest of the release's run), so that the users wait for it no longer than they must
        run.plan = [Phase.STOP_COMMANDS, Phase.ROLLBACK, Phase.VERIFY, Phase.DATA_STATE, Phase.MAINTENANCE_OFF,
                    Phase.UNLOCK]
        stopped = self._stop_commands(run, run.deployment.id, restoring=bool(restore))
        if stopped is not None:
            return stopped
        changed = [h for h in run.details.get("deployed_hosts", []) if h not in run.unreachable]
        targets = {h: run.before.get(h) or "" for h in changed}
        self._note(run, targets=targets, restored_set=restore)
        steps_ok = True
        if targets or restore:
            live = [run.deployment.version if h in changed else v for h, v in run.before.items()]
            rollback = self._phase(run, Phase.ROLLBACK, self._rollback_variables(targets, restore, live))
            self._note_safety_set(run, rollback)
            steps_ok = gate(rollback)
        if steps_ok:
            steps_ok = self._verify_and_reopen(run, [h for h, v in run.before.items() if v])
        if run.unreachable:
            self._note(run, needs_attention=sorted(run.unreachable))
            return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                f"{reason}; rolled back the reachable hosts; unreachable, needs attention: "
                                f"{', '.join(sorted(run.unreachable))}")
        if not steps_ok:
            return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                f"{reason}; the rollback failed too, maintenance mode stays on")
        restored = f", data restored from backup set {restore}" if restore else ""
        return self._finish(run, ExitCode.INTERRUPTED if interrupted else ExitCode.ROLLED_BACK,
                            "interrupted" if interrupted else "rolled-back", f"{reason}; rolled back{restored}")

    def _stop_interrupted(self, run: Run, reason: str) -> Outcome:
        """A rollback, restore or hand-run command was interrupted: stop what it started, then a human decides."""
        self._recovering = True
        self.runner.cancel.clear()
        if not run.touched:
            return self._finish(run, ExitCode.INTERRUPTED, "interrupted", f"{reason}; nothing was changed")
        stopped = self._stop_commands(run, run.deployment.id)
        return stopped or self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                       f"{reason}: what it had started is stopped; maintenance mode stays on, "
                                       f"run `deployctl {run.deployment.action}` again")

    def _stop_commands(self, run: Run, ident: str, restoring: bool = True) -> Outcome | None:
        """Kill what `ident` started, here and on every host; an outcome when that cannot be confirmed."""
        # what this deployctl's own Ansible left running; never the run of the plan, which waits at its gate
        leftovers = processes.kill_marked(processes.RUN_ID) if ident == run.deployment.id and run.stream is None else []
        stop = self._phase(run, Phase.STOP_COMMANDS, {})
        survivors = {h: s for h, s in stop.report("survivors").items() if s}
        if leftovers:
            survivors["control node"] = [{"pid": pid, "label": "ansible"} for pid in leftovers]
        if survivors:
            named = "; ".join(f"{h}: " + ", ".join(f"pid {s.get('pid')} ({s.get('label')})" for s in found)
                              for h, found in sorted(survivors.items()))
            self._note(run, survivors=survivors)
            return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                f"commands of {ident} could not be stopped ({named}); nothing was restored, "
                                "maintenance mode stays on")
        unconfirmed = sorted(set(stop.unreachable) | set(stop.failed) | set(run.unreachable))
        if unconfirmed and restoring:
            self._note(run, needs_attention=unconfirmed)
            # a release that migrated but switched no host has only its data to put back
            then = (f"; once they are back, `deployctl rollback` (it restores {run.details['backup_set']}, "
                    "keeping the code) puts the data back"
                    if run.deployment.action == "release" and run.details.get("backup_set")
                    and not run.details.get("deployed_hosts") else "")
            return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                f"could not confirm that {ident}'s commands stopped on {', '.join(unconfirmed)} "
                                f"({stop.problem()}); nothing was restored, maintenance mode stays on{then}")
        return None

    def _find_unfinished(self, hosts: dict) -> tuple[str, Deployment | None] | None:
        """The deployment to recover: from the history when it is readable, else from the hosts' records."""
        dead = None
        try:
            found = self.unfinished()
            dead = found[-1] if found else None  # the oldest one: later ones were refused behind it
        except StateError as exc:
            self.output.progress(f"[yellow]{exc}; recovering from the hosts' records[/yellow]")
        if dead is not None:
            return dead.id, dead
        for state in hosts.values():
            pending, lock = state.get("pending") or {}, state.get("lock") or {}
            for ident in (pending.get("deployment_id"), lock.get("deployment_id")):
                if ident:
                    return str(ident), self._deployment_or_none(str(ident))
        return None

    def _deployment_or_none(self, ident: str) -> Deployment | None:
        try:
            return self.history.get(ident)
        except StateError:
            return None

    def _unfinished_in_history(self, ident: str) -> bool:
        deployment = self._deployment_or_none(ident)
        return deployment is not None and deployment.outcome == RUNNING

    def _close_unfinished(self, dead: Deployment, outcome: str, by: str) -> None:
        dead.details["recovered_by"] = by
        self._save(lambda: self.history.finish(dead, outcome, int(ExitCode.NEEDS_HUMAN)))

    # ---------------------------------------------------------------- data decisions

    def _undone(self, hosts: dict, targets: dict[str, str]) -> tuple[list[str], list[Deployment]]:
        """The deployments a rollback to `targets` undoes (their ids, and those the history knows), oldest first."""
        idents: list[str] = []
        for host, target in targets.items():
            entries = hosts[host].get("entries") or []
            positions = [i for i, e in enumerate(entries) if e.get("status") == "live" and e.get("version") == target]
            for entry in entries[positions[-1] + 1 if positions else 0:]:
                ident = entry.get("deployment_id")
                if entry.get("status") != "undone" and ident and ident not in idents:
                    idents.append(ident)
        return idents, [d for d in (self._deployment_or_none(i) for i in idents) if d is not None]

    def _require_set(self, set_id: str) -> None:
        """Refuse, before anything changes, to restore a set that is gone (pruned, deleted) or broken."""
        result, sets = self.backups()
        found = next((s for s in sets if s.get("set_id") == set_id), None)
        if not gate(result) or found is None or found.get("broken") or not found.get("verified"):
            why = ("it is not on the database host" if found is None else
                   found.get("broken") or "it was never verified")
            raise Refused(ExitCode.FAILED_UNCHANGED, "unchanged",
                          f"backup set {set_id} cannot be restored: {why if gate(result) else result.problem()}; "
                          "nothing was changed (--keep-data rolls back the code only)")

    def _writes_lost(self, run: Run, undone: list[Deployment], hosts: dict) -> str | None:
        """None when restoring the set taken before `undone` loses nothing; else what it would lose, or why
        nobody can tell."""
        held = not reopened(undone[-1]) and all(s.get("maintenance") for s in hosts.values() if s.get("live"))
        live = None
        if not held:
            check = self._phase(run, Phase.DATA_CHECK, {})
            live = next(iter(check.report("data").values()), None)
            if not gate(check) or live is None:
                return f"the live database could not be read: {check.problem()}"
        changed, unknown = unexplained_changes(undone, live)
        if unknown:
            return unknown
        return f"users wrote since: {', '.join(changed[:20])} changed" if changed else None

    def _data_to_restore(self, run: Run, hosts: dict, targets: dict, data: str, to: str | None,
                         unswitched: Deployment | None) -> tuple[str | None, str]:
        """Which set a rollback restores, and why; refuses when the default would lose writes."""
        if data == "keep":
            return None, "data kept as it is (--keep-data)"
        idents, undone = ([unswitched.id], [unswitched]) if unswitched else self._undone(hosts, targets)
        first = undone[0] if undone and undone[0].id == idents[0] else None
        candidate = first.details.get("backup_set") if first else None
        if data == "restore":
            if candidate is None and to is not None:
                _, sets = self.backups()
                verified = [s for s in sets if to in str(s.get("live_version", "")).split(",") and s.get("verified")]
                candidate = verified[0]["set_id"] if verified else None
            if candidate is None:
                raise Refused(ExitCode.FAILED_UNCHANGED, "unchanged",
                              "no backup set to restore (the history has none for the releases undone); "
                              "nothing was changed")
            self._require_set(candidate)
            return candidate, f"data restored from backup set {candidate} (--restore-data)"
        if not self.env.backup:
            return None, "data kept as it is (backups are off for this environment)"
        if len(undone) < len(idents):
            unknown = ", ".join(i for i in idents if i not in {d.id for d in undone})
            raise Refused(ExitCode.FAILED_UNCHANGED, "unchanged",
                          f"the history has no record of {unknown}, so whether restoring data would lose writes "
                          "cannot be told: choose --keep-data or --restore-data; nothing was changed")
        changed_schema = [d for d in undone if migrated(d) is not False]
        if not changed_schema:
            return None, "no release undone changed the schema: data kept as it is"
        if candidate is None:
            raise Refused(ExitCode.FAILED_UNCHANGED, "unchanged",
                          f"{changed_schema[0].id} changed the schema but no backup set was taken before it: "
                          "choose --keep-data; nothing was changed")
        self._require_set(candidate)
        lost = self._writes_lost(run, undone, hosts)
        if lost:
            raise Refused(ExitCode.FAILED_UNCHANGED, "unchanged",
                          f"{changed_schema[0].id} changed the schema, and restoring {candidate} would lose data "
                          f"({lost}); choose --restore-data (restore it, losing those writes; a safety set is taken "
                          "first) or --keep-data (code only); nothing was changed")
        return candidate, f"data restored from backup set {candidate} (nothing was written since)"

    def _data_to_recover(self, run: Run, dead: Deployment | None, ident: str, hosts: dict,
                         data: str) -> tuple[str | None, str]:
        """The set that puts the data back as it was before `ident`, when `ident` may have changed it.

        A release's own set is the one it took before maintenance; a rollback's or a restore's is the safety
        set it took before restoring (without one, it restored nothing yet).
        """
        details = dead.details if dead is not None else {}
        action = dead.action if dead is not None else next(
            ((s.get("pending") or {}).get("action") for s in hosts.values() if s.get("pending")), "release")
        purpose = "pre-release" if action == "release" else "safety"
        if action == "release":
            candidate = details.get("backup_set")
        else:
            candidate = details.get("safety_set") or (details.get("backup_set") if action == "restore" else None)
        if candidate is None:
            _, sets = self.backups()
            mine = [s for s in sets if s.get("label") == ident and s.get("purpose", "pre-release") == purpose
                    and s.get("verified")]
            candidate = mine[-1]["set_id"] if mine else None
        if action == "release" and dead is not None and migrated(dead) is False:
            return None, f"{ident} did not change the schema: data kept as it is"
        if candidate is None:
            return None, f"data kept as it is ({ident} took no backup set, so it changed no data)"
        if data == "keep":
            return None, "data kept as it is (--keep-data)"
        if data == "restore":
            return candidate, f"data restored from backup set {candidate} (--restore-data)"
        lost = self._writes_lost(run, [dead], hosts) if dead is not None else (
            None if all(s.get("maintenance") for s in hosts.values() if s.get("live")) else
            "the history has no record of it")
        if lost:
            raise Refused(ExitCode.FAILED_UNCHANGED, "unchanged",
                          f"restoring {candidate} could lose data written since {ident} ({lost}): choose "
                          "--restore-data or --keep-data; nothing was changed")
        return candidate, f"data restored from backup set {candidate} (nothing was written since)"

    # ---------------------------------------------------------------- steps

    def _command(self, action: str, version: str | None, body, on_interrupt, needs_history: bool = True) -> Outcome:
        run = self._start(action, version, needs_history=needs_history)
        with self._signals():
            try:
                return body(run)
            except Interrupted:
                return on_interrupt(run, "interrupted")
            except Refused as refusal:
                return self._finish(run, refusal.code, refusal.outcome, refusal.message)
            finally:
                self._leave_plan(run)

    def _start(self, action: str, version: str | None, needs_history: bool = True) -> Run:
        token = uuid.uuid4().hex
        details = {"process": processes.identity(), "lock_token": token}
        self._check_state_dir()
        # a plan reads the history (what the release would refuse for) but never creates it
        if needs_history and (not self.planning or self.history_path.exists()):
            self.history.check_writable()
            stuck = self.unfinished()
            if stuck and action != "recover":
                raise _unfinished_error(stuck[-1])
        try:
            if self.planning:
                deployment = Deployment(f"PLAN-{uuid.uuid4().hex[:12]}", self.env.name, action, version,
                                        getpass.getuser(), "", details=details)
            else:
                deployment = self.history.start(self.env.name, action, version, details)
        except StateError as exc:
            if needs_history:
                raise
            self._history_error = str(exc)
            deployment = Deployment(f"DEP-{uuid.uuid4().hex[:12]}", self.env.name, action, version,
                                    getpass.getuser(), "", details=details)
        what = "plan of the " if self.planning else ""
        self.output.progress(f"[bold]{deployment.id}[/bold] {what}{action} {version or ''} on {self.env.name}")
        run = Run(deployment, token=token)
        self._runs.append(run)
        if action in ANNOUNCED_ACTIONS:
            self._notify(run, f"{action}.started", "running", f"{action} started by {deployment.user}")
        return run

    def _check_state_dir(self) -> None:
        state = self.project.state_dir
        probe = state / f".writable-{uuid.uuid4().hex[:8]}"
        try:
            (state / "runs").mkdir(parents=True, exist_ok=True)
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise StateError(f"the state directory {state} is not writable ({exc.strerror}): nothing was "
                             "touched") from None

    def _save(self, write) -> None:
        """Write to the history; a failure is reported once and never abandons what is under way. A plan
        writes nothing."""
        if self.planning:
            return
        try:
            write()
        except StateError as exc:
            if self._history_error is None:
                self.output.progress(f"[red]the history could not be written: {exc}[/red]")
            self._history_error = str(exc)

    def _note(self, run: Run, **values) -> None:
        """Record facts the moment they are known (write-ahead), for recovery and for `deployctl recover`."""
        run.details.update(values)
        self._save(lambda: self.history.save(run.deployment))

    def _touch(self, run: Run) -> None:
        run.touched = True
        self._note(run, touched=True)

    def _variables(self, run: Run, extra: dict) -> dict:
        deployment = run.deployment
        return {
            "deployctl_deployment_id": deployment.id,
            "deployctl_action": deployment.action,
            "deployctl_lock_token": run.token,
            "deployctl_lock_holder": {"deployment_id": deployment.id, "user": deployment.user,
                                      **run.details["process"]},
            "deployctl_serial": self.env.serial,
            "deployctl_max_fail_percentage": self.env.max_fail_percentage,
            "deployctl_verify_each_batch": self.env.serial != "100%",
            "deployctl_backup_enabled": self.env.backup,
            "deployctl_known_variables": variables.known(content_dir()),
            **extra,
        }

    def _phase(self, run: Run, phase: Phase, extra: dict, hosts: list[str] | None = None) -> PhaseResult:
        self.output.phase_started(phase)
        started_at = now("milliseconds")  # the deployment's timeline (deployctl report --format html)
        if hosts is not None and run.before and set(run.before) <= set(hosts):
            hosts = None  # every host preflight found
        result = self._run_phase(run, phase, extra, run.limit(hosts))
        if result.status in ("canceled", "timeout") and run.stream is None:
            # Ansible's workers run in sessions of their own: one cut short would go on (streaming an image to
            # a host, say) after deployctl has said what changed
            processes.kill_marked(processes.RUN_ID)
        passed = gate(result)
        run.unreachable.update(result.unreachable)
        if result.output and not run.failure_output:
            run.failure_output = {"phase": str(phase), "hosts": result.output}
        if phase is Phase.DEPLOY:
            # a deploy cut short (cancel, timeout) leaves no stats: any host may have changed, and rolling
            # back one that did not is a no-op, so all of them go back to what preflight found
            run.details["deployed_hosts"] = result.processed_hosts if result.stats is not None else sorted(run.before)
        if phase in (Phase.MAINTENANCE_ON, Phase.MAINTENANCE_OFF):
            self._note_maintenance_flag(run, result)
        if phase is Phase.VERIFY and run.checks is None:
            run.checks = result.report("checks")
            if run.checks and run.deployment.action != "verify":
                run.details["checks"] = run.checks  # for `deployctl report`
        if self.planning:
            run.predicted.append(_prediction(phase, result, passed))
        self._save(lambda: self.history.add_phase(run.deployment, phase, "passed" if passed else result.status,
                                                  result.seconds, result.changed_hosts, result.failed,
                                                  result.unreachable, started_at))
        self.output.phase_finished(phase, passed, result.seconds, result.problem())
        if self.runner.cancel.is_set() and not self._recovering:
            raise Interrupted
        return result

    def _note_maintenance_flag(self, run: Run, result: PhaseResult) -> None:
        """When the flag went up (the first time) and came down (the last) on each host, by the host's clock:
        the downtime `deployctl report` shows."""
        flag = run.details.setdefault("maintenance_flag", {"on": {}, "off": {}})
        for host, changed in result.report("maintenance_flag").items():
            for state, at in changed.items():
                if at is not None and (state == "off" or host not in flag["on"]):
                    flag[state][host] = at

    def _run_phase(self, run: Run, phase: Phase, extra: dict, limit: str | None) -> PhaseResult:
        """Run one phase: in the command's one ansible-playbook run while the command goes as planned, else in
        a run of its own (recovery, retries, a phase on some hosts only).

        The run of the plan starts with the plan's first phase; planned phases the command turns out not to
        need are skipped. It stops at the first phase that does not pass or that the plan did not foresee:
        Ansible keeps a failed host out of every later play of a run, and recovery must reach every host."""
        name = phase.replace(" ", "-")
        common = self._variables(run, {})
        own = {**PHASES[phase].variables, **extra}
        if run.stream is not None and not (run.stream.expects(name) and limit is None and common == run.stream_vars):
            self._leave_plan(run)
        if run.stream is None and run.plan and run.plan[0] is phase and limit is None:
            run.stream = self.runner.stream(run.deployment.id, len(run.deployment.phases) + 1, run.deployment.action,
                                            [(p.replace(" ", "-"), PHASES[p].playbook) for p in run.plan], common)
            run.stream_vars = common
        run.plan = []
        if run.stream is None:
            return self.runner.run(run.deployment.id, len(run.deployment.phases) + 1, name,
                                   PHASES[phase].playbook, {**common, **own}, limit=limit)
        result = run.stream.next(name, own)
        if not gate(result):
            self._leave_plan(run)
        return result

    def _leave_plan(self, run: Run) -> None:
        """End the run of the plan where it waits; what follows runs phase by phase."""
        if run.stream is not None:
            run.stream.stop()
            run.stream = None
        run.plan = []

    def _lock(self, run: Run, adopt: str | None = None) -> None:
        """Take the environment's lock; raises Refused (nothing changed) when someone else holds it."""
        run.locked = True  # from here on, whatever happens, unlock with this run's token
        for attempt in (1, 2):
            result = self._phase(run, Phase.LOCK, {"deployctl_lock_adopt": adopt or ""})
            if gate(result):
                return
            others = {h for h, held in result.report("held_by_other").items() if held}
            holders = {h: s for h, s in result.report("lock").items() if s and h in others}
            stale = self._stale_locks(holders)
            if attempt == 2 or not holders or set(holders) != {h for hosts in stale.values() for h in hosts}:
                break
            # locks left on hosts that were unreachable when a finished deployment of this control node
            # unlocked: released with that deployment's own token, then the lock is taken again
            if self.planning:
                self._note(run, stale_locks=sorted(ident for ident, _ in stale))
                return
            for (ident, token), stale_hosts in stale.items():
                self._phase(run, Phase.CLEAR_STALE_LOCK, {
                    "deployctl_lock_token": token,
                    "deployctl_settle": [{"deployment_id": ident, "outcome": "abandoned"}]}, hosts=stale_hosts)
        # release what this run did take: the lock of the hosts where the lock phase succeeded
        mine = [h for h, s in result.report("lock").items() if s and not result.report("held_by_other").get(h)]
        released = self._release_lock(run, hosts=mine) if mine else True
        run.locked = False
        self._note(run, lock_holders=holders, lock_problem=result.problem())
        if not holders:
            raise Refused(ExitCode.FAILED_UNCHANGED, "unchanged",
                          f"could not take the lock: {result.problem()}; nothing was changed" +
                          ("" if released else f"; this run's lock stays on {', '.join(mine)} (deployctl unlock)"))
        holder = next(iter(holders.values()))
        dead = self._deployment_or_none(str(holder.get("deployment_id")))
        if dead is not None and dead.abandoned:
            raise _unfinished_error(dead)
        raise Refused(ExitCode.LOCKED, "locked",
                      f"the environment is locked by {_holder(holder)}; if that deployment is dead, run "
                      "`deployctl recover` (or `deployctl unlock` to only break the lock)")

    def _stale_locks(self, holders: dict[str, dict]) -> dict[tuple[str, str], list[str]]:
        """Locks held by finished deployments of this control node: {(their id, their token): [hosts]}."""
        stale: dict[tuple[str, str], list[str]] = {}
        for host, holder in holders.items():
            if not processes.is_local(holder):
                continue
            earlier = self._deployment_or_none(str(holder.get("deployment_id")))
            token = earlier.details.get("lock_token") if earlier else None
            if earlier is not None and earlier.outcome != RUNNING and token:
                stale.setdefault((earlier.id, token), []).append(host)
        return stale

    def _release_lock(self, run: Run, outcome: str = "abandoned", hosts: list[str] | None = None) -> bool:
        settle = [{"deployment_id": run.deployment.id, "outcome": outcome}]
        settle += [{"deployment_id": ident, "outcome": how} for ident, how in run.settle.items()]
        result = self._phase(run, Phase.UNLOCK, {"deployctl_settle": settle}, hosts=hosts)
        run.locked = not gate(result)
        return not run.locked

    def _protected_sets(self) -> list[str]:
        """Sets retention must keep: those of unfinished deployments and the one `rollback` would restore.

        Without a readable history, the sets a command is about to restore are protected by the caller."""
        protect = set()
        try:
            for deployment in self.history.recent(self.env.name, limit=50, outcome=RUNNING):
                protect.update(filter(None, (deployment.details.get("backup_set"),
                                             deployment.details.get("safety_set"))))
            # A rollback undoes every release since its target went live and restores the set taken before
            # the oldest of them: with the live version released again, that is the first release of it.
            releases = self.history.recent(self.env.name, limit=50, action="release", outcome="live")
            for release in releases:
                if release.version != releases[0].version:
                    break
                protect.update(filter(None, [release.details.get("backup_set")]))
        except StateError:
            pass
        return sorted(protect)

    def _backup(self, run: Run, purpose: str) -> PhaseResult:
        live = sorted({v for v in run.before.values() if v})
        result = self._phase(run, Phase.BACKUP, {"deployctl_backup_protect": self._protected_sets(),
                                                 "deployctl_backup_purpose": purpose,
                                                 "deployctl_live_version": ",".join(live)})
        taken = next(iter(result.report("backup").values()), None)
        if taken:
            if taken.get("redis"):
                self.output.progress(taken["redis"]["msg"])
            self._note(run, backup_set=taken.get("set_id"), data_before=taken.get("data"),
                       **({"scratch_database": taken["scratch_database"]} if taken.get("scratch_database") else {}))
        return result

    def _rollback_variables(self, targets: dict, restore: str | None, live) -> dict:
        """The rollback phase's variables; `live` are the versions live now, recorded in the safety set."""
        return {"deployctl_rollback_targets": targets, "deployctl_rollback_only_targets": True,
                "deployctl_restore_set_id": restore or "",
                "deployctl_backup_protect": sorted({*self._protected_sets(), *filter(None, [restore])}),
                "deployctl_live_version": ",".join(sorted({v for v in live if v}))}

    def _note_safety_set(self, run: Run, result: PhaseResult) -> None:
        safety = next(iter(result.report("safety").values()), None)
        if safety:
            self._note(run, safety_set=safety.get("set_id"))

    def _record_data_state(self, run: Run) -> None:
        """The data as this deployment leaves it (a later rollback compares the live database with it)."""
        result = self._phase(run, Phase.DATA_STATE, {})
        data = next(iter(result.report("data").values()), None)
        if gate(result):
            self._note(run, data_after=data)
        else:
            self.output.progress(f"[yellow]the state of the data could not be recorded: {result.problem()}[/yellow]")

    def _verify_and_reopen(self, run: Run, hosts: list[str] | None) -> bool:
        if hosts is None or hosts:
            verify = self._phase(run, Phase.VERIFY, {}, hosts=hosts)
            if not gate(verify):
                return False
        self._record_data_state(run)
        off = self._phase(run, Phase.MAINTENANCE_OFF, {})
        return gate(off)

    def _preflight_refused(self, run: Run, result: PhaseResult, what: str) -> Outcome:
        """Why a preflight (or a state read with its checks) refused, in the words that help most."""
        unfinished = next((u for u in result.report("unfinished").values() if u), None)
        if unfinished:
            ident = str(unfinished.get("deployment_id"))
            other = self._deployment_or_none(ident)
            if other is not None and other.outcome == RUNNING and processes.alive(other.details.get("process")):
                raise Refused(ExitCode.LOCKED, "locked",
                              f"deployment {ident} ({other.action}) is running (pid {other.details['process']['pid']}, "
                              f"since {other.started_at}); nothing was changed")
            raise Refused(ExitCode.LOCKED, "locked",
                          f"deployment {ident} ({unfinished.get('action')}, started {unfinished.get('at')}) did not "
                          "finish on the hosts: run `deployctl recover`; nothing was changed")
        unknown = sorted({n for names in result.report("unknown_variables").values() for n in names or []})
        if unknown:
            return self._stop_unchanged(run, f"{what}: the inventory sets variables no deployctl role reads: "
                                             f"{variables.explain(unknown, content_dir())}")
        return self._stop_unchanged(run, f"{what}: {result.problem()}")

    def _stop_unchanged(self, run: Run, message: str) -> Outcome:
        return self._finish(run, ExitCode.FAILED_UNCHANGED, "unchanged", f"{message}; nothing was changed")

    def _finish(self, run: Run, code: ExitCode, outcome: str, message: str, event: str | None = None) -> Outcome:
        """End the run: release its lock, announce how it ended (or `event`), write its outcome."""
        if run.locked:
            self._recovering = True
            self.runner.cancel.clear()
            if not self._release_lock(run, SETTLED.get(outcome, "abandoned")):
                message += "; the lock could not be released (deployctl unlock)"
        if self.planning:
            return self._planned(run, code, outcome, message)
        run.details["message"] = message
        if event is None and run.deployment.action in ANNOUNCED_ACTIONS:
            event = finish_event(run.deployment.action, outcome)
        if event:
            self._notify(run, event, outcome, message)
        self._save(lambda: self.history.finish(run.deployment, outcome, int(code)))
        if self._history_error:
            run.details["history_error"] = self._history_error
            message += "; the history could not be written (the hosts' records still hold what recovery needs)"
        data = {"failure": run.failure_output} if run.failure_output and code != ExitCode.OK else {}
        return Outcome(code, outcome, message, run.deployment, data)

    def _planned(self, run: Run, code: ExitCode, outcome: str, message: str) -> Outcome:
        """A plan's outcome: the release's own outcome turned into what it would be, with what each phase would
        do on each host and what the control node knows (the rollback target, the backup set, the migrations)."""
        version = run.deployment.version
        reported = [(h, r["report"]) for p in run.predicted for h, r in p["hosts"].items()]
        hosts = sorted({h for h, _ in reported})
        facts: dict = {"version": version, "phases": run.predicted, "already_live": self.planned_again,
                       "stale_locks": run.details.get("stale_locks", [])}
        states = {h: report["state"] for h, report in reported if "state" in report}
        if states:
            # what `rollback` would go back to after the release: the live release, or (released again) the one
            # before it
            facts["rollback_target"] = {h: state.get("previous" if state.get("live") == version else "live")
                                        for h, state in sorted(states.items())}
        backup = next(({"host": h, **report["backup_plan"]} for h, report in reported if "backup_plan" in report),
                      None)
        if backup is not None:
            backup["kept_for_rollback"] = self._protected_sets()
        facts["backup"] = backup
        facts["migrations"] = next(({"host": h, **report["migrate_plan"]} for h, report in reported
                                    if "migrate_plan" in report), None)
        if code == ExitCode.OK:
            where = ", ".join(hosts) or "no host"
            message = (f"release {version} would run {len(run.predicted)} phases on {where}; nothing was changed"
                       if not self.planned_again else
                       f"{version} is already live on every host: releasing it again asks first (or needs --force), "
                       f"then runs {len(run.predicted)} phases on {where}; nothing was changed")
            outcome = "planned"
        elif outcome == "interrupted":
            message = "the plan was interrupted; nothing was changed"
        elif "nothing was changed" not in message:
            message = f"the release would stop: {message}; nothing was changed"
        else:
            message = f"the release would stop: {message}"
        return Outcome(code, outcome, message, None, {"plan": facts})

    def _notify(self, run: Run, event: str, outcome: str, message: str) -> None:
        """Send an event to the environment's channels; never fails the command, records what happened."""
        if self.planning:
            return
        try:
            deployment = run.deployment
            records = self.notifier.send(event, deployment.id, deployment.version, outcome, message)
        except Exception as exc:  # a notification must never fail a release
            problem = exc.__class__.__name__  # the name only: the message could hold a secret
            records = [{"channel": "all", "event": event, "delivered": False, "error": problem}]
            self.output.progress(f"[yellow]notification {event} not sent: {problem}[/yellow]")
        if records:
            run.details.setdefault("notifications", []).extend(records)

    def _record_verification(self, run: Run, code: ExitCode, outcome: str) -> str | None:
        """A `deployctl verify` run's row in the history; returns the health change to announce, if any.

        Without a readable history no change can be told, so none is announced."""
        healthy = code == ExitCode.OK
        try:
            previous = self.history.last_verification(self.env.name)
            self.history.record_verification(run.deployment.id, self.env.name, healthy, int(code), run.checks,
                                             outcome, sum(p["seconds"] for p in run.deployment.phases))
        except StateError as exc:
            self._history_error = str(exc)
            return None
        return verification_event(previous["healthy"] if previous else None, healthy)

    @contextmanager
    def _signals(self):
        """Ctrl-C, SIGTERM and SIGHUP (a dropped SSH session) cancel the running phase; the pipeline then
        stops what the deployment started, rolls back and unlocks."""

        def cancel(signum, frame):
            if self.output.prompting and signum == signal.SIGINT:
                raise KeyboardInterrupt  # Ctrl-C at a question answers it: no
            if self._recovering:
                self.output.progress("[yellow]recovering; wait for it to finish[/yellow]")
                return
            then = "the plan" if self.planning else "the running phase, then rolling back"
            self.output.progress(f"[yellow]{signal.Signals(signum).name}: stopping {then}[/yellow]")
            self.runner.cancel.set()

        watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {s: signal.signal(s, cancel) for s in watched}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# what a plan keeps of the reports each host sends (deployctl.runner REPORT_KEY): the host's release state, the
# backup set it would take, the migrations, the verify checks as they run against what is live now
PLANNED_REPORTS = ("state", "backup_plan", "migrate_plan", "checks")


def _prediction(phase: Phase, result: PhaseResult, passed: bool) -> dict:
    """One phase of a plan: per host, the tasks that would change it (check mode's `changed`) or why it fails."""
    hosts = {}
    for host in sorted({*result.processed_hosts, *result.failed, *result.unreachable}):
        problem = result.failed.get(host) or (f"unreachable: {result.unreachable[host]}"
                                              if host in result.unreachable else None)
        reports = result.reports.get(host, {})
        kept = {key: reports[key] for key in PLANNED_REPORTS if key in reports}
        if "state" in kept:
            kept["state"] = {key: kept["state"].get(key) for key in ("live", "previous")}
        hosts[host] = {"changes": result.changes.get(host, []), "problem": problem, "report": kept}
    return {"phase": str(phase), "passed": passed, "hosts": hosts, "problem": None if passed else result.problem()}


def _holder(holder: dict) -> str:
    return (f"{holder.get('user')}@{holder.get('control_node')} ({holder.get('deployment_id')}, since "
            f"{holder.get('since')})")


def _unfinished_error(dead: Deployment) -> DeployctlError:
    error = DeployctlError(
        f"deployment {dead.id} ({dead.action} {dead.version or ''}, started {dead.started_at} by {dead.user}) did "
        "not finish: its deployctl process is gone. Run `deployctl recover` to put back what it changed (or "
        "`deployctl recover --resolve` to accept the hosts as they are); nothing was touched")
    error.exit_code = ExitCode.LOCKED
    return error
