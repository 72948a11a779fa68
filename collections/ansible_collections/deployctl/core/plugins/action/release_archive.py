"""The release tarball on the control node, read where it is: its sha256 and, when asked, every member.

Preflight and the stage used to ask this of the control node through two module runs (ansible.builtin.stat
with a checksum, and `tar -tf` through ansible.builtin.command), each a Python process of its own started
for a few milliseconds of work; this action does both in the worker that runs the task. It never fails for
what it finds: the tasks after it judge the archive (missing, not a regular file, not whole) with messages of
their own.
"""

from __future__ import annotations

import hashlib
import os
import subprocess

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

CHUNK_BYTES = 1024 * 1024


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("path", "list_members"))
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        if not args.get("path"):
            raise AnsibleActionFail("release_archive needs path")
        path = os.path.expanduser(str(args["path"]))
        result.update(changed=False, path=path, exists=os.path.exists(path), isreg=os.path.isfile(path),
                      checksum=None, whole=None, members=[], error="")
        if not result["isreg"]:
            return result
        try:
            result["checksum"] = _sha256(path)
        except OSError as exc:
            result.update(whole=False, error=f"cannot read {path}: {exc.strerror}")
            return result
        if args.get("list_members"):
            result.update(_members(path))
        return result


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as archive:
        for chunk in iter(lambda: archive.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _members(path: str) -> dict:
    """Every member, read to the end of the archive by the tar that unpacks it on the hosts (GNU tar detects
    gzip, bzip2, xz and zstd the same way there): a truncated or corrupt archive is not whole."""
    listed = subprocess.run(["tar", "-tf", path], capture_output=True, text=True, errors="replace",
                            env={**os.environ, "LC_ALL": "C"}, check=False)
    if listed.returncode != 0:
        lines = listed.stderr.strip().splitlines()
        return {"whole": False, "error": lines[-1] if lines else f"tar exited with {listed.returncode}"}
    members = [line[2:] if line.startswith("./") else line for line in listed.stdout.splitlines()]
    return {"whole": True, "members": members}
