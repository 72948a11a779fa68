#!/usr/bin/env python3
"""Docker images built on this machine, with no registry: a Debian base from debootstrap, cached by content,
and thin `docker build` layers on top of it.

Nothing can be pulled here, but Debian's archive is reachable. A *base image* is a Debian rootfs that
`debootstrap` builds with a list of Debian packages installed, brought into the engine by `docker import`
and tagged by a hash of its inputs (suite, package list, setup script, BUILDER_VERSION)::

    deployctl-base:bookworm-3f2a9c0d41be

A base with that tag already in the engine is reused as it is, so the minutes a debootstrap costs are paid
once per machine (and again only when the inputs change). The rootfs tarball is also kept in the cache
directory (outside any clone), so an engine that lost the image imports it again in seconds. A lock file
per base makes concurrent processes (pytest-xdist workers, other clones) wait for one build instead of
building the same base twice. Service images are thin `docker build` layers FROM a base: seconds each.

API (each build prints what it built and how long it took to stderr; errors raise ImageError)::

    from demo import images

    base = images.base_image(["nodejs", "redis-server"], setup="rm -rf /var/lib/mysql/*")
        # -> "deployctl-base:bookworm-<hash>": built, imported from the kept tarball, or reused
    images.build_image("shop-app:v1", context_dir, base=base, build_args={"VERSION": "v1"})
        # docker build of context_dir/Dockerfile, which starts with  ARG BASE  and  FROM ${BASE}
    images.build_cached_image("shop-db", context_dir, base=base)
        # -> "shop-db:<hash of the context, base and build args>", built once, shared, kept
    images.base_tag(["nodejs", "redis-server"])     # the tag, without building anything
    images.image_exists("shop-app:v1")              # True/False
    images.remove_images("shop-app")                # every tag of a repository (refuses the bases)

    base_image(packages, suite="bookworm", *, setup="", mirror=None, cache_dir=None, keep_rootfs=True) -> str
    build_image(tag, context, *, base, build_args=None, dockerfile="Dockerfile", labels=None) -> str
    build_cached_image(repository, context, *, base, build_args=None) -> str

`setup` is a shell script run as root in the rootfs after the packages are installed (part of the hash).
No service starts while packages are installed, postgresql-common creates no cluster, and manuals,
documentation (but the licences) and translations are left out.

The same from a shell (prints the tag)::

    python3 demo/images.py base nodejs redis-server      # build or reuse a base
    python3 demo/images.py tag nodejs redis-server       # its tag only

Environment: DEPLOYCTL_IMAGE_CACHE is the cache directory (default ~/.cache/deployctl/images: the .deb
files debootstrap fetched, the kept rootfs tarballs and the lock files); DEPLOYCTL_DEBIAN_MIRROR the
Debian mirror (default: the first Debian URI of /etc/apt/sources.list or sources.list.d/*.sources, else
http://deb.debian.org/debian). Building a base needs root, `debootstrap` and `unshare` (util-linux).
Base images are shared by everyone on the machine and meant to stay: remove one by hand
(`docker image rm deployctl-base:<tag>`) only to force a rebuild.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

# Part of every base's hash: raise it when the way a base is built changes, so that no old base is reused.
BUILDER_VERSION = 1
BASE_REPOSITORY = "deployctl-base"
DEFAULT_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
SUITE_RE = re.compile(r"^[a-z]+(-[a-z]+)?$")

# Installed into the rootfs while packages are configured: no daemon starts inside the build, and
# postgresql-common creates no cluster (the containers keep their data in their own directories).
_NO_DAEMONS = "#!/bin/sh\n# services do not start while the image is built\nexit 101\n"
_NO_MAIN_CLUSTER = "create_main_cluster = false\n"
# What a container needs no copy of: manuals, documentation but the licences, translations.
_SLIM = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
"""
_SLIM_WHAT_DEBOOTSTRAP_INSTALLED = (
    "find /usr/share/doc -type f ! -name copyright -delete && find /usr/share/doc -type d -empty -delete && "
    "rm -rf /usr/share/man/* /usr/share/info/* /usr/share/locale/*")


class ImageError(RuntimeError):
    """A base or an image could not be built; the message says what failed."""


def _log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def _run(argv: list[str], *, env: dict | None = None, what: str | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})))
    if proc.returncode != 0:
        output = (proc.stderr.strip() or proc.stdout.strip())[-3000:]
        raise ImageError(f"{what or ' '.join(argv[:3])} failed (exit {proc.returncode}): {output}")
    return proc.stdout


def _docker(*args: str, what: str | None = None) -> str:
    # the classic builder: it needs no buildx plugin, and with FROM a local image it never goes to a registry
    return _run(["docker", *args], env={"DOCKER_BUILDKIT": "0"}, what=what or f"docker {args[0]}")


