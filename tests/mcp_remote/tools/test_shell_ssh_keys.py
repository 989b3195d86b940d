"""SSH keys as operators make them: `ssh-keygen`'s default (OpenSSH format) with a passphrase."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bridge.hubclient import HubClient
from tests.conftest import TOKENS
from tests.mcp_remote.tools.conftest import ShellClient, shell_hub_config
from tests.support.hub import start_hub
from tests.support.sshd import start_sshd

pytestmark = pytest.mark.anyio


def _keygen(key: Path, passphrase: str) -> Path:
    """`ssh-keygen`'s default format, as an operator makes a key."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "", "-f", str(key)], check=True
    )
    return key


async def test_an_openssh_format_key_with_a_passphrase_is_used(tmp_path: Path) -> None:
    """Found by a tester: such a key stopped the hub at start ("OpenSSH private key encryption
    requires bcrypt with KDF support"): asyncssh needs bcrypt for it, and it was not installed."""
    sshd = start_sshd(tmp_path / "sshd")
    key = _keygen(tmp_path / "agent_key", "s3cret-phrase")
    assert key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    with (tmp_path / "sshd" / "authorized_keys").open("a") as authorized:
        authorized.write(key.with_suffix(".pub").read_text())
    target = {
        "kind": "ssh",
        "host": "127.0.0.1",
        "port": sshd.port,
        "user": sshd.user,
        "key_file": str(key),
        "key_passphrase_env": "AGENT_B_KEY_PASSPHRASE",
        "known_host_key": sshd.host_key_pub,
        "workspace": str(tmp_path / "remote"),
    }
    options = {"default_target": {"kind": "jail"}, "targets": {"agent-b": target}}
    hub = start_hub(
        tmp_path / "hub",
        config=shell_hub_config(options),
        http=False,
        env={"AGENT_B_KEY_PASSPHRASE": "s3cret-phrase"},
    )
    client = HubClient(hub.grpc)
    try:
        outcome = await ShellClient(client, TOKENS["agent-b"]).exec("echo over ssh")
        assert not outcome.is_error and outcome.structured["stdout"] == "over ssh\n", outcome.text
    finally:
        await client.close()
        hub.stop()
        sshd.stop()
    assert "s3cret-phrase" not in hub.log_path.read_text()
