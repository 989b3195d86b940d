from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from mcp_local import ConfigError, InvalidArgument, Principal, Redactor, Tool, ToolCall, ToolRegistry
from mcp_local.packs import PackEnv, start_packs
from mcp_local.validation import ArgumentValidator

pytestmark = pytest.mark.anyio


async def _noop(call: ToolCall) -> str:
    return ""


def tool(name: str) -> Tool:
    return Tool(name, f"{name} tool", {"type": "object"}, _noop)


def test_tool_names_follow_the_client_rules() -> None:
    for bad in ("has.dot", "", "x" * 65, "spa ce", "ünï"):
        with pytest.raises(ConfigError, match="expected 1-64 characters"):
            tool(bad)
    tool("ok_name-1")


def test_sources_replace_their_own_tools_and_bump_the_revision() -> None:
    registry = ToolRegistry()
    registry.set_source("pack:a", [tool("a1"), tool("a2")])
    first = registry.revision
    registry.set_source("pack:b", [tool("b1")])
    registry.set_source("pack:a", [tool("a3")])
    assert registry.revision == first + 2
    assert sorted(r.tool.name for r in registry.visible_to(Principal("p"))) == ["a3", "b1"]


def test_a_name_owned_by_another_source_is_refused() -> None:
    registry = ToolRegistry()
    registry.set_source("pack:a", [tool("same")])
    with pytest.raises(ConfigError, match="already provided by pack:a"):
        registry.set_source("pack:b", [tool("same")])


def test_pagination_walks_every_visible_tool_once() -> None:
    registry = ToolRegistry()
    registry.set_source("pack", [tool(f"t{i:03d}") for i in range(250)] + [tool("secret_x")])
    principal = Principal("p", ("t*",))
    seen: list[str] = []
    cursor = ""
    while True:
        page, cursor = registry.page(principal, cursor, 40)
        seen += [r.tool.name for r in page]
        if not cursor:
            break
    assert seen == [f"t{i:03d}" for i in range(250)]


def test_a_forged_cursor_is_invalid_argument() -> None:
    registry = ToolRegistry()
    for cursor in ("not-base64-!!", "YmFk"):  # the second is base64, of no cursor of the registry
        with pytest.raises(InvalidArgument) as info:
            registry.page(Principal("p"), cursor, 10)
        assert str(info.value) == (
            f"invalid cursor {cursor!r}: pass the cursor the previous page gave (nextCursor of an MCP "
            "tools/list result, next_cursor of a gRPC ListTools response)"
        )


def test_globs_decide_visibility() -> None:
    p = Principal("p", ("shell_*", "echo"))
    assert p.may_call("shell_exec") and p.may_call("echo")
    assert not p.may_call("echo2") and not p.may_call("browser_click")
    assert not Principal("nobody", ()).may_call("echo")


async def test_watch_yields_now_and_after_each_change() -> None:
    registry = ToolRegistry()
    seen: list[int] = []

    async def watch() -> None:
        async for revision in registry.watch():
            seen.append(revision)
            if len(seen) == 3:
                return

    task = asyncio.ensure_future(watch())
    await asyncio.sleep(0)
    registry.set_source("a", [tool("x")])
    await asyncio.sleep(0)
    registry.set_source("a", [])
    await asyncio.wait_for(task, 5)
    assert seen == sorted(seen) and len(set(seen)) == 3


async def test_packs_are_imported_once_and_their_secret_variables_leave_the_environment(
    tmp_path: Path,
) -> None:
    """Asking a pack file for its secret variables imported it a second time (its import side
    effects ran twice); each pack sees its own secret variables and no other pack's."""
    imports = tmp_path / "imports.log"
    pack_file = tmp_path / "mine.py"
    pack_file.write_text(
        f"""
from pathlib import Path
from mcp_local import StaticPack
with Path({str(imports)!r}).open("a") as log:
    log.write("imported\\n")
SEEN = {{}}

def secret_variables(options):
    return [options["key_env"]]

def create_pack(options, env):
    SEEN[options["key_env"]] = dict(env.extra["environ"])
    return StaticPack("mine-" + options["key_env"].lower(), [])
"""
    )

    class Spec:
        def __init__(self, name: str, ref: str, options: dict[str, Any]) -> None:
            self.name, self.ref, self.options = name, ref, options

    environ = {"PATH": "/bin", "KEY_A": "secret-a", "KEY_B": "secret-b"}
    specs = [Spec("a", str(pack_file), {"key_env": "KEY_A"}), Spec("b", str(pack_file), {"key_env": "KEY_B"})]
    env = PackEnv(state_dir=tmp_path, redactor=Redactor())
    await start_packs(specs, env, ToolRegistry(), environ)
    assert imports.read_text() == "imported\n"
    assert environ == {"PATH": "/bin"}
    seen = sys.modules[next(m for m in sys.modules if m.startswith("mcphub_pack_mine_"))].SEEN
    assert seen["KEY_A"] == {"PATH": "/bin", "KEY_A": "secret-a"}
    assert seen["KEY_B"] == {"PATH": "/bin", "KEY_B": "secret-b"}


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        ("#/$defs/n", None),
        ("#/$defs/a~1b", None),  # a JSON pointer's escapes
        ("#num", None),  # an anchor
        ("#", None),
        ("#/$defs/nope", "refers to '#/$defs/nope', which is not in it"),
        ("#nope", "refers to '#nope', which is not in it"),
        ("file:///etc/hostname", "only references inside the schema itself"),
        ("https://example.com/s.json", "only references inside the schema itself"),
        ("s.json#/x", "only references inside the schema itself"),
    ],
)
def test_a_schema_may_refer_only_inside_itself(ref: str, problem: str | None) -> None:
    """A reference to a URL or a file was fetched (on every call, from the host that validates);
    one to nothing failed every call as an internal error."""
    schema = {
        "type": "object",
        "$defs": {"n": {"type": "integer", "$anchor": "num"}, "a/b": {"type": "string"}},
        "properties": {"a": {"$ref": ref}},
    }
    if problem is None:
        assert ArgumentValidator("t", schema).problem({"a": 1.5}) is not None  # and it validates
    else:
        with pytest.raises(ConfigError, match=re.escape(problem)):
            ArgumentValidator("t", schema)
