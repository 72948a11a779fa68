#!/usr/bin/python
# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""Install nginx configuration files, test, reload; a rejected configuration never stays (deployctl.core.nginx_config)."""
# Ansible requires the documentation variables before the imports.
# ruff: noqa: E402

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nginx_config
short_description: Install nginx configuration files, test the configuration, reload nginx
version_added: "0.1.0"
description:
  - Writes the files whose content differs (each atomically), runs the configuration test, and reloads nginx
    only when a configuration file (O(files[].reload)) changed and the test passed.
  - When the test (or the reload) fails, every file is put back as it was before the call (files that did not
    exist are removed), so a configuration nginx rejects never replaces a working one on disk, and nginx keeps
    running with the configuration it had.
  - In check mode nothing is written, tested or reloaded; the result says whether files would change.
author:
  - deployctl maintainers
options:
  files:
    description: The files to install.
    type: list
    elements: dict
    required: true
    suboptions:
      path: {description: Where the file goes (its directory must exist)., type: path, required: true}
      content: {description: The file's content., type: str, required: true}
      reload:
        description:
          - Whether a change of this file needs the configuration test and a reload. V(false) for files nginx
            reads on each request, like a static page; they are still put back when the test fails.
        type: bool
        default: true
  mode: {description: Permissions of the files created (existing files keep theirs)., type: raw, default: "0644"}
  test_command:
    description: Tests nginx's whole configuration, e.g. C(nginx -t -q). A string is split like a shell would, but run without one.
    type: raw
    required: true
  reload_command:
    description: Reloads nginx, e.g. C(systemctl reload nginx) or C(nginx -s reload).
    type: raw
    required: true
notes:
  - Supports check mode and diff mode.
"""

EXAMPLES = r"""
- name: Install the maintenance snippets
  deployctl.core.nginx_config:
    files:
      - {path: /etc/nginx/conf.d/deployctl-maintenance.conf, content: "{{ lookup('ansible.builtin.template', 'http.conf.j2') }}"}
      - {path: /etc/nginx/snippets/deployctl-maintenance.conf, content: "{{ lookup('ansible.builtin.template', 'server.conf.j2') }}"}
    test_command: nginx -t -q
    reload_command: systemctl reload nginx
"""

RETURN = r"""
changed_files: {description: The files that changed (or would change in check mode)., type: list, elements: str, returned: always}
reloaded: {description: Whether nginx was reloaded., type: bool, returned: always}
test_output: {description: What the configuration test printed (when it ran)., type: str, returned: when the test ran}
"""

import os
import shlex
import subprocess
import tempfile

from ansible.module_utils.basic import AnsibleModule


def _read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _write(module, path, data, mode):
    """Replace path atomically; an existing file keeps its owner and permissions, a new one gets mode."""
    new = not os.path.exists(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        module.atomic_move(tmp, path)
        if new:
            os.chmod(path, mode)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _argv(command):
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _run(command):
    """(ok, output) of a command run without a shell."""
    argv = _argv(command)
    if not argv:
        return False, "empty command"
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                              timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{argv[0]}: {exc}"
    output = (proc.stderr.strip() + "\n" + proc.stdout.strip()).strip()
    return proc.returncode == 0, output or f"exit {proc.returncode}"


def main():
    module = AnsibleModule(
        argument_spec={
            "files": {"type": "list", "elements": "dict", "required": True,
                      "options": {"path": {"type": "path", "required": True},
                                  "content": {"type": "str", "required": True},
                                  "reload": {"type": "bool", "default": True}}},
            "mode": {"type": "raw", "default": "0644"},
            "test_command": {"type": "raw", "required": True},
            "reload_command": {"type": "raw", "required": True},
        },
        supports_check_mode=True,
    )
    params = module.params
    mode = int(params["mode"], 8) if isinstance(params["mode"], str) else int(params["mode"])
    wanted = [(f["path"], f["content"].encode()) for f in params["files"]]
    needs_reload = {f["path"] for f in params["files"] if f["reload"]}
    before = {path: _read(path) for path, _ in wanted}
    changes = [(path, data) for path, data in wanted if before[path] != data]
    changed_files = [path for path, _ in changes]
    diff = [{"before_header": path, "after_header": path,
             "before": (before[path] or b"").decode("utf-8", "replace"), "after": data.decode("utf-8", "replace")}
            for path, data in changes]
    if not changes or module.check_mode:
        module.exit_json(changed=bool(changes), changed_files=changed_files, reloaded=False, diff=diff)

    def put_back():
        for path, _ in changes:
            if before[path] is None:
                if os.path.exists(path):
                    os.unlink(path)
            else:
                _write(module, path, before[path], mode)

    try:
        for path, data in changes:
            _write(module, path, data, mode)
    except OSError as exc:
        put_back()
        module.fail_json(msg=f"could not write the nginx configuration, nothing changed: {exc}",
                         changed_files=[], reloaded=False)
    if not needs_reload.intersection(changed_files):
        module.exit_json(changed=True, changed_files=changed_files, reloaded=False, diff=diff)
    passed, output = _run(params["test_command"])
    if not passed:
        put_back()
        module.fail_json(msg=f"nginx rejected the new configuration; the previous files are back in place: {output}",
                         changed_files=[], reloaded=False, test_output=output)
    reloaded, reload_output = _run(params["reload_command"])
    if not reloaded:
        put_back()
        module.fail_json(msg=f"nginx could not be reloaded; the previous files are back in place: {reload_output}",
                         changed_files=[], reloaded=False, test_output=output)
    module.exit_json(changed=True, changed_files=changed_files, reloaded=True, test_output=output, diff=diff)


if __name__ == "__main__":
    main()
