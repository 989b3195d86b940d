"""The sidecar's side of federation: one long-lived stream to the hub, redialled with backoff.

The sidecar dials out (the sandbox needs no inbound port), announces its tools
and runs the calls the hub sends down the stream through its own dispatch
path, sending progress, output and the result back up. A cancel from the hub
cancels the call's task. The calls count among the sidecar's calls in flight
(`InFlight`): when the sidecar stops they are refused, given its grace and then
stopped as its own callers' are, and the link ends only after their answers.
See `proto/mcphub/v1/sidecar.proto` for the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from mcphub_proto.metadata import AUTHORIZATION
from mcphub_proto.v1 import sidecar_pb2 as spb
from mcphub_proto.v1 import sidecar_pb2_grpc as spb_grpc
from mcphub_proto.v1 import toolhub_pb2 as pb

from .announcement import HUB_CALLER, MAX_MESSAGE_BYTES, hello_message, registration_problem
from .errors import HubError
from .pipeline import InFlight, Pipeline, RedactErrors, ResolveTool, Stage, ValidateArguments
from .principals import Principal
from .redaction import Redactor
from .registry import ToolRegistry
from .settings import Backoff
from .tools import ToolCall
from .wire import result_to_proto

__all__ = ["CONNECTING", "REFUSED", "REGISTERED", "REPLACED", "Backoff", "HubLink", "LinkState"]

logger = logging.getLogger(__name__)

MAX_RESULT_BYTES = MAX_MESSAGE_BYTES - 64 * 1024
"""The largest result a call from the hub may return: a bigger one is a tool error (as a call
over the sidecar's own gRPC gets), not a message gRPC cannot send, which ends the whole link and
every call of the sandbox on it."""
_EVERYONE = HUB_CALLER

STOPPED_CODE = grpc.StatusCode.CANCELLED.value[0]
"""The failure code of a call the sidecar stopped while it ran, for its shutdown (the hub answers
its caller with a `stopped` refusal); a call refused because the sidecar is stopping has
UNAVAILABLE's (the hub answers UNAVAILABLE: its tool did not run, so it may be called again)."""

CLOSE_WAIT_S = 2.0
"""At a stop, how long the link waits for the hub to take the answers already sent and end the
stream, before it cuts the stream."""


_DEFAULT_BACKOFF = Backoff()
_SLOW_BACKOFF = Backoff(first_s=1.0, max_s=60.0, min_share=0.5)
"""After the hub refused this sidecar or handed its sandbox to another connection: 1 s doubling
to 60 s, whatever `--reconnect-max` says, and at least half the step each time (not full
jitter). A refusal does not go away by redialling (an operator must change the hub's config);
and each redial after losing the sandbox takes it back from the other sidecar (the newest
connection wins), so a short delay would only make the two take turns faster."""

CONNECTING, REGISTERED, REFUSED, REPLACED = "connecting", "registered", "refused", "replaced"


@dataclass(frozen=True, slots=True)
class LinkState:
    """Where the link stands (for `mcphub local health`, logs and tests).

    status: connecting (no welcome yet, or the stream ended) | registered (welcomed) |
    refused (the hub refuses this sidecar: its token, or the sandbox it names) | replaced
    (another connection of this sandbox took it over). `detail` is the hub's reason or the
    last error; `sandbox`, `exposed` and `blocked` are what the last welcome said.
    """

    status: str = CONNECTING
    detail: str = ""
    sandbox: str = ""
    exposed: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()

    @property
    def connected(self) -> bool:
        return self.status == REGISTERED


class _UpstreamSink:
    """A running call's events, sent up the stream."""

    __slots__ = ("_call_id", "_send")

    def __init__(self, call_id: str, send: Callable[[spb.SidecarMessage], None]) -> None:
        self._call_id = call_id
        self._send = send

    def _event(self, event: pb.CallToolEvent) -> None:
        self._send(spb.SidecarMessage(event=spb.SidecarCallEvent(call_id=self._call_id, event=event)))

    async def progress(self, progress: float, total: float | None, message: str) -> None:
        self._event(pb.CallToolEvent(progress=pb.Progress(progress=progress, total=total, message=message)))

    async def output(self, stream: str, data: bytes) -> None:
        self._event(pb.CallToolEvent(output=pb.OutputChunk(stream=stream, data=data)))

    async def approval(
        self, approval_id: str, state: int, reason: str, expires_at_ms: int, hint: str
    ) -> None:
        return None  # approvals are the hub's business


class HubLink:
    """Keeps the sidecar registered with one hub until `stop()`."""

    def __init__(
        self,
        target: str,
        token: str | None,
        sandbox: str | None,
        registry: ToolRegistry,
        *,
        version: str = "",
        backoff: Backoff = _DEFAULT_BACKOFF,
        on_state: Callable[[LinkState], None] | None = None,
        redactor: Redactor | None = None,
        calls: InFlight | None = None,
    ) -> None:
        """`calls`: the sidecar's calls in flight, which the hub's calls join (see the module)."""
        self.target = target
        self._token = token
        self._sandbox = sandbox or ""
        self._registry = registry
        self._version = version
        self._backoff = backoff
        self._unoffered: list[str] = []
        self._on_state = on_state
        # The hub has authenticated and authorized the caller; the sidecar resolves and validates
        # again, and hides its packs' secrets from the hub's callers and audit log.
        stages: list[Stage] = [ResolveTool(registry), ValidateArguments(registry)]
        if redactor is not None:
            stages.insert(0, RedactErrors(redactor))
        self._pipeline = Pipeline(stages)
        self._in_flight = calls if calls is not None else InFlight()
        self._task: asyncio.Task[None] | None = None
        self._outbound: asyncio.Queue[spb.SidecarMessage | None] | None = None
        self._stopping = False
        self._calls: dict[str, tuple[asyncio.Task[None], str]] = {}  # call id -> (task, tool)
        self.state = LinkState(CONNECTING)
        self.connections = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mcphub-hublink")

    async def stop(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """End the link. Its calls must have ended (the sidecar drains them first): their answers,
        already queued, are sent before the stream is closed, and the hub is given `wait_s` to take
        them and end it, so that its callers get them and not "the sandbox went away"."""
        if self._task is None:
            return
        self._stopping = True
        if self._outbound is not None and self.state.connected:
            self._outbound.put_nowait(None)  # the end of the stream, after what is queued
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), wait_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def _set_state(self, state: LinkState) -> None:
        self.state = state
        if self._on_state is not None:
            self._on_state(state)

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            welcomed = False
            backoff = self._backoff
            state = LinkState(CONNECTING)
            try:
                welcomed = await self._session()
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
                state = LinkState(CONNECTING, f"{code.name}: {details}")
                if code == _LOST_TO_ANOTHER:
                    # Another connection of this sandbox took over the stream. This sidecar's own
                    # earlier stream is never live when it dials again, so the other one is a
                    # second sidecar with the same token. Redialling at once would take the
                    # sandbox back and start a loop in which neither keeps it.
                    backoff, state = _SLOW_BACKOFF, LinkState(REPLACED, state.detail)
                    logger.error(
                        "hub %s: this sidecar lost the sandbox's registration to another connection "
                        "(%s); only one sidecar per sandbox can be registered: trying again after a "
                        "growing delay (up to %.0fs)",
                        self.target,
                        state.detail,
                        backoff.max_s,
                    )
                elif code in _REFUSALS:
                    # Redialling cannot help until an operator changes the hub's configuration
                    # (and restarts it), so keep trying, slowly, and let `health` report it.
                    backoff, state = _SLOW_BACKOFF, LinkState(REFUSED, state.detail)
                    logger.error(
                        "hub %s refuses this sidecar (%s); trying again after a growing delay "
                        "(up to %.0fs), in case its configuration changes",
                        self.target,
                        state.detail,
                        backoff.max_s,
                    )
                else:
                    logger.warning("hub %s: %s", self.target, state.detail)
            except _StreamStalled as exc:
                state = LinkState(CONNECTING, str(exc))
                logger.warning("hub %s: %s", self.target, exc)
            except _Unannounceable as exc:
                # No hub can take this hello (its tools changing may fix it: look again, slowly).
                backoff, state = _SLOW_BACKOFF, LinkState(REFUSED, str(exc))
                logger.error(
                    "hub %s: this sidecar cannot register: %s; not sent, trying again after a growing "
                    "delay (up to %.0fs), in case its tools change",
                    self.target,
                    exc,
                    backoff.max_s,
                )
            finally:
                self._cancel_calls()
            if self._stopping:
                return
            # Until the next answer: a refused sidecar stays `refused` while it redials.
            self._set_state(state)
            # A welcome resets the backoff only when the stream then ended for some other reason
            # than losing the sandbox: a sidecar replaced right after its welcome keeps backing off.
            attempt = 0 if welcomed and backoff is self._backoff else attempt + 1
            delay = backoff.delay(attempt)
            logger.info("reconnecting to the hub at %s in %.1fs", self.target, delay)
            await asyncio.sleep(delay)

    def _tools(self) -> list[pb.Tool]:
        offered = self._registry.visible_to(_EVERYONE)
        if len(offered) != len(self._registry):
            # Calls through the hub reach the sidecar as the hub's, with no role: a tool kept for
            # some roles would be listed to nobody there and answer every call "unknown tool".
            names = {r.tool.name for r in offered}
            kept = sorted(n for n in self._registry.names() if n not in names)
            if kept != self._unoffered:
                self._unoffered = kept
                logger.warning(
                    "not offered to the hub (a tool with `roles` is for the sidecar's own callers only): %s",
                    ", ".join(kept),
                )
        return [r.proto for r in offered]

    async def _session(self) -> bool:
        """One connection: hello, then serve calls until the stream ends. True if the hub welcomed us."""
        hello = hello_message(self._sandbox, self._tools(), self._version)
        if problem := registration_problem(hello):
            # Sent, it ended the stream at once (RESOURCE_EXHAUSTED, or the hub's refusal of too
            # many tools), and the link redialled on the fast backoff for ever, "connecting".
            raise _Unannounceable(problem)
        outbound: asyncio.Queue[spb.SidecarMessage | None] = asyncio.Queue()
        self._outbound = outbound
        outbound.put_nowait(hello)

        async def requests() -> AsyncIterator[spb.SidecarMessage]:
            while (message := await outbound.get()) is not None:
                yield message

        metadata = ((AUTHORIZATION, f"Bearer {self._token}"),) if self._token else ()
        welcomed = False
        async with grpc.aio.insecure_channel(
            self.target,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        ) as channel:
            stub = spb_grpc.SandboxRegistryStub(channel)  # type: ignore[no-untyped-call]
            stream = stub.Connect(requests(), metadata=metadata)
            watcher = asyncio.create_task(self._watch_tools(outbound))
            loop = asyncio.get_running_loop()
            heard = loop.time()
            silence_s = 60.0
            try:
                iterator = stream.__aiter__()
                while True:
                    try:
                        async with asyncio.timeout(silence_s):
                            message: spb.HubMessage = await iterator.__anext__()
                    except StopAsyncIteration:
                        if self._stopping:  # the hub ended it after the sidecar's own end (`stop`)
                            return welcomed
                        # A hub that ends the stream for a reason says it in the status (`_run`
                        # logs it); this one gave none.
                        logger.warning("hub %s ended the stream without giving a reason", self.target)
                        return welcomed
                    except TimeoutError:
                        raise _StreamStalled(
                            f"nothing heard for {loop.time() - heard:.0f}s; reconnecting"
                        ) from None
                    heard = loop.time()
                    kind = message.WhichOneof("message")
                    if kind == "welcome":
                        welcomed = True
                        self.connections += 1
                        w = message.welcome
                        silence_s = 3.0 * (w.ping_interval_s or 20)
                        self._welcomed(w)
                    elif kind == "call":
                        self._start_call(message.call, outbound.put_nowait)
                    elif kind == "cancel":
                        running = self._calls.pop(message.cancel.call_id, None)  # cancelled once
                        if running is not None:
                            _cancel(*running, message.cancel.call_id)
                    elif kind == "ping":
                        outbound.put_nowait(spb.SidecarMessage(pong=spb.Pong(nonce=message.ping.nonce)))
            finally:
                self._outbound = None
                watcher.cancel()
                outbound.put_nowait(None)
                stream.cancel()

    def _welcomed(self, w: spb.Welcome) -> None:
        blocked = tuple(b.name for b in w.blocked)
        # Only a definition that changed since it was pinned can be accepted (`mcphub sandboxes
        # accept`); any other block (a bad name or schema) goes only with a change of the tool.
        changed = [b.name for b in w.blocked if b.pinned_sha256]
        others = [b.name for b in w.blocked if not b.pinned_sha256]
        said = (
            [f"{', '.join(changed)}: changed since pinned, an operator must accept them"] if changed else []
        )
        said += [f"{', '.join(others)}: the hub cannot take them as they are"] if others else []
        logger.info(
            "registered with the hub at %s as sandbox %s: %d tools exposed%s",
            self.target,
            w.sandbox,
            len(w.exposed),
            f", {len(blocked)} blocked ({'; '.join(said)})" if blocked else "",
        )
        for b in w.blocked:
            logger.warning("tool %s is blocked at the hub: %s", b.name, b.reason)
        self._set_state(LinkState(REGISTERED, "", w.sandbox, tuple(w.exposed), blocked))

    async def _watch_tools(self, outbound: asyncio.Queue[spb.SidecarMessage | None]) -> None:
        watch = self._registry.watch()
        await anext(watch)  # the set the hello carried
        async for _ in watch:
            outbound.put_nowait(spb.SidecarMessage(tools=spb.SidecarTools(tools=self._tools())))

    def _start_call(
        self, request: spb.SidecarCallRequest, send: Callable[[spb.SidecarMessage], None]
    ) -> None:
        call_id = request.call_id
        deadline = None
        if request.timeout_ms:
            deadline = asyncio.get_running_loop().time() + request.timeout_ms / 1000
        call = ToolCall(
            request.request.name,
            request.request.arguments_json,
            deadline=deadline,
            sink=_UpstreamSink(call_id, send),
            client_capabilities_json=request.request.client_capabilities_json,
            request_id=request.request.request_id,
            result_limit=MAX_RESULT_BYTES,
        )
        call.principal = Principal(f"hub:{request.principal or 'unknown'}", ("*",))
        in_flight = self._in_flight

        async def run() -> None:
            key = id(call)
            task: asyncio.Task[object] | None = None
            try:
                task = in_flight.enter(key)  # UNAVAILABLE once the sidecar is stopping
                result = await self._pipeline(call)
            except HubError as exc:
                send(
                    spb.SidecarMessage(
                        failure=spb.SidecarCallFailure(
                            call_id=call_id, code=exc.status.value[0], message=exc.message
                        )
                    )
                )
                return
            except asyncio.CancelledError:
                stopped = in_flight.stopped(task)
                if stopped is None:  # the hub cancelled it, or the stream ended
                    raise
                # The sidecar's stop ended it: the hub tells its caller so (a `stopped` refusal).
                send(
                    spb.SidecarMessage(
                        failure=spb.SidecarCallFailure(call_id=call_id, code=STOPPED_CODE, message=stopped)
                    )
                )
                return
            except Exception as exc:  # the top of a call's task: report it, keep serving
                logger.exception("call %s of %s failed", call_id, call.name)
                send(
                    spb.SidecarMessage(
                        failure=spb.SidecarCallFailure(
                            call_id=call_id, code=13, message=f"sidecar error: {type(exc).__name__}"
                        )
                    )
                )
                return
            finally:
                in_flight.leave(key)
            try:
                answer = pb.CallToolEvent(result=result_to_proto(result))
            except Exception as exc:  # the hub must hear of the call whatever its result holds
                logger.exception("call %s of %s: its result cannot be sent", call_id, call.name)
                failure = f"sidecar error: the tool's result cannot be sent ({type(exc).__name__})"
                send(
                    spb.SidecarMessage(
                        failure=spb.SidecarCallFailure(call_id=call_id, code=13, message=failure)
                    )
                )
                return
            send(spb.SidecarMessage(event=spb.SidecarCallEvent(call_id=call_id, event=answer)))

        task = asyncio.create_task(run(), name=f"mcphub-call-{call_id}")
        self._calls[call_id] = (task, call.name)
        task.add_done_callback(lambda _: self._calls.pop(call_id, None))

    def _cancel_calls(self) -> None:
        for call_id, (task, tool) in list(self._calls.items()):
            _cancel(task, tool, call_id)
        self._calls.clear()


CANCEL_GRACE_S = 5.0
"""How long a cancelled call's tool may take to stop before the sidecar logs that it runs on."""


def _cancel(task: asyncio.Task[None], tool: str, call_id: str) -> None:
    """Cancel a call's task, unless it is already handling a cancel (its deadline's timer fires as
    the hub's cancel for it arrives): a second cancel interrupts what the tool does to stop, such
    as asking PostgreSQL to cancel a statement or reaping a child process.

    The hub has answered the call as cancelled: a tool that ignores cancellation and runs on is
    logged `CANCEL_GRACE_S` later, and again when it ends, so that it leaves a trace."""
    if not task.cancelling():
        task.cancel()
    loop = asyncio.get_running_loop()
    cancelled_at = loop.time()

    def ended(_: object) -> None:
        logger.warning(
            "tool %s (call %s) ended %.1fs after it was cancelled", tool, call_id, loop.time() - cancelled_at
        )

    def still_running() -> None:
        if task.done():
            return
        logger.warning(
            "tool %s (call %s) is still running %gs after it was cancelled (its result goes "
            "nowhere): a handler must stop soon when cancelled, and let CancelledError through",
            tool,
            call_id,
            CANCEL_GRACE_S,
        )
        task.add_done_callback(ended)

    loop.call_later(CANCEL_GRACE_S, still_running)


class _StreamStalled(Exception):
    pass


class _Unannounceable(Exception):
    """The hello cannot be registered by any hub (see `announcement.registration_problem`)."""


_LOST_TO_ANOTHER = grpc.StatusCode.ABORTED
"""How the hub ends a stream taken over by a new connection of the same sandbox."""

_REFUSALS = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
    # A message over a limit (gRPC's, on either side): sent again, it is refused again.
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
