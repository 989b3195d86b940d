"""Operator commands of `mcphub`: `policy`, `approvals` and `audit`.

Exit codes as for every mcphub command: 0 ok, 1 a check failed (a policy that
would deny, a broken audit log), 2 bad usage or configuration, 3 the hub refused
or could not be reached.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["add_admin_commands"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_HUB = 0, 1, 2, 3


def _fail(message: str, code: int, grpc_code: str | None = None) -> int:
    """`message` on stderr (and on stdout as JSON for a `--json` command: `clifail`)."""
    from .clifail import fail

    return fail(message, code, grpc_code)


def _run(coro: Any) -> int:
    import uvloop

    result: int = uvloop.run(coro)
    return result


def _state_dir(args: argparse.Namespace, environ: Mapping[str, str]) -> Path:
    from .statedir import default_state_dir

    if getattr(args, "state_dir", None):
        return Path(args.state_dir)
    if environ.get("MCPHUB_STATE_DIR"):
        return Path(environ["MCPHUB_STATE_DIR"])
    return default_state_dir(environ)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- policy ------------------------------------------------------------------------------------


def _cmd_policy_check(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from mcp_local.errors import ConfigError

    from .policy import broad_allows, default_policy_config, load_policy_file, resolve_policy, unapprovable

    try:
        given = load_policy_file(args.file)
        config = given if given is not None else default_policy_config()
        policy = resolve_policy(given)
        principals = _principals_in(args.file)
        _check_hub_config(args.file, environ)
    except ConfigError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        return _fail(str(exc), EXIT_USAGE)
    # In a hub config, the principals (none too, as the hub sees it) say who can approve what
    # the rules ask; a policy document alone names nobody to judge by.
    warnings = unapprovable(config, [p.principal() for p in principals]) if principals is not None else []
    warnings += broad_allows(config)
    if args.json:
        print(json.dumps({"ok": True, "rules": policy.rule_names, "warnings": warnings}))
    else:
        what = (
            "valid policy" if given is not None else "a hub config without `policy:`, so the shipped default"
        )
        print(f"{args.file}: {what} with {len(policy.rule_names)} rules")
        for name in policy.rule_names:
            print(f"  - {name}")
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _count(value: str, least: int = 1) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if not least <= number <= 1_000_000_000:
        raise argparse.ArgumentTypeError(f"{value!r}: expected {least} or more, at most 1000000000")
    return number


def _lines(value: str) -> int:
    """`audit tail -n`: 0 too, which with -f follows only the records written from now on."""
    return _count(value, least=0)


def _check_hub_config(path: Path, environ: Mapping[str, str]) -> None:
    """A hub config file (not a bare policy document) checked whole, as `serve --config` and a
    SIGHUP read it, without starting anything: its keys, principals and addresses, and the
    tokens written in it. A ConfigError says what a hub would refuse (`policy check` said ok
    of a config `serve` refuses: an unknown key, a token too short). The tokens a hub reads
    from a variable or a file are read where it runs, so they are not read here."""
    import yaml

    from mcp_local.errors import ConfigError
    from mcp_local.plainerrors import read_text

    from .config import HubConfig, load_config

    try:
        data = yaml.safe_load(read_text(path, "the config file"))
    except yaml.YAMLError:
        return  # load_policy_file, which runs first, says what is wrong with it
    if not isinstance(data, dict) or not data.keys() & HubConfig.model_fields.keys():
        return  # a policy document
    config = load_config(path, environ)
    for principal in config.principals:
        if principal.token is not None:
            try:
                principal.resolve_token(environ)
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from None


def _principals_in(path: Path) -> list[Any] | None:
    """The principals of a hub config file (None for a policy document)."""
    import yaml
    from pydantic import ValidationError

    from mcp_local.errors import ConfigError
    from mcp_local.plainerrors import read_text

    from .config import PrincipalConfig, format_validation_error

    try:
        data = yaml.safe_load(read_text(path, "the config file"))
    except yaml.YAMLError:
        return None  # load_policy_file, which runs first, says what is wrong with it
    if not isinstance(data, dict) or "policy" not in data:
        return None
    if not isinstance(data.get("principals"), list):
        return []
    try:
        return [PrincipalConfig.model_validate(p) for p in data["principals"]]
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"{path}: principals")) from None


def _find_tool(config: Any, tool: str) -> tuple[Any, str] | None:
    """`tool` and its source among the configured packs (loaded, not started)."""
    from mcp_local.errors import ConfigError
    from mcp_local.packs import PackEnv, load_pack

    env = PackEnv(state_dir=config.state_dir)
    for spec in config.packs:
        try:
            pack = load_pack(spec.name, spec.options, env)
        except ConfigError:
            continue
        for t in pack.tools():
            if t.name == tool:
                return t, f"pack:{pack.name}"
    return None


def _tool_refuses(config: Any, principal: str, tool: Any, arguments: Any) -> str | None:
    """What the tool's own precheck says of these arguments (why it would refuse the call), or None."""
    from mcp_local.principals import LOCAL, OPERATOR
    from mcp_local.tools import ToolCall

    if tool is None or tool.precheck is None or not isinstance(arguments, dict):
        return None
    call = ToolCall(tool.name, json.dumps(arguments).encode())
    call.tool, call.arguments = tool, arguments
    entry = next((p for p in config.principals if p.name == principal), None)
    call.principal = entry.principal() if entry else OPERATOR if principal == OPERATOR.name else LOCAL
    try:
        refusal: str | None = tool.precheck(call)
    except Exception:  # a precheck that breaks is no verdict, as in the hub
        return None
    return refusal


