"""The variables deployctl's playbooks and roles read. An inventory variable named `deployctl_...` that none
of them reads is a typo (`deployctl_migrate_comand` would silently skip the migrations): preflight refuses
it, naming the variable it probably meant. The same holds for the keys of `deployctl_database` (`hots:` would
send the backups to the default host) and of `deployctl_redis`: they are known as `deployctl_database.<key>` and
`deployctl_redis.<key>`."""

from __future__ import annotations

import difflib
import functools
import re
from pathlib import Path

NAME = re.compile(r"\bdeployctl_[a-z0-9_]+\b")
DATABASE_KEY = re.compile(r"\bdeployctl_(?:database|redis)\.[a-z_]+\b")


@functools.cache
def known(content: Path) -> tuple[str, ...]:
    names: set[str] = set()
    for folder in ("playbooks", "roles"):
        for path in (content / folder).rglob("*"):
            if path.suffix in (".yml", ".yaml", ".j2") and path.is_file():
                text = path.read_text(errors="replace")
                names.update(NAME.findall(text), DATABASE_KEY.findall(text))
    return tuple(sorted(names))


def explain(unknown: list[str], content: Path) -> str:
    """`deployctl_migrate_comand (did you mean deployctl_migrate_command?)`, for each unknown name."""
    names = known(content)
    parts = []
    for name in sorted(unknown):
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.8)
        parts.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return ", ".join(parts)
