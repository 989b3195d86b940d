"""One client interface over every transport, so one test body runs over gRPC and over the MCP bridge.

Protocol failures surface as `ProtocolFailure` carrying the JSON-RPC code; for gRPC the
code comes from the bridge's own status table, so both transports are held to it.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio
import grpc
import httpx2
import orjson
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from bridge.errors import STATUS_TO_JSONRPC
from bridge.hubclient import HubClient
from bridge.translate import result_to_mcp, tool_to_mcp
from mcphub_proto.v1 import toolhub_pb2 as pb
from tests.support.waiting import file_appears

ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]

TRANSPORTS = ["grpc", "mcp-2026", "mcp-2025", "stdio"]


@dataclass
class Outcome:
    result: dict[str, Any]

    @property
    def is_error(self) -> bool:
        return bool(self.result.get("isError"))

    @property
    def text(self) -> str:
        return "\n".join(b["text"] for b in self.result["content"] if b["type"] == "text")

    @property
    def structured(self) -> Any:
        return self.result.get("structuredContent")


class ProtocolFailure(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data


class ToolClient(Protocol):
    transport: str

    async def list_tools(self) -> list[dict[str, Any]]: ...

    async def call(
        self, name: str, arguments: dict[str, Any], progress: ProgressFn | None = None
    ) -> Outcome: ...


class GrpcToolClient:
    transport = "grpc"

    def __init__(self, hub: HubClient, token: str | None) -> None:
        self._hub = hub
        self._token = token

    async def list_tools(self) -> list[dict[str, Any]]:
        try:
            return [tool_to_mcp(t) for t in await self._hub.all_tools(self._token)]
        except grpc.aio.AioRpcError as exc:
            raise _failure(exc) from None

    async def call(self, name: str, arguments: dict[str, Any], progress: ProgressFn | None = None) -> Outcome:
        request = pb.CallToolRequest(name=name, arguments_json=orjson.dumps(arguments))
        try:
            if progress is None:
                return Outcome(result_to_mcp(await self._hub.call_tool(self._token, request)))
            async for event in self._hub.stream_call_tool(self._token, request):
                kind = event.WhichOneof("event")
                if kind == "progress":
                    p = event.progress
                    await progress(p.progress, p.total if p.HasField("total") else None, p.message or None)
                elif kind == "result":
                    return Outcome(result_to_mcp(event.result))
        except grpc.aio.AioRpcError as exc:
            raise _failure(exc) from None
        raise AssertionError("stream ended without a result")


def _failure(exc: grpc.aio.AioRpcError) -> ProtocolFailure:
    return ProtocolFailure(STATUS_TO_JSONRPC.get(exc.code(), -32603), exc.details() or "", exc.code())


class McpToolClient:
    def __init__(self, client: Client, transport: str) -> None:
        self._client = client
        self.transport = transport

    async def list_tools(self) -> list[dict[str, Any]]:
        try:
            result = await self._client.list_tools()
        except MCPError as exc:
            raise ProtocolFailure(exc.code, exc.message, exc.data) from None
        return [t.model_dump(by_alias=True, exclude_none=True, mode="json") for t in result.tools]

    async def call(self, name: str, arguments: dict[str, Any], progress: ProgressFn | None = None) -> Outcome:
        try:
            result = await self._client.call_tool(name, arguments, progress_callback=progress)
        except MCPError as exc:
            raise ProtocolFailure(exc.code, exc.message, exc.data) from None
        return Outcome(result.model_dump(by_alias=True, exclude_none=True, mode="json"))


@contextlib.asynccontextmanager
async def connect(
    transport: str, grpc_target: str, mcp_url: str | None, token: str | None
) -> AsyncIterator[ToolClient]:
    """A connected client of `transport`; tokens travel as each transport carries identity.

    The SDK client's task groups wrap what the body raises in exception groups; a lone
    ProtocolFailure is unwrapped so test bodies look the same on every transport.
    """
    try:
        async with _connect(transport, grpc_target, mcp_url, token) as client:
            yield client
    except MCPError as exc:  # refused while connecting (a 2025 `initialize` the bridge turned away)
        raise ProtocolFailure(exc.code, exc.message, exc.data) from None
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) == 1 and isinstance(leaves[0], ProtocolFailure):
            raise leaves[0] from None
        if len(leaves) == 1 and isinstance(leaves[0], MCPError):
            raise ProtocolFailure(leaves[0].code, leaves[0].message, leaves[0].data) from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@contextlib.asynccontextmanager
async def _connect(
    transport: str, grpc_target: str, mcp_url: str | None, token: str | None
) -> AsyncIterator[ToolClient]:
    if transport == "grpc":
        hub = HubClient(grpc_target)
        try:
            yield GrpcToolClient(hub, token)
        finally:
            await hub.close()
        return
    if transport == "stdio":
        env = {"MCPHUB_TOKEN": token} if token else {}
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "mcp_remote.cli", "bridge", "--stdio", "--hub", grpc_target],
            env=env,
        )
        async with Client(params, mode="legacy", cache=None) as client:
            yield McpToolClient(client, transport)
        return
    assert mcp_url is not None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    mode = "auto" if transport == "mcp-2026" else "legacy"
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http,
        Client(streamable_http_client(mcp_url, http_client=http), mode=mode, cache=None) as client,
    ):
        if transport == "mcp-2026":
            assert client.protocol_version == "2026-07-28", client.protocol_version
        yield McpToolClient(client, transport)


async def answer_while_stopping(
    client: ToolClient,
    server: subprocess.Popen[bytes],
    started: Path,
    tool: str,
    arguments: dict[str, Any],
) -> Outcome:
    """Call `tool` and, once its `started` marker file appears, SIGTERM `server`: the call's
    answer. Wait for the server's exit after closing the client: a handshake-era client's
    open GET stream would hold the server's HTTP shutdown until it times out."""
    outcome: list[Outcome] = []
    async with anyio.create_task_group() as tg:

        async def call() -> None:
            outcome.append(await client.call(tool, arguments))

        tg.start_soon(call)
        assert await file_appears(started, 20)
        server.send_signal(signal.SIGTERM)
    [answer] = outcome
    return answer
