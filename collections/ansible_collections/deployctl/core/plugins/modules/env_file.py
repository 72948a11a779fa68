#!/usr/bin/python
# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""Write deployctl's block of an app's .env, leaving every line the operator wrote as it is."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: env_file
short_description: Keep deployctl's marked block of a .env file, and nothing else of it
version_added: "0.2.0"
description:
  - deployctl owns only the block between C(# BEGIN deployctl ...) and C(# END deployctl) in the file; every
    other line is the operator's and stays as it is. A file that does not exist is created (mode 0600); an
    existing one keeps its mode and owner.
  - Values are quoted so that a shell's C(.), python-dotenv and docker compose all read back exactly the value
    given; a value no quoting can carry for all of them (a newline, NUL, C(${), or a single quote or backslash
    together with one of C($ ` " !)) is refused, and nothing is written.
  - A variable set both in the block and elsewhere in the file is refused, because which one an app sees
    would depend on its parser.
  - With O(save_to), the block as it was is saved there first (only once, so a retried deployment keeps the
    first copy), so that a rollback can put it back with O(state=restored).
  - With O(dest), O(path) is only read and the file with deployctl's block goes to O(dest) (a release's own
    copy of the shared .env, for commands that run in it before it goes live), replacing a link there.
  - In check mode nothing is written; the values are validated all the same.
options:
  path: {description: The .env file., type: path, required: true}
  state:
    description: C(present) writes the block from O(values); C(restored) puts back a block saved by O(save_to).
    type: str
    choices: [present, restored]
    default: present
  values: {description: The variables of the block (C(present))., type: dict, default: {}}
  save_to: {description: Where the block as it was is saved before C(present) changes it (mode 0600)., type: path}
  dest: {description: "Where the file with the block is written (C(present)); O(path) then stays as it is.", type: path}
  override:
    description:
      - "With O(dest), variables set in the copy over any line of O(path) that sets them (those lines are left out
        of the copy, the variables go into its block), as for a migration rehearsal's copy pointed at a scratch
        database."
    type: dict
  restore_from:
    description: With C(restored), saved blocks in order of preference; the first that exists is put back.
    type: list
    elements: path
    default: []
author:
  - deployctl maintainers (@deployctl)
"""

EXAMPLES = r"""
- name: Write the app's environment, saving the block as it was for a rollback
  deployctl.core.env_file:
    path: /srv/app/shared/.env
    values: {DATABASE_URL: "mysql://app@db/app", SECRET: "{{ vault_secret }}"}
    save_to: /srv/app/.deployctl/deployments/DEP-20261201-093000/env-block
  no_log: true
"""

RETURN = r"""
keys: {description: The variables in deployctl's block (never their values)., type: list, returned: always}
created: {description: Whether the file was created., type: bool, returned: always}
restored_from: {description: "The saved block put back (C(restored)), null when none was saved.", type: str, returned: always}
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.deployctl.core.plugins.module_utils.envfile import EnvError, replaced_block, write_block
from ansible_collections.deployctl.core.plugins.module_utils.files import read_json, read_with_owner, write_atomic


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "state": {"type": "str", "choices": ["present", "restored"], "default": "present"},
            "values": {"type": "dict", "default": {}, "no_log": True},
            "save_to": {"type": "path"},
            "dest": {"type": "path"},
            "override": {"type": "dict", "no_log": True},
            "restore_from": {"type": "list", "elements": "path", "default": []},
        },
        mutually_exclusive=[("dest", "save_to")],
        required_by={"override": "dest"},
        supports_check_mode=True,
    )
    params = module.params
    path = params["path"]
    try:
        if params["state"] == "present":
            changed, keys, created = write_block(path, params["values"], dest=params["dest"],
                                                 save_to=params["save_to"], override=params["override"],
                                                 check=module.check_mode)
            module.exit_json(changed=changed, keys=keys, created=created, restored_from=None)
        restored_from = next((p for p in params["restore_from"] if os.path.exists(p)), None)
        if restored_from is None:
            module.exit_json(changed=False, keys=[], created=False, restored_from=None)
        saved = read_json(restored_from)["block"]
        data, mode, owner = read_with_owner(path, new_mode=0o600)
        existing = None if data is None else data.decode("utf-8")
        wanted = replaced_block(existing or "", saved) if existing is not None or saved else None
    except (EnvError, ValueError, KeyError) as exc:
        module.fail_json(msg=str(exc))
    changed = wanted is not None and wanted != existing
    if changed and not module.check_mode:
        write_atomic(path, wanted, mode=mode, owner=owner)
    module.exit_json(changed=changed, keys=[], created=existing is None and changed, restored_from=restored_from)


if __name__ == "__main__":
    main()
