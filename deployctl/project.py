"""The project a user releases: `deployctl.yml` and its environments.

Everything here is read and checked on the control node before any playbook runs, so that bad
configuration is refused with one line and nothing on a server is touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from deployctl.errors import BadInput
from deployctl.notify import Channel, parse_channels

CONFIG_NAME = "deployctl.yml"
TOP_LEVEL_KEYS = {"app", "environments"}

# A version becomes a directory name, an image tag and a git ref: keep it to characters safe in all three.
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
# an INI inventory without sections: host names (maybe a port) and key=value variables, nothing else
INI_HOST_LINE = re.compile(r"^\s*[A-Za-z0-9][A-Za-z0-9_.-]*(:[0-9]+)?(\s+[A-Za-z_][A-Za-z0-9_]*=\S*)*\s*$")
SERIAL_PATTERN = re.compile(r"^([1-9][0-9]*|([1-9][0-9]?|100)%)$")

ENVIRONMENT_KEYS = {
    "inventory",
    "production",
    "serial",
    "max_fail_percentage",
    "phase_timeout",
    "backup",
    "forks",
    "notify",
}


@dataclass(frozen=True)
class Environment:
    name: str
    inventory: Path
    production: bool = False
    serial: str = "100%"
    max_fail_percentage: int = 0
    phase_timeout: int = 900
    backup: bool = True
    forks: int | None = None
    notify: tuple[Channel, ...] = ()


@dataclass(frozen=True)
class Project:
    root: Path
    app: str
    environments: dict[str, Environment]

    @property
    def state_dir(self) -> Path:
        return self.root / ".deployctl"

    def environment(self, name: str) -> Environment:
        try:
            return self.environments[name]
        except KeyError:
            known = ", ".join(sorted(self.environments)) or "none"
            raise BadInput(f"unknown environment {name!r} (known: {known})") from None


def check_version(version: str) -> str:
    if not VERSION_PATTERN.fullmatch(version or ""):
        raise BadInput(
            f"invalid version {version!r}: use letters, digits and . _ + - (at most 128), starting with a "
            "letter or digit"
        )
    return version


def find_root(start: Path) -> Path:
    start = start.resolve()
    for directory in (start, *start.parents):
        if (directory / CONFIG_NAME).is_file():
            return directory
    raise BadInput(f"no {CONFIG_NAME} in {start} or its parents (use --project-dir)")


def load(project_dir: Path | None = None) -> Project:
    root = find_root(project_dir or Path.cwd()) if project_dir is None else project_dir.resolve()
    path = root / CONFIG_NAME
    if not path.is_file():
        raise BadInput(f"no {CONFIG_NAME} in {root}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise BadInput(f"{path}{where}: not valid YAML") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected a mapping at the top level")
    unknown = set(data) - TOP_LEVEL_KEYS
    if unknown:
        raise BadInput(f"{path}: unknown setting(s) {', '.join(sorted(map(str, unknown)))} (known: "
                       f"{', '.join(sorted(TOP_LEVEL_KEYS))})")
    raw_envs = data.get("environments")
    if not isinstance(raw_envs, dict) or not raw_envs:
        raise BadInput(f"{path}: 'environments' must map environment names to settings")
    environments = {name: _environment(root, str(name), spec) for name, spec in raw_envs.items()}
    return Project(root=root, app=str(data.get("app", root.name)), environments=environments)


def _environment(root: Path, name: str, spec: object) -> Environment:
    where = f"{CONFIG_NAME}: environment {name!r}"
    spec = spec or {}
    if not isinstance(spec, dict):
        raise BadInput(f"{where}: expected a mapping")
    unknown = set(spec) - ENVIRONMENT_KEYS
    if unknown:
        raise BadInput(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
    inventory = root / str(spec.get("inventory", f"inventory/{name}"))
    _check_inventory(where, inventory)
    serial = str(spec.get("serial", "100%"))
    if not SERIAL_PATTERN.fullmatch(serial):
        raise BadInput(f"{where}: serial must be a count (3) or a percentage (25%), not {serial!r}")
    return Environment(
        name=name,
        inventory=inventory,
        production=_typed(where, spec, "production", bool, False),
        serial=serial,
        max_fail_percentage=_bounded(where, spec, "max_fail_percentage", 0, 0, 100),
        phase_timeout=_bounded(where, spec, "phase_timeout", 900, 10, 86400),
        backup=_typed(where, spec, "backup", bool, True),
        forks=_bounded(where, spec, "forks", None, 1, 500),
        notify=parse_channels(where, spec.get("notify"), root),
    )


def _check_inventory(where: str, inventory: Path) -> None:
    """A directory, or a file Ansible would read as an inventory: YAML with groups or INI with sections.

    Anything else (a typo pointing at /etc/passwd, say) is refused: Ansible would take its lines for host
    names and try to reach them."""
    if inventory.is_dir():
        return
    if not inventory.is_file():
        raise BadInput(f"{where}: inventory {inventory} does not exist")
    try:
        text = inventory.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{where}: inventory {inventory} cannot be read ({exc.__class__.__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict) and data and all(isinstance(group, dict) or group is None for group in data.values()):
        return
    if re.search(r"^\s*\[[A-Za-z0-9_:.-]+\]\s*$", text, re.MULTILINE):
        return
    entries = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith(("#", ";"))]
    if entries and all(INI_HOST_LINE.match(line) for line in entries):
        return
    raise BadInput(f"{where}: {inventory} is not an Ansible inventory (a directory, a YAML file of groups or an "
                   "INI file with [group] sections)")


def _typed(where: str, spec: dict, key: str, kind: type, default):
    value = spec.get(key, default)
    if not isinstance(value, kind):
        raise BadInput(f"{where}: {key} must be {kind.__name__}, not {value!r}")
    return value


def _bounded(where: str, spec: dict, key: str, default, low: int, high: int):
    value = spec.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadInput(f"{where}: {key} must be a whole number from {low} to {high}, not {value!r}")
    return value