def default_cache_dir() -> Path:
    return Path(os.environ.get("DEPLOYCTL_IMAGE_CACHE") or Path.home() / ".cache" / "deployctl" / "images")


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (a reachable one, when nothing else is)."""
    if os.environ.get("DEPLOYCTL_DEBIAN_MIRROR"):
        return os.environ["DEPLOYCTL_DEBIAN_MIRROR"]
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.sources")),
               *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for source in sources:
        with contextlib.suppress(OSError):
            for uri in re.findall(r"(?m)^(?:URIs:|deb(?:\s+\[[^]]*\])?)\s+(\S+)", source.read_text()):
                if uri.rstrip("/").endswith("/debian"):
                    return uri
    return DEFAULT_MIRROR


def _packages(packages: Iterable[str]) -> list[str]:
    wanted = sorted(set(packages))
    bad = [p for p in wanted if not PACKAGE_RE.match(p)]
    if bad:
        raise ImageError(f"not Debian package names: {', '.join(bad)}")
    return wanted


def base_inputs(packages: Iterable[str], suite: str = DEFAULT_SUITE, setup: str = "") -> dict:
    """What a base is built from; its tag is a hash of this."""
    if not SUITE_RE.match(suite):
        raise ImageError(f"not a Debian suite: {suite!r}")
    return {"builder": BUILDER_VERSION, "suite": suite, "packages": _packages(packages), "setup": setup}


def base_tag(packages: Iterable[str], suite: str = DEFAULT_SUITE, setup: str = "") -> str:
    """The base image's tag for these inputs: deployctl-base:<suite>-<12 hex digits of their hash>."""
    inputs = base_inputs(packages, suite, setup)
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    return f"{BASE_REPOSITORY}:{suite}-{digest}"


def image_exists(reference: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", reference], capture_output=True).returncode == 0


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        started = time.monotonic()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"waiting for the build another process started ({path.name})")
            fcntl.flock(handle, fcntl.LOCK_EX)
            _log(f"waited {time.monotonic() - started:.1f} s")
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _in_private_mounts(argv: list[str]) -> list[str]:
    # debootstrap and the chroot mount /proc inside the rootfs: in a mount namespace of their own those mounts
    # end with the process, even a killed one, and never leave the host with a /proc inside a directory
    # that is about to be removed
    return ["unshare", "--mount", "--propagation", "private", "--fork", *argv]


