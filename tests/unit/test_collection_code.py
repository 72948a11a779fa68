"""The collection's code keeps the shape its hosts need: small modules, standard library only, documentation
that parses (ansible-doc and ansible-lint read it as YAML)."""

import ast
import sys
from pathlib import Path

import pytest
import yaml

PLUGINS = Path(__file__).resolve().parents[2] / "collections/ansible_collections/deployctl/core/plugins"
MODULES = sorted((PLUGINS / "modules").glob("*.py"))
MODULE_UTILS = sorted((PLUGINS / "module_utils").glob("*.py"))
OWN = "ansible_collections.deployctl.core.plugins.module_utils"
# ansible-core's own module_utils travel with the module to the host; these are the ones the collection uses
ANSIBLE_MODULE_UTILS = {"ansible.module_utils.basic", "ansible.module_utils.urls"}
MAX_MODULE_LINES = 600
# what an option or a return value may have (ansible-test validate-modules allows nothing else)
OPTION_KEYS = {"description", "type", "required", "default", "choices", "elements", "aliases", "suboptions",
               "no_log", "apply_defaults", "version_added"}
RETURN_KEYS = {"description", "type", "returned", "sample", "contains", "elements", "version_added"}


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module


@pytest.mark.parametrize("path", MODULES + MODULE_UTILS, ids=lambda p: p.name)
def test_standard_library_only(path):
    """Modules run on the managed hosts, which have Python and nothing else (ansible-core ships its module_utils)."""
    foreign = [name for name in _imports(path)
               if name.split(".")[0] not in sys.stdlib_module_names
               and name not in ANSIBLE_MODULE_UTILS and not name.startswith(OWN)]
    assert not foreign, f"{path.name} imports {foreign}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines: move its parts into module_utils"


def _stray_keys(entries, allowed, nested, where=""):
    """Keys no option or return value has. In a {description: ..., type: ...} flow mapping a comma ends the
    description, and the rest of the sentence becomes such keys."""
    for name, entry in (entries or {}).items():
        yield from (f"{where}{name}: {key!r}" for key in set(entry) - allowed)
        yield from _stray_keys(entry.get(nested), allowed, nested, f"{where}{name}.")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_documentation_parses(path):
    blocks = {node.targets[0].id: node.value.value for node in ast.parse(path.read_text()).body
              if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
              and node.targets[0].id in ("DOCUMENTATION", "EXAMPLES", "RETURN")}
    assert set(blocks) == {"DOCUMENTATION", "EXAMPLES", "RETURN"}
    doc = yaml.safe_load(blocks["DOCUMENTATION"])
    assert doc["module"] == path.stem
    for text in [doc["short_description"], *doc["description"]]:
        assert isinstance(text, str), f"{path.name}: a description line parsed as {text!r} (quote its ': ')"
    for name, option in doc.get("options", {}).items():
        descriptions = option["description"] if isinstance(option["description"], list) else [option["description"]]
        assert all(isinstance(text, str) for text in descriptions), f"{path.name}: option {name}"
    stray = list(_stray_keys(doc.get("options"), OPTION_KEYS, "suboptions"))
    assert not stray, f"{path.name}: options with keys cut from their descriptions (quote them): {stray}"
    assert isinstance(yaml.safe_load(blocks["EXAMPLES"]), list)
    stray = list(_stray_keys(yaml.safe_load(blocks["RETURN"]), RETURN_KEYS, "contains"))
    assert not stray, f"{path.name}: return values with keys cut from their descriptions (quote them): {stray}"


def test_no_module_utils_file_is_unused():
    used = set()
    for path in MODULES + MODULE_UTILS:
        for name in _imports(path):
            if name.startswith(OWN + "."):
                used.add(name.rsplit(".", 1)[1])
            elif name == OWN:
                used.update(alias.name for node in ast.walk(ast.parse(path.read_text()))
                            if isinstance(node, ast.ImportFrom) and node.module == OWN for alias in node.names)
    assert {p.stem for p in MODULE_UTILS} - {"__init__"} <= used
