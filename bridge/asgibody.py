"""Reading a request's body ahead of the app that answers it, and giving it back unchanged."""

from __future__ import annotations

from starlette.types import Message, Receive

__all__ = ["read_body", "replay"]


async def read_body(receive: Receive, limit: int) -> tuple[bytes, Message]:
    """The body read until it ends, the client leaves, or more than `limit` bytes came; and the
    last message read (its `more_body` says whether the body went on; not `http.request`: the
    client left)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), message
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if not message.get("more_body", False) or size > limit:
            return b"".join(chunks), message


def replay(body: bytes, last: Message, receive: Receive) -> Receive:
    """`receive` for the app: what `read_body` read, then whatever the connection says next."""
    if last["type"] == "http.request":
        last = {"type": "http.request", "body": body, "more_body": last.get("more_body", False)}
    pending = [last]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
