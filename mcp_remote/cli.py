"""The `mcphub` command.

Exit codes: 0 success; 1 the tool ran and reported an error (`is_error`);
2 bad usage or configuration; 3 the hub refused or stopped the call (authentication, policy,
an approver, an approval's timeout, a deadline, a shutdown) or could not be reached; 4 the
output could not be written (a full disk); 141 its reader left (a closed pipe). For
`serve`: 2 when the config, the command line or the process's limits must change (a
PostgreSQL audit store that cannot be reached included), 3 when the state directory or the
audit log cannot be used as they are (`StateError`, `AuditStoreRefused`), or when it stopped
with audit records it could not write (its log says how many): a supervisor restarts on
neither, and knows which to mend.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp_local.cli import (
    add_local_commands,
    parse_arguments,
)  # standard library only: `mcphub local` stays light
from mcp_local.plainerrors import ConfigError  # standard library only
from mcp_local.shown import shown, shown_lines  # standard library only

from .sandboxes_cli import add_sandbox_commands
from .statedir import HubTargetError

__all__ = ["main"]

EXIT_OK, EXIT_TOOL_ERROR, EXIT_USAGE, EXIT_HUB, EXIT_OUTPUT = 0, 1, 2, 3, 4

MAX_TIMEOUT_S = 86400.0
"""`mcphub call --timeout`'s maximum, a day: gRPC cannot carry a deadline much further away (it
failed at once as `deadline_exceeded`), and no call waits that long for a person."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _run(coro: Any) -> int:
    import uvloop

    result: int = uvloop.run(coro)
    return result


OPEN_FILES = 65536
"""The open-file limit `mcphub serve` raises its own to, within the hard limit: each sandbox's
sidecar, each MCP client and each command's pipes take descriptors, and the servers admit
connections up to a quarter of the limit each (1024 HTTP, 4096 gRPC at most); Debian's default
soft limit of 1024 would admit 256."""


def _more_open_files() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


MIN_OPEN_FILES = 256
"""Below this many descriptors the hub cannot run its servers, packs and a few callers: gRPC's
core crashed (a segfault) at 16, the browser pack failed at 32."""
MIN_ADDRESS_SPACE = 3 * 1024**3 // 2
"""The address space a hub maps before any call (threads' stacks, allocator arenas): about 1 GiB."""


