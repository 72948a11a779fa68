"""Compose projects on this machine's Docker engine, as the tests read them."""

from __future__ import annotations

import json
import subprocess


def compose_command() -> list[str]:
    """`docker compose` (the v2 plugin) where it works, else `docker-compose` (v1)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"]


def container_ids(projects: list[str]) -> list[str]:
    """Ids of every container (running or not) of the compose projects."""
    listed = subprocess.run(["docker", "ps", "-a", "--filter", "label=com.docker.compose.project", "--format",
                             '{{.ID}} {{.Label "com.docker.compose.project"}}'],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return [line.split()[0] for line in listed if len(line.split()) == 2 and line.split()[1] in projects]


def inspect(projects: list[str]) -> str:
    """`docker inspect` of every container of the projects, as one JSON text ("" when there is none)."""
    ids = container_ids(projects)
    return subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True).stdout if ids else ""


def containers(projects: list[str]) -> list[dict]:
    """Every container of the projects: {project, service, tag, running, health}."""
    found = []
    for item in json.loads(inspect(projects) or "[]"):
        labels = item["Config"]["Labels"]
        found.append({"project": labels["com.docker.compose.project"],
                      "service": labels["com.docker.compose.service"],
                      "tag": item["Config"]["Image"].rsplit(":", 1)[-1],
                      "running": item["State"]["Status"] == "running",
                      "health": (item["State"].get("Health") or {}).get("Status")})
    return found


def remove_containers(projects: list[str]) -> None:
    ids = container_ids(projects)
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
