#!/usr/bin/python
"""Documentation of the release_archive action (plugins/action/release_archive.py), which runs on the controller."""

from __future__ import annotations

DOCUMENTATION = r"""
module: release_archive
short_description: Fingerprint a release tarball on the control node and read it whole
description:
  - Runs on the control node only, in the worker that runs the task; no module is sent anywhere.
  - Returns the archive's sha256 and, with O(list_members), every member as the host's C(tar -tf) lists it
    (GNU tar, which detects the compression as it does when unpacking). A truncated or corrupt archive is
    reported as not whole, with the last line C(tar) printed.
  - Never fails for what it finds (a missing file, a directory, a broken archive); the tasks after it judge.
options:
  path: {description: The tarball on the control node., type: path, required: true}
  list_members: {description: Read every member (the whole archive) and return their names., type: bool, default: false}
author:
  - deployctl maintainers (@deployctl)
"""

EXAMPLES = r"""
- name: Fingerprint the release archive and read it whole
  deployctl.core.release_archive:
    path: /srv/dist/shop-v1.4.0.tar.gz
    list_members: true
  run_once: true
  register: archive
"""

RETURN = r"""
path: {description: The path read., type: str, returned: always}
exists: {description: Whether the path exists., type: bool, returned: always}
isreg: {description: Whether it is a regular file., type: bool, returned: always}
checksum: {description: "The sha256 of the file (null when it is not a readable regular file).", type: str, returned: always}
whole: {description: "Whether tar read the archive to its end (null when not asked or not read).", type: bool, returned: always}
members: {description: "The members' names, without a leading C(./).", type: list, elements: str, returned: always}
error: {description: Why the archive could not be read (the last line tar printed)., type: str, returned: always}
"""
