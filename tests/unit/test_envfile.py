"""deployctl's block of a .env: every reader an app may use gets back exactly the value given."""

import shutil
import subprocess

import dotenv
import pytest
import yaml
from ansible_collections.deployctl.core.plugins.module_utils.envfile import (
    BEGIN,
    END,
    EnvError,
    block,
    merged,
    owned_keys,
    without_keys,
)

VALUES = {
    "PLAIN": "postgresql://app@db:5432/shop",
    "SPACES": "two  spaces and a tab\there",
    "HASH": "not # a comment",
    "DOLLAR": "pa$$word $HOME $(id) `id`",
    "BACKSLASH": r"C:\path\to\n",
    "QUOTES": 'say "hi"',
    "APOSTROPHE": "it's fine",
    "EMPTY": "",
    "EQUALS": "a=b=c",
    "UNICODE": "Grüße 🚀",
    "NUMBER": 18080,
}
EXPECTED = {k: str(v) for k, v in VALUES.items()}


@pytest.fixture
def env_file(tmp_path):
    path = tmp_path / ".env"
    path.write_text("# the operator's own lines\nOWN=kept\n" + block(VALUES))
    return path


def test_a_shell_reads_back_every_value(env_file):
    script = "set -a; . ./.env; " + "; ".join(f'printf "%s\\0" "${k}"' for k in VALUES)
    out = subprocess.run(["sh", "-c", script], cwd=env_file.parent, capture_output=True, check=True).stdout
    assert dict(zip(VALUES, out.decode().split("\0")[:-1], strict=True)) == EXPECTED


def test_python_dotenv_reads_back_every_value(env_file):
    values = dotenv.dotenv_values(env_file)
    assert {k: values[k] for k in VALUES} == EXPECTED
    assert values["OWN"] == "kept"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_docker_compose_reads_back_every_value(env_file):
    compose = env_file.parent / "docker-compose.yml"
    compose.write_text(yaml.safe_dump({"version": "3", "services": {"app": {
        "image": "scratch", "environment": {k: f"${{{k}}}" for k in VALUES}}}}))
    out = subprocess.run(["docker-compose", "config"], cwd=env_file.parent, capture_output=True, text=True,
                         check=True).stdout
    seen = yaml.safe_load(out)["services"]["app"]["environment"]
    # compose's own $$ escapes aside, a value comes back as given
    assert {k: str(seen[k]).replace("$$", "$") for k in VALUES} == EXPECTED


@pytest.mark.parametrize("value, why", [("x\nDEMO_PORT=18096", "newline"), ("a\0b", "NUL"),
                                        ("it's $HOME", "no quoting"), ("back\\slash and 'quote'", "no quoting"),
                                        ("${HOME}", "expand")])
def test_values_no_reader_would_get_right_are_refused(value, why):
    with pytest.raises(EnvError, match=why):
        block({"KEY": value})


def test_bad_names_are_refused():
    with pytest.raises(EnvError, match="not a valid variable name"):
        block({"1ST": "x"})


def test_only_the_marked_block_changes():
    existing = "# mine\nOWN=1\n" + block({"A": "1"}) + "AFTER=2\n"
    again = merged(existing, {"A": "changed", "B": "new"})
    assert again.startswith("# mine\nOWN=1\n" + BEGIN) and again.endswith(END + "\nAFTER=2\n")
    assert "A=changed" in again and "B=new" in again and "A=1" not in again
    assert merged("OWN=1", {"A": "1"}) == "OWN=1\n" + block({"A": "1"})


def test_a_rehearsal_copy_leaves_out_the_operators_lines_it_overrides():
    existing = f"# mine\nDATABASE_URL=postgres://live\nexport SMTP=x\n{BEGIN}\nDATABASE_URL=old\n{END}\nLAST=1\n"
    copy = merged(without_keys(existing, {"DATABASE_URL": "postgres://scratch"}), {"DATABASE_URL": "postgres://scratch"})
    assert "postgres://live" not in copy and "# mine" in copy and "export SMTP=x" in copy and "LAST=1" in copy
    assert owned_keys(copy) == ["SMTP", "LAST"]
    assert "DATABASE_URL=postgres://scratch\n" in copy
