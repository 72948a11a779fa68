# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""The block of an app's .env that deployctl owns, written so that every reader gets the exact value.

A .env is read by very different parsers: a shell's `.` (sh, bash), python-dotenv (and docker-compose v1,
which uses it), and Compose v2's own parser. They agree on single quotes around a value with no single
quote, no two backslashes in a row and no trailing backslash (python-dotenv decodes \\ and \' even there):
it is taken literally. Double quotes agree as long as the value has no `$`, backquote, backslash, double
quote or `!`. A value neither form can carry exactly (a newline, NUL, or both kinds of special character)
is refused rather than written in a way some reader gets wrong; so is `${`, which python-dotenv expands
in any quotes.

Standard library only (Python 3.8+): this runs on the managed hosts.
"""

from __future__ import annotations

import os
import re

from ansible_collections.deployctl.core.plugins.module_utils.files import (
    read_with_owner,
    write_atomic,
    write_json_atomic,
)

BEGIN = "# BEGIN deployctl: written from deployctl_env by every release; edit outside this block"
END = "# END deployctl"
KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PLAIN = re.compile(r"^[A-Za-z0-9_./:@%+,=-]*$")
DOUBLE_QUOTE_UNSAFE = set('$`\\"!')


class EnvError(ValueError):
    pass


def text_of(value):
    """The text a value becomes (the inventory may give numbers and booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def quote(key, value):
    """`value` as .env text every reader parses back to exactly `value`; EnvError when none can."""
    if not KEY.match(key or ""):
        raise EnvError(f"deployctl_env: {key!r} is not a valid variable name (letters, digits and _, not starting "
                       "with a digit)")
    for char, name in (("\n", "a newline"), ("\r", "a carriage return"), ("\0", "a NUL byte")):
        if char in value:
            raise EnvError(f"deployctl_env: the value of {key} contains {name}, which a .env cannot hold for every "
                           "reader; pass it in a file instead")
    if "${" in value:
        # python-dotenv (and so docker-compose v1) expands ${NAME} in every kind of quotes, with no escape
        raise EnvError(f"deployctl_env: the value of {key} contains ${{, which python-dotenv and docker-compose "
                       "expand whatever the quoting; pass it in a file instead")
    if PLAIN.match(value):
        return value
    if "'" not in value and "\\\\" not in value and not value.endswith("\\"):
        return f"'{value}'"
    if not DOUBLE_QUOTE_UNSAFE & set(value):
        return f'"{value}"'
    raise EnvError(f"deployctl_env: the value of {key} contains a single quote or backslashes and one of "
                   "$ ` \" !, which no quoting reads back the same in sh, python-dotenv and docker compose; "
                   "pass it in a file instead")


def block(values):
    lines = [BEGIN]
    lines += [f"{key}={quote(key, text_of(values[key]))}" for key in sorted(values)]
    lines.append(END)
    return "\n".join(lines) + "\n"


def _span(lines):
    """(start, end) line indexes of deployctl's block, end exclusive; None when there is none."""
    starts = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == BEGIN]
    if not starts:
        return None
    ends = [i for i in range(starts[0], len(lines)) if lines[i].rstrip("\r\n") == END]
    if not ends:
        raise EnvError("the .env has deployctl's BEGIN line but no END line: fix the file by hand")
    return starts[0], ends[0] + 1


def current_block(existing):
    """deployctl's block of `existing` .env text, "" when it has none."""
    lines = existing.splitlines(keepends=True)
    span = _span(lines)
    return "".join(lines[span[0]:span[1]]) if span else ""


def replaced_block(existing, new_block):
    """`existing` with deployctl's block replaced by `new_block` (appended when it had none; "" removes it);
    every other line stays as it is."""
    lines = existing.splitlines(keepends=True)
    span = _span(lines)
    if span:
        return "".join(lines[:span[0]]) + new_block + "".join(lines[span[1]:])
    if existing and not existing.endswith("\n") and new_block:
        existing += "\n"
    return existing + new_block


def merged(existing, values):
    """`existing` .env text with deployctl's block written from `values` (removed when there are none)."""
    return replaced_block(existing, block(values) if values else "")


def _assigned_outside(lines):
    """(line index, variable) of each assignment outside deployctl's block."""
    inside = False
    for index, line in enumerate(lines):
        if line == BEGIN:
            inside = True
        elif line == END:
            inside = False
        elif not inside:
            match = re.match(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
            if match:
                yield index, match.group(1)


def owned_keys(existing):
    """Variables defined outside deployctl's block that deployctl_env would define again (a conflict)."""
    return [assigned[1] for assigned in _assigned_outside(existing.splitlines())]


def without_keys(existing, keys):
    """`existing` without the lines outside deployctl's block that set one of `keys`."""
    lines = existing.splitlines(True)
    dropped = {index for index, key in _assigned_outside([line.rstrip("\r\n") for line in lines]) if key in keys}
    return "".join(line for index, line in enumerate(lines) if index not in dropped)


def write_block(path, values, dest=None, save_to=None, override=None, check=False):
    """Write deployctl's block from `values` into the .env at `path` (or, with `dest`, the file with the block
    to `dest`, replacing a link there; `override` then replaces the operator's lines that set its keys).
    With `save_to`, the block as it was is saved there first, once. Returns (changed, keys, created);
    EnvError when a value cannot be written exactly or a key is set outside the block too."""
    data, mode, owner = read_with_owner(path, new_mode=0o600)
    existing = None if data is None else data.decode("utf-8")
    override = override or {}
    source = without_keys(existing or "", override) if override else existing or ""
    conflicts = sorted(set(owned_keys(source)) & set(values))
    if conflicts:
        raise EnvError(f"{path} sets {', '.join(conflicts)} outside deployctl's block too: remove it there, "
                       "or from deployctl_env")
    values = {**values, **override}
    wanted = merged(source, values)
    if save_to and not check and not os.path.exists(save_to):
        os.makedirs(os.path.dirname(save_to), mode=0o700, exist_ok=True)
        write_json_atomic(save_to, {"block": current_block(existing or "")}, mode=0o600)
    target = dest or path
    if target != path:
        regular = os.path.isfile(target) and not os.path.islink(target)
        existing = read_with_owner(target)[0].decode("utf-8") if regular else None
    changed = wanted != existing
    if changed and not check:
        write_atomic(target, wanted, mode=mode, owner=owner)
    return changed, sorted(values), existing is None and changed
