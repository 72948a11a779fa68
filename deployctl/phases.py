"""The phases deployctl runs, as data: each phase's name (as the history and reports know it), its
playbook and the variables it always gets. The commands' sequences live in the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Phase(StrEnum):
    LOCK = "lock"
    CLEAR_STALE_LOCK = "clear stale lock"
    PREFLIGHT = "preflight"
    STATE = "state"
    BACKUP = "backup"
    STAGE = "stage"
    REHEARSE = "rehearse"
    DATA_CHECK = "data check"
    MAINTENANCE_ON = "maintenance on"
    DEPLOY = "deploy"
    MIGRATE = "migrate"
    VERIFY = "verify"
    DATA_STATE = "data state"
    MAINTENANCE_OFF = "maintenance off"
    STOP_COMMANDS = "stop commands"
    ROLLBACK = "rollback"
    RESTORE = "restore"
    UNLOCK = "unlock"


@dataclass(frozen=True)
class PhaseSpec:
    playbook: str
    variables: dict = field(default_factory=dict)


PHASES: dict[Phase, PhaseSpec] = {
    Phase.LOCK: PhaseSpec("lock.yml"),
    Phase.CLEAR_STALE_LOCK: PhaseSpec("unlock.yml", {"deployctl_unlock_state": "released"}),
    Phase.PREFLIGHT: PhaseSpec("preflight.yml"),
    # read-only: the hosts' records (and, when deployctl_begin, the deployment written ahead into them)
    Phase.STATE: PhaseSpec("state.yml"),
    Phase.BACKUP: PhaseSpec("backup.yml"),
    # unpacks the release (or fetches its image) beside the live one, before maintenance
    Phase.STAGE: PhaseSpec("stage.yml"),
    # the new release's migrations on the scratch copy of the pre-release set, before maintenance
    Phase.REHEARSE: PhaseSpec("rehearse.yml"),
    Phase.DATA_CHECK: PhaseSpec("data_state.yml"),
    Phase.MAINTENANCE_ON: PhaseSpec("maintenance.yml", {"deployctl_maintenance_state": "on"}),
    Phase.DEPLOY: PhaseSpec("deploy.yml"),
    Phase.MIGRATE: PhaseSpec("migrate.yml"),
    Phase.VERIFY: PhaseSpec("verify.yml"),
    Phase.DATA_STATE: PhaseSpec("data_state.yml"),
    Phase.MAINTENANCE_OFF: PhaseSpec("maintenance.yml", {"deployctl_maintenance_state": "off"}),
    Phase.STOP_COMMANDS: PhaseSpec("stop.yml"),
    Phase.ROLLBACK: PhaseSpec("rollback.yml"),
    Phase.RESTORE: PhaseSpec("restore.yml"),
    Phase.UNLOCK: PhaseSpec("unlock.yml", {"deployctl_unlock_state": "released"}),
}

# Phases after which the servers may differ from how the deployment found them.
CHANGING = {Phase.MAINTENANCE_ON, Phase.DEPLOY, Phase.MIGRATE, Phase.ROLLBACK, Phase.RESTORE,
            Phase.MAINTENANCE_OFF}