def _chroot(rootfs: Path, script: str, what: str) -> None:
    shell = 'mount -t proc proc "$0/proc" && exec chroot "$0" /bin/sh -ec "$1"'
    _run(_in_private_mounts(["sh", "-ec", shell, str(rootfs), script]),
         env={"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
         what=what)


def _build_rootfs(rootfs: Path, inputs: dict, mirror: str, debs: Path) -> None:
    debs.mkdir(parents=True, exist_ok=True)
    for tool in ("debootstrap", "unshare", "chroot"):
        if shutil.which(tool) is None:
            raise ImageError(f"{tool} is not installed (scripts/install-test-deps installs it)")
    if os.geteuid() != 0:
        raise ImageError("building a base image needs root (debootstrap)")
    _run(_in_private_mounts(["debootstrap", "--variant=minbase", f"--cache-dir={debs}", inputs["suite"],
                             str(rootfs), mirror]), what="debootstrap")
    policy = rootfs / "usr/sbin/policy-rc.d"
    policy.write_text(_NO_DAEMONS)
    policy.chmod(0o755)
    (rootfs / "etc/postgresql-common").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/postgresql-common/createcluster.conf").write_text(_NO_MAIN_CLUSTER)
    (rootfs / "etc/dpkg/dpkg.cfg.d/deployctl-slim").write_text(_SLIM)
    # apt's resolver, not debootstrap's --include: it follows alternatives and virtual packages
    packages = " ".join(inputs["packages"])
    _chroot(rootfs, "apt-get update -q && "
                    f"apt-get install -y -q --no-install-recommends {packages} && "
                    "apt-get clean && rm -rf /var/lib/apt/lists/* /var/log/apt/* /var/log/dpkg.log && "
                    + _SLIM_WHAT_DEBOOTSTRAP_INSTALLED,
            what=f"apt-get install {packages}")
    if inputs["setup"]:
        _chroot(rootfs, inputs["setup"], what="the base's setup script")
    policy.unlink()


def _tar(rootfs: Path, target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    _run(["tar", "--numeric-owner", "-C", str(rootfs), "--exclude=./dev/*", "--exclude=./proc/*",
          "--exclude=./sys/*", "-cf", str(partial), "."], what="tar of the rootfs")
    os.replace(partial, target)


def _import(tarball: Path, tag: str, inputs: dict) -> None:
    changes = ['ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', "ENV LANG=C.UTF-8",
               'CMD ["/bin/bash"]', f"LABEL org.deployctl.base.inputs={json.dumps(json.dumps(inputs))}"]
    argv = ["import", *[arg for change in changes for arg in ("--change", change)], str(tarball), tag]
    _docker(*argv, what="docker import")


def base_image(packages: Iterable[str], suite: str = DEFAULT_SUITE, *, setup: str = "", mirror: str | None = None,
               cache_dir: Path | None = None, keep_rootfs: bool = True) -> str:
    """The tag of a Debian `suite` base with `packages` installed and then the shell script `setup` run in it
    (as root, in a chroot): the image already in the engine, else imported from the kept rootfs tarball, else
    built with debootstrap (minutes). Safe to call from concurrent processes: one builds, the others wait."""
    inputs = base_inputs(packages, suite, setup)
    tag = base_tag(packages, suite, setup)
    if image_exists(tag):
        _log(f"{tag}: cached in the engine")
        return tag
    cache = Path(cache_dir or default_cache_dir())
    name = tag.split(":", 1)[1]
    tarball = cache / f"{name}.tar"
    with _locked(cache / f"{name}.lock"):
        if image_exists(tag):  # built by the process we waited for
            _log(f"{tag}: built meanwhile by another process")
            return tag
        started = time.monotonic()
        if tarball.exists():
            _import(tarball, tag, inputs)
            _log(f"{tag}: imported from {tarball} in {time.monotonic() - started:.1f} s")
            return tag
        # what a build that was killed left (its mounts ended with it): nobody else builds this base now
        for stale in cache.glob(f"build-{name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        (cache / f"{name}.tar.partial").unlink(missing_ok=True)
        _log(f"{tag}: building with debootstrap ({suite}, {len(inputs['packages'])} packages); takes minutes")
        work = Path(tempfile.mkdtemp(prefix=f"build-{name}-", dir=cache))
        try:
            rootfs = work / "rootfs"
            _build_rootfs(rootfs, inputs, mirror or debian_mirror(), cache / "debs")
            built = time.monotonic()
            target = tarball if keep_rootfs else work / "rootfs.tar"
            _tar(rootfs, target)
            _import(target, tag, inputs)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _log(f"{tag}: built in {time.monotonic() - started:.1f} s "
             f"(debootstrap and packages {built - started:.1f} s, tar and import {time.monotonic() - built:.1f} s)")
    return tag


def build_image(tag: str, context: Path | str, *, base: str, build_args: dict[str, str] | None = None,
                dockerfile: str = "Dockerfile", labels: dict[str, str] | None = None) -> str:
    """`docker build` of `context` as `tag`, its Dockerfile FROM ${BASE} (passed as the build argument BASE).
    Returns `tag`."""
    if not image_exists(base):
        raise ImageError(f"base image {base} is not in the engine (base_image() builds it)")
    argv = ["build", "-q", "-t", tag, "-f", str(Path(context) / dockerfile), "--build-arg", f"BASE={base}"]
    for key, value in (build_args or {}).items():
        argv += ["--build-arg", f"{key}={value}"]
    for key, value in (labels or {}).items():
        argv += ["--label", f"{key}={value}"]
    started = time.monotonic()
    _docker(*argv, str(context), what=f"docker build of {tag}")
    _log(f"{tag}: built in {time.monotonic() - started:.1f} s")
    return tag


def build_cached_image(repository: str, context: Path | str, *, base: str,
                       build_args: dict[str, str] | None = None) -> str:
    """`build_image` tagged repository:<hash of the context's files, the base and the build arguments>, reused
    when the engine has it: for images that change only with their sources (shared; tests do not remove them)."""
    context = Path(context)
    digest = hashlib.sha256(json.dumps([base, sorted((build_args or {}).items())]).encode())
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(context).as_posix()}\0{path.stat().st_mode & 0o111}\0".encode())
        digest.update(path.read_bytes())
    tag = f"{repository}:{digest.hexdigest()[:12]}"
    if image_exists(tag):
        return tag
    with _locked(default_cache_dir() / f"{repository.replace('/', '_')}-{digest.hexdigest()[:12]}.lock"):
        if not image_exists(tag):
            build_image(tag, context, base=base, build_args=build_args)
    return tag


def remove_images(repository: str) -> list[str]:
    """Remove every tag of `repository`; returns the references removed. Bases are kept: they are shared."""
    if repository.split(":", 1)[0] == BASE_REPOSITORY:
        raise ImageError(f"{BASE_REPOSITORY} images are shared by everyone on the machine: not removed")
    tags = [t for t in _docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository).split()
            if t and not t.endswith(":<none>")]
    if tags:
        subprocess.run(["docker", "image", "rm", "-f", *tags], capture_output=True)
    return tags


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Debian base images built with debootstrap, cached by content.")
    parser.add_argument("action", choices=["base", "tag"], help="base: build or reuse the base; tag: print its tag")
    parser.add_argument("packages", nargs="+", help="Debian packages installed into the base")
    parser.add_argument("--suite", default=DEFAULT_SUITE)
    args = parser.parse_args(argv)
    try:
        print(base_image(args.packages, args.suite) if args.action == "base" else base_tag(args.packages, args.suite))
    except ImageError as exc:
        parser.exit(1, f"images.py: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
