"""The roles' defaults, argument specs and the variables their tasks and templates use, held against each other
(read from the files: no server, no ansible-playbook run)."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "roles"
ROLE_NAMES = sorted(p.name for p in ROLES.iterdir() if (p / "meta" / "main.yml").is_file())
STRATEGIES = {"release_dir", "compose"}
# the role every other one takes its shared defaults from (it has no tasks, hence no argument spec)
COMMON = "common"

NAME = re.compile(r"\bdeployctl_[a-z0-9_]+\b")
# a name in a Jinja expression that is a key of a dict or an attribute, not a variable: x.deployctl_y, 'deployctl_y'
# (and nginx's $deployctl_... variables and @deployctl_... locations in the templates)
NOT_A_VARIABLE = re.compile(r"(\.|['\"$@])deployctl_[a-z0-9_]+")


def load(path: Path):
    return yaml.safe_load(path.read_text()) if path.is_file() else None


@cache
def defaults(role: str) -> dict:
    return load(ROLES / role / "defaults" / "main.yml") or {}


@cache
def specs(role: str) -> dict:
    return (load(ROLES / role / "meta" / "argument_specs.yml") or {}).get("argument_specs") or {}


@cache
def dependencies(role: str) -> list[str]:
    deps = (load(ROLES / role / "meta" / "main.yml") or {}).get("dependencies") or []
    return [d["role"] if isinstance(d, dict) else d for d in deps]


def walk(node):
    """Every task (dict) of a task list, blocks included."""
    if isinstance(node, list):
        for item in node:
            yield from walk(item)
    elif isinstance(node, dict):
        yield node
        for key in ("block", "rescue", "always"):
            yield from walk(node.get(key))


def strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)


def used_in(text: str) -> set[str]:
    """deployctl_ variables a YAML value or template reads (keys and attributes left out)."""
    return set(NAME.findall(NOT_A_VARIABLE.sub("", text)))


def task_files(role: str) -> dict[str, list]:
    return {str(p.relative_to(ROLES / role / "tasks")): load(p) or []
            for p in sorted((ROLES / role / "tasks").rglob("*.yml"))}


def include_target(task: dict, key: str):
    for module in (f"ansible.builtin.{key}", key):
        if module in task:
            return task[module]
    return None


def included_files(role: str, name: str) -> list[str]:
    """The task files (relative to tasks/) a task file runs, following include_tasks and import_tasks; a
    templated file name (the strategy's, a conditional one) stands for every file it can name."""
    tasks = task_files(role)
    seen, todo = [], [name]
    while todo:
        current = todo.pop()
        if current in seen or current not in tasks:
            continue
        seen.append(current)
        folder = str(Path(current).parent) if "/" in current else ""
        for task in walk(tasks[current]):
            for key in ("include_tasks", "import_tasks"):
                target = include_target(task, key)
                if target is None:
                    continue
                target = target if isinstance(target, str) else target.get("file")
                if "{{ deployctl_strategy }}" in target:
                    candidates = [target.replace("{{ deployctl_strategy }}", s) for s in sorted(STRATEGIES)]
                else:
                    candidates = re.findall(r"[\w/.]+\.yml", target)
                for candidate in candidates:
                    # relative to the including file's folder first, as Ansible looks, then to tasks/
                    nested = f"{folder}/{candidate}" if folder else candidate
                    todo.append(nested if nested in tasks else candidate)
    return seen


def set_in(role: str, files: list[str] | None = None) -> set[str]:
    """Variables the role's tasks register or set_fact (host facts, seen by every later task), its vars/, and
    the task vars of the given task files."""
    names: set[str] = set(load(ROLES / role / "vars" / "main.yml") or {})
    for name, tasks in task_files(role).items():
        for task in walk(tasks):
            if isinstance(task.get("register"), str):
                names.add(task["register"])
            for module in ("ansible.builtin.set_fact", "set_fact"):
                if isinstance(task.get(module), dict):
                    names.update(task[module])
            if files is not None and name in files:
                names.update(task.get("vars") or {})
    return names


def include_roles(role: str) -> list[tuple[str, str]]:
    """(role, entry point) of every include_role/import_role of the role's tasks."""
    found = []
    for tasks in task_files(role).values():
        for task in walk(tasks):
            for key in ("include_role", "import_role"):
                target = include_target(task, key)
                if target:
                    found.append((target["name"], target.get("tasks_from", "main")))
    return found


def read_by(role: str, entry: str) -> set[str]:
    """deployctl_ variables an entry point's task files (main: also the role's templates and its own defaults)
    read, less what the role sets itself and what the roles it includes set for it."""
    tasks = task_files(role)
    files = included_files(role, f"{entry}.yml")
    names: set[str] = set()
    for name in files:
        for text in strings(tasks[name]):
            names |= used_in(text)
    if entry == "main":
        for template in (ROLES / role / "templates").glob("*.j2"):
            names |= used_in(template.read_text())
        for value in strings(list(defaults(role).values())):
            names |= used_in(value)
    internal = set_in(role, files)
    for other, _ in include_roles(role):
        internal |= set_in(other)
    return names - internal


def defined_default(role: str, variable: str):
    """The default a role's tasks see for a variable: its own, else its dependencies'."""
    for source in [role, *dependencies(role)]:
        if variable in defaults(source):
            return source, defaults(source)[variable]
    return None, None


def test_every_role_takes_the_shared_defaults_from_common():
    for role in ROLE_NAMES:
        if role != COMMON:
            assert dependencies(role) == [COMMON], role
    assert dependencies(COMMON) == []
    assert not (ROLES / COMMON / "tasks").exists(), "common holds defaults only"


def test_no_variable_has_a_default_in_two_roles():
    where: dict[str, list[str]] = {}
    for role in ROLE_NAMES:
        for variable in defaults(role):
            where.setdefault(variable, []).append(role)
    assert {v: r for v, r in where.items() if len(r) > 1} == {}


def test_a_default_in_common_is_read_by_more_than_one_role():
    readers: dict[str, set[str]] = {}
    for role in ROLE_NAMES:
        for entry in specs(role):
            for variable in read_by(role, entry):
                readers.setdefault(variable, set()).add(role)
    # the shared defaults' own expressions read some of them (deployctl_env for deployctl_secret_values)
    for value in strings(list(defaults(COMMON).values())):
        for variable in used_in(value):
            readers.setdefault(variable, set()).add(COMMON)
    lonely = {v: sorted(readers.get(v, ())) for v in defaults(COMMON) if len(readers.get(v, ())) < 2}
    assert lonely == {}, "defaults in common that one role reads belong in that role"


@pytest.mark.parametrize("role", [r for r in ROLE_NAMES if r != COMMON])
def test_every_variable_a_role_reads_is_in_its_spec(role):
    assert specs(role), f"{role} has no meta/argument_specs.yml"
    for entry, spec in specs(role).items():
        assert (ROLES / role / "tasks" / f"{entry}.yml").is_file(), f"{role}: entry point {entry} has no task file"
        options = set(spec.get("options") or {})
        missing = read_by(role, entry) - options
        assert not missing, f"{role} ({entry}) reads variables its spec does not declare: {sorted(missing)}"
        extra = options - read_by(role, entry)
        assert not extra, f"{role} ({entry}) declares variables it does not read: {sorted(extra)}"


@pytest.mark.parametrize("role", [r for r in ROLE_NAMES if r != COMMON])
def test_spec_defaults_are_the_real_defaults(role):
    for entry, spec in specs(role).items():
        for variable, option in (spec.get("options") or {}).items():
            source, value = defined_default(role, variable)
            if "default" in option:
                assert source is not None, f"{role} ({entry}): {variable} documents a default no defaults file sets"
                assert option["default"] == value, f"{role} ({entry}): {variable} default differs from {source}'s"
            else:
                assert source is None, f"{role} ({entry}): {variable} has a default in {source} the spec omits"
            assert not (option.get("required") and source), f"{role} ({entry}): {variable} required but defaulted"


def test_no_default_filter_on_a_defaulted_variable():
    defaulted = {v for role in ROLE_NAMES for v in defaults(role)}
    for path in sorted(ROLES.rglob("*")):
        if path.suffix in (".yml", ".j2") and path.is_file():
            for variable in re.findall(r"(?<![.\w])(deployctl_[a-z0-9_]+)\s*\|\s*default\(", path.read_text()):
                assert variable not in defaulted, f"{path.relative_to(REPO)}: {variable} | default(...)"


@pytest.mark.parametrize("role", [r for r in ROLE_NAMES if r != COMMON])
def test_strategies_follow_the_one_layout(role):
    tasks = ROLES / role / "tasks"
    for strategy in STRATEGIES:
        assert not (tasks / f"{strategy}.yml").exists(), f"{role}: tasks/{strategy}.yml belongs in tasks/strategy/"
    if (tasks / "strategy").is_dir():
        assert {p.stem for p in (tasks / "strategy").glob("*.yml")} == STRATEGIES, role
        main = load(tasks / "main.yml")
        assert any(include_target(t, "include_tasks") == "strategy/{{ deployctl_strategy }}.yml" for t in walk(main)), \
            f"{role}: tasks/main.yml includes strategy/{{{{ deployctl_strategy }}}}.yml"
    # no include chosen by a strategy test beside it: that is what tasks/strategy/ is for
    for name, task_list in task_files(role).items():
        for task in walk(task_list):
            if include_target(task, "include_tasks") or include_target(task, "include_role"):
                assert "deployctl_strategy" not in str(task.get("when", "")), f"{role}/{name}: {task.get('name')}"


@pytest.mark.parametrize("role", [r for r in ROLE_NAMES if r != COMMON])
def test_roles_include_only_entry_points_of_other_roles(role):
    for other, entry in include_roles(role):
        assert other in ROLE_NAMES and other != role, (role, other)
        assert entry in specs(other), f"{role} includes {other}'s {entry}, which is not an entry point of its spec"


def test_role_readmes_are_generated_from_the_specs():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "role-readmes"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
