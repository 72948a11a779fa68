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
  - deployctl maintainers (@deployctl)
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

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.deployctl.core.plugins.module_utils import processes
from ansible_collections.deployctl.core.plugins.module_utils.files import read_with_owner, write_atomic


def _run(command):
    """(ok, output) of a command run without a shell."""
    argv = processes.argv_of(command)
    if not argv:
        return False, "empty command"
    rc, out, err = processes.run_text(argv, timeout=120)
    output = (err.strip() + "\n" + out.strip()).strip()
    return rc == 0, output or f"exit {rc}"


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
    found = {path: read_with_owner(path, new_mode=mode) for path, _data in wanted}
    before = {path: found[path][0] for path, _data in wanted}

    def write(path, data):
        _current, kept_mode, owner = found[path]
        write_atomic(path, data, mode=kept_mode, owner=owner)

    changes = [(path, data) for path, data in wanted if before[path] != data]
    changed_files = [path for path, _data in changes]
    diff = [{"before_header": path, "after_header": path,
             "before": (before[path] or b"").decode("utf-8", "replace"), "after": data.decode("utf-8", "replace")}
            for path, data in changes]
    if not changes or module.check_mode:
        module.exit_json(changed=bool(changes), changed_files=changed_files, reloaded=False, diff=diff)

    def put_back():
        for path, _data in changes:
            if before[path] is None:
                if os.path.exists(path):
                    os.unlink(path)
            else:
                write(path, before[path])

    try:
        for path, data in changes:
            write(path, data)
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
