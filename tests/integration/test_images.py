"""demo/images.py against the real engine, with a busybox rootfs standing in for debootstrap's (which takes
minutes; the seed stack's tests build the real one): concurrent processes build a base once, a base in
the engine is reused, an engine that lost it imports the kept tarball again, a failed build leaves nothing."""

from __future__ import annotations

import multiprocessing
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from demo import images

BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def small_rootfs(marker: Path):
    """A _build_rootfs that makes a busybox rootfs in a second and leaves a mark for each build."""

    def build(rootfs: Path, inputs: dict, mirror: str, debs: Path) -> None:
        with open(marker, "a") as handle:
            handle.write("built\n")
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
        (rootfs / "bin" / "sh").symlink_to("busybox")
        time.sleep(1)  # long enough for the other process to find the lock taken

    return build


def build_in_child(packages, setup, cache, marker, results):
    images._build_rootfs = small_rootfs(marker)
    results.put(images.base_image(packages, setup=setup, cache_dir=cache))


@pytest.fixture
def base(tmp_path):
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode:
        pytest.skip("no Docker engine")
    setup = f"# test {uuid.uuid4().hex}"  # a base of this test's own
    tag = images.base_tag(["busybox-static"], setup=setup)
    yield setup, tag
    subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True)


def test_concurrent_processes_build_a_base_once_then_reuse_it(tmp_path, base, capfd, monkeypatch):
    setup, tag = base
    cache, marker = tmp_path / "cache", tmp_path / "builds"
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    children = [context.Process(target=build_in_child, args=(["busybox-static"], setup, cache, marker, results))
                for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [child.exitcode for child in children] == [0, 0]
    assert [results.get(timeout=5), results.get(timeout=5)] == [tag, tag]
    assert marker.read_text() == "built\n", "one build, the other process waited for it"
    err = capfd.readouterr().err
    assert "built meanwhile by another process" in err and f"{tag}: built in" in err
    assert subprocess.run(["docker", "run", "--rm", "--network", "host", tag, "/bin/busybox", "true"]).returncode == 0
    labels = subprocess.run(["docker", "image", "inspect", "-f", "{{json .Config.Labels}}", tag],
                            capture_output=True, text=True, check=True).stdout
    assert "busybox-static" in labels, "the image says what it was built from"

    monkeypatch.setattr(images, "_build_rootfs", small_rootfs(marker))
    assert images.base_image(["busybox-static"], setup=setup, cache_dir=cache) == tag
    assert "cached in the engine" in capfd.readouterr().err

    # an engine that lost the image imports the kept rootfs tarball: no second build
    subprocess.run(["docker", "image", "rm", tag], capture_output=True, check=True)
    assert images.base_image(["busybox-static"], setup=setup, cache_dir=cache) == tag
    assert "imported from" in capfd.readouterr().err
    assert marker.read_text() == "built\n"
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [f"{tag.split(':')[1]}.lock", f"{tag.split(':')[1]}.tar"]), "no work directory is left behind"


def test_a_failed_build_leaves_no_image_and_no_tarball(tmp_path, base, monkeypatch):
    setup, tag = base
    cache = tmp_path / "cache"
    name = tag.split(":")[1]
    # what a build killed before it could clean up left: removed by the next build of that base
    (cache / f"build-{name}-killed" / "rootfs" / "usr").mkdir(parents=True)
    (cache / f"{name}.tar.partial").write_bytes(b"half a tarball")

    def broken(rootfs, inputs, mirror, debs):
        rootfs.mkdir(parents=True)
        raise images.ImageError("apt-get install nodejs failed (exit 100): E: Unable to locate package")

    monkeypatch.setattr(images, "_build_rootfs", broken)
    with pytest.raises(images.ImageError, match="Unable to locate package"):
        images.base_image(["busybox-static"], setup=setup, cache_dir=cache)
    assert not images.image_exists(tag)
    assert [p.name for p in cache.iterdir()] == [f"{name}.lock"]


def test_a_service_image_is_a_thin_layer_on_the_base(tmp_path, base, monkeypatch):
    setup, tag = base
    monkeypatch.setattr(images, "_build_rootfs", small_rootfs(tmp_path / "builds"))
    images.base_image(["busybox-static"], setup=setup, cache_dir=tmp_path / "cache")
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text('ARG BASE\nFROM ${BASE}\nARG GREETING\n'
                                        'RUN ["/bin/busybox", "sh", "-c", "echo $GREETING > /greeting"]\n')
    repository = f"dctest-images-{uuid.uuid4().hex[:8]}"
    try:
        built = images.build_cached_image(repository, context, base=tag, build_args={"GREETING": "hello"})
        assert built.startswith(f"{repository}:")
        assert images.build_cached_image(repository, context, base=tag, build_args={"GREETING": "hello"}) == built
        assert images.build_cached_image(repository, context, base=tag, build_args={"GREETING": "hi"}) != built
        out = subprocess.run(["docker", "run", "--rm", "--network", "host", built, "/bin/busybox", "cat", "/greeting"],
                             capture_output=True, text=True, check=True).stdout
        assert out == "hello\n"
    finally:
        assert images.remove_images(repository)
    with pytest.raises(images.ImageError, match="not in the engine"):
        images.build_image(f"{repository}:x", context, base="deployctl-base:no-such-base")
