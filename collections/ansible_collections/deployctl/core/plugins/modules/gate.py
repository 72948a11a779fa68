#!/usr/bin/python
"""Documentation of the gate action (plugins/action/gate.py), which runs on the controller only."""

from __future__ import annotations

DOCUMENTATION = r"""
module: gate
short_description: Wait, between two phases of one deployctl run, for deployctl's answer
description:
  - deployctl runs a command's phases as the plays of one ansible-playbook run, with a gate play before
    each phase. This action, on the controller, waits until deployctl has judged the previous phase and
    written its answer into the run's private directory, as C(<index>-<phase>.json) (go, with the
    variables of the phase, which the next task includes), C(<index>-<phase>.skip) (the phase is not
    needed) or C(<index>-<phase>.stop) (the task fails and the run ends here).
  - It touches no host. When the deployctl process that runs the playbook is gone, it fails, so that a
    run whose control node died stops at the next phase boundary.
  - deployctl generates the plays that use it; it is not meant for playbooks of your own.
options:
  answers: {description: Directory deployctl writes its answers to., type: path, required: true}
  index: {description: Position of the phase in the run., type: int, required: true}
  phase: {description: Name of the phase (as the file names spell it)., type: str, required: true}
  controller_pid: {description: Process id of the deployctl that waits for the run's events., type: int, required: true}
  hosts:
    description: The hosts the phase after the gate runs on, returned as they are (what deployctl's progress counts).
    type: list
    elements: str
author:
  - deployctl maintainers (@deployctl)
"""

EXAMPLES = r"""
- name: Wait for deployctl's answer
  deployctl.core.gate:
    answers: /srv/deploy/.deployctl/runs/DEP-20260101-120000/01-release-gates
    index: 3
    phase: stage
    controller_pid: 4242
  run_once: true
  register: _deployctl_gate
"""

RETURN = r"""
skip: {description: True when deployctl does not need the phase., type: bool, returned: success}
variables_file: {description: "The phase's variables (JSON), for include_vars.", type: str, returned: when not skipped}
phase: {description: The phase after the gate., type: str, returned: when O(hosts) is given}
hosts: {description: "O(hosts), as given.", type: list, elements: str, returned: when O(hosts) is given}
"""
