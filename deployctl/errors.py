"""Exit codes and the errors that carry them.

The codes are part of the interface (cron jobs, CI and AWX read them) and are documented in the README.
"""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # a bug or an unexpected condition on the control node
    BAD_INPUT = 2  # bad arguments or configuration; nothing was touched
    FAILED_UNCHANGED = 3  # the release stopped before any server changed
    ROLLED_BACK = 4  # the release failed and was rolled back cleanly
    NEEDS_HUMAN = 5  # the rollback failed too, or a host could not be reached; maintenance stays on
    LOCKED = 6  # someone else holds the environment's lock
    CHECKS_FAILED = 7  # verify ran and a check failed
    COULD_NOT_RUN = 8  # verify could not run (host unreachable, Ansible error)
    STATE = 9  # deployctl's own state on this control node (history, state directory) is unusable
    INTERRUPTED = 130  # Ctrl-C or SIGTERM; what was changed has been rolled back


class DeployctlError(Exception):
    exit_code = ExitCode.ERROR


class BadInput(DeployctlError):
    exit_code = ExitCode.BAD_INPUT


class StateError(DeployctlError):
    """The state directory or the history cannot be read or written; the message says what to do."""

    exit_code = ExitCode.STATE
