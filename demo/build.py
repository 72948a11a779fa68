#!/usr/bin/env python3
"""Build release artifacts of the demo app.

    python3 demo/build.py VERSION --out DIR [--broken health|migration|start]
                          [--migration NAME:SQL ...]

writes ``DIR/demo-VERSION.tar.gz`` with app.py, VERSION, bin/ and migrations/ at
the archive root. The archive is deterministic (sorted entries, fixed mtime and
owner, fixed gzip header), so building the same input twice gives identical bytes.

Deliberately broken variants:

* ``health``: adds ``HEALTH_BROKEN``, /health answers 500.
* ``start``: adds ``START_BROKEN``, the app exits at startup so bin/start fails.
* ``migration``: adds ``migrations/0099_broken.sql`` whose first statements succeed
  (CREATE TABLE broken_half, INSERT INTO items) and whose last statement fails.

``--migration NAME:SQL`` adds ``migrations/NAME.sql``; NAME without a numeric
prefix gets the next free number (e.g. ``add_price`` -> ``0002_add_price``).

``build_git(version, repo_dir)`` commits the same files to a git repository and
tags the commit ``version``.
"""

import argparse
import gzip
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent / "app"

BROKEN_KINDS = ("health", "migration", "start")
BROKEN_MIGRATION_NAME = "0099_broken"
BROKEN_MIGRATION_SQL = """\
-- Deliberately broken migration: the first statements succeed, the last one fails.
CREATE TABLE broken_half (id INTEGER);
INSERT INTO items (id, name) VALUES (99, 'half-applied');
THIS IS NOT VALID SQL;
"""

FIXED_MTIME = 946684800  # 2000-01-01T00:00:00Z
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
MIGRATION_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
EXECUTABLE = {"app.py"}

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "demo build",
    "GIT_AUTHOR_EMAIL": "demo@example.invalid",
    "GIT_COMMITTER_NAME": "demo build",
    "GIT_COMMITTER_EMAIL": "demo@example.invalid",
}


def _normalize_broken(broken):
    if not broken:
        return []
    kinds = [broken] if isinstance(broken, str) else list(broken)
    for kind in kinds:
        if kind not in BROKEN_KINDS:
            expected = ", ".join(BROKEN_KINDS)
            raise ValueError(f"unknown broken kind {kind!r} (expected one of {expected})")
    return sorted(set(kinds))


def _parse_migration(spec):
    if isinstance(spec, str):
        name, sep, sql = spec.partition(":")
        if not sep:
            raise ValueError(f"--migration expects NAME:SQL, got {spec!r}")
    else:
        name, sql = spec
    name = name.strip()
    if name.endswith(".sql"):
        name = name[:-4]
    if not MIGRATION_NAME_RE.match(name):
        raise ValueError(f"invalid migration name {name!r}")
    if not sql.strip():
        raise ValueError(f"migration {name!r} has no SQL")
    sql = sql.strip()
    if not sql.endswith(";"):
        sql += ";"
    return name, sql + "\n"


def release_files(version, broken=None, migrations=()):
    """Return {relative path: (bytes, mode)} of a release."""
    version = str(version)
    if not VERSION_RE.match(version):
        raise ValueError(f"invalid version {version!r}")
    files = {}
    for path in sorted(APP_DIR.rglob("*")):
        rel = path.relative_to(APP_DIR).as_posix()
        if path.is_dir() or "__pycache__" in rel.split("/") or rel.endswith((".pyc", ".pyo")):
            continue
        if rel in ("VERSION", "HEALTH_BROKEN", "START_BROKEN"):
            continue
        executable = rel.startswith("bin/") or rel in EXECUTABLE
        files[rel] = (path.read_bytes(), 0o755 if executable else 0o644)
    files["VERSION"] = (f"{version}\n".encode(), 0o644)

    kinds = _normalize_broken(broken)
    if "health" in kinds:
        files["HEALTH_BROKEN"] = (b"deliberately broken build: /health answers 500\n", 0o644)
    if "start" in kinds:
        files["START_BROKEN"] = (b"deliberately broken build: the app exits at startup\n", 0o644)
    if "migration" in kinds:
        files[f"migrations/{BROKEN_MIGRATION_NAME}.sql"] = (BROKEN_MIGRATION_SQL.encode(), 0o644)

    for spec in migrations or ():
        name, sql = _parse_migration(spec)
        if not re.match(r"^\d+_", name):
            numbers = [int(m.group(1)) for m in (re.match(r"^migrations/(\d+)_", p) for p in files) if m]
            numbers = [n for n in numbers if n != int(BROKEN_MIGRATION_NAME[:4])] or [0]
            name = f"{max(numbers) + 1:04d}_{name}"
        rel = f"migrations/{name}.sql"
        if rel in files:
            raise ValueError(f"migration {rel} already exists")
        files[rel] = (sql.encode(), 0o644)
    return files