def _limits_problem() -> str | None:
    """Why this process's limits are too low for a hub (after `_more_open_files`), or None."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < MIN_OPEN_FILES:
        return (
            f"the open-file limit is {soft} and cannot be raised (its hard limit); a hub needs at least "
            f"{MIN_OPEN_FILES}: raise it (ulimit -n, or LimitNOFILE= in a systemd unit)"
        )
    space, _ = resource.getrlimit(resource.RLIMIT_AS)
    if space != resource.RLIM_INFINITY and space < MIN_ADDRESS_SPACE:
        return (
            f"the address-space limit is {space // 2**20} MiB; a hub maps about 1 GiB before any call "
            f"and needs at least {MIN_ADDRESS_SPACE // 2**20} MiB (more with the browser pack): raise it "
            "(ulimit -v) or limit memory with a cgroup instead (MemoryMax= in a systemd unit)"
        )
    return None


def _fail(message: str, code: int, grpc_code: str | None = None) -> int:
    """`message` on stderr (and on stdout as JSON for a `--json` command: `clifail`)."""
    from .clifail import fail

    return fail(message, code, grpc_code)


# --- serve -------------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from mcp_local.undumpable import make_undumpable

    # The hub takes its secrets' variables out of its environment once read, but the kernel's copy
    # (`/proc/PID/environ`) keeps them, as its memory keeps every secret: a process of the hub's
    # uid (an unjailed command, Chromium) must not read them (see mcp_local/undumpable.py).
    make_undumpable()
    _more_open_files()
    problem = _limits_problem()
    if problem is not None:
        return _fail(problem, EXIT_USAGE)
    from mcp_local.errors import ConfigError

    from .config import PackConfig, load_config

    overrides: dict[str, Any] = {"grpc": args.grpc, "http": args.http, "state_dir": args.state_dir}

    def read_config() -> Any:
        config = load_config(args.config, environ, overrides)
        # `--pack browser` on the defaults (which have it) asks for the browser, not a second one.
        present = {p.name for p in config.packs}
        extra = [PackConfig(name=r) for r in dict.fromkeys(args.pack or ()) if r not in present]
        if extra:
            config = config.model_copy(update={"packs": [*config.packs, *extra]})
        return config

    try:
        config = read_config()
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return _run(_serve(config, environ, as_json=args.json, reread=read_config if args.config else None))


async def _serve(
    config: Any, environ: Mapping[str, str], *, as_json: bool, reread: Callable[[], Any] | None = None
) -> int:
    """Serve until SIGINT or SIGTERM. `reread` reads the config file again for SIGHUP."""
    import json

    from mcp_local.errors import ConfigError
    from mcp_local.memory import settle_memory
    from mcp_local.stopping import StopSignals

    from .audit.sqlite import AuditStoreRefused
    from .audit.store import AuditStoreUnreachable
    from .hub import Hub
    from .reload import on_reload
    from .statedir import StateError

    signals = StopSignals()
    # SIGHUP reloads the config file's principals and policy, and whatever else subscribes (the
    # cloud pack's credentials). Subscribed before anything starts: unhandled, it kills the hub.
    running: list[Hub] = []
    on_reload(lambda: _reload(running, reread))
    try:
        hub = Hub(config, environ)
    except StateError as exc:  # the state directory or a secret in it (a ConfigError too)
        return _fail(str(exc), EXIT_HUB)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except AuditStoreRefused as exc:  # a signing key that is not the one that signed the log
        return _fail(str(exc), EXIT_HUB)
    from mcp_local.redaction import RedactingFilter

    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter(hub.redactor))
    starting = await signals.unless_stopped(hub.start())  # the pack that was starting is logged
    if starting is None:
        assert signals.first is not None
        await hub.stop(0)
        return _fail(
            f"{signals.first.name} while starting: stopped before the hub was ready", 128 + signals.first
        )
    try:
        addresses = starting.result()
    except StateError as exc:
        await hub.stop(0)
        return _fail(str(exc), EXIT_HUB)
    except ConfigError as exc:
        await hub.stop(0)
        return _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        await hub.stop(0)
        return _fail(str(exc), EXIT_USAGE)
    except AuditStoreUnreachable as exc:  # a wrong DSN, or a database that refuses or is down
        await hub.stop(0)
        return _fail(str(exc), EXIT_USAGE)
    except AuditStoreRefused as exc:  # an edited audit journal, or another hub writing the log
        await hub.stop(0)
        return _fail(str(exc), EXIT_HUB)
    except Exception:  # a bug: its traceback, after the `stopped` record that closes the start's
        await hub.stop(0)
        raise
    if environ is os.environ:
        from mcp_local.undumpable import scrub_environment_block

        # The secrets' variables left os.environ as the hub read them; their values stay in the
        # block /proc/PID/environ shows, which every root process reads when the hub is root.
        scrub_environment_block(os.environ)
    if as_json:
        line = json.dumps(
            {"event": "ready", "grpc": addresses.grpc, "mcp": addresses.mcp_url, "pid": os.getpid()}
        )
    else:
        line = f"mcphub ready: grpc {addresses.grpc}" + (
            f"  mcp {addresses.mcp_url}" if addresses.mcp_url else ""
        )
    print(line, flush=True)
    running.append(hub)
    settle_memory()
    await signals.event.wait()
    logging.getLogger("mcphub").info("shutting down")
    await hub.stop(hub.config.shutdown_grace_s)
    if hub.audit.lost:  # logged by the audit log; a supervisor should hear of it too
        return EXIT_HUB
    return EXIT_OK


def _reload(running: list[Any], reread: Callable[[], Any] | None) -> None:
    """SIGHUP: read the config file again and apply its principals, policy and log level."""
    from mcp_local.errors import ConfigError

    log = logging.getLogger("mcphub.reload")
    if not running:
        log.warning("SIGHUP while the hub is starting: nothing reloaded; send it again once it is ready")
        return
    if reread is None:
        log.info("SIGHUP: the hub was started without --config: only its operator.token is read again")
    try:
        report = running[0].reload(running[0].config if reread is None else reread())
    except Exception as exc:  # whatever it is, the hub goes on as it was, and says why
        if not isinstance(exc, ConfigError):
            log.exception("reload failed, the hub goes on with its current config")
            return
        # One log line: a config error lists its problems one per line.
        problems = "; ".join(line.strip() for line in str(exc).splitlines())
        log.error("reload refused, the hub goes on with its current config: %s", problems)
        return
    log.info("config reloaded: %s", report.summary())
    if report.needs_restart:
        log.warning(
            "changed in the config file but applied only when the hub restarts: %s",
            ", ".join(report.needs_restart),
        )


# --- client commands ---------------------------------------------------------------------------


def hub_target(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    """--hub, else the hub running from an explicit --state-dir, else $MCPHUB_HUB, else the hub
    running from $MCPHUB_STATE_DIR or the default state directory, else the default address.

    A state directory's hub.json is followed only while the hub that wrote it runs: one killed
    with -9 leaves its file behind, and its port may be another hub's by now. A directory given
    with --state-dir that no hub runs from is said to be so (HubTargetError, exit 3) rather than
    the default address dialed, where someone else's hub may listen; so is one whose hub.json
    cannot be read. Without --state-dir, a hub.json that cannot be read is named (on stderr): the
    hub is then looked for at the default address, which may be the right one, but "cannot reach
    a hub" alone would send its operator looking for a hub that is not down."""
    from .statedir import (
        DEFAULT_GRPC,
        HUB_FILE,
        StateError,
        default_state_dir,
        load_hub_file,
        names_a_running_hub,
    )

    if args.hub:
        return str(args.hub)
    explicit = args.state_dir is not None
    if not explicit and environ.get("MCPHUB_HUB"):
        try:
            return str(_hub_address(environ["MCPHUB_HUB"]))
        except argparse.ArgumentTypeError as exc:
            raise HubTargetError(f"$MCPHUB_HUB: {exc}", EXIT_USAGE) from None
    state_dir = Path(args.state_dir or environ.get("MCPHUB_STATE_DIR") or default_state_dir(environ))
    try:
        running = load_hub_file(state_dir)
    except StateError as exc:
        if explicit:  # the default address may be someone else's hub: no token goes there
            raise HubTargetError(f"{exc}; name the hub with --hub HOST:PORT", EXIT_HUB) from None
        print(
            f"mcphub: {exc}; looking for the hub at {DEFAULT_GRPC} (--hub ADDRESS names it)", file=sys.stderr
        )
        return DEFAULT_GRPC
    if running is None:
        if explicit:
            raise HubTargetError(
                f"no hub is running from {state_dir} (it has no {HUB_FILE}); start one with "
                f"`mcphub serve --state-dir {state_dir}`, or name a hub with --hub HOST:PORT",
                EXIT_HUB,
            )
        return DEFAULT_GRPC
    if not names_a_running_hub(running, state_dir):
        raise HubTargetError(
            f"the hub that wrote {state_dir / HUB_FILE} (pid {running.get('pid')}, at {running['grpc']}) "
            "is not running: start it again, or name a hub with --hub HOST:PORT",
            EXIT_HUB,
        )
    return str(running["grpc"])


