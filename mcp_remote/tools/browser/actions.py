"""The browser tools' handlers, and the runtime they share (browser, proxy, policy, outputs).

Each handler takes the caller's session (already locked) and the call, does one
thing with Playwright, and returns a `Reply`; `BrowserRuntime.call` renders it
with the page state, the session's events and, after navigation and input, the
page snapshot. Playwright errors become `ToolError`s the model can read.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import mimetypes
import re
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import orjson
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import FilePayload, Locator, Page
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from mcp_local.content import ImageContent, TextContent, ToolResult
from mcp_local.errors import ToolError
from mcp_local.packs import PackEnv
from mcp_local.packs.cancelling import uninterrupted
from mcp_local.tools import ToolCall

from .options import BrowserOptions
from .policy import IPAddress, UrlPolicy, literal_ip
from .proxy import PolicyProxy, system_resolver
from .render import PageState, compose, limit_text, parse_ref
from .sessions import MAX_REFS, BrowserSession, SharedBrowser, first_line
from .tools import DEFAULT_SESSION, MODAL_TOOLS
from .workspace import read_for_upload, workspace_dir

__all__ = ["BrowserRuntime", "Reply"]

CAUSED_WAIT_S = 3.0
"""The longest an input action waits for the requests, tabs and downloads it caused."""
STOP_LOADING_S = 1.0
"""How long a navigation that was cancelled or timed out waits for its page to stop loading."""
EVALUATE_MARGIN_S = 1.0
"""How long before the call's end a script that has not returned is stopped, to answer in time."""
STATIC_TYPES = frozenset({"image", "font", "stylesheet", "script", "media", "manifest"})
CONSOLE_LEVELS = {"error": 0, "warning": 1, "info": 2, "debug": 3}
_CONSOLE_TYPE_LEVEL = {"error": 0, "assert": 0, "warning": 1, "debug": 3}
_REF_IN_SNAPSHOT = re.compile(r"\[ref=([a-z0-9]+)\]")
T = TypeVar("T")


class SnapshotTooSlow(ToolError):
    def __init__(self, seconds: float, *, whole: bool) -> None:
        what = "the page" if whole else "the element"
        super().__init__(
            f"the snapshot of {what} did not finish in {seconds:.0f} s (snapshot_timeout_s), so it was "
            "stopped: the page is too large to snapshot whole; pass target (the ref or selector of the "
            "part you need, e.g. target='main' or '#results') to snapshot a part (depth, e.g. depth=3, "
            "shortens the result but still walks the whole page), or read it with browser_evaluate or "
            "browser_take_screenshot"
        )


def _snapshot_problem(exc: BaseException) -> str:
    if isinstance(exc, ToolError):
        return str(exc)
    message = first_line(exc)
    if "context was destroyed" in message.lower():
        return "the page kept navigating while its snapshot was taken; call browser_snapshot again"
    return f"the snapshot failed: {message}"


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    snapshot: bool = False
    """Append the page snapshot (navigation and input tools, when `snapshot_after_actions`)."""
    image: ImageContent | None = None
    page_state: bool = True
    asked: tuple[str | None, int | None] | None = None
    """`browser_snapshot`'s own (target, depth): the snapshot is the result, whatever the options."""


Handler = Callable[["BrowserRuntime", BrowserSession, ToolCall], Awaitable[Reply]]


_SIOCGIFADDR = 0x8915


def _local_addresses() -> list[IPAddress]:
    """This machine's addresses: its host name's, and each interface's (Linux).

    Some may be missed (an IPv4 alias, an address added later); the proxy also refuses a
    connection that turns out to reach this machine (`PolicyProxy`).
    """
    found: list[IPAddress] = []
    with contextlib.suppress(OSError):
        for *_, sockaddr in socket.getaddrinfo(socket.gethostname(), None):
            ip = literal_ip(str(sockaddr[0]).split("%", 1)[0])
            if ip is not None:
                found.append(ip)
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            with contextlib.suppress(OSError):
                request = struct.pack("256s", name.encode()[:15])
                found.append(ipaddress.IPv4Address(fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)[20:24]))
    with contextlib.suppress(OSError, ValueError), open("/proc/net/if_inet6") as lines:
        for line in lines:
            found.append(ipaddress.IPv6Address(bytes.fromhex(line.split()[0])))
    return list(dict.fromkeys(found))


