"""The release pipeline: phases in checklist order, a gate after each, rollback when a gate fails.

Every command that changes servers runs here as a sequence of phase playbooks. `gate` decides whether a
phase passed; `Pipeline` decides what happens next and records every step in the history.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field

from deployctl.console import Output
from deployctl.errors import ExitCode
from deployctl.history import Deployment, History
from deployctl.notify import ANNOUNCED_ACTIONS, Notifier, finish_event, verification_event
from deployctl.project import Environment, Project
from deployctl.runner import AnsibleRunner, PhaseResult


def gate(result: PhaseResult) -> bool:
    """A phase passes only when ansible-runner finished successfully and no host failed or vanished.

    rc alone is not enough (4 means both "unreachable" and "parser error"), and stats are None after a
    timeout, a cancel or a playbook that never started: all of those are failures.
    """
    if result.error is not None or result.stats is None:
        return False
    if result.status != "successful" or result.rc != 0:
        return False
    return not result.stats["failures"] and not result.stats["dark"]


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


@dataclass
class Run:
    """What one deployment has done so far: the facts recovery decisions are made from."""

    deployment: Deployment
    token: str
    locked: bool = False
    touched: bool = False
    before: dict[str, str | None] = field(default_factory=dict)  # host -> version live before
    deployed_hosts: list[str] = field(default_factory=list)
    migrate_started: bool = False
    backup_set: str | None = None
    unreachable: dict[str, str] = field(default_factory=dict)
    checks: dict | None = None  # structured results of the first verify phase: {host: [check, ...]}

    def limit(self, hosts: list[str] | None = None) -> str | None:
        """Host pattern for the next phase: the given hosts (or all), never the unreachable ones."""
        pattern = ":".join(hosts) if hosts is not None else "all"
        if self.unreachable:
            pattern += "".join(f":!{host}" for host in sorted(self.unreachable))
        return None if pattern == "all" else pattern


class Pipeline:
    def __init__(self, project: Project, environment: Environment, output: Output,
                 no_rollback: bool = False):
        self.project = project
        self.env = environment
        self.output = output
        self.no_rollback = no_rollback
        self.history = History(project.state_dir / "history.db")
        self.runner = AnsibleRunner(
            inventory=environment.inventory,
            runs_dir=project.state_dir / "runs",
            forks=environment.forks or 50,
            timeout=environment.phase_timeout,
            on_event=output.on_event,
        )
        self._recovering = False
        self.notifier = Notifier(environment.notify, project.app, environment.name, output.progress)

    # ---------------------------------------------------------------- commands

    def release(self, version: str) -> Outcome:
        run = self._start("release", version)
        extra = {"deployctl_version": version}
        with self._signals():
            try:
                if not self._lock(run):
                    return self._finish_locked(run)
                preflight = self._phase(run, "preflight", "preflight.yml", extra)
                if not gate(preflight):
                    return self._stop_unchanged(run, f"preflight failed: {preflight.problem()}")
                run.before = {h: s.get("live") for h, s in preflight.report("state").items()}
                run.deployment.details["before"] = run.before
                if self.env.backup:
                    backup = self._backup(run)
                    if not gate(backup):
                        return self._stop_unchanged(run, f"backup failed: {backup.problem()}")
                run.touched = True
                steps = [
                    ("maintenance on", "maintenance.yml", {"deployctl_maintenance_state": "on"}),
                    ("deploy", "deploy.yml", extra),
                    ("migrate", "migrate.yml", extra),
                    ("verify", "verify.yml", extra),
                ]
                for name, playbook, variables in steps:
                    run.migrate_started |= name == "migrate"
                    result = self._phase(run, name, playbook, variables)
                    if name == "migrate":
                        run.deployment.details["schema"] = result.report("schema")
                    if not gate(result):
                        return self._recover(run, f"{name} failed: {result.problem()}")
                off = self._phase(run, "maintenance off", "maintenance.yml", {"deployctl_maintenance_state": "off"})
                if not gate(off):
                    return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                        f"{version} is live but maintenance mode could not be turned off: "
                                        f"{off.problem()}")
                run.deployment.details["after"] = {h: version for h in run.deployed_hosts}
                return self._finish(run, ExitCode.OK, "live", f"{version} is live")
            except Interrupted:
                return self._recover(run, "interrupted", interrupted=True)

    def rollback(self, to: str | None = None, data: str = "auto") -> Outcome:
        """Go back to the version before the last release (or to `to`), with its data if asked."""
        run = self._start("rollback", to)
        with self._signals():
            try:
                if not self._lock(run):
                    return self._finish_locked(run)
                state = self._phase(run, "preflight", "state.yml", {})
                if not gate(state):
                    return self._stop_unchanged(run, f"could not read the hosts' state: {state.problem()}")
                live = {h: s.get("live") for h, s in state.report("state").items()}
                run.before = live
                last = self._last_release()
                if to is not None:
                    missing = sorted(h for h, s in state.report("state").items()
                                     if s.get("live") and to not in s.get("releases", []))
                    if missing:
                        return self._stop_unchanged(run, f"{to} is not on {', '.join(missing)}; release it instead")
                    targets = {h: to for h, v in live.items() if v}
                elif last is not None:
                    targets = {h: v for h, v in last.details.get("before", {}).items() if h in live}
                else:
                    targets = {}
                restore = self._data_to_restore(to, data, last)
                run.deployment.details.update(targets=targets, restored_set=restore)
                run.touched = True
                run.deployed_hosts = sorted(targets) if targets else sorted(h for h, v in live.items() if v)
                on = self._phase(run, "maintenance on", "maintenance.yml", {"deployctl_maintenance_state": "on"})
                if not gate(on):
                    return self._recover(run, f"maintenance on failed: {on.problem()}")
                rollback = self._phase(run, "rollback", "rollback.yml",
                                       {"deployctl_rollback_targets": targets,
                                        "deployctl_restore_set_id": restore or ""})
                if not gate(rollback):
                    return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                        f"rollback failed: {rollback.problem()}; maintenance mode stays on")
                if not self._verify_and_reopen(run, sorted(h for h, v in targets.items() if v) or None):
                    return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                        "rolled back, but verify or maintenance off failed; maintenance mode stays on")
                what = f"rolled back to {to}" if to else "rolled back to the previous release"
                data_note = f"; database restored from {restore}" if restore else "; data kept as it is"
                return self._finish(run, ExitCode.OK, "rolled-back", what + data_note)
            except Interrupted:
                return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                    "rollback interrupted; run it again")

    def restore(self, set_id: str) -> Outcome:
        run = self._start("restore", None)
        run.deployment.details["restored_set"] = set_id
        with self._signals():
            try:
                if not self._lock(run):
                    return self._finish_locked(run)
                safety = self._backup(run)
                if not gate(safety):
                    return self._stop_unchanged(run, f"safety backup failed: {safety.problem()}")
                run.touched = True
                on = self._phase(run, "maintenance on", "maintenance.yml", {"deployctl_maintenance_state": "on"})
                restore = self._phase(run, "restore", "restore.yml", {"deployctl_restore_set_id": set_id}) \
                    if gate(on) else on
                if not gate(restore):
                    return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                        f"restore of {set_id} failed: {restore.problem()}; the safety set is "
                                        f"{run.backup_set}; maintenance mode stays on")
                if not self._verify_and_reopen(run, None):
                    return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                        f"{set_id} restored, but verify or maintenance off failed")
                return self._finish(run, ExitCode.OK, "restored",
                                    f"restored {set_id} (safety set taken first: {run.backup_set})")
            except Interrupted:
                return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human", "restore interrupted")

    def backup(self) -> Outcome:
        run = self._start("backup", None)
        result = self._backup(run)
        if not gate(result):
            return self._finish(run, ExitCode.FAILED_UNCHANGED, "failed", f"backup failed: {result.problem()}")
        return self._finish(run, ExitCode.OK, "ok", f"backup set {run.backup_set} taken and verified")

    def verify(self) -> Outcome:
        run = self._start("verify", None)
        result = self._phase(run, "verify", "verify.yml", {})
        if gate(result):
            outcome = self._finish(run, ExitCode.OK, "healthy", "all checks passed")
        elif result.failed and not result.unreachable and result.stats is not None:
            outcome = self._finish(run, ExitCode.CHECKS_FAILED, "checks-failed", result.problem())
        else:
            outcome = self._finish(run, ExitCode.COULD_NOT_RUN, "could-not-run", result.problem())
        # one structured result per check and host (roles/verify, deployctl.core.probe), for --json
        outcome.data["checks"] = [check for _, host_checks in sorted(result.report("checks").items())
                                  for check in host_checks]
        return outcome

    def maintenance(self, state: str, message: str | None, until: str | None) -> Outcome:
        run = self._start(f"maintenance-{state}", None)
        variables = {"deployctl_maintenance_state": state}
        if message:
            variables["deployctl_maintenance_message"] = message
        if until:
            variables["deployctl_maintenance_until"] = until
        result = self._phase(run, f"maintenance {state}", "maintenance.yml", variables)
        if not gate(result):
            return self._finish(run, ExitCode.ERROR, "failed", f"maintenance {state} failed: {result.problem()}")
        return self._finish(run, ExitCode.OK, "ok", f"maintenance mode is {state}")

    def unlock(self) -> Outcome:
        run = self._start("unlock", None)
        result = self._phase(run, "unlock", "unlock.yml", {"deployctl_unlock_state": "broken"})
        if not gate(result):
            return self._finish(run, ExitCode.ERROR, "failed", f"unlock failed: {result.problem()}")
        return self._finish(run, ExitCode.OK, "ok", "the environment's lock is released")

    def state(self) -> tuple[PhaseResult, dict]:
        """Read-only: what is live on each host and who holds the lock. Leaves nothing behind."""
        ident = f"read-{uuid.uuid4().hex[:12]}"
        try:
            result = self.runner.run(ident, 1, "state", "state.yml", {})
        finally:
            shutil.rmtree(self.runner.runs_dir / ident, ignore_errors=True)
        return result, result.report("state")

    def backups(self) -> tuple[PhaseResult, list[dict]]:
        ident = f"read-{uuid.uuid4().hex[:12]}"
        try:
            result = self.runner.run(ident, 1, "backups", "backups.yml", {})
        finally:
            shutil.rmtree(self.runner.runs_dir / ident, ignore_errors=True)
        sets = [s for host_sets in result.report("backups").values() for s in host_sets]
        return result, sorted(sets, key=lambda s: s.get("created_at", ""), reverse=True)

    # ---------------------------------------------------------------- steps

    def _start(self, action: str, version: str | None) -> Run:
        deployment = self.history.start(self.env.name, action, version)
        self.output.progress(f"[bold]{deployment.id}[/bold] {action} {version or ''} on {self.env.name}")
        run = Run(deployment, token=uuid.uuid4().hex)
        if action in ANNOUNCED_ACTIONS:
            self._notify(run, f"{action}.started", "running", f"{action} started by {deployment.user}")
        return run

    def _variables(self, run: Run, extra: dict) -> dict:
        deployment = run.deployment
        return {
            "deployctl_deployment_id": deployment.id,
            "deployctl_lock_token": run.token,
            "deployctl_lock_holder": {"deployment_id": deployment.id, "user": getpass.getuser(),
                                      "control_node": socket.gethostname(), "pid": os.getpid()},
            "deployctl_serial": self.env.serial,
            "deployctl_max_fail_percentage": self.env.max_fail_percentage,
            "deployctl_verify_each_batch": self.env.serial != "100%",
            **extra,
        }

    def _phase(self, run: Run, name: str, playbook: str, extra: dict, hosts: list[str] | None = None) -> PhaseResult:
        self.output.phase_started(name)
        result = self.runner.run(run.deployment.id, len(run.deployment.phases) + 1, name.replace(" ", "-"),
                                 playbook, self._variables(run, extra), limit=run.limit(hosts))
        passed = gate(result)
        run.unreachable.update(result.unreachable)
        if name == "deploy":
            # a deploy cut short (cancel, timeout) leaves no stats: any host may have changed, and rolling
            # back one that did not is a no-op, so all of them go back to what preflight found
            run.deployed_hosts = result.processed_hosts if result.stats is not None else sorted(run.before)
        if name == "verify" and run.checks is None:
            run.checks = result.report("checks")
            if run.checks and run.deployment.action != "verify":
                run.deployment.details["checks"] = run.checks  # for `deployctl report`
        self.history.add_phase(run.deployment, name, "passed" if passed else result.status,
                               result.seconds, result.changed_hosts, result.failed, result.unreachable)
        self.output.phase_finished(name, passed, result.seconds, result.problem())
        if self.runner.cancel.is_set() and not self._recovering:
            raise Interrupted
        return result

    def _lock(self, run: Run) -> bool:
        run.locked = True  # from here on, whatever happens, unlock with this run's token
        run.deployment.details["lock_token"] = run.token  # lets a later run clear this one's leftovers
        for attempt in (1, 2):
            result = self._phase(run, "lock", "lock.yml", {})
            if gate(result):
                return True
            others = {h for h, held in result.report("held_by_other").items() if held}
            holders = {h: s for h, s in result.report("lock").items() if s and h in others}
            stale = self._stale_locks(holders)
            if attempt == 2 or not holders or set(holders) != {h for hosts in stale.values() for h in hosts}:
                break
            # locks left on hosts that were unreachable when a finished deployment of this control node
            # unlocked: released with that deployment's own token, then the lock is taken again
            for token, hosts in stale.items():
                self._phase(run, "clear stale lock", "unlock.yml",
                            {"deployctl_unlock_state": "released", "deployctl_lock_token": token}, hosts=hosts)
        # release whatever this run did take, then report who holds it
        self._release_lock(run)
        run.deployment.details["lock_holders"] = holders
        run.deployment.details["lock_problem"] = result.problem()
        return False

    def _stale_locks(self, holders: dict[str, dict]) -> dict[str, list[str]]:
        """Locks held by finished deployments of this control node: {their token: [hosts]}."""
        stale: dict[str, list[str]] = {}
        for host, holder in holders.items():
            if holder.get("control_node") != socket.gethostname():
                continue
            earlier = self.history.get(str(holder.get("deployment_id")))
            token = earlier.details.get("lock_token") if earlier else None
            if earlier is not None and earlier.outcome != "running" and token:
                stale.setdefault(token, []).append(host)
        return stale

    def _release_lock(self, run: Run) -> bool:
        result = self._phase(run, "unlock", "unlock.yml", {"deployctl_unlock_state": "released"})
        run.locked = not gate(result)
        return not run.locked

    def _backup(self, run: Run) -> PhaseResult:
        last = self._last_release()
        protect = [last.details["backup_set"]] if last and last.details.get("backup_set") else []
        live = sorted({v for v in run.before.values() if v})
        result = self._phase(run, "backup", "backup.yml", {"deployctl_backup_protect": protect,
                                                            "deployctl_live_version": ",".join(live)})
        sets = [r.get("set_id") for r in result.report("backup").values()]
        if sets:
            run.backup_set = sets[0]
            run.deployment.details["backup_set"] = run.backup_set
        return result

    def _verify_and_reopen(self, run: Run, hosts: list[str] | None) -> bool:
        if hosts is None or hosts:
            verify = self._phase(run, "verify", "verify.yml", {}, hosts=hosts)
            if not gate(verify):
                return False
        off = self._phase(run, "maintenance off", "maintenance.yml", {"deployctl_maintenance_state": "off"})
        return gate(off)

    def _recover(self, run: Run, reason: str, interrupted: bool = False) -> Outcome:
        """Put back what this release changed: code per host, the database if migrate ran."""
        self._recovering = True
        self.runner.cancel.clear()
        code = ExitCode.INTERRUPTED if interrupted else ExitCode.ROLLED_BACK
        if not run.touched:
            return self._finish(run, ExitCode.INTERRUPTED if interrupted else ExitCode.FAILED_UNCHANGED,
                                "interrupted" if interrupted else "unchanged", f"{reason}; nothing was changed")
        if self.no_rollback:
            return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                f"{reason}; not rolled back (--no-rollback), maintenance mode stays on")
        changed = [h for h in run.deployed_hosts if h not in run.unreachable]
        targets = {h: run.before.get(h) or "" for h in changed}
        restore = run.backup_set if run.migrate_started else None
        self.output.progress(f"[yellow]rolling back: {reason}[/yellow]")
        run.deployment.details.update(targets=targets, restored_set=restore, failure=reason)
        steps_ok = True
        if targets or restore:
            rollback = self._phase(run, "rollback", "rollback.yml",
                                   {"deployctl_rollback_targets": targets, "deployctl_restore_set_id": restore or ""})
            steps_ok = gate(rollback)
        if steps_ok:
            live_hosts = [h for h, v in run.before.items() if v]
            steps_ok = self._verify_and_reopen(run, live_hosts)
        if run.unreachable:
            run.deployment.details["needs_attention"] = sorted(run.unreachable)
            return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                f"{reason}; rolled back the reachable hosts; unreachable, needs attention: "
                                f"{', '.join(sorted(run.unreachable))}")
        if not steps_ok:
            return self._finish(run, ExitCode.NEEDS_HUMAN, "needs-human",
                                f"{reason}; the rollback failed too, maintenance mode stays on")
        restored = f", database restored from {restore}" if restore else ""
        return self._finish(run, code, "interrupted" if interrupted else "rolled-back",
                            f"{reason}; rolled back{restored}")

    def _stop_unchanged(self, run: Run, message: str) -> Outcome:
        return self._finish(run, ExitCode.FAILED_UNCHANGED, "unchanged", f"{message}; nothing was changed")

    def _finish_locked(self, run: Run) -> Outcome:
        holders = run.deployment.details.get("lock_holders") or {}
        holder = next(iter(holders.values()), None)
        if holder:
            who = f"{holder.get('user')}@{holder.get('control_node')} ({holder.get('deployment_id')})"
            return self._finish(run, ExitCode.LOCKED, "locked",
                                f"the environment is locked by {who} since {holder.get('since')}; "
                                "if that deployment is dead, run `deployctl unlock`")
        return self._finish(run, ExitCode.FAILED_UNCHANGED, "unchanged",
                            f"could not take the lock: {run.deployment.details.get('lock_problem')}")

    def _finish(self, run: Run, code: ExitCode, outcome: str, message: str) -> Outcome:
        if run.locked:
            self._recovering = True
            self.runner.cancel.clear()
            if not self._release_lock(run):
                message += "; the lock could not be released (deployctl unlock)"
        run.deployment.details["message"] = message
        self._announce(run, code, outcome, message)
        self.history.finish(run.deployment, outcome, int(code))
        return Outcome(code, outcome, message, run.deployment)

    def _notify(self, run: Run, event: str, outcome: str, message: str) -> None:
        """Send an event to the environment's channels; never fails the command, records what happened."""
        try:
            deployment = run.deployment
            records = self.notifier.send(event, deployment.id, deployment.version, outcome, message)
        except Exception as exc:  # a notification must never fail a release
            problem = exc.__class__.__name__  # the name only: the message could hold a secret
            records = [{"channel": "all", "event": event, "delivered": False, "error": problem}]
            self.output.progress(f"[yellow]notification {event} not sent: {problem}[/yellow]")
        if records:
            run.deployment.details.setdefault("notifications", []).extend(records)

    def _announce(self, run: Run, code: ExitCode, outcome: str, message: str) -> None:
        """How a release or rollback ended; for `deployctl verify`, its record and health change alerts."""
        action = run.deployment.action
        if action in ANNOUNCED_ACTIONS:
            self._notify(run, finish_event(action, outcome), outcome, message)
        elif action == "verify":
            previous = self.history.last_verification(self.env.name)
            healthy = code == ExitCode.OK
            self.history.record_verification(run.deployment.id, self.env.name, healthy, int(code), run.checks,
                                             outcome, sum(p["seconds"] for p in run.deployment.phases))
            event = verification_event(previous["healthy"] if previous else None, healthy)
            if event:
                self._notify(run, event, outcome, message)

    def _last_release(self):
        done = self.history.recent(self.env.name, limit=1, action="release", outcome="live")
        return done[0] if done else None

    def _data_to_restore(self, to: str | None, data: str, last) -> str | None:
        if data == "keep":
            return None
        if to is None:
            if last is None:
                return None
            ran_migrate = any(p["name"] == "migrate" for p in last.phases)
            return last.details.get("backup_set") if data == "restore" or ran_migrate else None
        if data == "auto":
            return None
        _, sets = self.backups()
        matching = [s for s in sets if to in str(s.get("live_version", "")).split(",") and s.get("verified")]
        return matching[0]["set_id"] if matching else None

    @contextmanager
    def _signals(self):
        """Ctrl-C and SIGTERM cancel the running phase; the pipeline then rolls back and unlocks."""

        def cancel(signum, frame):
            if self._recovering:
                self.output.progress("[yellow]rolling back; wait for it to finish[/yellow]")
                return
            self.output.progress("[yellow]interrupted: stopping the running phase, then rolling back[/yellow]")
            self.runner.cancel.set()

        previous = {s: signal.signal(s, cancel) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