def _hub_address(value: str) -> str:
    """--hub HOST:PORT, checked as `serve --grpc` checks its own: a typo is a usage error, not a
    hub that "cannot be reached" (a port past 65535 was dialed as another, wrapped)."""
    from .config import parse_address

    try:
        address = parse_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if address.port == 0:
        raise argparse.ArgumentTypeError(f"{value!r}: port 0 is no hub's port (expected HOST:PORT)")
    return str(address)


def _token(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    if args.token:
        return checked_token(args.token, "--token")
    return checked_token(environ.get("MCPHUB_TOKEN") or "", "$MCPHUB_TOKEN") or None


def checked_token(token: str, source: str) -> str:
    """`token`, or a ConfigError naming its `source` (never its value) when it cannot be sent: an
    HTTP/2 header holds printable ASCII only, and gRPC refused a token with a trailing CR (a
    Windows line end) or a tab with a 53-line traceback, or as `internal: Invalid metadata`."""
    if token and not all(" " <= ch <= "~" for ch in token):
        raise ConfigError(
            f"the token in {source} has a control character or one beyond ASCII (a line end, a tab?), "
            "which a token cannot hold: give it again without"
        )
    return token


def arguments_option(text: str) -> dict[str, Any]:
    """The `--args` option's JSON object; ValueError saying what is wrong."""
    import json

    def not_json(constant: str) -> Any:
        raise ValueError(f"--args is not valid JSON: {constant} is not a JSON number")

    def finite(number: str) -> float:
        value = float(number)
        if value in (float("inf"), float("-inf")):
            raise ValueError(f"--args has a number too large for JSON tools to read: {number}")
        return value

    try:
        arguments = json.loads(text, parse_constant=not_json, parse_float=finite)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--args is not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError("--args is nested too deeply") from None
    if not isinstance(arguments, dict):
        raise ValueError('--args must be a JSON object, e.g. \'{"text": "hi"}\'')
    return arguments


def arguments_text(value: str, stdin: Any) -> str:
    """The `--args` option's text: `value` itself, or with `@FILE` that file's, with `-` all of
    stdin (beyond ~128 KiB a shell cannot pass an argument at all); ValueError saying what is wrong."""
    if value == "-":
        data = stdin.buffer.read()
        source = "stdin"
    elif value.startswith("@"):
        try:
            data = Path(value[1:]).read_bytes()
        except OSError as exc:
            raise ValueError(f"--args {value}: cannot read it: {exc.strerror}") from None
        source = value[1:]
    else:
        return value
    try:
        return str(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"--args from {source} is not UTF-8 (byte {exc.start})") from None


_TRANSPORT_TROUBLE = (
    "failed to connect",
    "connection refused",
    "connections to all backends failing",
    "dns resolution",
    "socket closed",
    "stream removed",
    "connection reset",
    "broken pipe",
)


_NOBODY_THERE = ("connection refused", "dns resolution", "no route to host", "name or service not known")
"""Of those, the words that say nothing listens at the address."""


def unreachable(exc: Any) -> bool:
    """Whether an UNAVAILABLE came from the connection (no hub there, or it went away), not from
    a hub that answered it is unavailable (its audit store down, shutting down). The hub marks
    its own answers: their words (a store's "Connection refused") are not the connection's."""
    from mcphub_proto.metadata import ERROR_FROM, FROM_HUB

    if (ERROR_FROM, FROM_HUB) in tuple(exc.trailing_metadata() or ()):
        return False
    details = (exc.details() or "").lower()
    return any(words in details for words in _TRANSPORT_TROUBLE)


def _hub_error_data(exc: Any) -> dict[str, Any]:
    """The error data the hub itself attached to a failure (an object), else {}: only an answer
    the hub marks as its own is read (see `unreachable`)."""
    import orjson

    from mcphub_proto.metadata import ERROR_DATA, ERROR_FROM, FROM_HUB

    trailing = tuple(exc.trailing_metadata() or ())
    if (ERROR_FROM, FROM_HUB) not in trailing:
        return {}
    for key, value in trailing:
        if key == ERROR_DATA:
            try:
                data = orjson.loads(value)
            except orjson.JSONDecodeError:
                return {}
            return data if isinstance(data, dict) else {}
    return {}


def _rpc_failure(exc: Any, target: str) -> int:
    return _fail(_rpc_problem(exc, target)[1], EXIT_HUB)


def _rpc_problem(exc: Any, target: str) -> tuple[str, str]:
    """A failed RPC's gRPC code (`not_found`) and what to tell a person of it."""
    import grpc

    code = exc.code().name.lower()
    # The hub's words may quote a caller's or a sandbox's text (a tool name, a sidecar's reason).
    details = shown(exc.details() or "")
    if exc.code() == grpc.StatusCode.UNAVAILABLE and unreachable(exc):
        if not any(words in details.lower() for words in _NOBODY_THERE):
            # Something listens there and closed the connection: a hub at its connection limit
            # (see README, "Open connections are bounded"), or one stopping.
            return code, (
                f"the hub at {target} closed the connection before answering ({details}): it may be at "
                "its connection limit or stopping"
            )
        return code, f"cannot reach a hub at {target} ({details}); start one with `mcphub serve`"
    if exc.code() == grpc.StatusCode.UNAVAILABLE and _hub_error_data(exc).get("sandbox"):
        # The hub answered: one of its sandboxes is not connected, the hub itself is up.
        return code, f"{code}: {details}"
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        return code, f"the hub at {target} is unavailable: {details}"
    if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
        details += " (give mcphub a token with --token or $MCPHUB_TOKEN)"
    if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
        from .version import version_text

        # gRPC's own words ("Method not found!") for a method the hub's version does not have.
        details += f" (the hub at {target} may be older than this CLI, {version_text()}: upgrade the hub)"
    return code, f"{code}: {details}"


def _json_failure(code: str, message: str, exit_code: int, approval_id: str = "") -> int:
    """A failure that has no MCP result, for `--json`: its line on stderr as always, and one JSON
    document on stdout, so that a script reading stdout reads JSON whatever happened."""
    import json

    from .clifail import json_printed

    error: dict[str, str] = {"code": code, "message": message}
    if approval_id:
        error["approval_id"] = approval_id
    print(json.dumps({"error": error}, indent=2))
    json_printed()
    return _fail(message, exit_code)


def _cmd_tools(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    return _run(_tools(hub_target(args, environ), _token(args, environ), as_json=args.json))


async def _tools(target: str, token: str | None, *, as_json: bool) -> int:
    import json

    import grpc

    from bridge.hubclient import HubClient
    from bridge.translate import tool_to_mcp

    hub = HubClient(target)
    try:
        tools = await hub.all_tools(token)
    except grpc.aio.AioRpcError as exc:
        if as_json:
            return _json_failure(*_rpc_problem(exc, target), EXIT_HUB)
        return _rpc_failure(exc, target)
    finally:
        await hub.close()
    if as_json:  # every character past ASCII, and every control, as a JSON escape
        print(json.dumps([tool_to_mcp(t) for t in tools], indent=2))
        return EXIT_OK
    # A listing for a person: a sandbox's or a pack's description must not hide or reorder what
    # follows it, or send the terminal escapes (set its title, clear the screen).
    width = max((len(shown(t.name)) for t in tools), default=4)
    for t in tools:
        flags = []
        if t.annotations.HasField("read_only_hint") and t.annotations.read_only_hint:
            flags.append("read-only")
        if t.annotations.HasField("destructive_hint") and t.annotations.destructive_hint:
            flags.append("destructive")
        summary = shown((t.description.splitlines() or [""])[0])
        print(f"{shown(t.name):<{width}}  {summary}" + (f"  [{', '.join(flags)}]" if flags else ""))
    print(f"{len(tools)} tools at {target}", file=sys.stderr)
    return EXIT_OK


def _cmd_call(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    import orjson

    try:
        arguments = arguments_option(arguments_text(args.args, sys.stdin))
        encoded = orjson.dumps(arguments)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except TypeError:  # all orjson refuses of what JSON gives: an integer beyond 64 bits
        return _fail(
            "--args has an integer beyond the 64-bit range (-2**63 to 2**64-1) the hub reads: "
            "send it as a string",
            EXIT_USAGE,
        )
    request = _CallRequest(args.tool, encoded, args.approval or "", args.timeout, args.request_id or "")
    return _run(_call(hub_target(args, environ), _token(args, environ), request, args.json))


@dataclass(frozen=True)
class _CallRequest:
    tool: str
    arguments_json: bytes
    approval_id: str
    timeout: float | None
    request_id: str = ""


class _ProgressLine:
    """Live progress on stderr: rewritten in place on a terminal, one line per event otherwise.

    Its text is the tool's (a progress message) or quotes the caller's (an approval's reason):
    escaped, on a terminal or not, so it is one line that hides and moves nothing."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.shown = False

    def show(self, text: str) -> None:
        text = shown(text)
        if self.tty:
            sys.stderr.write("\r\033[K" + text[:200])
            self.shown = True
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


async def _call(target: str, token: str | None, call: _CallRequest, as_json: bool) -> int:
    import json

    import grpc
    import orjson

    from bridge.hubclient import HubClient
    from bridge.translate import result_to_mcp
    from mcp_local.content import REFUSED_META
    from mcphub_proto.v1 import toolhub_pb2 as pb

    hub = HubClient(target)
    line = _ProgressLine()
    out, err = _Output(sys.stdout, exact=True), _Output(sys.stderr)
    request = pb.CallToolRequest(
        name=call.tool,
        arguments_json=call.arguments_json,
        approval_id=call.approval_id,
        request_id=call.request_id,
    )
    result = None
    outputs = False  # the tool streamed its output (a command's stdout and stderr) as it ran
    pending = ""  # the approval the call is waiting for, if any
    try:
        async for event in hub.stream_call_tool(token, request, timeout=call.timeout):
            kind = event.WhichOneof("event")
            if kind == "progress":
                if outputs:  # a command's own output says where it is; progress lines would cut into it
                    continue
                p = event.progress
                pct = (
                    f"{100 * p.progress / p.total:3.0f}%"
                    if p.HasField("total") and p.total
                    else f"{p.progress:g}"
                )
                line.show(f"[{pct}] {p.message}".rstrip())
            elif kind == "output":
                # A command's own streams, as they come: `> file` gets its whole stdout. The
                # result, which repeats a preview of it, then goes to stderr (below).
                line.done()
                outputs = True
                to_stdout = event.output.stream == "stdout" and not as_json
                (out if to_stdout else err).write(event.output.data)
            elif kind == "approval":
                a = event.approval
                state = pb.ApprovalState.State.Name(a.state).lower()
                pending = a.approval_id if a.state == pb.ApprovalState.PENDING else ""
                # Three things said apart: the state, the rule's reason, and how to approve it.
                text = f"approval {a.approval_id}: {state}" + (f" ({a.reason})" if a.reason else "")
                line.show(text + (f"; to approve: {a.how_to_approve}" if a.how_to_approve else ""))
            elif kind == "result":
                result = event.result
    except grpc.aio.AioRpcError as exc:
        out.end()
        err.end()
        line.done()
        code, message = _rpc_problem(exc, target)
        if pending and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            waited = f" after {call.timeout:g}s" if call.timeout else ""
            message = (
                f"deadline_exceeded: gave up{waited} waiting for approval {pending}, which stays pending "
                f"until it expires; once it is approved, run the same call with --approval {pending}"
            )
        if as_json:
            return _json_failure(code, message, EXIT_HUB, pending)
        return _fail(message, EXIT_HUB)
    finally:
        await hub.close()
    out.end()
    err.end()
    line.done()
    if result is None:
        if as_json:
            return _json_failure("no_result", "the hub ended the call without a result", EXIT_HUB)
        return _fail("the hub ended the call without a result", EXIT_HUB)
    refused = bool(result.is_error and result.meta_json and REFUSED_META in orjson.loads(result.meta_json))
    if as_json:
        print(json.dumps(result_to_mcp(result), indent=2))
    else:
        # A command's stdout went to ours as it came: its result (a summary, "[exit code 0; 31 ms]",
        # repeating a preview of the output) goes to stderr, so that `> file` holds exactly what the
        # command printed, nothing included. So does the hub's refusal of any call: it is no
        # tool's output, and exits 3 as the hub's other refusals, which are on stderr.
        _print_result(result, err if refused or outputs or _ran_a_command(result) else out)
    if not result.is_error:
        return EXIT_OK
    return EXIT_HUB if refused else EXIT_TOOL_ERROR


_COMMAND_RESULT = frozenset({"exit_code", "stdout", "stderr"})
"""The keys of a command's result (shell_exec's, and a sidecar's): its output streamed, if any."""


def _ran_a_command(result: Any) -> bool:
    """Whether `result` is a command's that could have streamed output, though it streamed none
    (`true`): `> file` must then hold nothing. A result that merely mentions an exit code (those of
    shell_start, shell_status, shell_read) is the tool's answer, for stdout."""
    import orjson

    if b'"exit_code"' not in result.structured_content_json:  # most results: nothing to parse
        return False
    structured = orjson.loads(result.structured_content_json)
    return isinstance(structured, dict) and structured.keys() >= _COMMAND_RESULT


class _Output:
    """Stdout or stderr for a tool's text: its data exactly as it came on a pipe or in a file; on
    a terminal, with what would hide, reorder or overwrite text, or send the terminal escapes
    (set its title, clear the screen), escaped (`shown_lines`: line breaks and tabs kept).

    `exact` (stdout): on a pipe or in a file, a result's text is written as UTF-8 whatever the
    locale, with nothing added (no line end it did not have), so that `> file` holds exactly the
    text a tool returned; a newline separates its blocks. On a terminal, and on stderr, each block
    is a line of its own, and a character the locale cannot encode is written as an escape."""

    def __init__(self, stream: Any, *, exact: bool = False) -> None:
        import codecs

        self.stream = stream
        self.tty = stream.isatty()
        self.exact = exact and not self.tty
        self._blocks = 0
        # A command's output may split a character between two chunks.
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def print(self, text: str) -> None:
        if self.exact:
            self.write(("\n" if self._blocks else "").encode() + text.encode())
            self._blocks += 1
        else:
            print(shown_lines(text) if self.tty else text, file=self.stream)

    def write(self, data: bytes, *, final: bool = False) -> None:
        if self.tty:
            self.stream.write(shown_lines(self._decoder.decode(data, final)))
        else:
            self.stream.flush()  # what went through its text layer first
            self.stream.buffer.write(data)
        self.stream.flush()

    def end(self) -> None:
        """Write what a command's output left of an unfinished character."""
        if self.tty:
            self.write(b"", final=True)


def _print_result(result: Any, out: _Output) -> None:
    for block in result.content:
        kind = block.WhichOneof("block")
        if kind == "text":
            out.print(block.text.text)
        elif kind in ("image", "audio"):
            media = getattr(block, kind)
            out.print(f"<{kind} {media.mime_type}, {len(media.data)} bytes; use --json to get it>")
        elif kind == "resource_link":
            out.print(f"<resource {block.resource_link.uri}>")
        elif kind == "resource":
            r = block.resource
            text = (
                r.text if r.WhichOneof("contents") == "text" else f"<resource {r.uri}, {len(r.blob)} bytes>"
            )
            out.print(text)
    if result.structured_content_json and not result.content:
        out.print(result.structured_content_json.decode())


def _cmd_bridge(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from bridge.server import BridgeOptions

    target = hub_target(args, environ)
    token = _token(args, environ)
    if args.stdio:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        return _run(_stdio(target, BridgeOptions(default_token=token))) or EXIT_OK
    return _fail("choose a transport: --stdio (for HTTP, `mcphub serve` runs the bridge)", EXIT_USAGE)


async def _stdio(target: str, options: Any) -> int:
    from bridge.stdio import serve_stdio

    await serve_stdio(target, options)
    return EXIT_OK


# --- parser ------------------------------------------------------------------------------------


def _address(value: str) -> str:
    from .config import parse_address

    if value.lower() == "off":
        return "off"
    try:
        return str(parse_address(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 < seconds <= MAX_TIMEOUT_S:
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected a number of seconds above 0, at most {MAX_TIMEOUT_S:g} (a day)"
        )
    return seconds


def _client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--hub",
        type=_hub_address,
        metavar="HOST:PORT",
        help="the hub's gRPC address (default: the hub running from --state-dir, else $MCPHUB_HUB, "
        "else the hub running from the state directory, else 127.0.0.1:7070)",
    )
    p.add_argument("--token", help="bearer token (default: $MCPHUB_TOKEN)")
    p.add_argument(
        "--state-dir",
        type=Path,
        help="talk to the hub running from this state directory (exit 3 when none does)",
    )


class _VersionAction(argparse.Action):
    """`--version`: the text is made when asked for (it reads the checkout's `.git` files)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from .version import version_text

        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcphub",
        formatter_class=_Formatter,
        description="mcphub: one shared, operator-controlled place for AI agents' tools (MCP over gRPC).",
        epilog=(
            "examples:\n"
            "  mcphub serve                              hub + MCP bridge on loopback, embedded defaults\n"
            "  mcphub tools                              list the tools of the local hub\n"
            '  mcphub call echo --args \'{"text": "hi"}\'  call a tool, with live progress\n'
            "  claude mcp add --transport http hub http://127.0.0.1:7071/mcp\n\n"
            "exit codes: 0 ok, 1 the tool reported an error, 2 bad usage or configuration,\n"
            "            3 the hub refused or stopped the call (token, policy, approver, timeout,\n"
            "              deadline, shutdown) or could not be reached,\n"
            "            4 the output could not be written (a full disk), 141 its reader left\n"
            "  for serve: 2 the config or the command line must change (a config key, a token,\n"
            "              a pack, a busy port, a PostgreSQL audit store that cannot be reached,\n"
            "              or a limit too low for a hub: open files, address space);\n"
            "            3 the state directory or the audit log cannot be used as they are\n"
            "              (a damaged, missing or open secret or log, a full or read-only disk,\n"
            "              another hub on it), or a stop with audit records that could not be written"
        ),
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="print mcphub's version (and, run from a git checkout, its commit) and exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        formatter_class=_Formatter,
        help="run the hub (gRPC) and the MCP bridge (Streamable HTTP) in one process",
        description=(
            "Run the hub and its MCP bridge. With no options: gRPC on 127.0.0.1:7070, MCP on\n"
            "http://127.0.0.1:7071/mcp, the diagnostics, shell and browser packs, state in\n"
            "$XDG_STATE_HOME/mcphub (~/.local/state/mcphub when XDG_STATE_HOME is unset).\n"
            "Prints one ready line naming both addresses; stops cleanly on\n"
            "SIGINT/SIGTERM (running calls get shutdown_grace_s, then are told the hub is stopping).\n"
            "SIGHUP reads --config again and applies principals, policy and log_level without a\n"
            "restart (a file with an error is refused whole; the other keys wait for a restart).\n\n"
            "config file keys (README, Configure): grpc, http, state_dir, principals (name, token |\n"
            "token_env | token_file, tools, roles, groups), packs (name, options), policy, audit\n"
            "(store, dsn_env | dsn_file, checkpoint_every, checkpoint_interval_s, sync,\n"
            "max_argument_bytes), approvals (max_pending_per_principal, keep_days), allowed_hosts,\n"
            "allowed_origins, max_request_bytes, shutdown_grace_s, bridge_express,\n"
            "max_sessions_per_principal, max_streams_per_principal, instance, log_level.\n"
            "Environment: MCPHUB_GRPC, MCPHUB_HTTP, MCPHUB_STATE_DIR, MCPHUB_LOG_LEVEL, MCPHUB_PACKS,\n"
            "MCPHUB_ALLOWED_HOSTS, MCPHUB_ALLOWED_ORIGINS (comma-separated lists), MCPHUB_BRIDGE_EXPRESS.\n"
            "Binding a non-loopback address needs at least one principal. Unset,\n"
            "max_streams_per_principal is 256 or max_sessions_per_principal if more.\n\n"
            "A start that is refused exits 2 when the config, the command line or a process limit\n"
            "(ulimit) must change, 3 when\n"
            "the state directory or the audit log cannot be used as they are (a damaged, missing or\n"
            "open secret or log, a last signed checkpoint that does not hold, a full or read-only\n"
            "disk, another hub on it, state a newer mcphub wrote: README, Upgrading); `mcphub audit\n"
            "verify` checks what a start does not."
        ),
    )
    serve.add_argument("--config", type=Path, help="YAML settings file")
    serve.add_argument(
        "--grpc", type=_address, metavar="HOST:PORT", help="gRPC listen address (port 0: any free port)"
    )
    serve.add_argument(
        "--http", type=_address, metavar="HOST:PORT", help="MCP bridge listen address, or 'off'"
    )
    serve.add_argument(
        "--state-dir",
        type=Path,
        help="where the hub keeps its state (default: $MCPHUB_STATE_DIR, else $XDG_STATE_HOME/mcphub, "
        "else ~/.local/state/mcphub)",
    )
    serve.add_argument(
        "--pack",
        action="append",
        metavar="IMPORT_PATH",
        default=[],
        help="load another tool pack (entry-point name or import path; not again if loaded); repeatable",
    )
    serve.add_argument("--json", action="store_true", help="print the ready line as JSON")
    serve.set_defaults(func=_cmd_serve)

    tools = sub.add_parser(
        "tools",
        formatter_class=_Formatter,
        help="list the tools a hub offers you",
        description="List the tools the calling principal may call, over gRPC.",
    )
    _client_options(tools)
    tools.add_argument(
        "--json",
        action="store_true",
        help='print MCP tool definitions as JSON; a failure prints {"error": {"code": ..., "message": ...}}',
    )
    tools.set_defaults(func=_cmd_tools)

    call = sub.add_parser(
        "call",
        formatter_class=_Formatter,
        help="call a tool, showing progress as it runs",
        description="Call a tool over gRPC. Progress goes to stderr, the result to stdout (in a pipe or a "
        "file exactly its text, in UTF-8, no line end added); a command (shell_exec) writes its stdout "
        "and stderr live to ours, and its result then goes to stderr, so that `> file` holds exactly "
        "what the command printed, as does the hub's refusal of any call (exit 3).",
    )
    call.add_argument("tool", help="tool name, e.g. echo")
    call.add_argument(
        "--args",
        default="{}",
        metavar="JSON",
        help="arguments object (default: {}); @FILE reads it from a file, - from stdin",
    )
    call.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help=f"give up after this long, at most {MAX_TIMEOUT_S:g} (the tool is stopped)",
    )
    call.add_argument(
        "--request-id",
        metavar="ID",
        help="recorded with the call in the audit log (`mcphub audit query --json` shows it as request_id)",
    )
    call.add_argument(
        "--approval",
        metavar="ID",
        help="use an approval granted earlier for exactly this call (same tool and arguments) "
        "instead of waiting for a new one",
    )
    call.add_argument(
        "--json",
        action="store_true",
        help='print the MCP result object as JSON; a failure with no result prints {"error": {"code": '
        '"not_found", "message": "...", "approval_id": "..." (when waiting for one)}}',
    )
    _client_options(call)
    call.set_defaults(func=_cmd_call)

    bridge = sub.add_parser(
        "bridge",
        formatter_class=_Formatter,
        help="MCP over stdio in front of a hub",
        description=(
            "Serve MCP over stdio, forwarding to a hub over gRPC, for clients that can only start\n"
            "a command. The token (--token or $MCPHUB_TOKEN) is the identity of every call."
        ),
    )
    bridge.add_argument("--stdio", action="store_true", help="serve MCP on stdin/stdout")
    _client_options(bridge)
    bridge.set_defaults(func=_cmd_bridge)

    from .cli_admin import add_admin_commands

    add_admin_commands(sub, _Formatter)
    add_local_commands(sub, _Formatter)  # `mcphub local ...`: the sidecar (docs/sidecar.md)
    add_sandbox_commands(sub, _client_options)  # `mcphub sandboxes ...`
    return parser


def _standard_streams() -> None:
    """Open /dev/null on stdin, stdout or stderr when it is closed (`mcphub tools >&-`): else the
    next descriptor opened takes its number, and uvloop aborted (`uv__close: Assertion 'fd >
    STDERR_FILENO' failed`) closing it. What the command writes there is then discarded."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if opened != fd:  # the lower ones are open (above), so it is `fd`; still, be sure
                os.dup2(opened, fd)
                os.close(opened)
            if getattr(sys, name) is None:  # Python found it closed at its start
                setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))  # noqa: SIM115
    # A result in a pipe or a file is written as UTF-8 bytes (`_Output`); the rest is text for a
    # person, which in an ASCII or Latin-1 locale must not end in a UnicodeEncodeError.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    _standard_streams()
    # gRPC's fork handlers only log "skipping fork() handlers" each time a pack starts a process
    # (the shell's spawner, Chromium); nothing here forks without exec.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    parser = build_parser()
    args = parse_arguments(parser, argv)  # an unknown argument: the usage of its own command
    args.owns_process = argv is None  # `mcphub local serve` may exec its server (mcp_local.serving)
    func: Callable[[argparse.Namespace, Mapping[str, str]], int] | None = getattr(args, "func", None)
    if func is None:  # no command: a usage error, so its help goes where errors go
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from .clifail import expect_json

    # Commands whose every failure `_fail` prints as JSON too (`call` and `tools` print their own,
    # `policy` its `{"ok": false}`); `sandboxes` may join them.
    if getattr(args, "json", False) and args.command in _JSON_FAILURES:
        expect_json("ok" if (args.command, getattr(args, "action", None)) == ("audit", "verify") else "error")
    try:
        code = func(args, os.environ if environ is None else environ)
        sys.stdout.flush()  # here, where a full disk is reported, rather than at exit
        return code
    except HubTargetError as exc:  # from statedir: `python -m mcp_remote.cli` imports this module twice
        return _fail(str(exc), exc.code)
    except ConfigError as exc:  # one a command did not catch: a token that cannot be sent
        return _fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader left (`mcphub audit query | head`): what it wanted was written. Python
        # would report the pipe again when it flushes stdout at exit, so point stdout away.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command that a pipe stopped
    except OSError as exc:
        if exc.errno not in _WRITE_FAILURES or exc.filename is not None:
            raise
        # `> /dev/full`, a full disk or quota: what was asked for is not all written.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python would fail again flushing it at exit
        return _fail(f"cannot write the output: {exc.strerror}", EXIT_OUTPUT)


_WRITE_FAILURES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})
_JSON_FAILURES = frozenset({"serve", "approvals", "audit"})


if __name__ == "__main__":
    raise SystemExit(main())
