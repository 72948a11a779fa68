from pathlib import Path

import pytest
import yaml

from deployctl import project, variables
from deployctl.errors import BadInput

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, text, inventory=True):
    (tmp_path / "deployctl.yml").write_text(text)
    if inventory:
        (tmp_path / "inventory" / "staging").mkdir(parents=True)
    return tmp_path


def test_loads_environments_with_defaults(tmp_path):
    root = write(tmp_path, "app: shop\nenvironments:\n  staging: {serial: '25%', production: true}\n")
    loaded = project.load(root)
    env = loaded.environment("staging")
    assert loaded.app == "shop"
    assert (env.serial, env.production, env.max_fail_percentage, env.backup) == ("25%", True, 0, True)
    assert env.inventory == root / "inventory" / "staging"


def test_found_from_a_subdirectory(tmp_path, monkeypatch):
    root = write(tmp_path, "environments:\n  staging: {}\n")
    (root / "deep" / "er").mkdir(parents=True)
    monkeypatch.chdir(root / "deep" / "er")
    assert project.load().root == root


@pytest.mark.parametrize("text, message", [
    ("environments: [unclosed\n", "not valid YAML"),
    ("- a\n", "mapping at the top level"),
    ("app: x\n", "'environments' must map"),
    ("environments:\n  staging: {serial: '0'}\n", "serial must be"),
    ("environments:\n  staging: {serial: '150%'}\n", "serial must be"),
    ("environments:\n  staging: {max_fail_percentage: 101}\n", "max_fail_percentage must be"),
    ("environments:\n  staging: {production: 'yes'}\n", "production must be bool"),
    ("environments:\n  staging: {colour: red}\n", "unknown setting(s) colour"),
    ("environments:\n  nowhere: {}\n", "inventory"),
])
def test_bad_configuration_is_one_clear_line(tmp_path, text, message):
    root = write(tmp_path, text)
    with pytest.raises(BadInput) as error:
        project.load(root)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_environment(tmp_path):
    loaded = project.load(write(tmp_path, "environments:\n  staging: {}\n"))
    with pytest.raises(BadInput, match="unknown environment 'prod' \\(known: staging\\)"):
        loaded.environment("prod")


@pytest.mark.parametrize("version", ["v1.0.0", "1.2.3-rc.1", "2026.11.28+build.7", "release_5"])
def test_good_versions(version):
    assert project.check_version(version) == version


@pytest.mark.parametrize("version", ["", "-v1", "../v1", "v1/../../etc", "v1;reboot", "v 1", "v1\n", "x" * 129,
                                     "$(id)", ".hidden"])
def test_bad_versions(version):
    with pytest.raises(BadInput):
        project.check_version(version)


@pytest.mark.parametrize("inventory", sorted(p.name for p in (REPO / "inventory").iterdir() if p.is_dir()))
def test_the_example_inventories_set_only_variables_deployctl_reads(inventory):
    """Preflight refuses a deployctl_* variable no role reads: the examples (the demo's too) must pass it."""
    names = set()
    for path in (REPO / "inventory" / inventory).rglob("*.yml"):
        names.update(k for k in (yaml.safe_load(path.read_text()) or {}) if str(k).startswith("deployctl_"))
    assert names, f"inventory/{inventory} sets no deployctl variable"
    assert sorted(names - set(variables.known(REPO))) == []
