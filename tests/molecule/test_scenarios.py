"""Every molecule scenario (syntax, converge, idempotence, check mode, verify) against this machine."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(scenario, tmp_path):
    bin_dir = str(Path(sys.executable).parent)
    # a private HOME: molecule's ephemeral state (and the scenario's app root) are this test's own
    env = {**os.environ, "HOME": str(tmp_path), "ANSIBLE_HOME": str(tmp_path / ".ansible"),
           "PATH": bin_dir + os.pathsep + os.environ["PATH"], "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1"}
    proc = subprocess.run([str(Path(bin_dir) / "molecule"), "test", "-s", scenario], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    assert "failed=0" in proc.stdout + proc.stderr
