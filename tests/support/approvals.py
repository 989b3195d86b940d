"""Helpers for tests of the gate: calls that stream approval events, and approvers that decide."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc
import orjson

from bridge.hubclient import HubClient
from bridge.translate import result_to_mcp
from mcphub_proto.v1 import approvals_pb2 as apb
from mcphub_proto.v1 import approvals_pb2_grpc as apb_grpc
from mcphub_proto.v1 import toolhub_pb2 as pb


@dataclass
class WatchedCall:
    """A call in flight: its approval events, and its MCP-shaped result when it ends."""

    task: asyncio.Task[dict[str, object]]
    approvals: asyncio.Queue[pb.ApprovalState] = field(default_factory=asyncio.Queue)

    async def approval_id(self, timeout: float = 20) -> str:
        event = await asyncio.wait_for(self.approvals.get(), timeout)
        assert event.state == pb.ApprovalState.PENDING
        return event.approval_id

    async def result(self, timeout: float = 30) -> dict[str, object]:
        return await asyncio.wait_for(self.task, timeout)


def start_call(
    hub: HubClient, token: str, tool: str, arguments: dict[str, object], approval_id: str = ""
) -> WatchedCall:
    queue: asyncio.Queue[pb.ApprovalState] = asyncio.Queue()

    async def run() -> dict[str, object]:
        request = pb.CallToolRequest(
            name=tool, arguments_json=orjson.dumps(arguments), approval_id=approval_id
        )
        async for event in hub.stream_call_tool(token, request):
            kind = event.WhichOneof("event")
            if kind == "approval":
                await queue.put(event.approval)
            elif kind == "result":
                return result_to_mcp(event.result)
        raise AssertionError("no result")

    return WatchedCall(asyncio.ensure_future(run()), queue)


async def decide(target: str, token: str, approval_id: str, approve: bool, reason: str = "") -> apb.Approval:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = apb_grpc.ApprovalsStub(channel)
        request = apb.DecideApprovalRequest(id=approval_id, approve=approve, reason=reason)
        decided: apb.Approval = await stub.DecideApproval(
            request, metadata=(("authorization", f"Bearer {token}"),)
        )
        return decided


async def listing(target: str, token: str, *states: str) -> list[apb.Approval]:
    """Every approval in `states` (default: pending), following the pages as the CLI does."""
    found: list[apb.Approval] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = apb_grpc.ApprovalsStub(channel)
        request = apb.ListApprovalsRequest(states=list(states))
        while True:
            response = await stub.ListApprovals(request, metadata=(("authorization", f"Bearer {token}"),))
            found += response.approvals
            if not response.next_page_token:
                return found
            request = apb.ListApprovalsRequest(states=list(states), page_token=response.next_page_token)


def text_of(result: dict[str, object]) -> str:
    content = result["content"]
    assert isinstance(content, list)
    return "\n".join(str(b["text"]) for b in content if b["type"] == "text")
