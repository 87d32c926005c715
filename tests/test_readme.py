"""The README's two set-up commands are exactly what CI runs."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_setup_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Set-up\n.*?```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert block, "README.md must have a '## Set-up' section with a code block"
    return [line.strip() for line in block.group(1).splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_readme_has_two_setup_commands():
    commands = readme_setup_commands()
    assert len(commands) == 2
    assert "archsim run" in commands[0] and "pytest" in commands[1]


def test_ci_runs_the_readme_commands_verbatim():
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    for command in readme_setup_commands():
        assert command in ci_lines, f"README command not run by .ci/run: {command}"