class BrowserRuntime:
    """What the handlers share: the one browser, the policy proxy, the output store."""

    def __init__(self, options: BrowserOptions, env: PackEnv) -> None:
        self.options = options
        self.env = env
        self.outputs = env.outputs
        self.workspace_root = options.workspace_root or env.state_dir / "workspaces"
        self.policy = UrlPolicy.build(
            options.allow,
            options.block,
            default_allow=options.default == "allow",
            hub_addresses=env.listen_addresses,
            local_addresses=_local_addresses(),
        )
        self.proxy = PolicyProxy(self.policy)
        self.browser = SharedBrowser(options, lambda: self.proxy.port, self.workspace_root)

    async def start(self) -> None:
        port = await self.proxy.start()
        # One of the hub's own sockets: neither the browser nor any other pack may connect to it.
        self.env.add_listen_address(f"127.0.0.1:{port}")
        await self.browser.start()

    async def stop(self) -> None:
        await self.browser.stop()
        await self.proxy.stop()

    # --- the call path ---------------------------------------------------------------------------

    async def call(self, name: str, call: ToolCall) -> ToolResult:
        assert call.principal is not None
        key = (call.principal.name, str(call.arguments.get("session", DEFAULT_SESSION)))
        async with self.browser.busy():
            return await self._call(name, key, call)

    async def _call(self, name: str, key: tuple[str, str], call: ToolCall) -> ToolResult:
        if name == "browser_close":
            closed = await self.browser.close_session(key)
            return ToolResult.text(
                f"closed browser session {key[1]!r}" if closed else f"no open session {key[1]!r}"
            )
        for _ in range(3):
            session = await self.browser.session(key)
            async with session.lock:
                if session.closed:
                    continue  # closed while this call waited for it: the next lookup makes a new one
                return await self._locked(name, session, call)
        raise ToolError(f"the session {key[1]!r} kept closing while this call waited; call again")

    async def _locked(self, name: str, session: BrowserSession, call: ToolCall) -> ToolResult:
        session.last_used = time.monotonic()
        try:
            modal = session.modal_state()
            if modal is not None and name not in MODAL_TOOLS:
                raise ToolError(
                    f"{modal} is open in this session; answer it with "
                    + ("browser_file_upload" if session.file_chooser else "browser_handle_dialog")
                    + " first"
                )
            reply = await HANDLERS[name](self, session, call)
            return await self._render(session, call, reply)
        except PlaywrightError as exc:
            if session.closed:
                raise ToolError(
                    "the session closed during the call (browser_close, or the browser restarted); "
                    "call again to start afresh"
                ) from exc
            raise ToolError(first_line(exc)) from exc
        finally:
            session.last_used = time.monotonic()

    async def _render(self, session: BrowserSession, call: ToolCall, reply: Reply) -> ToolResult:
        modal = session.modal_state()
        state = None
        snapshot = None
        if reply.page_state and session.pages and not session.closed:
            wanted = reply.asked or (
                (None, None) if reply.snapshot and self.options.snapshot_after_actions else None
            )
            for _ in range(3):  # the page can open (or close) a tab meanwhile: describe the one named
                page = session.page
                title = ""
                if modal is None and wanted is not None:
                    # Both are round trips to the page: ask for them together.
                    title, snapshot = await asyncio.gather(
                        _title(page),
                        self._snapshot_text(session, page, call, *wanted, asked=reply.asked is not None),
                    )
                elif modal is None:
                    title = await _title(page)
                if not session.pages or session.page is page:
                    break
            state = PageState(page.url, title, max(session.tab_index(page), 0), len(session.pages))
        text = compose(reply.text, page=state, events=session.take_events(), modal=modal, snapshot=snapshot)
        content: tuple[TextContent | ImageContent, ...] = (TextContent(text),)
        if reply.image is not None:
            content += (reply.image,)
        return ToolResult(content=content)

    async def _snapshot_text(
        self,
        session: BrowserSession,
        page: Page,
        call: ToolCall,
        target: str | None,
        depth: int | None,
        *,
        asked: bool = False,
    ) -> str:
        """The snapshot as the result shows it. When it is the result (`browser_snapshot`), a failure
        is the call's error; appended to another tool's result, it is said in its place."""
        try:
            text = await self.snapshot(session, page, call, target, depth)
        except (PlaywrightError, ToolError) as exc:
            if asked:
                raise ToolError(_snapshot_problem(exc)) from exc
            return f"(no snapshot: {_snapshot_problem(exc)})"
        if len(session.issued_refs) < MAX_REFS:
            session.issued_refs.update(_REF_IN_SNAPSHOT.findall(text))
        return self.limit(session, text)

    # --- helpers the handlers use ----------------------------------------------------------------

    def budget_ms(self, call: ToolCall, seconds: float, reserve: float = 0.0) -> float:
        """`seconds` in ms, cut to what the call's deadline leaves (with a little to answer in, and
        `reserve` seconds for what must follow: stopping a load that ran out of time)."""
        if call.deadline is not None:
            left = call.deadline - asyncio.get_running_loop().time() - 0.25 - reserve
            seconds = max(0.1, min(seconds, left))
        return seconds * 1000

    def limit(self, session: BrowserSession, text: str, label: str = "snapshot") -> str:
        return limit_text(self.outputs, session.principal, text, self.options.snapshot_max_chars, label=label)

    async def check_url(self, url: str) -> str | None:
        """Why the policy refuses `url`, resolving its host as the proxy would."""
        reason = self.policy.check_url(url)
        if reason is not None or url == "about:blank":
            return reason
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        host = parts.hostname or ""
        if literal_ip(host) is not None:
            return None
        try:
            addresses = await asyncio.wait_for(system_resolver(host, parts.port or 443), 5.0)
        except (OSError, TimeoutError):
            return None  # the proxy answers for a name that does not resolve
        return self.policy.check_url(url, addresses)

    async def locate(self, session: BrowserSession, page: Page, target: str) -> Locator:
        ref = parse_ref(target)
        locator = page.get_by_ref(ref) if ref else page.locator(target)
        try:
            count = await locator.count()
        except PlaywrightError as exc:
            if ref and "aria-ref" in str(exc):
                count = 0  # a ref of an earlier document of the page
            else:
                raise ToolError(
                    f"{target!r} is neither a ref from browser_snapshot nor a valid selector: "
                    f"{first_line(exc)}"
                ) from exc
        if count == 0:
            if ref and ref not in session.issued_refs:
                raise ToolError(
                    f"ref {ref} is unknown: no snapshot of this session showed it; "
                    "take a browser_snapshot and use a ref from it"
                )
            if ref:
                raise ToolError(
                    f"ref {ref} is not on the page (refs change when the page does); "
                    "take a new browser_snapshot and use a ref from it"
                )
            raise ToolError(f"no element matches {target!r}; use a ref from browser_snapshot")
        if count > 1:
            raise ToolError(f"{target!r} matches {count} elements; use a ref from browser_snapshot")
        return locator

    async def snapshot(
        self,
        session: BrowserSession,
        page: Page,
        call: ToolCall,
        target: str | None = None,
        depth: int | None = None,
    ) -> str:
        for attempt in range(2):
            try:
                source: Page | Locator = await self.locate(session, page, target) if target else page
                budget_s = self.budget_ms(call, self.options.snapshot_timeout_s) / 1000
                # Playwright's timeout bounds finding the element, not the renderer's work on the
                # tree (a huge page took minutes): the wait is bounded here, and the work stopped.
                return await self.bounded(
                    session,
                    page,
                    source.aria_snapshot(mode="ai", depth=depth, timeout=(budget_s + 5) * 1000),
                    budget_s,
                    SnapshotTooSlow(budget_s, whole=not target),
                )
            except PlaywrightError as exc:
                if attempt or "context was destroyed" not in str(exc).lower():
                    raise
                with contextlib.suppress(PlaywrightError):
                    await page.wait_for_load_state("domcontentloaded", timeout=self.budget_ms(call, 5))
        raise AssertionError("unreachable")

    async def settle(
        self, session: BrowserSession, page: Page, navigations_before: int, call: ToolCall
    ) -> None:
        """After an input action: when it started a navigation, wait for the new page to load."""
        await asyncio.sleep(0)
        if session.navigations != navigations_before and not page.is_closed():
            with contextlib.suppress(PlaywrightError):
                await page.wait_for_load_state(
                    "load", timeout=self.budget_ms(call, self.options.navigation_timeout_s)
                )

    async def input_action(
        self, session: BrowserSession, call: ToolCall, action: Callable[[Page], Awaitable[Any]], done: str
    ) -> Reply:
        page = await session.ensure_page()
        before = session.navigations
        session.watch()
        try:
            finished, _ = await session.act(action(page))
            if not finished:
                return Reply(f"{done}; the page opened {session.modal_state()} and waits for an answer")
            await self.settle(session, page, before, call)
            await session.caused(self.budget_ms(call, CAUSED_WAIT_S) / 1000)
            # A navigation Playwright reported only meanwhile (its request reaches us after the
            # server has it): the click's result waited for nothing, and showed the old page.
            await self.settle(session, page, before, call)
            if session.pages and session.page is not page:  # the action opened a tab, now current
                with contextlib.suppress(PlaywrightError):
                    await session.page.wait_for_load_state(
                        "load", timeout=self.budget_ms(call, self.options.navigation_timeout_s)
                    )
        except asyncio.CancelledError:
            # A load the action began (a link, a form) stops with it, as a cancelled navigate's does.
            # Whether it began one cannot be told in time: Playwright reports the request after
            # the server has it (a test saw the page asked for and `navigations` not yet moved).
            # Stopping a page that is not loading does nothing.
            await uninterrupted(_stop_loading(page))
            if session.pages and session.page is not page:
                await uninterrupted(_stop_loading(session.page))
            raise
        return Reply(done, snapshot=True)

    async def bounded(
        self, session: BrowserSession, page: Page, work: Awaitable[T], seconds: float, late: ToolError
    ) -> T:
        """`work`, a script in `page`, given at most `seconds`: past them (`late` is raised) or when
        the call is cancelled, the script is stopped, so that the tab answers the next call at once
        instead of after the script (Playwright's own timeouts leave it running)."""
        await session.arm_stopper(page)
        task = asyncio.ensure_future(work)
        try:
            done, _ = await asyncio.wait({task}, timeout=seconds)
        except asyncio.CancelledError:
            task.cancel()
            await uninterrupted(session.stop_script(page))
            raise
        if done:
            return task.result()
        await uninterrupted(session.stop_script(page))
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise late

    def explain(self, url: str, exc: PlaywrightError) -> str:
        from urllib.parse import urlsplit

        message = first_line(exc)
        host = urlsplit(url).hostname or ""
        reason = self.proxy.recent_block(host)
        if reason is not None:
            return f"{message}: blocked by the URL policy: {reason}"
        if "ERR_TUNNEL_CONNECTION_FAILED" in message or "ERR_PROXY" in message:
            return (
                f"{message} (the host could not be reached, or a redirect led where the URL policy forbids)"
            )
        return message