def _unauthorized(config: Any, principal: str, tool: Any, name: str) -> tuple[str, str] | None:
    """The gRPC status and the reason with which the hub refuses `principal` the tool before
    any policy rule is asked, or None. Without principals in the config, nobody is refused."""
    from mcp_local.principals import OPERATOR

    if not config.principals or principal == OPERATOR.name:  # the host's operator may call anything
        return None
    entry = next((p for p in config.principals if p.name == principal), None)
    if entry is None:
        names = ", ".join(p.name for p in config.principals)
        return "UNAUTHENTICATED", f"no principal {principal!r} in the config (its principals: {names})"
    who = entry.principal()
    if not who.may_call(name):
        return (
            "PERMISSION_DENIED",
            f"principal {principal!r} may not call {name!r} (its tools: {', '.join(who.tools)})",
        )
    if tool is not None and not who.may_use(tool):
        return (
            "PERMISSION_DENIED",
            f"tool {name!r} is for principals with the role {' or '.join(sorted(tool.roles))}",
        )
    return None


def _cmd_policy_explain(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from mcp_local.errors import ConfigError
    from mcp_local.tools import ToolAnnotations

    from .cli import arguments_option
    from .config import load_config
    from .policy import describe_approver_groups, load_policy_file, resolve_policy

    try:
        arguments = arguments_option(args.args)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        config = load_config(args.config, environ, {"state_dir": args.state_dir})
        policy = resolve_policy(load_policy_file(args.policy) if args.policy else config.policy)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    found = _find_tool(config, args.tool)
    tool, source = found if found else (None, "unknown")
    annotations = tool.annotations_of(arguments) if tool is not None else ToolAnnotations()
    refused = _unauthorized(config, args.principal, tool, args.tool)
    if refused is not None:
        status, why = refused
        if args.json:
            out = {"tool": args.tool, "principal": args.principal, "tool_found": found is not None}
            out |= {"decision": "deny", "authorized": False, "status": status, "rules": [], "reason": why}
            print(json.dumps(out, indent=2))
        else:
            print(f"DENY: {args.tool} for {args.principal}")
            print(f"  rule:   none: refused before the policy is asked ({status})")
            print(f"  reason: {why}")
        return EXIT_OK
    trusted = not source.startswith("sandbox:") and not args.tool.count("__")
    decision = policy.evaluate(args.principal, args.tool, arguments, annotations, trusted=trusted)
    # As the gate does: nobody is asked about a call its tool refuses anyway (docs/cloud.md).
    refuses = _tool_refuses(config, args.principal, tool, arguments) if decision.verdict == "ask" else None
    out = {
        "tool": args.tool,
        "principal": args.principal,
        "tool_found": found is not None,
        "decision": decision.verdict,
        "authorized": True,
        "rules": list(decision.rules),
        "reason": decision.reason,
        "approver_groups": list(decision.approvers),
        "approval_timeout_s": decision.timeout_s,
        "tool_refuses": refuses,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    elif refuses is not None:
        print(f"REFUSED BY THE TOOL: {args.tool} for {args.principal}")
        print(f"  reason: {refuses}")
        print("  (the policy alone would ask; nobody is asked about a call its tool refuses)")
    else:
        print(f"{decision.verdict.upper()}: {args.tool} for {args.principal}")
        print(f"  rule:   {decision.rule}")
        if decision.reason:
            print(f"  reason: {decision.reason}")
        if decision.verdict == "ask":
            who = describe_approver_groups(decision.approvers) if decision.approvers else "any approver"
            print(f"  waits up to {decision.timeout_s:g}s for {who}")
        if found is None:
            print(f"  (no configured pack offers {args.tool!r}; evaluated without annotations)")
    return EXIT_OK


# --- approvals ---------------------------------------------------------------------------------


def operator_token(args: argparse.Namespace, environ: Mapping[str, str], target: str) -> str | None:
    """--token, else $MCPHUB_TOKEN, else the hub host operator's (its state directory's
    operator.token): operators' commands work on the hub's host without a token to copy.
    That token goes only to the hub running from that state directory: sent to `--hub`
    anywhere else, it would let whoever listens there decide the local hub's approvals.

    When no token is sent, a line on stderr says why: the hub answers as it does any caller
    without one ("principal 'local' does not have the approver role"), which does not say
    that mcphub sent none, nor which state directory it looked in."""
    from .cli import checked_token
    from .statedir import HUB_FILE, StateError, load_hub_file, names_a_running_hub

    if args.token:
        return checked_token(str(args.token), "--token")
    if environ.get("MCPHUB_TOKEN"):
        return checked_token(environ["MCPHUB_TOKEN"], "$MCPHUB_TOKEN")
    state_dir = _state_dir(args, environ)
    try:
        running = load_hub_file(state_dir)
    except StateError as exc:
        why = str(exc)
    else:
        if running is None:
            why = f"no hub is running from that state directory (it has no {HUB_FILE})"
        elif not names_a_running_hub(running, state_dir):
            # A hub killed without removing its file: its port may be anyone's now.
            why = f"the hub that wrote its {HUB_FILE} (pid {running.get('pid')}) is not running"
        elif running["grpc"] != target:
            why = f"the hub running from that state directory listens on {running['grpc']}"
        else:
            path = state_dir / "operator.token"
            try:
                return path.read_text().strip()
            except OSError as exc:
                why = f"{path}: {exc.strerror or exc}"
    print(
        f"mcphub: not sending {state_dir}'s operator token to {target}: {why} "
        "(pass --token or $MCPHUB_TOKEN, or --state-dir of the hub at that address)",
        file=sys.stderr,
    )
    return None


def _shown(text: str) -> str:
    """A caller's text for the approver's terminal: what would hide or reorder, as an escape."""
    from mcp_local.shown import shown

    return shown(text)


def _show_approval(a: Any) -> str:
    from .policy import describe_approver_groups

    left = max(0, (a.expires_at_unix_ms - int(time.time() * 1000)) // 1000)
    when = (
        f"expires in {left}s" if a.state == "pending" else (f"by {a.decided_by}" if a.decided_by else a.state)
    )
    needs = describe_approver_groups(list(a.approver_groups)) if a.approver_groups else "any approver"
    excerpt = a.arguments_json[:300]
    arguments = _shown(excerpt)
    rest = len(a.arguments_json.encode()) - len(excerpt.encode())  # in the listing, for --json
    if a.arguments_bytes_left_out:  # not kept by the hub; the approval covers them all the same
        arguments += f" ... ({rest + a.arguments_bytes_left_out} more bytes: --json shows {rest} more"
        arguments += ", the hub keeps no more of them)"
    elif rest:
        arguments += f" ... ({rest} more bytes: --json shows them)"
    return _shown(f"{a.id}  {a.state:<8}  {a.principal} -> {a.tool}  {when}") + (
        f"\n    arguments: {arguments}"
        f"\n    why:       {_shown(a.reason or a.rule)}"
        f"\n    approvers: {_shown(needs)}"
    )


_TIMES = ("created_at_unix_ms", "expires_at_unix_ms", "decided_at_unix_ms", "used_at_unix_ms")
_NUMBERS = (*_TIMES, "arguments_bytes_left_out")


def _approval_json(a: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    result: dict[str, Any] = MessageToDict(
        a, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    # Protobuf's JSON writes 64-bit integers as strings; `audit --json` prints times as numbers.
    for name in _NUMBERS:
        result[name] = int(result[name])
    return result


APPROVALS_RPC_S = 30.0
"""The longest `approvals list` (each page) and a decision wait for the hub: it answers a store
that hangs within about 10 s (`audit/postgres.py`, APPROVAL_ANSWER_S), so this is for a hub that
does not answer at all (stopped with SIGSTOP, its host stuck)."""


async def _approvals(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    import grpc

    from mcphub_proto.v1 import approvals_pb2 as apb
    from mcphub_proto.v1 import approvals_pb2_grpc as apb_grpc

    from .cli import hub_target

    target = hub_target(args, environ)
    token = operator_token(args, environ, target)
    from_flag_or_env = bool(args.token or environ.get("MCPHUB_TOKEN"))
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = apb_grpc.ApprovalsStub(channel)  # type: ignore[no-untyped-call]
        try:
            if args.action == "list":
                states = ["pending", "approved", "denied", "expired", "used"] if args.all else ["pending"]
                listed: list[dict[str, Any]] = []
                count = 0
                request = apb.ListApprovalsRequest(states=states)
                while True:  # the hub answers a page at a time (a few MiB at most)
                    response = await stub.ListApprovals(request, metadata=metadata, timeout=APPROVALS_RPC_S)
                    count += len(response.approvals)
                    for a in response.approvals:
                        if args.json:
                            listed.append(_approval_json(a))
                        else:
                            print(_show_approval(a), flush=True)
                    if not response.next_page_token:
                        break
                    request = apb.ListApprovalsRequest(states=states, page_token=response.next_page_token)
                if args.json:
                    print(json.dumps(listed, indent=2))
                else:
                    print(f"{count} approvals", file=sys.stderr)
            elif args.action == "watch":
                async for a in stub.WatchApprovals(apb.WatchApprovalsRequest(), metadata=metadata):
                    print(json.dumps(_approval_json(a)) if args.json else _show_approval(a), flush=True)
            else:
                approve = args.action == "approve"
                request = apb.DecideApprovalRequest(id=args.id, approve=approve, reason=args.reason or "")
                decided = await stub.DecideApproval(request, metadata=metadata, timeout=APPROVALS_RPC_S)
                if args.json:
                    print(json.dumps(_approval_json(decided), indent=2))
                else:
                    print(_shown(f"{decided.id} {decided.state} by {decided.decided_by}"))
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name.lower()
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                from mcphub_proto.metadata import ERROR_FROM, FROM_HUB

                from .cli import _rpc_problem, unreachable

                # The hub's own answer is marked: its words (a store's "Connection refused") are
                # not the connection's.
                answered = (ERROR_FROM, FROM_HUB) in tuple(exc.trailing_metadata() or ())
                details = exc.details() or ""
                if answered and details.startswith("the PostgreSQL store"):
                    return _fail(f"the hub at {target} cannot reach its store: {details}", EXIT_HUB, code)
                if unreachable(exc):  # in the words, and with the hint, of `tools` and `call`
                    return _fail(_rpc_problem(exc, target)[1], EXIT_HUB, code)
                return _fail(f"the hub is unavailable at {target}: {details}", EXIT_HUB, code)
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return _fail(
                    f"the hub at {target} did not answer within {APPROVALS_RPC_S:.0f} s (is its audit "
                    "store hanging? its log and /healthz say)",
                    EXIT_HUB,
                    code,
                )
            hint = ""
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED and token and not from_flag_or_env:
                # The file was replaced (or remade) after the hub last read it: not a wrong token.
                hint = (
                    f" (the token sent is {_state_dir(args, environ) / 'operator.token'}'s: a hub holds the "
                    "one the file had at its start or its last reload; send it SIGHUP to read the file again)"
                )
            return _fail(f"{code}: {exc.details()}{hint}", EXIT_HUB, code)
    return EXIT_OK


def _cmd_approvals(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from .approvals_service import MAX_REASON_CHARS

    if args.action in ("approve", "deny") and not args.id.strip():
        return _fail(
            f"give the id of the approval to {args.action} (`mcphub approvals list` shows them)", EXIT_USAGE
        )
    if args.action == "deny" and not (args.reason or "").strip():
        return _fail("deny needs --reason TEXT (the caller reads it)", EXIT_USAGE)
    if len(getattr(args, "reason", None) or "") > MAX_REASON_CHARS:
        return _fail(
            f"--reason is {len(args.reason)} characters; at most {MAX_REASON_CHARS} are taken: say it "
            "shorter (a link to more, say)",
            EXIT_USAGE,
        )
    try:
        return _run(_approvals(args, environ))
    except KeyboardInterrupt:
        return 130


# --- audit -------------------------------------------------------------------------------------


def _open_store(args: argparse.Namespace, environ: Mapping[str, str]) -> Any:
    from mcp_local.errors import ConfigError

    from .config import load_config

    config = load_config(args.config, environ, {"state_dir": args.state_dir}) if args.config else None
    if config is not None and config.audit.store == "postgres":
        from .audit.postgres import PostgresStore

        return PostgresStore(config.audit.resolve_dsn(environ), read_only=True), config.state_dir
    from .audit.sqlite import SQLiteStore

    state_dir = config.state_dir if config is not None else _state_dir(args, environ)
    if not state_dir.is_dir():
        raise ConfigError(
            f"no state directory at {state_dir}: has a hub run with it? (--state-dir DIR, $MCPHUB_STATE_DIR)"
        )
    database = state_dir / "audit" / "audit.db"
    if not database.exists() and any((state_dir / "audit").glob("checkpoints-postgres-*.jsonl")):
        raise ConfigError(
            f"no audit log at {database}: the hub of {state_dir} keeps its audit log in PostgreSQL; "
            "give its config with --config (and the DSN's environment variable or file)"
        )
    return SQLiteStore(database, read_only=True), state_dir


async def _verify_report(
    store: Any,
    keys: Any,
    checkpoint_file: Path,
    elsewhere: Sequence[Path] = (),
    **rules: Any,
) -> Any:
    """verify's report, also for a log that cannot be read: that is a broken log, not a crash."""
    import sqlite3

    from .audit import VerifyReport, read_checkpoint_file, verify_log

    try:
        extra = read_checkpoint_file(checkpoint_file)
        for path in elsewhere:
            if not path.is_file():
                return VerifyReport(problem=f"--checkpoints {path}: no such file")
            extra += read_checkpoint_file(path)
    except ValueError as exc:
        return VerifyReport(problem=str(exc))
    try:
        await store.open()
    except FileNotFoundError:
        if not extra:
            raise
        last = max(c.seq for c in extra)
        return VerifyReport(
            first_bad=1,
            problem=f"the audit database is gone ({store.path}), but {checkpoint_file} holds signed "
            f"checkpoints up to record {last}",
        )
    except sqlite3.DatabaseError as exc:
        return VerifyReport(problem=f"the audit database cannot be read ({store.path}): {exc}")
    try:
        return await verify_log(store, keys, extra, **rules)
    except sqlite3.DatabaseError as exc:
        return VerifyReport(problem=f"the audit database cannot be read ({store.path}): {exc}")
    finally:
        await store.close()


async def _verify(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from .audit import load_public_keys
    from .audit.sqlite import SQLiteStore

    store, state_dir = _open_store(args, environ)
    # The hub's key, and the keys it signed with before it was given a new one (signing.pub.<id>).
    keys_paths = list(args.public_key) or [
        state_dir / "audit" / "signing.pub",
        *sorted((state_dir / "audit").glob("signing.pub.*")),
    ]
    missing = [p for p in keys_paths if not p.exists()]
    sqlite = isinstance(store, SQLiteStore)
    if missing and not sqlite:
        # The log is in PostgreSQL, its keys in the hub's state directory: a store that cannot be
        # reached (a wrong DSN) is what to say first, not the keys, nor a SQLite file never meant.
        await store.open()
        await store.close()
    if missing and sqlite and not args.public_key and not (state_dir / "audit").is_dir():
        where = state_dir / "audit" / "audit.db"
        return _fail(
            f"no audit log at {where}; has a hub run with this state directory? (--state-dir DIR)", EXIT_USAGE
        )
    if missing:
        also = "" if sqlite else ", or the hub's --state-dir"
        return _fail(f"no public key at {missing[0]} (pass --public-key FILE{also})", EXIT_USAGE)
    checkpoint_file = state_dir / "audit" / store.checkpoint_file_name
    pub_path = state_dir / "audit" / "signing.pub"
    signed = None
    if pub_path.exists() or (state_dir / "audit" / "signing.key").exists():
        # A hub that signs checkpoints has written this log: it must hold the ones such a hub signs.
        mine = sqlite and pub_path.exists() and pub_path.stat().st_size  # a shared log is not the dir's
        published = load_public_keys([pub_path]) if mine else {}
        signed = (next(iter(published), None), pub_path)
    instance = None
    if not sqlite:
        from .config import load_config
        from .gate import instance_name

        config = load_config(args.config, environ, {"state_dir": args.state_dir})
        instance = config.instance or instance_name(str(config.state_dir))
    report = await _verify_report(
        store,
        load_public_keys(keys_paths),
        checkpoint_file,
        list(args.checkpoints),
        signed=signed,
        instance=instance,
    )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    elif report.ok:
        print(
            f"audit log OK: {report.records} records, {report.checkpoints} signed checkpoints, "
            f"head {report.head_hash[:16]}"
        )
        for note in report.notes:
            print(f"  note: {note}")
    else:
        where = f" at record {report.first_bad}" if report.first_bad is not None else ""
        if report.bad_range is not None:
            where = f" in records {report.bad_range[0]}-{report.bad_range[1]}"
        if report.broken:
            print(f"audit log BROKEN{where}: {report.problem}", file=sys.stderr)
        else:
            print(
                f"audit log NOT VERIFIED: {report.records} records, chain holds (head "
                f"{report.head_hash[:16]}); {report.problem}",
                file=sys.stderr,
            )
    return EXIT_OK if report.ok else EXIT_FAILED


_RELATIVE = re.compile(r"^(\d+)([smhd])$")


def _since_ms(text: str | None) -> int | None:
    if not text:
        return None
    match = _RELATIVE.match(text)
    if match:
        seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return int((time.time() - seconds) * 1000)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected e.g. 10m, 2h, 1d or an ISO time like 2026-11-21T10:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


FOLLOW_PAGE = 1000
FOLLOW_RETRY_S = 2.0  # `audit tail -f`: how often a store that cannot be read is tried again
"""Records `audit tail -f` reads at a time: it reads pages until it has caught up."""

SHOWN_DETAILS = 400
"""Characters of a record's details a text line shows (`--json` shows them all)."""


def _word(value: Any) -> str:
    """A value for a line of `audit tail`: as it is when it is one plain word, else quoted as JSON,
    and escaped where a terminal would hide it, so a caller's text (a tool name, a request id,
    an error) can neither start a line of its own nor pass for another field."""
    if isinstance(value, str) and value and not any(c.isspace() or c in '"=' for c in value):
        return _shown(value)
    return _shown(json.dumps(value, ensure_ascii=False))


def _show_record(r: Any) -> str:
    body = r.body_json()
    details = " ".join(f"{_shown(k)}={_word(v)}" for k, v in sorted(body.items()))
    if len(details) > SHOWN_DETAILS:
        more = len(details) - SHOWN_DETAILS
        details = f"{details[:SHOWN_DETAILS]}... ({more} more characters: --json shows all)"
    who, tool = _word(r.principal), _word(r.tool)
    return f"{_iso(r.ts_ms)}  #{r.seq:<6} {r.kind:<9} {who:<12} {tool:<16} {_word(r.call_id)}  {details}"


async def _read(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    import asyncio  # on use: every `mcphub` command builds this module's parsers

    from mcp_local.errors import Unavailable

    from .audit import RecordQuery
    from .audit.store import AuditStoreUnreachable

    try:
        since = _since_ms(getattr(args, "since", None))
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    store, _ = _open_store(args, environ)
    await store.open()
    try:
        after = getattr(args, "after", None)
        if args.action == "tail":
            # -n 0 -f: the newest record, not shown, is where following starts.
            query = RecordQuery(limit=args.lines or 1, newest_first=True)
        else:
            query = RecordQuery(
                tool=args.tool,
                principal=args.principal,
                since_ms=since,
                call_id=args.call,
                after_seq=after,
                limit=args.limit + 1,  # one more: whether the limit cut the answer
                newest_first=after is None,  # --after is a cursor: the oldest after it come first
            )
        found = await store.query(query)
        if args.action == "query" and len(found) > args.limit:
            found = found[: args.limit]
            more = f"--after {found[-1].seq} for the next ones" if after is not None else "--limit N"
            print(f"{args.limit} records shown, more match: {more}", file=sys.stderr)
        records = found if after is not None else list(reversed(found))
        last = records[-1].seq if records else 0
        if args.action == "tail" and not args.lines:
            records = []
        for r in records:
            print(json.dumps(r.as_dict()) if args.json else _show_record(r), flush=True)
        # The store stays open: each look is a read (SQLite: its database and journal; PostgreSQL:
        # one SELECT on a connection it makes again if it was lost). Opening it every look ran the
        # PostgreSQL schema's statements twice a second, whose locks other replicas' writes queued
        # behind. A store that cannot be read (a database restarting) is waited for, not fatal:
        # "until Ctrl-C" is what a log shipper following the log counts on.
        unreadable: str | None = None
        while args.action == "tail" and args.follow:
            await asyncio.sleep(0.5 if unreadable is None else FOLLOW_RETRY_S)
            # By sequence, a page at a time until caught up: however many records were written
            # since the last look, each is printed once, in order, and none is skipped.
            try:
                while True:
                    page = await store.query(
                        RecordQuery(after_seq=last, limit=FOLLOW_PAGE, newest_first=False)
                    )
                    if unreadable is not None:  # said before the records it goes on with
                        print(
                            "mcphub: the audit store answers again; following from where it stopped",
                            file=sys.stderr,
                            flush=True,
                        )
                        unreadable = None
                    for r in page:
                        print(json.dumps(r.as_dict()) if args.json else _show_record(r), flush=True)
                        last = r.seq
                    if len(page) < FOLLOW_PAGE:
                        break
            except (AuditStoreUnreachable, Unavailable) as exc:
                if unreadable is None:
                    print(f"mcphub: {exc}; trying again every {FOLLOW_RETRY_S:g}s", file=sys.stderr)
                unreadable = str(exc)
    finally:
        await store.close()
    return EXIT_OK


def _cmd_audit(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    import sqlite3

    from mcp_local.errors import ConfigError

    from .audit.store import AuditStoreUnreachable

    try:
        if args.action == "verify":
            return _run(_verify(args, environ))
        return _run(_read(args, environ))
    except (ConfigError, AuditStoreUnreachable) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except FileNotFoundError as exc:
        return _fail(f"{exc}; has a hub run with this state directory? (--state-dir DIR)", EXIT_USAGE)
    except PermissionError as exc:
        where = exc.filename or _state_dir(args, environ)
        why = f"cannot read {where}: {exc.strerror} (run this as the user the hub runs as)"
        return _fail(why, EXIT_USAGE)
    except IsADirectoryError as exc:
        return _fail(f"{exc.filename}: a directory, not a file", EXIT_USAGE)
    except sqlite3.DatabaseError as exc:  # tail / query; verify reports it as a broken log
        why = f"the audit database cannot be read: {exc} (`mcphub audit verify` checks it)"
        return _fail(why, EXIT_FAILED)
    except KeyboardInterrupt:
        return 130


# --- parser ------------------------------------------------------------------------------------


_APPROVALS_JSON = {
    "list": "print one JSON array of the approvals (fields as in approvals.proto, times in ms)",
    "watch": "print each approval as a line of JSON, as it changes",
    "approve": "print the decided approval as a JSON object",
    "deny": "print the decided approval as a JSON object",
}


def hub_address(value: str) -> str:
    from .cli import _hub_address

    return _hub_address(value)


def add_admin_commands(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    policy = sub.add_parser(
        "policy",
        formatter_class=formatter,
        help="check a policy, explain a decision",
        description="Check a gate policy, or explain what it decides for one call.",
    )
    policy_sub = policy.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = policy_sub.add_parser(
        "check",
        formatter_class=formatter,
        help="validate a policy file, or a whole hub config as `serve --config` reads it",
        description="Validate a policy document, or a hub config file: its policy, and the rest of it as\n"
        "`mcphub serve --config` and a SIGHUP read it (keys, principals, addresses, the tokens written\n"
        "in it; not those read from a variable or a file), without starting anything.\n"
        'Exit 0 valid (warnings on stderr), 2 not (one error, or {"ok": false, ...} with --json).',
    )
    check.add_argument("file", type=Path)
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=_cmd_policy_check)
    explain = policy_sub.add_parser(
        "explain",
        formatter_class=formatter,
        help="print the decision for a call and the rule that made it",
        description="Evaluate the policy for one call without making it.\n"
        "The tool's annotations come from the configured packs.",
    )
    explain.add_argument("tool")
    explain.add_argument("--args", default="{}", metavar="JSON", help="the call's arguments (default: {})")
    explain.add_argument("--principal", default="local", help="who calls (default: local)")
    explain.add_argument(
        "--config", type=Path, help="hub config (its policy and packs); default: embedded defaults"
    )
    explain.add_argument("--policy", type=Path, help="a policy file to use instead of the config's")
    explain.add_argument("--state-dir", type=Path)
    explain.add_argument("--json", action="store_true")
    explain.set_defaults(func=_cmd_policy_explain)

    approvals = sub.add_parser(
        "approvals",
        formatter_class=formatter,
        help="list, watch, approve and deny pending calls",
        description="Decide the calls waiting for a person, over gRPC with an approver's token\n"
        "(--token, $MCPHUB_TOKEN, or the local hub's operator token in the state directory).",
    )
    approvals_sub = approvals.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (
        ("list", "pending approvals (--all: every state)"),
        ("watch", "stream approvals as they change"),
        ("approve", "approve a pending call"),
        ("deny", "deny a pending call (needs --reason)"),
    ):
        p = approvals_sub.add_parser(name, help=text)
        if name in ("approve", "deny"):
            p.add_argument("id", help="the approval id, e.g. apr_abc123")
            p.add_argument(
                "--reason",
                help="shown to the caller and recorded" + (" (required)" if name == "deny" else ""),
            )
        if name == "list":
            p.add_argument("--all", action="store_true", help="include decided, used and expired approvals")
        p.add_argument("--json", action="store_true", help=_APPROVALS_JSON[name])
        p.add_argument(
            "--hub", type=hub_address, metavar="HOST:PORT", help="the hub (default: the one of --state-dir)"
        )
        p.add_argument("--token", help="an approver's token (default: $MCPHUB_TOKEN, else operator.token)")
        p.add_argument(
            "--state-dir", type=Path, help="the local hub's state directory (its address and token)"
        )
        p.set_defaults(func=_cmd_approvals)

    audit = sub.add_parser(
        "audit",
        formatter_class=formatter,
        help="verify and read the audit log",
        description="Verify the audit log's hash chain and signed checkpoints, or read it.",
    )
    audit_sub = audit.add_subparsers(dest="action", metavar="ACTION", required=True)
    verify = audit_sub.add_parser(
        "verify",
        help="exit 0 if the chain and checkpoints hold, 1 naming the first bad record (or the "
        "records it is among, when the hashes after it were recomputed)",
    )
    verify.add_argument(
        "--public-key", type=Path, action="append", default=[], help="trusted signing key (repeatable)"
    )
    verify.add_argument(
        "--checkpoints",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="signed checkpoints kept outside the state directory (a copy of its "
        "audit/checkpoints*.jsonl), checked too: the log must still hold what they sign (repeatable)",
    )
    tail = audit_sub.add_parser("tail", help="the newest records")
    tail.add_argument(
        "-n", "--lines", type=_lines, default=20, help="how many (default: 20; 0 with -f: only new ones)"
    )
    tail.add_argument(
        "-f", "--follow", action="store_true", help="then print records as they are written, until Ctrl-C"
    )
    query = audit_sub.add_parser("query", help="records by tool, principal, time or call")
    query.add_argument("--tool")
    query.add_argument("--principal")
    query.add_argument("--since", help="10m, 2h, 1d or an ISO time")
    query.add_argument("--call", help="a call id")
    query.add_argument(
        "--after",
        type=_lines,
        metavar="SEQ",
        help="only records past this sequence number, oldest first (a cursor: the last seq read)",
    )
    query.add_argument(
        "--limit",
        type=_count,
        default=200,
        help="at most this many records: the newest N, or with --after the first N after SEQ (default: 200)",
    )
    for p in (verify, tail, query):
        p.add_argument(
            "--state-dir",
            type=Path,
            help="the hub's state directory, holding audit/ (default: $MCPHUB_STATE_DIR, else "
            "$XDG_STATE_HOME/mcphub or ~/.local/state/mcphub)",
        )
        p.add_argument("--config", type=Path, help="hub config (for a PostgreSQL store)")
        p.add_argument(
            "--json",
            action="store_true",
            help="the report as a JSON object" if p is verify else "each record as a line of JSON",
        )
        p.set_defaults(func=_cmd_audit)
