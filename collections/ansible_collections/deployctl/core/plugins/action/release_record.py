"""The release_record module's action: bring the release archive along, so that staging is one call.

With `archive` (a tarball on the control node) the file is copied into the task's temporary directory on
the host and the module unpacks it from there, in the same call that prepares the directories and marks
the release complete; ansible.builtin.unarchive would add a stat of the destination and a module call of
its own, and two more release_record calls around it. In check mode nothing is copied: the module only
reports what it would do. Every other use of the module goes to the host unchanged.
"""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    TRANSFERS_FILES = False  # the temporary directory is made only when there is an archive to copy

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        archive = args.get("archive")
        if archive is None:
            result.update(self._execute_module(module_name="deployctl.core.release_record", module_args=args,
                                               task_vars=task_vars))
            return result
        if args.get("state") != "staged" or "://" in str(archive):
            raise AnsibleActionFail("archive is a tarball on the control node, for state=staged")
        source = os.path.expanduser(str(archive))
        if not os.path.isfile(source):
            raise AnsibleActionFail(f"archive {source} does not exist on the control node")
        try:
            if self._task.check_mode:
                args["archive"] = source  # never opened in check mode
            else:
                self._make_tmp_path()
                remote = self._connection._shell.join_path(self._connection._shell.tmpdir, "release-archive")
                self._transfer_file(source, remote)
                self._fixup_perms2((self._connection._shell.tmpdir, remote))
                args["archive"] = remote
            result.update(self._execute_module(module_name="deployctl.core.release_record", module_args=args,
                                               task_vars=task_vars))
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result
