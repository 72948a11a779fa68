"""The collection's README and galaxy.yml, and the top-level README, name every module (and role) there is."""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COLLECTION = REPO / "collections/ansible_collections/deployctl/core"
MODULES = sorted(p.stem for p in (COLLECTION / "plugins/modules").glob("*.py") if p.stem != "__init__")
ROLES = sorted(p.parent.parent.name for p in (REPO / "roles").glob("*/tasks/main.yml"))


def short_description(module: str) -> str:
    """Read by line, not as YAML: a module whose DOCUMENTATION does not parse still has to be listed."""
    text = (COLLECTION / "plugins/modules" / f"{module}.py").read_text()
    match = re.search(r"^short_description:\s*(.+?)\s*$", text, re.M)
    assert match, f"{module}.py has no short_description"
    return match.group(1).strip("'\"")


def test_there_are_modules_and_roles():
    assert len(MODULES) >= 10 and "backup_set" in MODULES
    assert len(ROLES) >= 10 and "deploy" in ROLES


def test_the_collection_readme_lists_every_module_with_its_short_description():
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `deployctl\.core\.(\w+)` \| (.+?) \|$",
                                                        (COLLECTION / "README.md").read_text(), re.M)}
    assert sorted(rows) == MODULES
    for module in MODULES:
        assert short_description(module) in rows[module], module


def test_galaxy_yml_names_every_module():
    description = yaml.safe_load((COLLECTION / "galaxy.yml").read_text())["description"]
    named = set(re.findall(r"\b\w+\b", description))
    assert [m for m in MODULES if m not in named] == []


def how_it_is_built() -> str:
    readme = (REPO / "README.md").read_text()
    return readme.split("## How it is built", 1)[1].split("\n## ", 1)[0]


def test_the_readme_lists_every_module_and_role():
    section = how_it_is_built()
    words = set(re.findall(r"\b\w+\b", section))
    assert [m for m in MODULES if m not in words] == [], "modules missing from README's How it is built"
    assert [r for r in ROLES if r not in words] == [], "roles missing from README's How it is built"
