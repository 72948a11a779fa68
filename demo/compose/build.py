#!/usr/bin/env python3
"""Build images of the compose demo app locally (no registry): FROM scratch plus the host's static busybox.

    python3 demo/compose/build.py VERSION [--image deployctl-demo] [--unhealthy]
    python3 demo/compose/build.py --remove --image deployctl-demo     # every tag of the image

``--unhealthy`` builds an image without the /health file: its container never becomes healthy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_IMAGE = "deployctl-demo"


def busybox() -> Path:
    for candidate in (os.environ.get("BUSYBOX"), "/bin/busybox", shutil.which("busybox")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise RuntimeError("no busybox binary (install busybox-static)")


def _docker(*args: str, quiet: bool = False) -> str:
    env = dict(os.environ, DOCKER_BUILDKIT="0")  # the classic builder needs no buildx plugin
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0 and not quiet:
        raise RuntimeError(f"docker {' '.join(args)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def build_image(version: str, image: str = DEFAULT_IMAGE, unhealthy: bool = False) -> str:
    """Build `image:version` and return the reference."""
    reference = f"{image}:{version}"
    with tempfile.TemporaryDirectory(prefix="deployctl-image-") as context:
        shutil.copy2(HERE / "Dockerfile", Path(context) / "Dockerfile")
        shutil.copy2(busybox(), Path(context) / "busybox")
        _docker("build", "-q", "-t", reference, "--build-arg", f"VERSION={version}",
                "--build-arg", f"UNHEALTHY={'yes' if unhealthy else 'no'}", context)
    return reference


def remove_images(image: str = DEFAULT_IMAGE) -> list[str]:
    """Remove every tag of `image`; returns the references removed."""
    tags = [t for t in _docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", image).split() if t]
    if tags:
        _docker("image", "rm", "-f", *tags, quiet=True)
    return tags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the compose demo image.")
    parser.add_argument("version", nargs="?")
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--unhealthy", action="store_true", help="an image whose healthcheck never passes")
    parser.add_argument("--remove", action="store_true", help="remove every tag of the image")
    args = parser.parse_args(argv)
    try:
        if args.remove:
            print("\n".join(remove_images(args.image)))
        elif args.version:
            print(build_image(args.version, args.image, args.unhealthy))
        else:
            parser.error("VERSION or --remove")
    except RuntimeError as exc:
        parser.exit(1, f"build.py: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
