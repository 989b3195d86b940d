"""The README's promises stay true: its configuration example is valid, its commands exist."""

from __future__ import annotations

import re
import subprocess

import yaml

from mcp_remote.config import HubConfig
from mcp_remote.policy import resolve_policy
from tests.support.hub import REPO, hub_command

README = (REPO / "README.md").read_text()


def test_the_configuration_example_is_a_valid_hub_config() -> None:
    block = re.search(r"## Configure.*?```yaml\n(.*?)```", README, re.S)
    assert block is not None
    config = HubConfig.model_validate(yaml.safe_load(block.group(1)))
    assert config.policy is not None and config.audit.store == "sqlite"
    assert "no force push" in resolve_policy(config.policy).rule_names


def test_the_two_commands_are_the_ci_command_and_the_serve_command() -> None:
    assert "./dev serve" in README and "./dev test" in README
    assert "exec ./dev test" in (REPO / ".ci" / "run").read_text()


def test_every_mcphub_command_the_readme_shows_exists() -> None:
    shown = set(re.findall(r"^mcphub ([a-z]+(?: [a-z]+)?)(?!\w*:)", README, re.M)) - {"ready"}
    assert {"approvals list", "audit verify", "policy explain"} <= shown
    for command in sorted(shown):
        out = subprocess.run(
            hub_command(*command.split(), "--help"), capture_output=True, text=True, cwd=REPO
        )
        assert out.returncode == 0, f"mcphub {command}: {out.stderr}"
