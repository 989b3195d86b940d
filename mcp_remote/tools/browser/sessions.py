"""One Chromium shared by everyone; one BrowserContext per (principal, session) so nothing leaks.

    SharedBrowser        the Playwright driver, the Chromium process, the policy proxy,
                         spare contexts, the idle reaper; starts Chromium (and the driver)
                         again when either went away
    +-- BrowserSession   one (principal, session handle): a context, its tabs, the pending
                         dialog or file chooser, the network log and the events to report

Contexts are Chromium's incognito-like profiles: cookies, storage, cache, service
workers, permissions and downloads are per context, so two sessions never see
each other's state. A session's calls run one at a time (its lock); different
sessions run in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from playwright.async_api import (
    Browser,
    BrowserContext,
    CDPSession,
    Dialog,
    Download,
    FileChooser,
    Page,
    Playwright,
    ProxySettings,
    Request,
    Response,
    async_playwright,
)
from playwright.async_api import Error as PlaywrightError

from mcp_local.errors import ToolError

from .options import CHROMIUM_ARGS, BrowserOptions
from .scratch import ScratchDir
from .workspace import safe_file_name, save_download, workspace_dir

__all__ = ["BrowserSession", "NetworkEntry", "SessionKey", "SharedBrowser"]

logger = logging.getLogger(__name__)

SessionKey = tuple[str, str]
T = TypeVar("T")


@contextlib.contextmanager
def _driver_in_its_own_session(tmpdir: Path | None = None) -> Iterator[list[asyncio.subprocess.Process]]:
    """Start Playwright's driver outside the hub's process group; yields a list that holds the
    driver's process once it started (Playwright keeps it to itself), so that its end is seen.
    `tmpdir`: the driver's (and so Chromium's) `TMPDIR` (`scratch.py`).

    Ctrl-C in a terminal (or `timeout`, or a supervisor signalling the group) reaches every
    process of the foreground group at once; the driver would die before the hub closed the
    browser, and the hub's shutdown would log a broken pipe. In its own session the driver
    is stopped by the hub, or exits when the hub's end of its stdin pipe closes (the hub
    killed). Playwright spawns it with `asyncio.create_subprocess_exec` and has no option for
    this, so the call is wrapped for the moment of the start (a process another pack spawned
    through asyncio in that same moment would get its own session too, which is harmless).
    """
    original = asyncio.create_subprocess_exec
    drivers: list[asyncio.subprocess.Process] = []

    async def spawn(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        kwargs.setdefault("start_new_session", True)
        if tmpdir is not None and "run-driver" in args:
            kwargs["env"] = {**(kwargs.get("env") or os.environ), "TMPDIR": str(tmpdir)}
        process = await original(*args, **kwargs)
        if "run-driver" in args:
            drivers.append(process)
        return process

    asyncio.create_subprocess_exec = spawn
    try:
        yield drivers
    finally:
        asyncio.create_subprocess_exec = original


NETWORK_LOG = 500
SPARE_DELAY_S = 0.05
STIR_S = 0.1
"""How long after an action its first effects (a request, a new tab) may take to reach us."""
STOP_SCRIPT_S = 2.0
"""The longest stopping a script (an evaluate, a snapshot past its time) may take."""
MAX_REFS = 200_000
"""Refs remembered per session, to tell a stale ref from one never issued."""


@dataclass(frozen=True, slots=True)
class NetworkEntry:
    request: Request
    """Its tab is looked up when listed (`tab`): a popup's first response arrives before
    Playwright has made the popup's Page, when the request cannot name it yet."""
    status: int | None
    failure: str | None

    def tab(self) -> Page | None:
        """The tab that made the request, or None (a worker's request, or a tab never made)."""
        try:
            return self.request.frame.page
        except PlaywrightError:
            return None


