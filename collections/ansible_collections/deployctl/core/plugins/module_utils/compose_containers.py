# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""The containers of a Docker Compose project, found by the labels both `docker compose` and `docker-compose`
set: which compose project and service a container belongs to, and whether it is a one-off (`run`).

Standard library only: runs on the managed hosts (Python 3.8+)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
ONEOFF_LABEL = "com.docker.compose.oneoff"


class ContainerError(Exception):
    """The service's container cannot be used; the message says why and what to do."""


def normalise(project):
    """The project name compose uses in its labels (both v1 and v2 lowercase it and drop other characters)."""
    return re.sub(r"[^-_a-z0-9]", "", project.lower())


def docker_command():
    found = shutil.which("docker")
    if found is None:
        raise ContainerError("the docker command line is not installed on this host")
    return found


def service_container(project, service, running=True, timeout=30, starting_wait=120):
    """The container of compose `service` in `project` (its first one when the service is scaled), a running
    one unless `running` is false: {id, name, state, image}. ContainerError when it has none (that runs).

    A running container whose healthcheck still says starting (a database that initialises its data directory
    on its first start, just after `up -d`) is waited for, up to `starting_wait` seconds: what it answers
    before is no answer about the release."""
    docker = docker_command()
    argv = [docker, "ps", "-a", "--no-trunc", "--filter", f"label={PROJECT_LABEL}={normalise(project)}",
            "--filter", f"label={SERVICE_LABEL}={service}",
            "--format", "\t".join(["{{.ID}}", "{{.State}}", "{{.Names}}", '{{.Label "' + ONEOFF_LABEL + '"}}'])]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ContainerError(f"docker ps did not answer within {timeout} s") from None
    if done.returncode != 0:
        raise ContainerError("docker ps failed: " + done.stderr.decode("utf-8", "replace").strip())
    found = []
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        fields = line.split("\t")
        if len(fields) == 4 and fields[3].lower() != "true":
            found.append({"id": fields[0], "state": fields[1], "name": fields[2]})
    if not found:
        raise ContainerError(f"compose project {project} has no container of service {service} (is {service} "
                             "a service of its compose files, and is it up?)")
    found.sort(key=lambda c: (c["state"] != "running", c["name"]))
    chosen = found[0]
    if running and chosen["state"] != "running":
        raise ContainerError(f"the container {chosen['name']} of compose service {service} is {chosen['state']}, "
                             "not running: start it first")
    deadline = time.monotonic() + starting_wait
    while True:
        done = subprocess.run([docker, "inspect", "--format", "{{.Image}}\t{{if .State.Health}}{{.State.Health.Status}}"
                               "{{end}}", chosen["id"]], capture_output=True, timeout=timeout, check=False)
        fields = done.stdout.decode("utf-8", "replace").strip().split("\t")
        image, health = fields[0], fields[-1] if len(fields) == 2 else ""
        if done.returncode != 0 or health != "starting" or chosen["state"] != "running":
            break
        if time.monotonic() > deadline:
            raise ContainerError(f"the container {chosen['name']} of compose service {service} is still starting "
                                 f"after {starting_wait} s (its healthcheck has not passed)")
        time.sleep(0.5)
    chosen["image"] = image if done.returncode == 0 else ""
    return chosen
