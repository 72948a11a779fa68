"""A release through mitogen's strategy plugin, turned on the way the README says: in the project's own
ansible.cfg, with the `mitogen` extra installed."""

from pathlib import Path

import ansible_mitogen
import pytest

STRATEGY_PLUGINS = Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"
# prints the command line of the process the module's command runs under: under mitogen, a fork of its
# persistent interpreter, named "python(mitogen:...)"; under Ansible's own strategies, an AnsiballZ file
MODULE_PROCESS = """sh -c 'tr "\\0" " " < /proc/$PPID/cmdline'"""


@pytest.mark.parametrize("strategy", ["mitogen_linear", "linear"])
def test_a_release_runs_through_the_strategy_the_projects_ansible_cfg_names(demo_project, strategy):
    project = demo_project()
    project.group_vars["deployctl_migrate_status_command"] = MODULE_PROCESS
    project.write()
    (project.root / "ansible.cfg").write_text(
        f"[defaults]\nstrategy_plugins = {STRATEGY_PLUGINS}\nstrategy = {strategy}\n")
    project.build("v1")
    project.build("v2")
    assert project.run("release", "v1").code == 0
    second = project.run("release", "v2")
    assert second.code == 0, second
    assert project.served_version() == "v2"
    assert project.running("worker")
    runs = project.root / ".deployctl" / "runs" / second.data["deployment"]["id"] / "artifacts"
    assert len(list(runs.iterdir())) == 1, "one ansible-playbook run on the success path, gates included"
    module_process = second.data["deployment"]["details"]["schema"]["localhost"]["before"]
    assert ("(mitogen:" in module_process) == (strategy == "mitogen_linear"), module_process
