"""`mcphub local ...`: the sidecar's commands (also `python -m mcp_local ...`).

    mcphub local serve --manifest FILE [--grpc HOST:PORT] [--http HOST:PORT] [--stdio]
                       [--hub HOST:PORT] [--sandbox NAME] [--ready-file PATH] [--json]
    mcphub local check --manifest FILE [--sandbox NAME] [--json]
                                                     validate the manifest, load the packs, list the
                                                     tools, report what a hub would block or refuse
    mcphub local health [--grpc HOST:PORT] [--ready-file PATH] [--timeout S] [--json]
                                                     exit 0 when the sidecar serves and the hub (if
                                                     any) does not refuse it

Only the standard library is imported at the top: `mcphub local` must start
quickly and never load the hub (`mcp_remote`).

Exit codes: 0 success; 1 unhealthy; 2 bad usage, manifest or configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .manifest import Manifest
    from .settings import SidecarSettings
    from .sidecar import Sidecar

__all__ = ["DEFAULT_GRPC", "add_local_commands", "main", "parse_arguments"]

DEFAULT_GRPC = "127.0.0.1:7072"
DEFAULT_MANIFEST = "/etc/mcphub/manifest.yaml"
EXIT_OK, EXIT_UNHEALTHY, EXIT_USAGE = 0, 1, 2
DEFAULT_PACKS: dict[str, Any] = {"packs": ["files", "git", "process"]}
MIN_RECONNECT_S = 0.5
"""The least `--reconnect-max`: the first redial waits this long (below it, or at 0, the sidecar
redialed a hub that refused it in a tight loop)."""


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"mcphub local: {message}", file=sys.stderr)
    return code


def _manifest(args: argparse.Namespace, environ: Mapping[str, str]) -> Manifest:
    """The manifest named by --manifest or $MCPHUB_MANIFEST, else the image's, else the defaults."""
    from .manifest import load_manifest, parse_manifest

    named = args.manifest or environ.get("MCPHUB_MANIFEST")
    if named or Path(DEFAULT_MANIFEST).exists():
        return load_manifest(Path(named or DEFAULT_MANIFEST))
    # No manifest at all (e.g. trying the sidecar outside an image): the current directory's
    # files, git repository and processes, on loopback only.
    return parse_manifest(
        DEFAULT_PACKS, source="default manifest (files, git, process of the current directory)"
    )


def _settings(args: argparse.Namespace, environ: Mapping[str, str]) -> SidecarSettings:
    from .settings import Backoff, SidecarSettings

    manifest = _manifest(args, environ)
    grpc = args.grpc or environ.get("MCPHUB_LOCAL_GRPC") or (None if args.stdio else DEFAULT_GRPC)
    if grpc and grpc.lower() == "off":
        grpc = None
    http = args.http or environ.get("MCPHUB_LOCAL_HTTP") or None
    if http and http.lower() == "off":
        http = None
    # Not $MCPHUB_STATE_DIR: that is the hub's, and a sidecar next to a hub would put its packs'
    # scratch files among the hub's secrets and audit log.
    scratch = Path(environ.get("TMPDIR") or "/tmp") / f"mcphub-sidecar-{os.getuid()}"  # noqa: S108
    state_dir = args.state_dir or scratch
    return SidecarSettings(
        manifest=manifest,
        grpc=grpc,
        http=http,
        stdio=args.stdio,
        hub=_hub(args, environ),
        token=args.token or environ.get("MCPHUB_TOKEN") or None,
        sandbox=args.sandbox or environ.get("MCPHUB_SANDBOX") or None,
        backoff=Backoff(first_s=min(0.5, args.reconnect_max), max_s=args.reconnect_max),
        environ={k: v for k, v in environ.items() if k != TOKEN_VARIABLE},
        state_dir=state_dir,
    )


