#!/usr/bin/python
"""An environment-wide release lock, one file per host, taken atomically."""

from __future__ import annotations

DOCUMENTATION = r"""
module: release_lock
short_description: Take, release or inspect a deployctl release lock on one host
description:
  - The lock is a JSON file created with link(2), which fails if the file exists, so two control nodes
    can never both take it. It names its holder and carries a token; only that token releases it.
  - With O(settle), C(released) first ends those deployments in the host's release record (see
    M(deployctl.core.release_record)), in the same call; the lock goes only once they are settled.
options:
  path: {description: Lock file., type: path, required: true}
  state:
    description: C(acquired), C(released) (only with the holder's token), C(broken) (whoever holds it), C(inspected).
    type: str
    choices: [acquired, released, broken, inspected]
    default: inspected
  token: {description: Secret-free random token of the holder., type: str}
  holder: {description: "Who takes the lock (deployment id, user, control node, pid).", type: dict, default: {}}
  adopt:
    description:
      - With C(state=acquired), take over a lock held by this deployment id (a deployment whose control
        node died, being recovered), atomically; a lock held by anyone else is still refused.
    type: str
    default: ""
  only_holders:
    description: With C(state=broken), break the lock only when its holder is one of these deployment ids.
    type: list
    elements: str
    default: []
  settle:
    description:
      - With C(state=released), deployments (C(deployment_id), C(outcome)) to end in the release record under
        O(app_root) before the lock goes. Outcome C(live) makes their entries live, C(undone) undoes them,
        C(abandoned) leaves them as they are; either way a deployment stops being the host's unfinished one.
    type: list
    elements: dict
    default: []
    suboptions:
      deployment_id: {description: The deployment to end., type: str, required: true}
      outcome: {description: How it ended., type: str, required: true, choices: [live, undone, abandoned]}
  app_root: {description: "Root of the app whose release record O(settle) changes.", type: path}
  link:
    description: Whether the record's live version is C(current)'s target (C(false) for compose, see M(deployctl.core.release_record)).
    type: bool
    default: true
author:
  - deployctl maintainers (@deployctl)
"""

EXAMPLES = r"""
- name: Take the lock
  deployctl.core.release_lock:
    path: /srv/app/.deployctl/lock
    state: acquired
    token: "{{ deployctl_lock_token }}"
    holder: {deployment_id: DEP-20260101-120000, user: ada}

- name: The release is live; release the lock
  deployctl.core.release_lock:
    path: /srv/app/.deployctl/lock
    state: released
    token: "{{ deployctl_lock_token }}"
    app_root: /srv/app
    settle:
      - {deployment_id: DEP-20260101-120000, outcome: live}
"""

RETURN = r"""
holder: {description: The lock's holder after the task (null when free)., type: dict, returned: always}
held_by_other: {description: True when someone else holds the lock., type: bool, returned: always}
settled: {description: "Whether O(settle) changed the release record.", type: bool, returned: always}
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.deployctl.core.plugins.module_utils.files import read_lock, utc_stamp, write_atomic
from ansible_collections.deployctl.core.plugins.module_utils.release_records import Record, prune_saved, settle


def _who(holder):
    return f"{holder.get('user')}@{holder.get('control_node')} ({holder.get('deployment_id')}, pid {holder.get('pid')})"


def _content(token, holder):
    return json.dumps({"token": token, "holder": holder, "since": utc_stamp()})


def _acquire(path, token, holder):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{token}.tmp"
    with open(tmp, "w") as handle:
        handle.write(_content(token, holder))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _adopt(path, current, token, holder):
    """Replace the lock of a dead deployment with ours, unless it changed hands since it was read."""
    if read_lock(path) != current:
        return False
    write_atomic(path, _content(token, holder))
    return True


def _settle(module):
    if not module.params["app_root"]:
        module.fail_json(msg="settle needs app_root", holder=None, held_by_other=False)
    try:
        record = Record(module.params["app_root"], module.params["link"])
    except ValueError as exc:
        module.fail_json(msg=f"the release record of {module.params['app_root']} is unreadable: {exc}",
                         holder=None, held_by_other=False)
    changed = False
    for deployment in module.params["settle"]:
        changed = settle(record, deployment["deployment_id"], deployment["outcome"]) or changed
    if changed and not module.check_mode:
        record.save()
        prune_saved(record)
    return changed


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "state": {"type": "str", "default": "inspected",
                      "choices": ["acquired", "released", "broken", "inspected"]},
            "token": {"type": "str", "no_log": False},
            "holder": {"type": "dict", "default": {}},
            "adopt": {"type": "str", "default": ""},
            "only_holders": {"type": "list", "elements": "str", "default": []},
            "settle": {"type": "list", "elements": "dict", "default": [], "options": {
                "deployment_id": {"type": "str", "required": True},
                "outcome": {"type": "str", "required": True, "choices": ["live", "undone", "abandoned"]},
            }},
            "app_root": {"type": "path"},
            "link": {"type": "bool", "default": True},
        },
        required_if=[("state", "acquired", ["token"]), ("state", "released", ["token"])],
        supports_check_mode=True,
    )
    path, state, token = module.params["path"], module.params["state"], module.params["token"]
    settled = False
    if state == "released" and module.params["settle"]:
        settled = _settle(module)
    current = read_lock(path)
    changed = settled

    adopt = module.params["adopt"]
    holder_id = str(((current or {}).get("holder") or {}).get("deployment_id"))
    if state == "acquired" and adopt and current is not None and current.get("token") != token and holder_id == adopt:
        changed = True
        if not module.check_mode and _adopt(path, current, token, module.params["holder"]):
            current = read_lock(path)
    if state == "acquired":
        if current is None:
            changed = True
            if not module.check_mode and not _acquire(path, token, module.params["holder"]):
                current = read_lock(path)  # lost a race between the read and the link
                changed = False
            elif not module.check_mode:
                current = read_lock(path)
        if current is not None and current.get("token") != token:
            module.fail_json(msg=f"locked by {_who(current.get('holder') or {})} since {current.get('since')}",
                             holder=dict(current.get("holder") or {}, since=current.get("since")), held_by_other=True)
    elif state == "broken" and current is not None and module.params["only_holders"] and \
            holder_id not in module.params["only_holders"]:
        module.fail_json(msg=f"the lock changed hands: it is now held by {_who(current.get('holder') or {})}",
                         holder=dict(current.get("holder") or {}, since=current.get("since")), held_by_other=True)
    elif current is not None and (state == "broken" or (state == "released" and current.get("token") == token)):
        changed = True
        if not module.check_mode:
            os.unlink(path)
        current = None

    holder = None if current is None else dict(current.get("holder") or {}, since=current.get("since"))
    held_by_other = current is not None and current.get("token") != token
    module.exit_json(changed=changed, holder=holder, held_by_other=held_by_other, settled=settled)


if __name__ == "__main__":
    main()
