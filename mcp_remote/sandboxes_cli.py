"""`mcphub sandboxes list|accept|forget`: the operator's view of registered sandboxes, over gRPC.

    mcphub sandboxes list                      connected sandboxes, exposed and blocked tools
    mcphub sandboxes accept SANDBOX [TOOL...]  accept the changed definitions of blocked tools
    mcphub sandboxes forget SANDBOX            drop the pins of a sandbox that is gone for good

All need a principal with the `operator` role; on a hub of this host, without --token, they use
the host operator's token from the state directory (`operator.token`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["add_sandbox_commands"]


def _cmd_list(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from .cli import _run, hub_target
    from .cli_admin import operator_token

    target = hub_target(args, environ)
    return _run(_list(target, operator_token(args, environ, target), as_json=args.json))


async def _list(target: str, token: str | None, *, as_json: bool) -> int:
    import json

    import grpc

    from mcp_local.shown import shown
    from mcphub_proto.v1 import sidecar_pb2 as spb
    from mcphub_proto.v1 import sidecar_pb2_grpc as spb_grpc

    from .cli import EXIT_OK

    async with grpc.aio.insecure_channel(target) as channel:
        stub = spb_grpc.SandboxRegistryStub(channel)  # type: ignore[no-untyped-call]
        try:
            response = await stub.ListSandboxes(spb.ListSandboxesRequest(), metadata=_metadata(token))
        except grpc.aio.AioRpcError as exc:
            return _failed(exc, target, as_json=as_json)
    if as_json:
        print(json.dumps([_sandbox_json(s) for s in response.sandboxes], indent=2))
        return EXIT_OK
    # A sidecar chose its tools' names and version (and the reasons quote them): escaped, they can
    # neither start a line of their own nor send the terminal an escape sequence.
    for s in response.sandboxes:
        print(
            shown(
                f"{s.name}  (principal {s.principal}, version {s.version or '?'}, "
                f"{len(s.exposed)} tools exposed, {len(s.blocked)} blocked)"
            )
        )
        for b in s.blocked:
            print(shown(f"  blocked {b.name}: {b.reason}"))
    count = len(response.sandboxes)
    print(f"{count} sandbox{'' if count == 1 else 'es'} connected to {target}", file=sys.stderr)
    return EXIT_OK


def _failed(exc: Any, target: str, *, as_json: bool) -> int:
    """A failed RPC: its line on stderr; with --json also `{"error": {"code", "message"}}` on
    stdout (as `mcphub call --json`), so that a script reading stdout reads JSON whatever happened."""
    from .cli import EXIT_HUB, _json_failure, _rpc_failure, _rpc_problem

    if as_json:
        return _json_failure(*_rpc_problem(exc, target), EXIT_HUB)
    return _rpc_failure(exc, target)


def _sandbox_json(sandbox: Any) -> dict[str, Any]:
    """A sandbox for `list --json`, as `approvals list --json` writes an approval: the proto's own
    field names, every field (an empty list too), times as numbers, not protobuf's strings."""
    from google.protobuf.json_format import MessageToDict

    result: dict[str, Any] = MessageToDict(
        sandbox, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    result["connected_at_unix_ms"] = int(result["connected_at_unix_ms"])
    return result


def _cmd_accept(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from .cli import _run, hub_target
    from .cli_admin import operator_token

    target = hub_target(args, environ)
    token = operator_token(args, environ, target)
    return _run(_accept(target, token, args.sandbox, args.tools, as_json=args.json))


async def _accept(target: str, token: str | None, sandbox: str, tools: list[str], *, as_json: bool) -> int:
    import json

    import grpc

    from mcp_local.shown import shown
    from mcphub_proto.v1 import sidecar_pb2 as spb
    from mcphub_proto.v1 import sidecar_pb2_grpc as spb_grpc

    from .cli import EXIT_OK

    async with grpc.aio.insecure_channel(target) as channel:
        stub = spb_grpc.SandboxRegistryStub(channel)  # type: ignore[no-untyped-call]
        try:
            response = await stub.AcceptTools(
                spb.AcceptToolsRequest(sandbox=sandbox, tools=tools), metadata=_metadata(token)
            )
        except grpc.aio.AioRpcError as exc:
            return _failed(exc, target, as_json=as_json)
    if as_json:
        print(json.dumps({"sandbox": sandbox, "accepted": list(response.accepted)}, indent=2))
        return EXIT_OK
    for name in response.accepted:
        print(shown(f"accepted {sandbox}/{name}: its new definition is pinned and exposed"))
    if not response.accepted:
        print(shown(f"sandbox {sandbox} had no blocked tool to accept"), file=sys.stderr)
    return EXIT_OK


def _cmd_forget(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from .cli import _run, hub_target
    from .cli_admin import operator_token

    target = hub_target(args, environ)
    return _run(_forget(target, operator_token(args, environ, target), args.sandbox, as_json=args.json))


async def _forget(target: str, token: str | None, sandbox: str, *, as_json: bool) -> int:
    import json

    import grpc

    from mcp_local.shown import shown
    from mcphub_proto.v1 import sidecar_pb2 as spb
    from mcphub_proto.v1 import sidecar_pb2_grpc as spb_grpc

    from .cli import EXIT_OK

    async with grpc.aio.insecure_channel(target) as channel:
        stub = spb_grpc.SandboxRegistryStub(channel)  # type: ignore[no-untyped-call]
        try:
            response = await stub.ForgetSandbox(
                spb.ForgetSandboxRequest(sandbox=sandbox), metadata=_metadata(token)
            )
        except grpc.aio.AioRpcError as exc:
            return _failed(exc, target, as_json=as_json)
    if as_json:
        print(json.dumps({"sandbox": sandbox, "pins": response.pins}, indent=2))
        return EXIT_OK
    print(shown(f"forgot the pins of {response.pins} tools of sandbox {sandbox}"))
    return EXIT_OK


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    from mcphub_proto.metadata import AUTHORIZATION

    return ((AUTHORIZATION, f"Bearer {token}"),) if token else ()


def add_sandbox_commands(sub: Any, client_options: Callable[[argparse.ArgumentParser], None]) -> None:
    sandboxes = sub.add_parser(
        "sandboxes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="sandboxes registered with the hub: list them, accept changed tool definitions, forget one",
        description=__doc__,
    )
    ssub = sandboxes.add_subparsers(dest="sandboxes_command", metavar="COMMAND")
    sandboxes.set_defaults(func=lambda args, environ: (sandboxes.print_help(sys.stderr), 2)[1])

    listing = ssub.add_parser("list", help="connected sandboxes and their exposed and blocked tools")
    listing.add_argument(
        "--json",
        action="store_true",
        help="print one JSON array of the sandboxes: name, principal, version, exposed, blocked (name, "
        "reason, pinned_sha256, announced_sha256), connected_at_unix_ms; on failure "
        '{"error": {"code", "message"}}',
    )
    client_options(listing)
    listing.set_defaults(func=_cmd_list)

    accept = ssub.add_parser(
        "accept",
        help="accept the changed definitions of a sandbox's blocked tools",
        description=(
            "Pin the announced definitions of the sandbox's blocked tools (all, or those named) "
            "and expose them."
        ),
    )
    accept.add_argument("sandbox", help="the sandbox's name, e.g. sbx-42")
    accept.add_argument("tools", nargs="*", help="its tools' own names (default: every blocked tool)")
    accept.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object: {"sandbox", "accepted": [tool names]}; on failure '
        '{"error": {"code", "message"}}',
    )
    client_options(accept)
    accept.set_defaults(func=_cmd_accept)

    forget = ssub.add_parser(
        "forget",
        help="drop the pinned tool definitions of a sandbox that is gone for good",
        description=(
            "Drop every pinned tool definition of the sandbox (it must not be connected). If it "
            "ever connects again, its tools are pinned afresh, as a new sandbox's are."
        ),
    )
    forget.add_argument("sandbox", help="the sandbox's name, e.g. sbx-42")
    forget.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object: {"sandbox", "pins": the number of pins dropped}; on failure '
        '{"error": {"code", "message"}}',
    )
    client_options(forget)
    forget.set_defaults(func=_cmd_forget)
