"""The Ansible settings a run uses: the project's own ansible.cfg, with deployctl's settings merged in.

ansible-playbook reads one configuration file only, so pointing ANSIBLE_CONFIG at deployctl's file would
hide the user's (vault_password_file, remote_user, private_key_file, become settings, callbacks...). The
project's file is found the way Ansible finds one, with the project root in place of the working
directory: $ANSIBLE_CONFIG, <project>/ansible.cfg, ~/.ansible.cfg, /etc/ansible/ansible.cfg. Its relative
paths are made absolute (they are relative to that file), and deployctl's settings go over it:

- roles_path and collections_path: deployctl's roles and collection first, then the user's;
- retry_files_enabled, keep_remote_files: off; debug and verbosity: removed, since they make Ansible print
  module arguments, secrets included;
- the [ssh_connection] settings deployctl relies on (pipelining, ControlPersist, ServerAlive keepalives),
  unless the user set ssh_args: then the user's, with the keepalives added when they are missing.

Everything else is the user's.
"""

from __future__ import annotations

import configparser
import io
import os
from pathlib import Path

# settings whose values are paths (or lists of paths) relative to the file that sets them
PATH_KEYS = {"vault_password_file", "private_key_file", "roles_path", "collections_path", "collections_paths",
             "log_path", "library", "module_utils", "action_plugins", "callback_plugins", "connection_plugins",
             "filter_plugins", "lookup_plugins", "inventory_plugins", "strategy_plugins", "test_plugins",
             "vars_plugins", "cache_plugins", "become_plugins", "doc_fragment_plugins", "fact_caching_connection",
             "local_tmp", "playbook_dir"}
REMOVED = {"debug", "verbosity"}
KEEPALIVE = "-o ServerAliveInterval=2 -o ServerAliveCountMax=3"


def user_config(project_root: Path) -> Path | None:
    candidates = [os.environ.get("ANSIBLE_CONFIG"), project_root / "ansible.cfg", Path.home() / ".ansible.cfg",
                  "/etc/ansible/ansible.cfg"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


def _absolute(value: str, base: Path, key: str) -> str:
    if key == "vault_identity_list":
        entries = []
        for entry in value.split(","):
            label, sep, path = entry.strip().rpartition("@")
            if sep and path and path != "prompt" and not os.path.isabs(os.path.expanduser(path)):
                path = str(base / path)
            entries.append(f"{label}{sep}{path}" if sep else entry.strip())
        return ",".join(entries)
    parts = []
    for part in value.split(os.pathsep):
        expanded = os.path.expanduser(part.strip())
        parts.append(expanded if not expanded or os.path.isabs(expanded) else str(base / expanded))
    return os.pathsep.join(parts)


def merged(project_root: Path, content: Path) -> tuple[str, Path | None]:
    """The text of the configuration a run uses, and the user's file it was merged from (None: none)."""
    ours = configparser.ConfigParser(interpolation=None)
    ours.read(content / "ansible.cfg")
    source = user_config(project_root)
    config = configparser.ConfigParser(interpolation=None)
    if source is not None:
        config.read(source)
        for section in config.sections():
            for key, value in config.items(section, raw=True):
                if key in PATH_KEYS or key == "vault_identity_list":
                    config.set(section, key, _absolute(value, source.parent, key))
    for section in ("defaults", "ssh_connection"):
        if not config.has_section(section):
            config.add_section(section)
    defaults = config["defaults"]
    for key in REMOVED:
        defaults.pop(key, None)
    for key in ("roles_path", "collections_path"):
        mine = str(content / ("roles" if key == "roles_path" else "collections"))
        theirs = defaults.get(key) or (defaults.get("collections_paths") if key == "collections_path" else "")
        defaults[key] = os.pathsep.join(filter(None, [mine, theirs]))
    defaults.pop("collections_paths", None)
    defaults["retry_files_enabled"] = "False"
    defaults["keep_remote_files"] = "False"
    for key, value in ours.items("defaults", raw=True):
        defaults.setdefault(key, value)
    ssh = config["ssh_connection"]
    if "ssh_args" in ssh and "ServerAliveInterval" not in ssh["ssh_args"]:
        ssh["ssh_args"] = f"{ssh['ssh_args']} {KEEPALIVE}"
    for key, value in ours.items("ssh_connection", raw=True):
        ssh.setdefault(key, value)
    text = io.StringIO()
    text.write(f"# The settings of this run: {source or 'deployctl defaults'} with deployctl's merged in\n")
    config.write(text)
    return text.getvalue(), source
