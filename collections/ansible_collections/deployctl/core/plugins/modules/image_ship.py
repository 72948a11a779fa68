#!/usr/bin/python
"""Documentation of the image_ship action (plugins/action/image_ship.py), which runs on the controller."""

from __future__ import annotations

DOCUMENTATION = r"""
module: image_ship
short_description: Ship a Docker image from the control node's engine to a host that lacks it, without a registry
description:
  - The control node exports O(image):O(tag) from its own Docker engine (the Docker SDK for Python, as
    C(DOCKER_HOST) names the engine) and streams it into C(docker load) on the host, through the play's own
    SSH connection (its options and ControlPath) or, with the local connection, into a local C(docker load).
    No archive the size of the image is written on either side. Connections that cannot take a stream
    (mitogen, paramiko, an SSH or become password typed at a prompt) get the archive as Ansible copies files,
    through a temporary file.
  - A host that has the tag with the control node's image id gets nothing. A host that has the tag with
    another id fails (a tag names one image). After the load the host's id must equal the control node's.
  - When the control node lacks the image, a host that has the tag keeps it and one that lacks it fails.
  - The host needs the C(docker) command line only; the task's environment (C(DOCKER_HOST)...) applies.
  - In check mode it says what would be shipped and ships nothing.
options:
  image: {description: "Image repository without the tag, as C(docker image ls) shows it.", type: str, required: true}
  tag: {description: The tag to ship., type: str, required: true}
  timeout: {description: "Seconds the control node's engine may take to answer one request.", type: int, default: 600}
author:
  - deployctl maintainers (@deployctl)
"""

EXAMPLES = r"""
- name: Ship the release's image to the hosts that lack it
  deployctl.core.image_ship:
    image: shop
    tag: v1.4.0
"""

RETURN = r"""
image: {description: "The reference, image:tag.", type: str, returned: always}
image_id: {description: "The image id (the control node's, or the host's when only the host has it).", type: str, returned: always}
shipped: {description: Whether the image was loaded on the host., type: bool, returned: always}
transport: {description: "stream or copy (null when nothing had to be shipped).", type: str, returned: always}
bytes: {description: Size of the archive sent., type: int, returned: always}
seconds: {description: How long the export and load took., type: float, returned: when shipped}
"""