class BrowserSession:
    """A principal's browser session: its own context, tabs and state."""

    def __init__(self, key: SessionKey, context: BrowserContext, owner: SharedBrowser) -> None:
        self.key = key
        self.context = context
        self.owner = owner
        self.lock = asyncio.Lock()
        self.pages: list[Page] = []
        self.current = 0
        self.last_used = time.monotonic()
        self.events: list[str] = []
        self.dialog: Dialog | None = None
        self.file_chooser: FileChooser | None = None
        self.pending: asyncio.Task[Any] | None = None
        """An action that opened a dialog or file chooser; it finishes once that is handled."""
        self.network: deque[NetworkEntry] = deque(maxlen=NETWORK_LOG)
        self.navigations = 0
        self.closed = False
        self._opening = 0
        """Tabs being opened by a tool: they are not the page's doing, so not announced."""
        self._modal = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._saving: set[asyncio.Task[None]] = set()
        """Downloads being saved: their outcome is an event of the action that started them."""
        self._collect_until = math.inf
        """Requests and downloads starting later than this (loop time) are not the watched action's."""
        self._watched_saves: set[asyncio.Task[None]] = set()
        self._watching: set[Request] | None = None
        """Requests started since `watch()`, until they end; None when no action is watched."""
        self._stirred = asyncio.Event()
        """Set when a watched request starts or ends, a tab opens or a download starts or ends."""
        self._stoppers: dict[Page, CDPSession] = {}
        """A DevTools session per tab, attached before a script runs there, that can stop it."""
        self.issued_refs: set[str] = set()
        """The refs this session's snapshots have shown (`locate` tells stale ones from unknown)."""
        context.on("page", self._adopt)
        context.on("request", self._on_any_request)
        context.on("response", self._on_response)
        context.on("requestfinished", self._on_request_finished)
        context.on("requestfailed", self._on_request_failed)
        for page in context.pages:
            self._adopt(page, announce=False)

    # --- tabs ------------------------------------------------------------------------------------

    @property
    def principal(self) -> str:
        return self.key[0]

    @property
    def page(self) -> Page:
        if not self.pages:
            raise ToolError("this session has no open tab; open one with browser_navigate or browser_tabs")
        return self.pages[self.current]

    async def ensure_page(self) -> Page:
        if not self.pages:
            await self.new_page()
        return self.page

    async def new_page(self) -> Page:
        """A new tab, made current."""
        self._opening += 1
        try:
            page = await self.context.new_page()
        finally:
            self._opening -= 1
        self._adopt(page, announce=False)  # the context's "page" event may come later
        self.current = self.tab_index(page)
        if self.current < 0:
            raise ToolError("could not open a tab in this session")
        return page

    def tab_index(self, page: Page) -> int:
        try:
            return self.pages.index(page)
        except ValueError:
            return -1

    def _adopt(self, page: Page, *, announce: bool = True) -> None:
        if page in self.pages:
            return
        self._stirred.set()
        if len(self.pages) >= self.owner.options.max_tabs_per_session:
            # Closed before it is a tab of the session: never current, never named by a result.
            self._spawn(page.close())
            self.events.append(
                f"a new tab ({page.url}) was closed: this session may have at most "
                f"{self.owner.options.max_tabs_per_session} tabs"
            )
            return
        self.pages.append(page)
        page.on("dialog", self._on_dialog)
        page.on("filechooser", self._on_file_chooser)
        page.on("close", self._on_close)
        page.on("crash", self._on_crash)
        page.on("download", self._on_download)
        page.on("request", self._on_request)
        if announce and self._opening == 0:
            self.current = len(self.pages) - 1
            self.events.append(f"the page opened a new tab (index {self.current}); it is now the current tab")

    def _on_close(self, page: Page) -> None:
        self._stoppers.pop(page, None)
        index = self.tab_index(page)
        if index < 0:
            return
        self.pages.pop(index)
        if self.current >= index and self.current > 0:
            self.current -= 1
        if self._modal_page() is page:
            # Nobody can answer it now; the session must not go on waiting for an answer.
            self.events.append(f"the {self._modal_name()} closed with its tab")
            self.drop_modal()

    def _on_crash(self, page: Page) -> None:
        self.events.append(f"tab {self.tab_index(page)} crashed ({page.url}); it was closed")
        self._spawn(page.close())

    # --- scripts that run too long ---------------------------------------------------------------

    async def arm_stopper(self, page: Page) -> None:
        """Make ready the means to stop a script about to run in `page` (`stop_script`).

        A script that runs on (a `while (true)`, the snapshot of a huge page) keeps the tab's
        renderer busy after Playwright's call gave up or was cancelled: the tab answered nothing
        else until it ended. `Runtime.terminateExecution` stops it, but only from a DevTools
        session the renderer has already taken in: one attached while the script runs is queued
        behind it. So the session is attached, and used once, before the script starts."""
        if page in self._stoppers:
            return
        with contextlib.suppress(PlaywrightError, TimeoutError):
            async with asyncio.timeout(STOP_SCRIPT_S):
                cdp = await self.context.new_cdp_session(page)
                await cdp.send("Runtime.evaluate", {"expression": "0"})
                if not page.is_closed():
                    self._stoppers[page] = cdp

    async def stop_script(self, page: Page) -> bool:
        """Stop the script running in `page` (True when the means to was ready). Bounded."""
        cdp = self._stoppers.get(page)
        if cdp is None:
            return False
        with contextlib.suppress(PlaywrightError, TimeoutError):
            async with asyncio.timeout(STOP_SCRIPT_S):
                stop = asyncio.ensure_future(cdp.send("Runtime.terminateExecution"))
                try:
                    # With no script running (an awaited promise that never settles) the
                    # termination would fall on the page's next script: this one takes it.
                    await cdp.send("Runtime.evaluate", {"expression": "0"})
                    await stop
                finally:
                    stop.cancel()
                    with contextlib.suppress(BaseException):
                        await stop
        return True

    # --- modal states ----------------------------------------------------------------------------

    def _on_dialog(self, dialog: Dialog) -> None:
        self.dialog = dialog
        self.events.append(
            f"{_article(dialog.type)} {dialog.type} dialog is open: {dialog.message!r}; "
            "answer it with browser_handle_dialog"
        )
        self._modal.set()

    def _on_file_chooser(self, chooser: FileChooser) -> None:
        self.file_chooser = chooser
        self.events.append(
            "a file chooser is open; choose files with browser_file_upload (paths in your workspace)"
        )
        self._modal.set()

    def modal_state(self) -> str | None:
        """What waits for an answer, as in "an alert dialog ('Sure?')", or None."""
        name = self._modal_name()
        return f"{_article(name)} {name}" if name else None

    def _modal_name(self) -> str | None:
        if self.dialog is not None:
            return f"{self.dialog.type} dialog ({self.dialog.message!r})"
        if self.file_chooser is not None:
            return "file chooser"
        return None

    def _modal_page(self) -> Page | None:
        if self.dialog is not None:
            return self.dialog.page
        if self.file_chooser is not None:
            return self.file_chooser.page
        return None

    def clear_modal(self, answered: Dialog | FileChooser) -> None:
        """Forget the dialog or chooser just answered; one the page opened since stays."""
        if self.dialog is answered:
            self.dialog = None
        if self.file_chooser is answered:
            self.file_chooser = None
        if self.modal_state() is None:
            self._modal.clear()

    def drop_modal(self) -> None:
        """Forget a dialog or chooser that can no longer be answered, and the action waiting on it."""
        self.dialog = None
        self.file_chooser = None
        self._modal.clear()
        task, self.pending = self.pending, None
        if task is not None:
            task.cancel()

    async def act(self, action: Awaitable[T]) -> tuple[bool, T | None]:
        """Run an action; when it opens a dialog or file chooser first, leave it pending and say so.

        Returns (finished, value). An unfinished action finishes once the modal
        state is handled (`finish_pending`).
        """
        task = asyncio.ensure_future(action)
        if await self._wait_or_modal(task, None):
            return True, task.result()
        self._keep_pending(task)
        return False, None

    async def _wait_or_modal(self, task: asyncio.Future[Any], timeout_s: float | None) -> bool:
        """Wait until `task` is done (True), or a modal state opens or the time is up (False)."""
        self._modal.clear()
        modal = asyncio.ensure_future(self._modal.wait())
        try:
            await asyncio.wait({task, modal}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            modal.cancel()
        return task.done()

    def _keep_pending(self, task: asyncio.Future[Any]) -> None:
        self.pending = task  # type: ignore[assignment]
        task.add_done_callback(_observe)

    async def finish_pending(self, timeout_s: float) -> str | None:
        """Let the action that was waiting on the modal state finish; what went wrong, if anything."""
        task, self.pending = self.pending, None
        if task is None:
            return None
        if self.modal_state() is not None and not task.done():
            self.pending = task  # the page opened the next one while the last was being answered
            return None
        if not await self._wait_or_modal(task, timeout_s):
            if self.modal_state() is not None:
                self.pending = task
                return None
            return "the action that opened it is still running"
        if task.cancelled():
            return "the action that opened it was cancelled"
        exc = task.exception()
        if isinstance(exc, PlaywrightError):
            return first_line(exc)
        if exc is not None:
            return str(exc)
        return None

    # --- network, downloads ----------------------------------------------------------------------

    def _on_request(self, request: Request) -> None:
        if request.is_navigation_request() and request.frame.parent_frame is None:
            self.navigations += 1

    def _on_response(self, response: Response) -> None:
        self.network.append(NetworkEntry(response.request, response.status, None))

    def _on_request_failed(self, request: Request) -> None:
        self.network.append(NetworkEntry(request, None, request.failure or "failed"))
        self._on_request_finished(request)

    def _on_any_request(self, request: Request) -> None:
        # Only what starts during the action or just after it counts as its doing: a page that
        # polls every 50 ms would otherwise keep every click waiting out its whole budget.
        if self._watching is not None and asyncio.get_running_loop().time() <= self._collect_until:
            self._watching.add(request)
            self._stirred.set()

    def _on_request_finished(self, request: Request) -> None:
        if self._watching is not None and request in self._watching:
            self._watching.discard(request)
            self._stirred.set()

    def watch(self) -> None:
        """Start noting what the action about to run causes (see `caused`)."""
        self._watching = set()
        self._watched_saves = set()
        self._collect_until = math.inf
        self._stirred.clear()

    async def caused(self, budget_s: float) -> None:
        """Wait, at most `budget_s`, for what the watched action started: the requests it made,
        tabs it opened, downloads it saved, so that they are reported with it, not one call late.

        Effects arrive from the browser a little after the action returns: the wait ends once
        none has come for STIR_S and none is still under way (a long poll holds it to the end).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_s
        self._collect_until = loop.time() + STIR_S
        try:
            while (left := deadline - loop.time()) > 0:
                self._stirred.clear()
                busy = bool(self._watching or self._saving & self._watched_saves)
                stir = asyncio.ensure_future(self._stirred.wait())
                try:
                    done, _ = await asyncio.wait(
                        {stir, *(self._saving & self._watched_saves)},
                        timeout=left if busy else min(left, STIR_S),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    stir.cancel()
                if not done and not busy:
                    return
        finally:
            self._watching = None

    def _on_download(self, download: Download) -> None:
        if not self.owner.options.downloads:
            self.events.append(f"a download ({download.suggested_filename}) was refused: downloads are off")
            self._spawn(download.cancel())
            return
        self._stirred.set()
        saving = self._spawn(self._save_download(download))
        self._saving.add(saving)
        saving.add_done_callback(self._saving.discard)
        if self._watching is not None and asyncio.get_running_loop().time() <= self._collect_until:
            # The watched action's own: its end is awaited. An older download still running
            # (one that never finishes) holds no later action.
            self._watched_saves.add(saving)

    async def _save_download(self, download: Download) -> None:
        workspace = workspace_dir(self.owner.workspace_root, self.principal)
        name = safe_file_name(download.suggested_filename)
        try:
            # Playwright's own copy, in its private artifacts folder; never saved by path into the
            # workspace, where a planted link would redirect it (save_download).
            source = await download.path()
            saved = await asyncio.to_thread(save_download, workspace, source, name)
        except OSError as exc:  # its reason, not a path of the hub's host
            self.events.append(f"the download {name!r} failed: {exc.strerror or type(exc).__name__}")
            return
        except (PlaywrightError, ToolError) as exc:
            self.events.append(f"the download {name!r} failed: {first_line(exc)}")
            return
        finally:
            with contextlib.suppress(PlaywrightError):
                await download.delete()
        self.events.append(f"downloaded {name!r} to downloads/{saved} in your workspace")

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[None]:
        async def run() -> None:
            with contextlib.suppress(PlaywrightError, OSError):
                await coro

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def take_events(self) -> list[str]:
        events, self.events = self.events, []
        return events

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.pending is not None:
            self.pending.cancel()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(PlaywrightError):
            await self.context.close()


def _article(word: str | None) -> str:
    return "an" if word and word[0] in "aeiou" else "a"


def _observe(task: asyncio.Future[Any]) -> None:
    """Retrieve a finished background action's exception, so asyncio does not log it as lost."""
    if not task.cancelled():
        task.exception()


_METHOD_PREFIX = re.compile(r"^[A-Z][A-Za-z]*\.[a-z][A-Za-z_]*: ")
_TIMEOUT_MS = re.compile(r"\bTimeout (\d+(?:\.\d+)?)ms exceeded\.?")


def first_line(exc: BaseException) -> str:
    """The message of a Playwright error without its call log, its method name (`Page.goto: `)
    or its timeout in fractional milliseconds (`timed out after 5 s`)."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.split("\nCall log:", 1)[0].strip().splitlines()[0]
    line = _METHOD_PREFIX.sub("", line)
    return _TIMEOUT_MS.sub(lambda m: f"timed out after {max(1, round(float(m[1]) / 1000))} s", line)


class SharedBrowser:
    """The one Chromium of the hub and every session in it."""

    def __init__(self, options: BrowserOptions, proxy_port: Callable[[], int], workspace_root: Path) -> None:
        self.options = options
        self.workspace_root = workspace_root
        self._proxy_port = proxy_port
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._launching: asyncio.Task[Browser] | None = None
        self._sessions: dict[SessionKey, BrowserSession] = {}
        self._creating: dict[SessionKey, asyncio.Task[BrowserSession]] = {}
        self._lost: set[SessionKey] = set()
        self._idled: dict[SessionKey, float] = {}
        """Sessions the reaper closed, with how long they had been unused (their next result says so)."""
        self._spares: list[BrowserContext] = []
        self._filling: asyncio.Task[bool] | None = None
        self._busy = 0
        """Calls in progress (a launch inside one leaves the spares to its end)."""
        self._spare_timer: asyncio.TimerHandle | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._driver_watch: asyncio.Task[None] | None = None
        self._stopping = False
        self._scratch: ScratchDir | None = None
        self.launches = 0

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            self._scratch = ScratchDir.create()
        except OSError as exc:
            logger.warning("the browser's temp files go to the system's temp directory: %s", exc)
        self._reaper = asyncio.create_task(self._reap(), name="browser-reaper")
        if self.options.launch_at_start:
            self._launching = asyncio.create_task(self._launch(), name="browser-launch")
            self._launching.add_done_callback(self._launched)

    def _launched(self, task: asyncio.Task[Browser]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.warning("Chromium did not start: %s", task.exception())

    async def stop(self) -> None:
        self._stopping = True
        if self._spare_timer is not None:
            self._spare_timer.cancel()
        for task in (self._reaper, self._filling, self._launching, self._driver_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        for session in list(self._sessions.values()):
            await session.close()
        self._sessions.clear()
        if self._browser is not None:
            with contextlib.suppress(PlaywrightError):
                await self._browser.close()
            self._browser = None
        if self._playwright is not None:
            with contextlib.suppress(PlaywrightError, OSError):
                await self._playwright.stop()
            self._playwright = None
        if self._scratch is not None:
            self._scratch.remove()
            self._scratch = None

    async def browser(self) -> Browser:
        """The running Chromium, launching it (again, after a crash) when needed."""
        if self._browser is not None and self._browser.is_connected():
            return self._browser
        if self._launching is None or self._launching.done():
            self._launching = asyncio.create_task(self._launch(), name="browser-launch")
        try:
            return await asyncio.shield(self._launching)
        except PlaywrightError as exc:
            raise ToolError(
                f"Chromium ({self.options.executable_path}) did not start: {first_line(exc)}"
            ) from exc

    async def _launch(self) -> Browser:
        # A launch after the first follows a browser that is gone: what it kept in the scratch
        # directory goes once the new one runs (not before: the old driver may still be ending).
        left = self._scratch.entries() if self._scratch is not None and self.launches else []
        if self._playwright is None:
            tmpdir = self._scratch.path if self._scratch is not None else None
            with _driver_in_its_own_session(tmpdir) as drivers:
                self._playwright = await async_playwright().start()
            if drivers:
                self._driver_watch = asyncio.create_task(
                    self._watch_driver(drivers[0], self._playwright), name="browser-driver"
                )
        # Every request goes through the policy proxy; `<-loopback>` stops Chromium bypassing it locally.
        proxy: ProxySettings = {"server": f"http://127.0.0.1:{self._proxy_port()}", "bypass": "<-loopback>"}
        browser = await self._playwright.chromium.launch(
            executable_path=self.options.executable_path,
            headless=self.options.headless,
            args=[*CHROMIUM_ARGS, *self.options.extra_args],
            proxy=proxy,
            handle_sigint=False,
            handle_sigterm=False,
            handle_sighup=False,
        )
        browser.on("disconnected", self._on_disconnected)
        self._browser = browser
        self.launches += 1
        logger.info("Chromium %s started (launch %d)", browser.version, self.launches)
        if left:
            await asyncio.to_thread(ScratchDir.remove_entries, left)
        if not self._busy:  # at start-up; a launch inside a call tops up when the call ends
            self._refill_spares()
        return browser

    def _on_disconnected(self, browser: Browser) -> None:
        if browser is not self._browser or self._stopping:
            return
        logger.warning(
            "Chromium went away; %d sessions are lost, it starts again on the next call", len(self._sessions)
        )
        self._lose_sessions()

    async def _watch_driver(self, driver: asyncio.subprocess.Process, playwright: Playwright) -> None:
        """When Playwright's driver exits, drop it with its Chromium, so that the next call starts
        both again. Chromium's `disconnected` never comes then (the driver sends it), and the
        browser, its contexts and every new one would answer "Target page, context or browser
        has been closed" for as long as the hub runs."""
        code = await driver.wait()
        if self._stopping or playwright is not self._playwright:
            return
        logger.warning(
            "Playwright's driver went away (pid %d, exit code %s); %d sessions are lost, it and "
            "Chromium start again on the next call",
            driver.pid,
            code,
            len(self._sessions),
        )
        self._playwright = None
        self._lose_sessions()
        with contextlib.suppress(PlaywrightError, OSError):
            await playwright.stop()  # its pipes: the process is gone

    def _lose_sessions(self) -> None:
        """The browser is gone: its sessions are lost (their next call says so) and its spares."""
        self._browser = None
        self._lost.update(self._sessions)
        for session in self._sessions.values():
            session.closed = True
            if session.pending is not None:
                session.pending.cancel()
        self._sessions.clear()
        self._spares.clear()

    # --- contexts --------------------------------------------------------------------------------

    async def _new_context(self) -> BrowserContext:
        browser = await self.browser()
        o = self.options
        context = await browser.new_context(
            viewport={"width": o.viewport_width, "height": o.viewport_height},
            accept_downloads=o.downloads,
        )
        context.set_default_timeout(o.action_timeout_s * 1000)
        context.set_default_navigation_timeout(o.navigation_timeout_s * 1000)
        await context.new_page()
        return context

    def _refill_spares(self) -> None:
        if self._stopping or (self._filling is not None and not self._filling.done()):
            return
        if len(self._spares) < self.options.spare_contexts and self._browser is not None:
            self._filling = asyncio.create_task(self._make_spare(), name="browser-spare")
            self._filling.add_done_callback(self._made_spare)

    def _made_spare(self, task: asyncio.Task[bool]) -> None:
        # One context per task, so a new session waits for one spare, not for the whole pool;
        # the next is made now if no call is running, else when the calls end.
        if task.cancelled():
            return
        if task.exception() is not None:
            logger.warning("making a spare browser context failed: %r", task.exception())
        elif task.result() and not self._busy:
            self._refill_spares()

    @contextlib.asynccontextmanager
    async def busy(self) -> AsyncIterator[None]:
        """Mark a call in progress. Spares are topped up once calls pause for SPARE_DELAY_S (a caller's
        calls often come in quick succession), or at once when none is left and calls never pause."""
        self._busy += 1
        if self._spare_timer is not None:
            self._spare_timer.cancel()
            self._spare_timer = None
        try:
            yield
        finally:
            self._busy -= 1
            if not self._busy:
                loop = asyncio.get_running_loop()
                self._spare_timer = loop.call_later(SPARE_DELAY_S, self._refill_spares)
            elif not self._spares:
                self._refill_spares()

    async def _make_spare(self) -> bool:
        """Make one spare context; False when the browser is gone or failed."""
        browser = self._browser
        try:
            context = await self._new_context()
        except (PlaywrightError, ToolError) as exc:
            logger.debug("no spare context: %s", exc)
            return False
        if browser is None or self._browser is not browser or self._stopping:
            with contextlib.suppress(PlaywrightError):
                await context.close()
            return False
        self._spares.append(context)
        return True

    # --- sessions --------------------------------------------------------------------------------

    def existing(self, key: SessionKey) -> BrowserSession | None:
        return self._sessions.get(key)

    def sessions_of(self, principal: str) -> list[str]:
        return sorted(name for p, name in self._sessions if p == principal)

    async def session(self, key: SessionKey) -> BrowserSession:
        """The session `key`, created (from a spare context when one is ready) if it does not exist."""
        found = self._sessions.get(key)
        if found is not None and not found.closed:
            found.last_used = time.monotonic()  # so the reaper does not take it before the call locks it
            return found
        creating = self._creating.get(key)
        if creating is None:
            self._check_limits(key)
            creating = asyncio.create_task(self._create(key))
            self._creating[key] = creating
            creating.add_done_callback(lambda _: self._creating.pop(key, None))
        return await asyncio.shield(creating)

    def _check_limits(self, key: SessionKey) -> None:
        """Sessions being created count as open: a creation is shielded from its call, so calls
        that began sessions together, or ended at their deadline while theirs were made, passed
        the limits when only the sessions made already were counted."""
        o = self.options
        keys = self._sessions.keys() | self._creating.keys()  # a key is in both for a moment
        mine = sum(1 for p, _ in keys if p == key[0])
        if mine >= o.max_sessions_per_principal:
            raise ToolError(
                f"you have {mine} browser sessions open or opening, the most allowed; close one with "
                f"browser_close (open: {', '.join(self.sessions_of(key[0])) or 'none yet'})"
            )
        if len(keys) >= o.max_sessions:
            raise ToolError(
                f"the hub's browser has {len(keys)} sessions open or opening, the most it allows; try later"
            )

    async def _create(self, key: SessionKey) -> BrowserSession:
        browser = await self.browser()
        if not self._spares and self._filling is not None and not self._filling.done():
            with contextlib.suppress(PlaywrightError, ToolError):
                await asyncio.shield(self._filling)  # a spare is nearly ready: cheaper than another
        context = None
        while self._spares:
            spare = self._spares.pop()
            if spare.browser is browser:
                context = spare
                break
        if context is None:
            context = await self._new_context()
        session = BrowserSession(key, context, self)
        if key in self._lost:
            self._lost.discard(key)
            session.events.append(
                "the browser had stopped and was started again: this session's earlier pages are gone"
            )
        elif key in self._idled:
            unused = self._idled.pop(key)
            session.events.append(
                f"this session was closed after {unused:.0f} s unused (idle_timeout_s); "
                "its pages and cookies are gone"
            )
        self._sessions[key] = session
        return session

    async def close_session(self, key: SessionKey) -> bool:
        self._idled.pop(key, None)
        session = self._sessions.pop(key, None)
        if session is None:
            return False
        await session.close()
        return True

    async def _reap(self) -> None:
        period = min(30.0, max(0.5, self.options.idle_timeout_s / 4))
        while True:
            await asyncio.sleep(period)
            deadline = time.monotonic() - self.options.idle_timeout_s
            for key, session in list(self._sessions.items()):
                if session.last_used < deadline and not session.lock.locked():
                    logger.info("closing idle browser session %s/%s", *key)
                    self._sessions.pop(key, None)
                    self._idled[key] = time.monotonic() - session.last_used
                    try:
                        await session.close()
                    except Exception:  # the reaper's top level: one bad close must not stop reaping
                        logger.exception("closing idle browser session %s/%s failed", *key)
