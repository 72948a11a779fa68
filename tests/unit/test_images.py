"""demo/images.py without an engine: what a base's tag depends on, the names it accepts, the mirror it finds."""

import pytest

from demo import images


def test_the_tag_is_a_hash_of_the_inputs_only():
    tag = images.base_tag(["redis-server", "nodejs"])
    assert tag.startswith("deployctl-base:bookworm-") and len(tag.rsplit("-", 1)[1]) == 12
    assert images.base_tag(["nodejs", "redis-server", "nodejs"]) == tag, "order and repeats do not matter"
    assert images.base_tag(["nodejs"]) != tag
    assert images.base_tag(["redis-server", "nodejs"], "trixie").startswith("deployctl-base:trixie-")
    assert images.base_tag(["redis-server", "nodejs"], setup="true") != tag


def test_the_builder_version_is_part_of_the_tag(monkeypatch):
    tag = images.base_tag(["nodejs"])
    monkeypatch.setattr(images, "BUILDER_VERSION", images.BUILDER_VERSION + 1)
    assert images.base_tag(["nodejs"]) != tag


@pytest.mark.parametrize("packages", [["nodejs; rm -rf /"], ["Nodejs"], ["-y"], ["nodejs", ""]])
def test_only_debian_package_names_are_accepted(packages):
    with pytest.raises(images.ImageError, match="not Debian package names"):
        images.base_tag(packages)


def test_a_suite_must_be_a_suite_name():
    with pytest.raises(images.ImageError, match="not a Debian suite"):
        images.base_tag(["nodejs"], "bookworm main")


def test_the_mirror_comes_from_apts_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("DEPLOYCTL_DEBIAN_MIRROR", raising=False)
    real_path = images.Path

    def rooted(path, *rest):
        path = str(path)
        return real_path(str(tmp_path) + path if path.startswith("/etc/apt") else path, *rest)

    monkeypatch.setattr(images, "Path", rooted)
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    assert images.debian_mirror() == images.DEFAULT_MIRROR
    (tmp_path / "etc/apt/sources.list.d/other.list").write_text("deb https://packages.example.com/apt stable main\n")
    (tmp_path / "etc/apt/sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example.org/debian\nSuites: bookworm\n")
    assert images.debian_mirror() == "http://mirror.example.org/debian"
    monkeypatch.setenv("DEPLOYCTL_DEBIAN_MIRROR", "http://other.example.org/debian")
    assert images.debian_mirror() == "http://other.example.org/debian"


def test_the_shared_bases_are_never_removed_by_repository():
    with pytest.raises(images.ImageError, match="shared"):
        images.remove_images(images.BASE_REPOSITORY)