def _hub(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    from .settings import hub_address

    if args.hub:
        return hub_address(args.hub, key="--hub")
    if environ.get("MCPHUB_HUB"):
        return hub_address(environ["MCPHUB_HUB"], key="$MCPHUB_HUB")
    return None


TOKEN_VARIABLE = "MCPHUB_TOKEN"  # noqa: S105 - the name of the variable, not a token


def _cmd_serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from .plainerrors import ConfigError
    from .undumpable import make_undumpable

    make_undumpable()  # the environment holds the hub token (see mcp_local/undumpable.py)

    try:
        settings = _settings(args, environ)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.ready_file and (problem := _ready_file_problem(Path(args.ready_file))):
        return _fail(f"--ready-file {args.ready_file}: {problem}")
    if environ is os.environ:
        # The token is in the settings now. Out of the environment, it reaches no process the
        # sidecar starts (a helper process is readable by the agent's uid), nor the serving
        # interpreter `exec_server` starts, whose environment is this one.
        os.environ.pop(TOKEN_VARIABLE, None)
    if getattr(args, "owns_process", False):
        from .handover import exec_server

        # Returns only if this process cannot be replaced by one that serves without the parsers.
        exec_server(settings, ready_file=args.ready_file, json_line=args.json)
    from .serving import serve

    return serve(settings, ready_file=args.ready_file, json_line=args.json)


def _ready_file_problem(path: Path) -> str | None:
    """Why the ready line could not be written to `path` (checked before serving: found only
    once ready, it was a traceback, exit 1, with the packs started for nothing), or None."""
    directory = path.parent
    if path.is_dir():
        return "a directory, not a file"
    if not directory.is_dir():
        return f"no directory {directory} to write it in"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"cannot write in {directory} (its permissions)"
    return None


def _reconnect_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not MIN_RECONNECT_S <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r}: expected {MIN_RECONNECT_S:g} seconds or more")
    return seconds


