#!/usr/bin/python
# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""The containers of Docker Compose projects with their health, the host's compose command and image tags."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: compose_status
short_description: Containers of Docker Compose projects and their health, optionally waiting until healthy
version_added: "0.1.0"
description:
  - Reports the containers of one or more Docker Compose projects (found by the C(com.docker.compose.*)
    labels both C(docker compose) and C(docker-compose) set, so it works with either), with the image tag each
    runs, its state and its Docker health status. One-off containers (C(run)) are left out.
  - Detects the compose command of the host, C(docker compose) (v2 plugin) first, then C(docker-compose)
    (v1, or v2 installed standalone).
  - Lists the tags of an image repository present on the host.
  - With O(wait), waits until every container of O(services) is running (on O(tag)) and healthy, and the
    optional HTTP check answers, or fails at the deadline. A container Docker marks C(unhealthy), or one that
    exited and has no restart policy, fails the wait at once.
  - Reads only; needs the C(docker) command line on the host, nothing else.
options:
  projects:
    description: Compose project names whose containers are reported (normalised as compose does).
    type: list
    elements: str
    default: []
  services: {description: Only the containers of these services (all when empty)., type: list, elements: str, default: []}
  image: {description: Image repository (without tag) whose local tags are returned in C(images)., type: str}
  detect: {description: Find the compose command of the host., type: bool, default: true}
  version:
    description: Also ask a standalone C(docker-compose) its version (slow for v1; the plugin's is always read).
    type: bool
    default: false
  command:
    description: Compose command to use instead of detecting one, e.g. C([docker, compose]).
    type: list
    elements: str
    default: []
  wait: {description: Wait until the containers of O(services) in O(projects) are running and healthy., type: bool, default: false}
  tag: {description: "With O(wait), the image tag the containers must run.", type: str}
  running_only:
    description:
      - With O(wait), judge only the running containers (stopped ones, like a drained zero-downtime slot, are
        left alone); each service still needs one.
    type: bool
    default: false
  timeout: {description: Seconds O(wait) may take., type: int, default: 120}
  interval: {description: Seconds between two looks., type: float, default: 1}
  http_url: {description: "With O(wait), a URL that must also answer O(http_status).", type: str}
  http_status: {description: Status O(http_url) must answer., type: int, default: 200}
  http_body: {description: Regular expression the body of O(http_url) must match., type: str}
  slot_file: {description: File holding the live zero-downtime slot; its content is returned as C(slot)., type: path}
author:
  - deployctl maintainers (@deployctl)
"""

EXAMPLES = r"""
- name: Wait until the app containers run v2 and are healthy
  deployctl.core.compose_status:
    projects: [shop]
    services: [app]
    wait: true
    tag: v2
    timeout: 120
    http_url: http://127.0.0.1:8080/health
"""

RETURN = r"""
compose_command: {description: The compose command of the host (null when there is none)., type: list, returned: when detect}
compose_version: {description: Version the compose command reports (null for docker-compose unless O(version))., type: str, returned: when detect}
projects: {description: "The project names as compose normalises them, in the order given.", type: list, returned: always}
containers:
  description: >-
    One entry per container: project (as given), service, name, id, image, tag, state (created, running,
    exited...), health (starting, healthy, unhealthy, or null without healthcheck), running, healthy (running
    and healthy, or running without healthcheck), network_mode, restarts (has a restart policy), health_output
    (output of the last healthcheck).
  type: list
  returned: always
images: {description: "Tags of O(image) present on the host, sorted.", type: list, returned: always}
waited: {description: Seconds spent waiting., type: float, returned: when wait}
slot: {description: Content of O(slot_file) (null when it does not exist)., type: str, returned: when slot_file is given}
"""

import http.cookiejar
import json
import re
import time
import urllib.error

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url
from ansible_collections.deployctl.core.plugins.module_utils.compose_containers import (
    ONEOFF_LABEL,
    PROJECT_LABEL,
    SERVICE_LABEL,
    normalise,
)


def split_tag(reference):
    """The tag of an image reference: registry:5000/app:v2 -> v2, app -> latest, app@sha256:... -> None."""
    if "@" in reference:
        return None
    last = reference.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else "latest"


class Docker:
    def __init__(self, module):
        self.module = module
        self.docker = module.get_bin_path("docker")

    def require(self):
        if self.docker is None:
            self.module.fail_json(msg="the docker command line is not installed on this host")

    def run(self, *args):
        return self.module.run_command([self.docker, *args])

    def detect(self, command, version):
        """The compose command and its version: the one given, else the v2 plugin, else docker-compose.

        The plugin answers `version` in milliseconds; docker-compose v1 is a Python program that takes a second
        or two to start, so it is only asked for its version when `version` is true.
        """
        if command:
            return command, self.version(command) if version else None
        if self.docker:
            found = self.version([self.docker, "compose"])
            if found:
                return [self.docker, "compose"], found
        standalone = self.module.get_bin_path("docker-compose")
        if standalone:
            return [standalone], self.version([standalone]) if version else None
        return None, None

    def version(self, command):
        rc, out, _err = self.module.run_command(command + ["version", "--short"])
        out = out.strip()
        return out.lstrip("v") if rc == 0 and re.match(r"^v?\d", out) else None

    def containers(self, projects, services):
        names = {normalise(p): p for p in projects}
        # one look at every compose container of the host, then only ours are inspected
        rc, out, err = self.run("ps", "-a", "--no-trunc", "--filter", f"label={PROJECT_LABEL}",
                                "--format", f'{{{{.ID}}}} {{{{.Label "{PROJECT_LABEL}"}}}}')
        if rc != 0:
            self.module.fail_json(msg=f"docker ps failed: {err.strip() or out.strip()}")
        ids = [cid for cid, _sep, project in (line.partition(" ") for line in out.splitlines()) if project in names]
        if not ids:
            return []
        # a container removed between ps and inspect makes inspect fail, yet it prints the others
        rc, out, err = self.run("inspect", *sorted(set(ids)))
        try:
            details = json.loads(out or "[]")
        except ValueError:
            self.module.fail_json(msg=f"docker inspect failed: {err.strip() or out.strip()}")
        found = []
        for item in details:
            labels = (item.get("Config") or {}).get("Labels") or {}
            if labels.get(ONEOFF_LABEL, "").lower() == "true":
                continue
            service = labels.get(SERVICE_LABEL)
            if services and service not in services:
                continue
            state = item.get("State") or {}
            health = (state.get("Health") or {}).get("Status")
            running = state.get("Status") == "running"
            image = (item.get("Config") or {}).get("Image", "")
            log = (state.get("Health") or {}).get("Log") or []
            found.append({
                "project": names.get(labels.get(PROJECT_LABEL), labels.get(PROJECT_LABEL)),
                "service": service,
                "name": item.get("Name", "").lstrip("/"),
                "id": item.get("Id", "")[:12],
                "image": image,
                "tag": split_tag(image),
                "state": state.get("Status"),
                "health": health,
                "running": running,
                "healthy": running and health in (None, "healthy"),
                "network_mode": (item.get("HostConfig") or {}).get("NetworkMode"),
                "restarts": ((item.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name") not in
                ("", "no", None),
                "health_output": (log[-1].get("Output") or "").strip()[-300:] if log else "",
            })
        return sorted(found, key=lambda c: (c["project"] or "", c["service"] or "", c["name"]))

    def images(self, repository):
        rc, out, err = self.run("image", "ls", "--format", "{{.Tag}}", repository)
        if rc != 0:
            self.module.fail_json(msg=f"docker image ls failed: {err.strip() or out.strip()}")
        return sorted({t for t in out.split() if t and t != "<none>"})


def judge(containers, services, tag, running_only=False):
    """(problem, fatal) about the containers of `services`; problem is None when all of them are ready."""
    for service in services:
        mine = [c for c in containers if c["service"] == service and (c["running"] or not running_only)]
        if not mine:
            return f"service {service} has no container", False
        for c in mine:
            if c["health"] == "unhealthy":
                detail = f": {c['health_output']}" if c["health_output"] else ""
                return f"container {c['name']} is unhealthy{detail}", True
            if not c["running"]:
                fatal = c["state"] in ("exited", "dead") and not c["restarts"]
                return f"container {c['name']} is {c['state']}", fatal
            if tag is not None and c["tag"] != tag:
                return f"container {c['name']} runs {c['image']}, not tag {tag}", False
            if not c["healthy"]:
                return f"container {c['name']} is {c['health']}", False
    return None, False


def http_problem(url, status, body, timeout):
    # a plain GET as urllib's urlopen makes it: the environment's proxy settings, urllib's redirects, the
    # certificates verified, no credentials from ~/.netrc, no cookies kept across redirects, the body as sent
    no_cookies = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    try:
        with open_url(url, method="GET", timeout=timeout, use_proxy=True, follow_redirects="urllib2",
                      validate_certs=True, use_netrc=False, decompress=False, cookies=no_cookies) as response:
            code, content = response.status, response.read()
    except urllib.error.HTTPError as exc:
        code, content = exc.code, b""
    except Exception as exc:  # refused, reset, timed out: the app is not answering yet
        return f"{url}: {exc.__class__.__name__}: {exc}"
    if code != status:
        return f"{url} answered {code}, not {status}"
    if body and not re.search(body, content.decode("utf-8", "replace")):
        return f"{url} answered without a match for {body!r}"
    return None


def main():
    module = AnsibleModule(
        argument_spec={
            "projects": {"type": "list", "elements": "str", "default": []},
            "services": {"type": "list", "elements": "str", "default": []},
            "image": {"type": "str"},
            "detect": {"type": "bool", "default": True},
            "version": {"type": "bool", "default": False},
            "command": {"type": "list", "elements": "str", "default": []},
            "wait": {"type": "bool", "default": False},
            "tag": {"type": "str"},
            "running_only": {"type": "bool", "default": False},
            "timeout": {"type": "int", "default": 120},
            "interval": {"type": "float", "default": 1.0},
            "http_url": {"type": "str"},
            "http_status": {"type": "int", "default": 200},
            "http_body": {"type": "str"},
            "slot_file": {"type": "path"},
        },
        supports_check_mode=True,
    )
    p = module.params
    docker = Docker(module)
    result = {"changed": False, "projects": [normalise(x) for x in p["projects"]]}
    if p["detect"]:
        result["compose_command"], result["compose_version"] = docker.detect(p["command"], p["version"])
    if p["projects"] or p["image"] or p["wait"]:
        docker.require()
    result["containers"] = docker.containers(p["projects"], p["services"]) if p["projects"] else []
    result["images"] = docker.images(p["image"]) if p["image"] else []
    if p["slot_file"]:
        try:
            with open(p["slot_file"]) as handle:
                result["slot"] = handle.read().strip() or None
        except FileNotFoundError:
            result["slot"] = None

    if p["wait"]:
        if not p["services"]:
            module.fail_json(msg="wait needs the services to wait for", **result)
        started = time.monotonic()
        deadline = started + p["timeout"]
        while True:
            problem, fatal = judge(result["containers"], p["services"], p["tag"], p["running_only"])
            if problem is None and p["http_url"]:
                problem = http_problem(p["http_url"], p["http_status"], p["http_body"],
                                       max(1.0, min(5.0, deadline - time.monotonic())))
            result["waited"] = round(time.monotonic() - started, 1)
            if problem is None:
                break
            if fatal or time.monotonic() >= deadline:
                why = "" if fatal else f" within {p['timeout']}s"
                module.fail_json(msg=f"not healthy{why}: {problem}", **result)
            time.sleep(max(0.1, min(p["interval"], deadline - time.monotonic())))
            result["containers"] = docker.containers(p["projects"], p["services"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