def _tarinfo(name, mode, size=0, directory=False):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = mode
    info.size = size
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def build(version, out_dir, broken=None, migrations=()):
    """Build ``out_dir/demo-<version>.tar.gz`` and return its path."""
    files = release_files(version, broken, migrations)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"demo-{version}.tar.gz"

    dirs = set()
    for rel in files:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    entries = sorted(list(files) + sorted(dirs))

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in entries:
            if name in dirs:
                tar.addfile(_tarinfo(name, 0o755, directory=True))
            else:
                data, mode = files[name]
                tar.addfile(_tarinfo(name, mode, len(data)), io.BytesIO(data))
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, compresslevel=9, mtime=0) as gz:
        gz.write(raw.getvalue())

    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(compressed.getvalue())
    os.replace(tmp, target)
    return target


def _git(repo_dir, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_IDENTITY)
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    cmd = ["git", "-c", "commit.gpgSign=false", "-c", "tag.gpgSign=false",
           "-c", "init.defaultBranch=main", "-c", "core.fileMode=true"] + list(args)
    proc = subprocess.run(cmd, cwd=str(repo_dir), env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError("{} failed: {}".format(" ".join(cmd), (proc.stderr or proc.stdout).strip()))
    return proc.stdout.strip()


def build_git(version, repo_dir, broken=None, migrations=()):
    """Create/update a git repository at ``repo_dir`` with the release files, commit, tag ``version``.

    Returns the commit id. The working tree is replaced by the release content
    (everything except ``.git``); re-tagging an existing version moves the tag.
    """
    files = release_files(version, broken, migrations)
    repo_dir = Path(repo_dir)
    repo_dir.mkdir(parents=True, exist_ok=True)
    if not (repo_dir / ".git").exists():
        _git(repo_dir, "init", "-q")
        _git(repo_dir, "checkout", "-q", "-B", "main")
    for child in repo_dir.iterdir():
        if child.name == ".git":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    for rel, (data, mode) in files.items():
        path = repo_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    _git(repo_dir, "add", "-A")
    _git(repo_dir, "commit", "-q", "--allow-empty", "-m", f"demo {version}")
    _git(repo_dir, "tag", "-f", "-a", str(version), "-m", f"demo {version}")
    return _git(repo_dir, "rev-parse", "HEAD")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build a demo app release archive.")
    parser.add_argument("version")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--broken", action="append", choices=BROKEN_KINDS,
                        help="build a deliberately broken release (repeatable)")
    parser.add_argument("--migration", action="append", default=[], metavar="NAME:SQL",
                        help="add migrations/NAME.sql with SQL (repeatable)")
    parser.add_argument("--git", metavar="REPO_DIR",
                        help="also commit the release to a git repository and tag it VERSION")
    args = parser.parse_args(argv)
    try:
        path = build(args.version, args.out, broken=args.broken, migrations=args.migration)
        print(path)
        if args.git:
            build_git(args.version, args.git, broken=args.broken, migrations=args.migration)
    except (ValueError, RuntimeError) as exc:
        parser.exit(2, f"build.py: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