# --- handlers ------------------------------------------------------------------------------------


async def _title(page: Page) -> str:
    with contextlib.suppress(PlaywrightError):
        return await page.title()
    return ""


def _normalise_url(url: str) -> str:
    url = url.strip()
    if "://" not in url and not url.startswith(("about:", "data:", "file:", "javascript:", "chrome:")):
        return "https://" + url
    return url


async def _stop_loading(page: Page) -> None:
    """Stop the page's load, as the browser's stop button does: Playwright gives up waiting for a
    navigation it was cancelled or timed out in, but Chromium went on loading the page (a slow
    server saw it leave only when the next navigation began). Done while the call still holds
    its session, so that it cannot stop the next call's navigation; bounded, for a page that
    does not answer. Callers run it `uninterrupted`: a call's task may be cancelled twice (over
    MCP the bridge's request task is, and anyio cancels again at every await), and a second
    cancel cut the stop short, so the load went on."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(STOP_LOADING_S):
            while True:
                try:
                    cdp = await page.context.new_cdp_session(page)
                    try:
                        # What the stop button sends. `window.stop()` runs in the page's document,
                        # and leaves a navigation still waiting for its response (a slow server) going.
                        await cdp.send("Page.stopLoading")
                        return
                    finally:
                        with contextlib.suppress(PlaywrightError):
                            await cdp.detach()
                except PlaywrightError:
                    # Refused while the page is between two documents ("Not attached to an
                    # active page"): once the new one is in, it can be stopped.
                    await asyncio.sleep(0.05)


async def navigate(rt: BrowserRuntime, s: BrowserSession, call: ToolCall) -> Reply:
    url = _normalise_url(call.arguments["url"])
    return await _open(rt, s, call, url)


async def _open(rt: BrowserRuntime, s: BrowserSession, call: ToolCall, url: str) -> Reply:
    reason = await rt.check_url(url)
    if reason is not None:
        raise ToolError(f"refused to open {url}: {reason}")
    page = await s.ensure_page()
    try:
        finished, response = await s.act(
            # Time kept for stopping the load, so the caller hears why before its deadline.
            page.goto(url, timeout=rt.budget_ms(call, rt.options.navigation_timeout_s, STOP_LOADING_S))
        )
    except asyncio.CancelledError:
        await uninterrupted(_stop_loading(page))
        raise
    except PlaywrightError as exc:
        if isinstance(exc, PlaywrightTimeoutError):
            await uninterrupted(_stop_loading(page))
        raise ToolError(f"could not open {url}: {rt.explain(url, exc)}") from exc
    if not finished:
        return Reply(f"opening {url}: the page opened {s.modal_state()} while loading")
    status = f" (HTTP {response.status})" if response is not None and response.status >= 400 else ""
    return Reply(f"opened {page.url}{status}", snapshot=True)


async def navigate_back(rt: BrowserRuntime, s: BrowserSession, call: ToolCall) -> Reply:
    page = await s.ensure_page()
    try:
        finished, response = await s.act(
            page.go_back(timeout=rt.budget_ms(call, rt.options.navigation_timeout_s, STOP_LOADING_S))
        )
    except asyncio.CancelledError:
        await uninterrupted(_stop_loading(page))
        raise
    except PlaywrightTimeoutError:
        await uninterrupted(_stop_loading(page))
        raise
    if finished and response is None and page.url in ("about:blank", ""):
        return Reply("there is no previous page in this tab", snapshot=False)
    return Reply(f"went back to {page.url}", snapshot=finished)


async def snapshot(rt: BrowserRuntime, s: BrowserSession, call: ToolCall) -> Reply:
    await s.ensure_page()
    return Reply("", asked=(call.arguments.get("target"), call.arguments.get("depth")))


async def click(rt: BrowserRuntime, s: BrowserSession, call: ToolCall) -> Reply:
    args = call.arguments
    page = await s.ensure_page()
    locator = await rt.locate(s, page, args["target"])
    options: dict[str, Any] = {"timeout": rt.budget_ms(call, rt.options.action_timeout_s)}
    if "button" in args:
        options["button"] = args["button"]
    if args.get("modifiers"):
        options["modifiers"] = args["modifiers"]
    what = args.get("element") or args["target"]
    if args.get("doubleClick"):
        return await rt.input_action(s, call, lambda _: locator.dblclick(**options), f"double-clicked {what}")
    return await rt.input_action(s, call, lambda _: locator.click(**options), f"clicked {what}")


async def type_text(rt: BrowserRuntime, s: BrowserSession, call: ToolCall) -> Reply:
    args = call.arguments
    page = await s.ensure_page()
    locator = await rt.locate(s, page, args["target"])
    timeout = rt.budget_ms(call, rt.options.action_timeout_s)
    text: str = args["text"]

    async def act(_: Page) -> None:
        if args.get("slowly"):
            await locator.press_sequentially(text, timeout=timeout)
        else:
            await locator.fill(text, timeout=timeout)
        if args.get("submit"):
            await locator.press("Enter", timeout=timeout)

    what = args.get("element") or args["target"]
    return await rt.input_action(
        s, call, act, f"typed into {what}" + (" and pressed Enter" if args.get("submit") else "")
    )


async def fill_form(rt: BrowserRuntime, s: BrowserSession, call: ToolCall) -> Reply:
    page = await s.ensure_page()
    timeout = rt.budget_ms(call, rt.options.action_timeout_s)
    steps: list[tuple[Locator, Mapping[str, Any]]] = []
    for i, field in enumerate(call.arguments["fields"]):
        target = field.get("target") or field.get("ref")
        if not target:
            raise ToolError(
                f"fields[{i}] ({field.get('name', '?')}): give target, the ref from browser_snapshot"
            )
        steps.append((await rt.locate(s, page, target), field))

    async def act(_: Page) -> None:
        for locator, field in steps:
            kind, value = field["type"], field["value"]
            if kind in ("checkbox", "radio"):
                if value.lower() not in ("true", "false"):
                    raise ToolError(f"{field.get('name') or kind}: the value must be 'true' or 'false'")
                await locator.set_checked(value.lower() == "true", timeout=timeout)
            elif kind == "combobox":
                await locator.select_option(label=value, timeout=timeout)
            else:
                await locator.fill(value, timeout=timeout)

    return await rt.input_action(s, call, act, f"filled {len(steps)} field{'s' if len(steps) != 1 else ''}")


async def select_option(rt: BrowserRuntime, s: BrowserSession, call: ToolCall) -> Reply:
    args = call.arguments
    page = await s.ensure_page()
    locator = await rt.locate(s, page, args["target"])
    values: list[str] = args["values"]
    return await rt.input_action(
        s,
        call,
        lambda _: locator.select_option(values, timeout=rt.budget_ms(call, rt.options.action_timeout_s)),
        f"selected {', '.join(map(repr, values))} in {args.get('element') or args['target']}",
    )


async def hover(rt: BrowserRuntime, s: BrowserSession, call: ToolCall) -> Reply:
    args = call.arguments
    page = await s.ensure_page()
    locator = await rt.locate(s, page, args["target"])
    return await rt.input_action(
        s,
        call,
        lambda _: locator.hover(timeout=rt.budget_ms(call, rt.options.action_timeout_s)),
        f"hovered over {args.get('element') or args['target']}",
    )


async def press_key(rt: BrowserRuntime, s: BrowserSession, call: ToolCall) -> Reply:
    key: str = call.arguments["key"]
    return await rt.input_action(s, call, lambda page: page.keyboard.press(key), f"pressed {key}")


async def wait_for(rt: BrowserRuntime, s: BrowserSession, call: ToolCall) -> Reply:
    args = call.arguments
    if not any(k in args for k in ("time", "text", "textGone")):
        raise ToolError("give time (seconds), text (to appear) or textGone (to disappear)")
    page = await s.ensure_page()
    limit = rt.options.max_wait_s
    done = []
    if "time" in args:
        seconds = min(float(args["time"]), limit)
        await asyncio.sleep(seconds)
        done.append(f"waited {seconds:g}s")
    timeout = rt.budget_ms(call, limit)
    if "textGone" in args:
        await page.get_by_text(args["textGone"]).first.wait_for(state="hidden", timeout=timeout)
        done.append(f"{args['textGone']!r} is gone")
    if "text" in args:
        await page.get_by_text(args["text"]).first.wait_for(state="visible", timeout=timeout)
        done.append(f"{args['text']!r} is visible")
    return Reply("; ".join(done), snapshot=True)


async def screenshot(rt: BrowserRuntime, s: BrowserSession, call: ToolCall) -> Reply:
    args = call.arguments
    page = await s.ensure_page()
    kind = args.get("type", "png")
    timeout = rt.budget_ms(call, 15)
    if args.get("target"):
        if args.get("fullPage"):
            raise ToolError("fullPage cannot be combined with target (an element screenshot)")
        locator = await rt.locate(s, page, args["target"])
        data = await locator.screenshot(type=kind, timeout=timeout)
        what = args.get("element") or args["target"]
    else:
        data = await page.screenshot(type=kind, full_page=bool(args.get("fullPage")), timeout=timeout)
        what = "the full page" if args.get("fullPage") else "the viewport"
    return Reply(
        f"screenshot of {what} ({kind}, {len(data)} bytes)", image=ImageContent(data, f"image/{kind}")
    )


async def tabs(rt: BrowserRuntime, s: BrowserSession, call: ToolCall) -> Reply:
    args = call.arguments
    action = args["action"]
    if action == "new":
        if len(s.pages) >= rt.options.max_tabs_per_session:
            raise ToolError(f"this session has {len(s.pages)} tabs, the most allowed; close one first")
        await s.new_page()
        if args.get("url"):
            return await _open(rt, s, call, _normalise_url(args["url"]))
        return Reply(f"opened tab {s.current}")
    if action in ("close", "select"):
        index = args.get("index", s.current if action == "close" else None)
        if index is None:
            raise ToolError("select needs index (see browser_tabs list)")
        if not 0 <= index < len(s.pages):
            raise ToolError(f"no tab {index}: this session has {len(s.pages)} tab(s), numbered from 0")
        if action == "close":
            await s.pages[index].close()
            return Reply(f"closed tab {index}\n" + _tab_list(s), page_state=bool(s.pages))
        s.current = index
        await s.page.bring_to_front()
        return Reply(f"selected tab {index}", snapshot=True)
    return Reply(_tab_list(s), page_state=False)


def _tab_list(s: BrowserSession) -> str:
    if not s.pages:
        return "no open tabs"
    lines = [f"- {i}:{' (current)' if i == s.current else ''} {p.url}" for i, p in enumerate(s.pages)]
    return "\n".join(lines)


async def console_messages(rt: BrowserRuntime, s: BrowserSession, call: ToolCall) -> Reply:
    args = call.arguments
    page = await s.ensure_page()
    most = CONSOLE_LEVELS[args.get("level", "info")]
    which: Literal["all", "since-navigation"] = "all" if args.get("all") else "since-navigation"
    lines = []
    for message in await page.console_messages(filter=which):
        if _CONSOLE_TYPE_LEVEL.get(message.type, 2) <= most:
            where = message.location
            at = f" ({where['url']}:{where['lineNumber']})" if where and where.get("url") else ""
            lines.append(f"[{message.type}] {message.text}{at}")
    for error in await page.page_errors(filter=which):
        lines.append(f"[uncaught] {first_line(error)}")
    text = "\n".join(lines) if lines else "no console messages"
    return Reply(rt.limit(s, text, "console messages"), page_state=False)


async def network_requests(rt: BrowserRuntime, s: BrowserSession, call: ToolCall) -> Reply:
    args = call.arguments
    page = await s.ensure_page()
    pattern = None
    if args.get("filter"):
        try:
            pattern = re.compile(args["filter"])
        except re.error as exc:
            raise ToolError(f"filter is not a valid regular expression: {exc}") from None
    lines: list[str] = []
    for entry in s.network:
        if entry.tab() is not page:
            continue
        request = entry.request
        ok = entry.failure is None and entry.status is not None and entry.status < 400
        if ok and request.resource_type in STATIC_TYPES and not args.get("static"):
            continue
        if pattern is not None and not pattern.search(request.url):
            continue
        outcome = f"[{entry.status}]" if entry.failure is None else f"failed: {entry.failure}"
        lines.append(f"{len(lines) + 1}. [{request.method}] {request.url} => {outcome}")
    text = "\n".join(lines) if lines else "no network requests"
    return Reply(rt.limit(s, text, "network requests"), page_state=False)


async def handle_dialog(rt: BrowserRuntime, s: BrowserSession, call: ToolCall) -> Reply:
    args = call.arguments
    dialog = s.dialog
    if dialog is None:
        raise ToolError("no dialog is open in this session")
    kind = dialog.type
    try:
        if args["accept"]:
            if "promptText" in args:
                await dialog.accept(args["promptText"])
            else:
                await dialog.accept()
        else:
            await dialog.dismiss()
    except PlaywrightError as exc:
        # It cannot be answered (its tab or the browser is gone): waiting on it would hold the session.
        if s.dialog is dialog:
            s.drop_modal()
        raise ToolError(
            f"the {kind} dialog could not be answered ({first_line(exc)}); the session no longer waits for it"
        ) from exc
    s.clear_modal(dialog)
    problem = await s.finish_pending(rt.options.action_timeout_s)
    done = f"{'accepted' if args['accept'] else 'dismissed'} the {kind} dialog"
    if problem:
        done += f"; then: {problem}"
    page = s.page if s.pages else None
    if page is not None and s.modal_state() is None:
        await rt.settle(s, page, s.navigations, call)
    return Reply(done, snapshot=True)


def _media_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


async def file_upload(rt: BrowserRuntime, s: BrowserSession, call: ToolCall) -> Reply:
    args = call.arguments
    workspace = workspace_dir(rt.workspace_root, s.principal)
    # By content, not by path: see read_for_upload.
    contents = await asyncio.to_thread(read_for_upload, workspace, args.get("paths", []))
    files: list[FilePayload] = [
        {"name": name, "mimeType": _media_type(name), "buffer": data} for name, data in contents
    ]
    names = ", ".join(name for name, _ in contents) or "no files"
    timeout = rt.budget_ms(call, rt.options.action_timeout_s)
    if args.get("target"):
        page = await s.ensure_page()
        locator = await rt.locate(s, page, args["target"])
        await locator.set_input_files(files, timeout=timeout)
        return Reply(f"set {names} on {args.get('element') or args['target']}", snapshot=True)
    chooser = s.file_chooser
    if chooser is None:
        raise ToolError("no file chooser is open: click the file input first, or give target (the input)")
    try:
        await chooser.set_files(files, timeout=timeout)
    except PlaywrightError as exc:
        if s.file_chooser is chooser and chooser.page.is_closed():
            s.drop_modal()
            raise ToolError(
                f"the file chooser's tab is gone ({first_line(exc)}); the session no longer waits for it"
            ) from exc
        raise
    s.clear_modal(chooser)
    problem = await s.finish_pending(rt.options.action_timeout_s)
    return Reply(f"chose {names}" + (f"; then: {problem}" if problem else ""), snapshot=True)


async def evaluate(rt: BrowserRuntime, s: BrowserSession, call: ToolCall) -> Reply:
    args = call.arguments
    page = await s.ensure_page()
    function: str = args["function"]
    # What the call's time leaves, less a moment to answer in: a script that runs on is stopped
    # then (`bounded`), as it is when the call is cancelled, and its tab is free again.
    seconds = rt.budget_ms(call, max(1.0, rt.options.call_timeout_s - EVALUATE_MARGIN_S)) / 1000
    if call.deadline is not None:
        seconds = max(0.1, seconds - EVALUATE_MARGIN_S)
    late = ToolError(
        f"the script did not return within {seconds:.0f} s, so it was stopped; the tab is usable again"
    )
    if args.get("target"):
        locator = await rt.locate(s, page, args["target"])
        work = locator.evaluate(function, timeout=rt.budget_ms(call, rt.options.action_timeout_s))
    else:
        work = page.evaluate(function)
    finished, value = await rt.bounded(s, page, s.act(work), seconds, late)
    if not finished:
        return Reply(f"the script opened {s.modal_state()}")
    text = (
        orjson.dumps(value, default=str, option=orjson.OPT_INDENT_2).decode()
        if value is not None
        else "undefined"
    )
    return Reply(rt.limit(s, text, "result"), page_state=False)


HANDLERS: dict[str, Handler] = {
    "browser_navigate": navigate,
    "browser_navigate_back": navigate_back,
    "browser_snapshot": snapshot,
    "browser_click": click,
    "browser_type": type_text,
    "browser_fill_form": fill_form,
    "browser_select_option": select_option,
    "browser_hover": hover,
    "browser_press_key": press_key,
    "browser_wait_for": wait_for,
    "browser_take_screenshot": screenshot,
    "browser_tabs": tabs,
    "browser_console_messages": console_messages,
    "browser_network_requests": network_requests,
    "browser_handle_dialog": handle_dialog,
    "browser_file_upload": file_upload,
    "browser_evaluate": evaluate,
}
