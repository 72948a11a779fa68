#!/usr/bin/env python3
"""Build the seed stack's images on this machine (no registry), FROM one Debian base (demo/images.py).

    python3 demo/stack/build.py base                 # the base: debootstrap once (minutes), then cached
    python3 demo/stack/build.py app VERSION [--image seed-app] [--unhealthy] [--migrations N]
    python3 demo/stack/build.py data                 # the MariaDB/PostgreSQL/Redis image (cached by content)
    python3 demo/stack/build.py --remove IMAGE       # every tag of an app image

Each prints the image's reference; the build times go to stderr. `app` builds IMAGE:VERSION with the first
N migrations of demo/stack/app/migrations (all by default: v1 of the tests carries 2, v2 3, v3 all 5);
`--unhealthy` builds a version whose /health always answers 503.

From Python: stack_base(), build_app(version, image, healthy, migrations), data_image(), remove_images(image).
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository's root is what `demo` is imported from
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from demo.images import ImageError, base_image, build_cached_image, build_image, remove_images

HERE = Path(__file__).resolve().parent
APP = HERE / "app"
DATA = HERE / "data"
DEFAULT_APP_IMAGE = "seed-app"
DATA_REPOSITORY = "deployctl-stack-data"

# One base for every service of the stack, and for the other tests that need a database or Redis in a
# container: each distinct base costs a debootstrap.
BASE_PACKAGES = (
    "nodejs", "node-mysql", "node-redis", "node-pg",
    "mariadb-server", "mariadb-client", "postgresql", "redis-server",
    "procps", "ca-certificates",
)
# the system tables Debian's mariadb-server creates at install: the service creates its own in its data
# directory, so that the app's user and database exist however the container is started
BASE_SETUP = "rm -rf /var/lib/mysql/*"


def migrations() -> list[str]:
    """The app's migrations, in the order they apply."""
    return sorted(path.stem for path in _migration_files())


def _migration_files() -> list[Path]:
    return [path for path in (APP / "migrations").iterdir() if path.suffix in (".sql", ".js")]


@functools.cache  # once per process: the base stays in the engine
def stack_base() -> str:
    return base_image(BASE_PACKAGES, setup=BASE_SETUP)


def build_app(version: str, image: str = DEFAULT_APP_IMAGE, healthy: bool = True,
              migrations_count: int | None = None) -> str:
    """Build `image:version` (the app, worker and bot) carrying the first `migrations_count` migrations."""
    names = migrations()
    count = len(names) if migrations_count is None else migrations_count
    if not 0 <= count <= len(names):
        raise ImageError(f"the app has {len(names)} migrations, not {count}")
    with tempfile.TemporaryDirectory(prefix="seed-app-") as tmp:
        context = Path(tmp) / "app"
        shutil.copytree(APP, context, ignore=shutil.ignore_patterns("migrations", "node_modules"))
        (context / "migrations").mkdir()
        carried = set(names[:count])
        for path in _migration_files():
            if path.stem in carried:
                shutil.copy2(path, context / "migrations")
        return build_image(f"{image}:{version}", context, base=stack_base(),
                           build_args={"VERSION": version, "HEALTHY": "yes" if healthy else "no"})


def data_image() -> str:
    """The image of the stack's db, postgres and redis services: deployctl-stack-data:<hash of its sources>."""
    return build_cached_image(DATA_REPOSITORY, DATA, base=stack_base())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the seed stack's images.")
    parser.add_argument("what", nargs="?", choices=["base", "app", "data"])
    parser.add_argument("version", nargs="?", help="the app's version (its image tag)")
    parser.add_argument("--image", default=DEFAULT_APP_IMAGE, help="the app's image repository")
    parser.add_argument("--unhealthy", action="store_true", help="a version whose /health answers 503")
    parser.add_argument("--migrations", type=int, metavar="N", help="carry the first N migrations (default all)")
    parser.add_argument("--remove", metavar="IMAGE", help="remove every tag of an app image")
    args = parser.parse_args(argv)
    try:
        if args.remove:
            print("\n".join(remove_images(args.remove)))
        elif args.what == "base":
            print(stack_base())
        elif args.what == "data":
            print(data_image())
        elif args.what == "app" and args.version:
            print(build_app(args.version, args.image, not args.unhealthy, args.migrations))
        else:
            parser.error("base, data, app VERSION or --remove IMAGE")
    except ImageError as exc:
        parser.exit(1, f"build.py: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
