"""The gRPC edge: what it logs when something that is no HubError escapes a call."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from mcp_local.servicer import ToolHubServicer
from mcphub_proto.v1 import toolhub_pb2 as pb

pytestmark = pytest.mark.anyio


class Aborted(Exception):
    pass


class Context:
    """The little of a `grpc.aio.ServicerContext` that a call reads, and its abort."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> None:
        return None

    async def abort(self, code: Any, details: str, trailing: Any = ()) -> None:
        raise Aborted(code, details)


class BrokenService:
    async def call_tool(self, *args: Any) -> pb.CallToolResult:
        raise RuntimeError("a bug")

    def list_tools(self, *args: Any) -> pb.ListToolsResponse:
        raise RuntimeError("a bug")


async def test_an_internal_error_is_logged_naming_the_method_and_the_tool(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The log said "internal error in _ServicerContext": neither the method nor the tool."""
    servicer = ToolHubServicer(BrokenService())  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="mcp_local.servicer"):
        with pytest.raises(Aborted, match="internal error in the hub"):
            await servicer.CallTool(pb.CallToolRequest(name="wrong_int"), Context())  # type: ignore[arg-type]
        with pytest.raises(Aborted):
            await servicer.ListTools(pb.ListToolsRequest(), Context())  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records] == [
        "internal error in CallTool of tool 'wrong_int'",
        "internal error in ListTools",
    ]


async def test_a_watch_that_waits_after_the_streams_closed_leaves_no_coroutine_unawaited() -> None:
    """A WatchApprovals stream reconnecting during a stop handed `wait` its next `queue.get()`,
    which was refused unstarted: every stop logged "coroutine 'Queue.get' was never awaited"."""
    import gc
    import warnings

    from mcp_local.errors import Unavailable
    from mcp_local.service import StreamLimit

    streams = StreamLimit(None)
    streams.close("the hub is shutting down")
    queue: asyncio.Queue[int] = asyncio.Queue()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(Unavailable, match="shutting down"):
            await streams.wait(queue.get())
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)], [str(w.message) for w in caught]