def _cmd_check(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from .plainerrors import ConfigError

    try:
        settings = _settings(args, environ)
    except ConfigError as exc:
        if args.json:  # what --help promises for a manifest that cannot be used, whatever the reason
            import json

            print(json.dumps({"ok": False, "manifest": str(args.manifest), "error": str(exc)}))
        return _fail(str(exc))
    import asyncio

    return asyncio.run(_check(settings, as_json=args.json))


async def _check(settings: SidecarSettings, *, as_json: bool = False) -> int:
    import json

    from .plainerrors import ConfigError
    from .sidecar import Sidecar

    sidecar: Sidecar = Sidecar(settings)
    try:
        await sidecar.load_packs()
    except ConfigError as exc:
        await sidecar.stop(0)
        if as_json:
            print(json.dumps({"ok": False, "manifest": settings.manifest.source, "error": str(exc)}))
        return _fail(str(exc))
    from .announcement import hub_problems

    sandbox = settings.sandbox or settings.manifest.sandbox
    refused, blocked = hub_problems(sandbox, sidecar.registry)
    if refused is not None:  # no hub can register it: as bad as a manifest that does not load
        await sidecar.stop(0)
        message = f"{settings.manifest.source}: a hub cannot register this sidecar: {refused}"
        if as_json:
            print(json.dumps({"ok": False, "manifest": settings.manifest.source, "error": message}))
        return _fail(message)
    warnings = [
        f"tool {name}: a hub blocks it" + (f" (as sandbox {sandbox})" if sandbox else "") + f": {reason}"
        for name, reason in blocked
    ]
    if as_json:
        tools = []
        for name in sidecar.registry.names():
            registered = sidecar.registry.get(name)
            assert registered is not None
            t = registered.tool
            tools.append(
                {
                    "name": t.name,
                    "title": t.title or t.description.strip().split("\n", 1)[0],
                    "read_only": t.annotations.read_only,
                    "destructive": t.annotations.destructive,
                    "roles": sorted(t.roles),
                }
            )
        await sidecar.stop(0)
        checked = {"ok": True, "manifest": settings.manifest.source, "tools": tools, "warnings": warnings}
        print(json.dumps(checked, indent=2))
        return EXIT_OK
    for name in sidecar.registry.names():
        registered = sidecar.registry.get(name)
        assert registered is not None
        tool = registered.tool
        flags = [
            f
            for f, on in (
                ("read-only", tool.annotations.read_only),
                ("destructive", tool.annotations.destructive),
                # Every tool is listed; callers without one of these roles do not see this one.
                (f"roles: {', '.join(sorted(tool.roles))}", bool(tool.roles)),
            )
            if on
        ]
        title = tool.title or tool.description.strip().split("\n", 1)[0][:72]
        print(f"{tool.name:<16} {title}" + (f"  [{', '.join(flags)}]" if flags else ""))
    await sidecar.stop(0)
    for warning in warnings:
        print(f"mcphub local: warning: {warning}", file=sys.stderr)
    print(
        f"{settings.manifest.source}: ok, {len(sidecar.registry)} tools"
        + (f", {len(warnings)} of which a hub blocks" if warnings else ""),
        file=sys.stderr,
    )
    return EXIT_OK


def _cmd_health(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    import asyncio
    import json

    from .plainerrors import ConfigError

    def usage(message: str) -> int:
        if args.json:  # one object on every exit path, bad usage included
            print(json.dumps({"healthy": False, "sidecar": None, "hub_link": None, "message": message}))
        return _fail(message, EXIT_USAGE)

    timeout = _health_timeout(args.timeout)
    if timeout is None:
        if (parser := getattr(args, "usage_parser", None)) is not None:
            parser.print_usage(sys.stderr)
        return usage(
            f"--timeout: expected more than 0 and at most {MAX_HEALTH_TIMEOUT_S:g} seconds, "
            f"got {args.timeout!r}"
        )
    try:
        target = _health_target(args, environ)
    except ConfigError as exc:  # a typo is bad usage, not a sidecar that is down
        return usage(str(exc))

    healthy, said, link = asyncio.run(_health(target, timeout))
    if args.json:  # one object, whatever the answer: a script reads it rather than the words
        print(json.dumps({"healthy": healthy, "sidecar": target, "hub_link": link, "message": said}))
        return EXIT_OK if healthy else EXIT_UNHEALTHY
    if not healthy:
        return _fail(said, EXIT_UNHEALTHY)
    print(said)
    return EXIT_OK


MAX_HEALTH_TIMEOUT_S = 3600.0


def _health_timeout(value: str) -> float | None:
    """`--timeout` in seconds, or None for no usable number (-1, 0 or nan made every answer
    DEADLINE_EXCEEDED: a healthy sidecar reported unhealthy)."""
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 < seconds <= MAX_HEALTH_TIMEOUT_S else None


def ready_file_path(environ: Mapping[str, str]) -> Path:
    """Where the images' entrypoint (`sandbox_images/entrypoint.sh`) has the sidecar write its
    ready line: `$MCPHUB_RUN_DIR/sidecar.ready`, the run directory being `$TMPDIR/mcphub-UID` by
    default (`/tmp` when `TMPDIR` is unset), as in the entrypoint."""
    run_dir = environ.get("MCPHUB_RUN_DIR") or os.path.join(
        environ.get("TMPDIR") or "/tmp",  # noqa: S108
        f"mcphub-{os.getuid()}",
    )
    return Path(run_dir) / "sidecar.ready"


def _chosen_at_start(address: str) -> bool:
    """Whether a `--grpc` value leaves the port to the sidecar: `off` (an internal port) or port 0."""
    from .addresses import split_host_port

    return address.strip().lower() == "off" or split_host_port(address.strip())[2] == "0"


def _bound_grpc(path: Path) -> str | None:
    """The gRPC address a sidecar's ready file says it bound, or None without a usable one."""
    import json

    try:
        ready = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    grpc = ready.get("grpc") if isinstance(ready, dict) else None
    return grpc if isinstance(grpc, str) and grpc else None


def _health_target(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    """The address to ask: --grpc; else $MCPHUB_LOCAL_GRPC when it names a port; else, when it
    leaves the port to the sidecar (`:0`, `off`) or --ready-file is given, the address the ready
    file says the sidecar bound; else the default."""
    from .plainerrors import ConfigError
    from .settings import hub_address

    if args.grpc:
        return hub_address(args.grpc, key="--grpc", example=DEFAULT_GRPC)
    configured = environ.get("MCPHUB_LOCAL_GRPC") or ""
    if configured and not args.ready_file and not _chosen_at_start(configured):
        return hub_address(configured, key="$MCPHUB_LOCAL_GRPC", example=DEFAULT_GRPC)
    if not configured and not args.ready_file:
        return DEFAULT_GRPC
    path = Path(args.ready_file) if args.ready_file else ready_file_path(environ)
    bound = _bound_grpc(path)
    if bound is None:
        why = (
            f"--ready-file {path}"
            if args.ready_file
            else f"$MCPHUB_LOCAL_GRPC is {configured!r}, so the sidecar chose its port when it started, and "
            f"its ready file {path} (the entrypoint's $MCPHUB_RUN_DIR/sidecar.ready)"
        )
        raise ConfigError(
            f'{why} does not say which address it bound (missing, or no "grpc" in it): give '
            "--grpc HOST:PORT, or --ready-file with the file the sidecar was started with "
            "(`local serve --ready-file`), or give the sidecar a fixed port"
        )
    return hub_address(bound, key=f"the ready file {path}", example=DEFAULT_GRPC)


async def _health(target: str, timeout: float) -> tuple[bool, str, dict[str, str] | None]:
    """Whether the sidecar at `target` is healthy, the line that says so, and its hub link's state."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = await stub.Check(
                health_pb2.HealthCheckRequest(service="mcphub.v1.ToolHub"), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            return False, f"sidecar at {target} is not healthy: {exc.code().name}: {exc.details()}", None
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            return False, f"sidecar at {target} is {status}", None
        link = await _hub_link(stub, timeout)
    if link is None:
        return True, f"sidecar at {target} is serving", None
    status, hub, detail = link.get("status", "?"), link.get("hub", "?"), link.get("detail", "")
    if status == "registered":
        said = f"sidecar at {target} is serving; registered with the hub at {hub} as {link.get('sandbox')}"
        return True, said, link
    if status == "connecting":
        # The hub may be down or unreachable for a while; the sidecar still serves its agent.
        said = f"sidecar at {target} is serving; connecting to the hub at {hub}" + (
            f" ({detail})" if detail else ""
        )
        return True, said, link
    what = "refuses it" if status == "refused" else f"gave its sandbox to another connection ({status})"
    return False, f"sidecar at {target} is serving, but the hub at {hub} {what}: {detail}", link


async def _hub_link(stub: Any, timeout: float) -> dict[str, str] | None:
    """The hub link's state (see `mcp_local.linkhealth`), or None when the sidecar has no `--hub`."""
    import json

    import grpc
    from grpc_health.v1 import health_pb2

    from .linkhealth import LINK_SERVICE, LINK_STATE_KEY

    call = stub.Check(health_pb2.HealthCheckRequest(service=LINK_SERVICE), timeout=timeout)
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        return {"status": "unknown", "hub": "?", "detail": f"{exc.code().name}: {exc.details()}"}
    for key, value in await call.trailing_metadata() or ():
        if key == LINK_STATE_KEY:
            state: dict[str, str] = json.loads(value)
            return state
    return None


def _serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--manifest",
        metavar="FILE",
        help=f"the image's manifest (default: $MCPHUB_MANIFEST, then {DEFAULT_MANIFEST}; without "
        "either, the files, git and process packs on the current directory)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="scratch space for packs (default: $TMPDIR/mcphub-sidecar-UID, $TMPDIR being /tmp when unset; "
        "never the hub's $MCPHUB_STATE_DIR)",
    )


def add_local_commands(
    sub: Any, formatter: type[argparse.HelpFormatter] = argparse.RawDescriptionHelpFormatter
) -> None:
    """Add `local serve|check|health` to an argparse subparsers object (of `mcphub`)."""
    local = sub.add_parser(
        "local",
        formatter_class=formatter,
        help="the in-sandbox sidecar: serve this sandbox's own tools (sql, files, git, process)",
        description=(
            "The sidecar runs inside a sandbox next to the agent. It serves the tools its image's\n"
            "manifest names over gRPC and MCP on loopback, and with --hub registers them with a hub\n"
            "over one outbound stream (no inbound port needed). See docs/sidecar.md."
        ),
    )
    lsub = local.add_subparsers(dest="local_command", metavar="COMMAND")
    local.set_defaults(func=lambda args, environ: (local.print_help(sys.stderr), EXIT_USAGE)[1])

    serve = lsub.add_parser(
        "serve",
        formatter_class=formatter,
        help="serve the manifest's tools (gRPC, MCP) and register with a hub",
        description=(
            "Serve the tools of the manifest. Prints one ready line (JSON with --json; on stderr with\n"
            "--stdio). Stops cleanly on SIGINT/SIGTERM.\n\n"
            "environment: MCPHUB_MANIFEST, MCPHUB_LOCAL_GRPC, MCPHUB_LOCAL_HTTP, MCPHUB_HUB,\n"
            "MCPHUB_TOKEN (prefer it to --token: argv is visible to every process), MCPHUB_SANDBOX."
        ),
    )
    _serve_options(serve)
    serve.add_argument(
        "--grpc", metavar="HOST:PORT", help=f"ToolHub on loopback (default {DEFAULT_GRPC}; 'off')"
    )
    serve.add_argument("--http", metavar="HOST:PORT", help="MCP Streamable HTTP at /mcp on loopback ('off')")
    serve.add_argument("--stdio", action="store_true", help="serve MCP on stdin/stdout")
    serve.add_argument("--hub", metavar="HOST:PORT", help="register with the hub at this gRPC address")
    serve.add_argument("--token", help="bearer token naming this sandbox at the hub (default: $MCPHUB_TOKEN)")
    serve.add_argument(
        "--sandbox", metavar="NAME", help="the sandbox's name at the hub (default: the manifest's)"
    )
    serve.add_argument("--ready-file", metavar="PATH", help="write the ready line (JSON) to this file too")
    serve.add_argument("--json", action="store_true", help="print the ready line as JSON")
    serve.add_argument(
        "--reconnect-max",
        type=_reconnect_seconds,
        default=30.0,
        metavar="SECONDS",
        help=f"longest wait between redials of the hub (default: 30; at least {MIN_RECONNECT_S:g})",
    )
    serve.set_defaults(func=_cmd_serve)

    check = lsub.add_parser(
        "check",
        formatter_class=formatter,
        help="validate a manifest and list the tools it gives",
        description=(
            "Validate the manifest, load its packs and list their tools; exit 2 on any problem, and\n"
            "when no hub could register the sidecar (more tools, or a larger announcement, than the\n"
            "hub takes). A tool a hub would block (its name too long with the `<sandbox>__` prefix,\n"
            "a schema that is not valid once sent as JSON) is a warning."
        ),
    )
    _serve_options(check)
    check.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object: {"ok", "manifest", "tools": [{name, title, read_only, destructive, '
        'roles}], "warnings": [the tools a hub blocks, and why]}, or {"ok": false, "manifest", "error"} '
        "(exit 2)",
    )
    check.add_argument(
        "--sandbox",
        metavar="NAME",
        help="the sandbox's name at the hub, to check its tools' names with its prefix (default: "
        "$MCPHUB_SANDBOX, then the manifest's)",
    )
    check.set_defaults(
        func=_cmd_check,
        grpc=None,
        http=None,
        stdio=False,
        hub=None,
        token=None,
        reconnect_max=30.0,
    )

    health = lsub.add_parser(
        "health",
        formatter_class=formatter,
        help="exit 0 when the sidecar serves and its hub does not refuse it (for HEALTHCHECK)",
        description=(
            "Ask the sidecar's gRPC health service. Exit 0 when it is serving and (when it was\n"
            "started with --hub) registered or still connecting; 1 when it is not serving, or the\n"
            "hub refuses it (its token, or the sandbox it names) or gave its sandbox to another\n"
            "connection."
        ),
    )
    health.add_argument(
        "--grpc",
        metavar="HOST:PORT",
        help=f"the sidecar's address (default $MCPHUB_LOCAL_GRPC, then {DEFAULT_GRPC}; see --ready-file)",
    )
    health.add_argument(
        "--ready-file",
        metavar="PATH",
        help="ask the gRPC address this ready file (`local serve --ready-file`) says the sidecar bound "
        "(default: $MCPHUB_RUN_DIR/sidecar.ready, the entrypoint's, when $MCPHUB_LOCAL_GRPC is "
        "HOST:0 or 'off')",
    )
    health.add_argument(
        "--timeout",
        default="3",
        metavar="SECONDS",
        help=f"how long to wait for each answer (default: 3; more than 0, at most {MAX_HEALTH_TIMEOUT_S:g}; "
        "else exit 2)",
    )
    health.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object: {"healthy", "sidecar", "hub_link" (status, hub, sandbox, detail; '
        'null without --hub), "message"}; the exit code is the same',
    )
    health.set_defaults(func=_cmd_health)


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """`parser.parse_args(argv)`, but an argument no (sub)command takes is reported with the usage
    of the command it was given to: argparse reports it with the top-level one (`usage: mcphub
    [-h] COMMAND ...` for `mcphub local check --jsn`), which does not say what that command takes."""
    _own_usage(parser)
    args, extra = parser.parse_known_args(argv)
    if extra:
        owner: argparse.ArgumentParser = getattr(args, "usage_parser", parser)
        owner.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _own_usage(parser: argparse.ArgumentParser) -> None:
    """Each subcommand's parser as the `usage_parser` default of the arguments it parses (the
    innermost one given wins: a subcommand's defaults are applied after its parent's)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                command.set_defaults(usage_parser=command)
                _own_usage(command)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """`python -m mcp_local ...`: the `local` commands alone, without the hub's CLI."""
    parser = argparse.ArgumentParser(prog="mcphub", description="mcphub sidecar")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_local_commands(sub)
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] != "local":
        arguments.insert(0, "local")
    args = parse_arguments(parser, arguments)
    args.owns_process = argv is None  # a caller passing argv keeps its process (no exec)
    func: Callable[[argparse.Namespace, Mapping[str, str]], int] = args.func
    try:
        return func(args, os.environ if environ is None else environ)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
