"""The hub: tool packs, the dispatch pipeline (with the gate and the audit log), the gRPC server and
the MCP bridge, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import secrets
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2

from mcp_local.errors import ConfigError, HubError
from mcp_local.localhub import LocalHub
from mcp_local.outputs import OutputStore, output_read_tool
from mcp_local.packs import PackEnv, ToolPack, pack_ref_problem, start_packs, stop_packs
from mcp_local.pipeline import (
    Authenticate,
    Authorize,
    Pipeline,
    RedactErrors,
    ResolveTool,
    Stage,
    ValidateArguments,
)
from mcp_local.principals import LOCAL, OPERATOR, Authenticator, OpenAccess, Principal, bearer_token
from mcp_local.redaction import Redactor
from mcp_local.registry import ToolRegistry, definition_fingerprint
from mcp_local.service import StreamLimit, ToolService
from mcp_local.servicer import HealthService, ToolHubServicer, create_grpc_server
from mcp_local.stalls import StallWatch
from mcp_local.tools import Tool, ToolCall
from mcphub_proto.v1 import approvals_pb2_grpc as apb_grpc

from .approvals import Approval, ApprovalBook, ApprovalUpgrade
from .approvals_service import ApprovalsServicer
from .audit import AuditLog, AuditStore, CheckpointSigner
from .audit.checkpoints import read_secret_file, write_new_file
from .audit.records import canonical
from .auth import TokenAuthenticator, token_digest
from .config import MIN_TOKEN_LENGTH, Address, HubConfig, PrincipalConfig
from .federation import Federation, SandboxEvent
from .gate import AuditTrail, Gate, instance_name
from .policy import Policy, broad_allows, resolve_policy, unapprovable
from .statedir import (
    StateError,
    check_state_format,
    in_use,
    lock_state_dir,
    read_hub_file,
    release_state_dir,
    remove_hub_file,
    running_hub_pid,
    write_hub_file,
    write_state_format,
)
from .version import VERSION, checkout_commit, version_text

if TYPE_CHECKING:
    from bridge.app import BridgeApp
    from bridge.http import HttpServer

__all__ = ["Hub", "HubAddresses"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HubAddresses:
    grpc: str
    mcp_url: str | None


def _dial_address(bound: Address, port: int) -> str:
    """Where a local client reaches a server bound to `bound` (wildcards become loopback)."""
    host = bound.host
    if host in ("0.0.0.0", ""):  # noqa: S104 - a comparison
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


OPERATOR_TOKEN_FILE = "operator.token"  # noqa: S105 - a file name


def operator_token(state_dir: Path) -> str:
    """The token of the hub host's operator (created once, mode 0600): the approvals CLI uses it.

    Written whole or not at all (`write_new_file`). An empty file is what an older hub left
    when the disk filled as it wrote the token: no token was ever in it, so a new one is made.
    A file holding something that is no token, or one other users may read, is a StateError
    naming it."""
    path = state_dir / OPERATOR_TOKEN_FILE
    try:
        data: bytes | None = read_secret_file(path)
    except FileNotFoundError:
        data = None
    if data is None or not data.strip():
        if data is not None:
            path.unlink(missing_ok=True)
        token = "op_" + secrets.token_urlsafe(32)
        if write_new_file(path, (token + "\n").encode()):
            return token
        data = path.read_bytes()  # another process made it first
    try:
        token = data.decode().strip()
    except UnicodeDecodeError:
        token = ""
    if len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or any(c.isspace() for c in token):
        raise StateError(
            f"{path}: not an operator token (a line of at least {MIN_TOKEN_LENGTH} printable characters); "
            "delete the file and the hub makes a new one"
        )
    return token


def _open_store(
    config: HubConfig, environ: Mapping[str, str], redactor: Redactor, upgrade: ApprovalUpgrade
) -> AuditStore:
    if config.audit.store == "postgres":
        from .audit.postgres import PostgresStore

        dsn = config.audit.resolve_dsn(environ)
        redactor.add_dsn(dsn)
        if config.audit.dsn_env is not None and isinstance(environ, MutableMapping):
            # Read once; no process the hub starts (spawner, browser driver) may inherit it.
            environ.pop(config.audit.dsn_env, None)
        return PostgresStore(dsn, upgrade=upgrade)
    from .audit.sqlite import SQLiteStore

    return SQLiteStore(config.state_dir / "audit" / "audit.db", sync=config.audit.sync, upgrade=upgrade)


def _unclean_previous_stop(state_dir: Path) -> int | None:
    """The pid of the hub that ran from `state_dir` before, when it left its `hub.json` behind
    (removed by a stop whose records are all in the log); else None. Asked once this hub holds
    the state directory (`lock_state_dir`) and has found that no hub of a version without the
    lock still runs from here (`running_hub_pid`), and before it writes its own file: whatever
    process has that pid now (the pid reused, this one in a container whose hub has the same
    pid at each start), the hub that wrote the file is gone."""
    found = read_hub_file(state_dir)
    pid = found.get("pid") if found is not None else None
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    return pid


def _state_dir_problem(state_dir: Path, exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(state_dir) else ""
    return f"state directory {state_dir}{where}: {exc.strerror or exc}"


DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO})
"""A write the disk refused: the state directory (or another directory) cannot be used as it is."""


def _pack_disk_problem(state_dir: Path, exc: ConfigError) -> str | None:
    """A pack's start that failed on a disk that cannot be written (`DISK_ERRNOS`), in one line
    naming the directory and the cause (exit 3, not a config error); None for any other failure."""
    cause = exc.__cause__
    if not isinstance(cause, OSError) or cause.errno not in DISK_ERRNOS:
        return None
    entry = str(exc).partition(":")[0]
    written = Path(str(cause.filename2 or cause.filename or state_dir))
    where = f"state directory {state_dir}" if written.is_relative_to(state_dir) else str(written)
    return (
        f"{where}: {cause.strerror or cause} ({entry} could not write its files there as it started); "
        "free space on that disk, or make it writable, and start again"
    )


HEALTH_POLL_S = 1.0
"""How often gRPC health checking is brought in step with whether the hub takes calls."""
TOOLHUB_SERVICE = "mcphub.v1.ToolHub"

ANSWERS_FLUSH_S = 1.0
"""How long a stopping hub's gRPC server has, after the drain, for the answers already given to
reach their callers; then it cancels what is left (connections of clients that no longer read)."""

RELOADABLE = frozenset({"principals", "policy", "log_level"})
"""What a running hub takes from its config file again on SIGHUP; the rest needs a restart."""


def policy_digest(policy: Policy) -> str:
    """Which policy a hub enforces, for the audit log: the SHA-256 of its rules as canonical JSON."""
    return hashlib.sha256(canonical(policy.config.model_dump(mode="json"))).hexdigest()


def _grants(principal: Principal) -> tuple[object, ...]:
    return principal.tools, principal.roles, principal.groups


def _approvers(config: HubConfig) -> list[Principal]:
    return [p.principal() for p in config.principals if "approver" in p.roles]


def _revoked_approvers(
    before: Mapping[str, tuple[bytes, Principal]], after: Mapping[str, tuple[bytes, Principal]]
) -> list[str]:
    """Approvers a reload removed, gave a new token (the old one leaked, say) or took the role from:
    their approvals made before it no longer let a call run."""
    return [
        name
        for name, (digest, principal) in before.items()
        if principal.has_role("approver")
        and (name not in after or after[name][0] != digest or not after[name][1].has_role("approver"))
    ]


@dataclass(frozen=True, slots=True)
class Reloaded:
    """What a reload changed, by principal name."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    new_token: tuple[str, ...]
    new_grants: tuple[str, ...]
    """Tools, roles or groups changed."""
    policy_changed: bool
    policy_sha256: str
    """The digest of the policy the hub now enforces (as in the `hub started` record)."""
    log_level: str | None
    """The new log level, when it changed."""
    needs_restart: tuple[str, ...]
    """Keys of the file that changed but apply only at the next start."""
    sandboxes_disconnected: tuple[str, ...]

    def summary(self) -> str:
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (
                ("principals added:", self.added),
                ("removed:", self.removed),
                ("new token:", self.new_token),
                ("new tools, roles or groups:", self.new_grants),
                ("sandboxes disconnected:", self.sandboxes_disconnected),
            )
            if names
        ]
        if self.policy_changed:
            parts.append(f"policy changed (sha256 {self.policy_sha256[:12]})")
        if self.log_level:
            parts.append(f"log level {self.log_level}")
        return "; ".join(parts) or "nothing changed"


class Hub:
    def __init__(self, config: HubConfig, environ: Mapping[str, str]) -> None:
        self.config = config
        self.environ = environ
        self.instance = config.instance or instance_name(str(config.state_dir))
        self.registry = ToolRegistry()
        self.outputs = OutputStore()
        self.redactor = Redactor()
        self._env_tokens: dict[str, tuple[str, bytes]] = {}
        """Principals whose token came from a variable (read once, then taken out of the
        environment): name -> (variable, token digest), for a reload to keep their token."""
        # The config, and the state directory's version, are checked before anything is created
        # in it: a start refused for either leaves no directory, signing key or operator token.
        digests: list[tuple[bytes, Principal]] = []
        if config.principals:
            digests, self._env_tokens = self._principal_digests(config, environ)
        self._upgrade = ApprovalUpgrade(self.redactor)
        """Approvals an older hub stored, rewritten as the store opens (for the start's log)."""
        store = _open_store(config, environ, self.redactor, self._upgrade)
        if config.state_dir.is_dir():  # checked again at the start, under the state directory's lock
            check_state_format(config.state_dir)
        try:
            config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            signer = CheckpointSigner(config.state_dir / "audit")
        except OSError as exc:
            raise StateError(_state_dir_problem(config.state_dir, exc)) from None
        self.authenticator = self._authenticator(config, digests)
        audit_dir = config.state_dir / "audit"
        self.audit = AuditLog(
            store,
            self.redactor,
            signer,
            checkpoint_every=config.audit.checkpoint_every,
            checkpoint_interval_s=config.audit.checkpoint_interval_s,
            max_argument_bytes=config.audit.max_argument_bytes,
            checkpoint_file=audit_dir / store.checkpoint_file_name,
            instance=self.instance,
        )
        self.approvals = ApprovalBook(
            self.audit.store,
            self.instance,
            on_event=self._approval_event,
            redact=self._redact_reason,
            max_pending_per_principal=config.approvals.max_pending_per_principal,
            keep_s=config.approvals.keep_days * 86400,
        )
        self.policy = resolve_policy(config.policy)
        if config.policy is not None:
            principals = [p.principal() for p in config.principals]
            for problem in unapprovable(config.policy, principals) + broad_allows(config.policy):
                logger.warning("policy: %s", problem)
        self.trail = AuditTrail(self.audit, self._identify)
        self.approvals.call_stopped = self.trail.calls.stopping
        self.gate = Gate(self.policy, self.approvals, self.audit, _approvers(config))
        self.gate.tool_now = self._tool_now
        self.pipeline = Pipeline(self.stages())
        self.streams = StreamLimit(config.max_streams_per_principal)
        self._service = ToolService(self.registry, self.pipeline, self.authenticator, self.streams)
        self.federation = Federation(
            self.registry, self.authenticator, config.state_dir, on_event=self._sandbox_event
        )
        self.packs: list[ToolPack] = []
        self.addresses: HubAddresses | None = None
        self._pack_sockets: list[str] = []
        """Sockets the packs listen on (`PackEnv.add_listen_address`)."""
        self._grpc: grpc.aio.Server | None = None
        self._health = HealthService(self.streams)
        self._health_names: list[str] = []
        self._health_task: asyncio.Task[None] | None = None
        self._stalls = StallWatch()
        self._http: HttpServer | None = None
        self._bridge_hub: LocalHub | None = None
        self._started = False
        """The `hub started` record is queued: a stop records `stopped`."""
        self._state_lock: int | None = None
        """The state directory's lock (`lock_state_dir`), held from the start until the stop."""
        self.bridge_app: BridgeApp | None = None
        """The bridge's ASGI app once bound (None without `http`); its MCP app is built on the
        first MCP request (`bridge_app.app`, or `await bridge_app.load()`)."""

    def _redact_reason(self, text: str) -> str:
        """An approver's words, redacted as the audit log redacts them: a secret pasted into a
        deny reason reaches the caller, the approvals store and every watcher otherwise."""
        return self.redactor.text(text, assignments=True)

    def _authenticator(self, config: HubConfig, digests: list[tuple[bytes, Principal]]) -> Authenticator:
        """The operator's token (made now when the state directory has none) and `digests`, the
        principals' (`_principal_digests`)."""
        operator = self._operator_token()
        self._operator_digest = token_digest(operator)
        """The operator token's digest the hub now accepts (the file may hold a newer one)."""
        if not config.principals:
            return OpenAccess(known={operator: OPERATOR})
        return TokenAuthenticator.of_digests([(token_digest(operator), OPERATOR), *digests])

    def _operator_token(self) -> str:
        """The operator's token as `operator.token` now holds it (made when there is none), for
        the redactor too: read at start and again at each reload, so that replacing the file, or
        deleting it (a new one is made), revokes the old token with a SIGHUP."""
        try:
            operator = operator_token(self.config.state_dir)
        except OSError as exc:
            raise StateError(_state_dir_problem(self.config.state_dir, exc)) from None
        self.redactor.add(operator)
        return operator

    def _principal_digests(
        self, config: HubConfig, environ: Mapping[str, str], *, reloading: bool = False
    ) -> tuple[list[tuple[bytes, Principal]], dict[str, tuple[str, bytes]]]:
        """Each principal's token digest, the token read from where the config says (and added to
        the redactor), and the variables' tokens to keep (`_env_tokens`, set by the caller once
        the table is in use); raises ConfigError when a token cannot be read.

        A variable is read at start only, then taken out of the environment, so that no process
        the hub starts inherits it. A reload keeps the token a principal's variable gave at
        start for as long as its entry names that variable; it reads no variable (the hub's
        children have inherited those nobody named at start), and one revoked stays revoked."""
        found: list[tuple[PrincipalConfig, bytes, str]] = []
        for p in config.principals:
            kept = self._env_tokens.get(p.name)
            if reloading and p.token_env is not None:
                if kept is None or kept[0] != p.token_env:
                    raise ConfigError(
                        f"principals[{p.name}].token_env: a running hub reads no environment variable "
                        f"again (it read those of its principals once, at start); give {p.name} a "
                        "token_file, or restart the hub"
                    )
                found.append((p, kept[1], ""))
                continue
            token = p.resolve_token(environ)
            found.append((p, token_digest(token), token))
        # Only entries that still name their variable keep its token: removed, or moved to
        # another source, a principal's variable token is gone for good.
        env_tokens = {}
        for p, digest, token in found:
            if token:
                self.redactor.add(token)
            if p.token_env is not None:
                env_tokens[p.name] = (p.token_env, digest)
                if isinstance(environ, MutableMapping):
                    environ.pop(p.token_env, None)
        return [(digest, p.principal()) for p, digest, _ in found], env_tokens

    def stages(self) -> list[Stage]:
        """The dispatch path, in order (execute follows the last)."""
        return [
            self.trail,
            # A pack's exception text may quote a secret it registered: its callers must not read it.
            RedactErrors(self.redactor),
            Authenticate(self.authenticator),
            ResolveTool(self.registry, self._missing_tool),
            Authorize(),
            ValidateArguments(self.registry),
            self.gate,
        ]

    def _missing_tool(self, call: ToolCall) -> HubError | None:
        return self.federation.missing_tool(call)

    def _approval_event(self, event: str, approval: Approval, call_id: str = "", **extra: object) -> None:
        """An approval's record, filed with the call it is about: the call that asked, or
        (`call_id`) the retry that used it."""
        fields: dict[str, object] = {
            "approval_id": approval.id,
            "state": event,
            "args_sha256": approval.args_sha256,
        }
        if event == "pending":
            fields.update(rule=approval.rule, reason=approval.reason, expires_ms=approval.expires_ms)
        elif event in ("decided", "expired"):
            fields.update(
                decision=approval.state,
                by=approval.decided_by or None,
                at_ms=approval.decided_ms,
                reason=approval.decision_reason or None,
            )
        elif event == "used":
            fields.update(
                approved_by=approval.decided_by, approved_at_ms=approval.decided_ms, at_ms=approval.used_ms
            )
        fields.update(extra)
        used_by = call_id if call_id and call_id != approval.call_id else ""
        if used_by:
            fields["approval_call_id"] = approval.call_id  # the call that asked for it
        self.audit.record("approval", used_by or approval.call_id, approval.principal, approval.tool, fields)
        if used_by:  # the call that asked learns where its approval went
            self.audit.record(
                "approval",
                approval.call_id,
                approval.principal,
                approval.tool,
                {
                    "approval_id": approval.id,
                    "state": event,
                    "used_by_call": used_by,
                    "at_ms": approval.used_ms,
                },
            )

    def _sandbox_event(self, event: SandboxEvent) -> None:
        """Sandboxes connecting, leaving, refused, and tool definitions pinned, changed or accepted."""
        tool = f"{event.sandbox}__{event.tool}" if event.tool else "-"
        body: dict[str, Any] = {
            "event": event.kind,
            "sandbox": event.sandbox,
            "detail": event.detail or None,
            "pinned_sha256": event.pinned_sha256 or None,
            "announced_sha256": event.announced_sha256 or None,
        }
        if event.attempts:
            body["attempts"] = event.attempts
            body["peer"] = event.peer or None
        self.audit.record("sandbox", "-", event.principal or "-", tool, body)

    def reload(self, new: HubConfig, environ: Mapping[str, str] | None = None) -> Reloaded:
        """Apply a config file's principals, policy and log level to the running hub (SIGHUP).

        Everything is checked before anything changes: a file that cannot be applied raises
        ConfigError and the hub goes on as it was. Calls already past the gate keep the
        decision they got; every call after this one is authenticated and decided on the new
        config. A sandbox whose principal was removed or changed is disconnected (its sidecar
        reconnects, and is authenticated afresh). The change is in the audit log."""
        old = self.config
        if bool(new.principals) != bool(old.principals):
            raise ConfigError(
                "a reload cannot turn an open hub into one with principals, or back: restart the hub"
            )
        if new.packs != old.packs:
            # Applied at the next start, which they must not stop: a file that would is refused now.
            for pack in new.packs:
                problem = pack_ref_problem(pack.name)
                if problem is not None:
                    raise ConfigError(f"packs[{pack.name}]: {problem} (the next start would stop on it)")
        policy = resolve_policy(new.policy)
        before: Mapping[str, tuple[bytes, Principal]] = {}
        operator = self._operator_token()
        operator_changed = token_digest(operator) != self._operator_digest
        if isinstance(self.authenticator, TokenAuthenticator):
            before = self.authenticator.by_name()
            digests, env_tokens = self._principal_digests(
                new, self.environ if environ is None else environ, reloading=True
            )
            self.authenticator.replace([(token_digest(operator), OPERATOR), *digests])
            self._env_tokens = env_tokens
        elif isinstance(self.authenticator, OpenAccess):
            self.authenticator.replace_known({operator: OPERATOR})
        self._operator_digest = token_digest(operator)
        after = self.authenticator.by_name() if isinstance(self.authenticator, TokenAuthenticator) else {}
        # Nothing below raises: the hub now runs on the new config.
        self.policy = policy
        self.gate.reload(policy, _approvers(new), self._principal_named, _revoked_approvers(before, after))
        self.registry.principals_changed()  # lists and watches follow the principals' new tools
        self.approvals.wake_watchers()  # and approvals' watches check their approver now
        if new.log_level != old.log_level:
            logging.getLogger().setLevel(new.log_level.upper())
        self.config = old.model_copy(update={key: getattr(new, key) for key in RELOADABLE})
        if new.policy is not None:
            for problem in unapprovable(new.policy, [p.principal() for p in new.principals]) + broad_allows(
                new.policy
            ):
                logger.warning("policy: %s", problem)
        added = sorted(after.keys() - before.keys())
        removed = sorted(before.keys() - after.keys())
        kept = sorted(after.keys() & before.keys())
        new_token = [n for n in kept if after[n][0] != before[n][0]]
        if operator_changed and OPERATOR.name not in new_token:  # an open hub's (no table of names)
            new_token.append(OPERATOR.name)
        new_grants = [n for n in kept if _grants(after[n][1]) != _grants(before[n][1])]
        gone = (
            set(removed) | set(new_token) | {n for n in new_grants if after[n][1].roles != before[n][1].roles}
        )
        disconnected = []
        for conn in list(self.federation.connections.values()):
            if conn.principal in gone:
                # Said to the sidecar (it logs it) and to the callers of its calls in flight.
                if conn.principal in removed:
                    why = "was removed from the hub's config"
                elif conn.principal in new_token:
                    why = "has a new token in the hub's config"
                else:
                    why = "has new roles in the hub's config"
                self.federation.disconnect(conn, f"principal {conn.principal} {why} (reloaded)")
                disconnected.append(conn.sandbox)
        report = Reloaded(
            added=tuple(added),
            removed=tuple(removed),
            new_token=tuple(new_token),
            new_grants=tuple(new_grants),
            policy_changed=new.policy != old.policy,
            policy_sha256=policy_digest(policy),
            log_level=new.log_level if new.log_level != old.log_level else None,
            needs_restart=tuple(
                key
                for key in type(old).model_fields
                if key not in RELOADABLE and getattr(new, key) != getattr(old, key)
            ),
            sandboxes_disconnected=tuple(sorted(disconnected)),
        )
        with contextlib.suppress(Exception):  # a stopped log refuses; the reload has happened
            self.audit.record(
                "hub",
                "-",
                "-",
                "-",
                {
                    "event": "reloaded",
                    "instance": self.instance,
                    "principals_added": list(report.added) or None,
                    "principals_removed": list(report.removed) or None,
                    "new_token": list(report.new_token) or None,
                    "new_grants": list(report.new_grants) or None,
                    "policy_changed": report.policy_changed,
                    "policy_sha256": report.policy_sha256,
                    "log_level": report.log_level,
                    "sandboxes_disconnected": list(report.sandboxes_disconnected) or None,
                    "needs_restart": list(report.needs_restart) or None,
                },
            )
        return report

    def serving_problem(self) -> str | None:
        """Why the hub refuses every call right now, or None: what health checks report, so a
        load balancer sends callers to another replica."""
        if self.trail.calls.closing is not None:
            return self.trail.calls.closing
        if not self.audit.healthy:
            return "the audit log cannot be written; calls are refused until it recovers"
        return None

    async def _watch_health(self) -> None:
        """Keep gRPC health checking (Check and Watch) in step with `serving_problem`."""
        serving = True
        while True:
            now = self.serving_problem() is None
            if now != serving:
                serving = now
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if now
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for name in self._health_names:
                    await self._health.set(name, status)
            await asyncio.sleep(HEALTH_POLL_S)

    def _tool_now(self, tool: Tool) -> bool:
        """Is `tool` still what its name is registered as (the same object, or a sandbox's tools
        announced again with this one's definition unchanged)?"""
        registered = self.registry.get(tool.name)
        if registered is None:
            return False
        return registered.tool is tool or registered.fingerprint == definition_fingerprint(tool)

    def _identify(self, authorization: str | None) -> Principal | None:
        """The principal a refused call's authorization names, or None: only for its record."""
        try:
            return self.authenticator.authenticate(bearer_token(authorization))
        except HubError:
            return None

    def _principal_named(self, name: str) -> Principal | None:
        """The principal of this name as the hub now knows it (an open hub: anybody, as `local`)."""
        if not isinstance(self.authenticator, TokenAuthenticator):
            return LOCAL
        entry = self.authenticator.by_name().get(name)
        return entry[1] if entry is not None else None

    async def start(self) -> HubAddresses:
        """Bind both ports first (a busy one fails before anything slow starts), then the audit
        log, the packs, and only then serve. Before all of them, the state directory's lock:
        a second hub on it stops there, having changed nothing of the first one's."""
        config = self.config
        try:
            self._state_lock = lock_state_dir(config.state_dir)
        except OSError as exc:
            raise StateError(_state_dir_problem(config.state_dir, exc)) from None
        # A hub of a version that took no lock may still run here (upgraded in place while it
        # ran): taken for a hub that stopped uncleanly, it would lose its hub.json and, with a
        # shared store, its waiting approvals, expired as those of a hub that restarted.
        running = running_hub_pid(config.state_dir)
        if running is not None:
            release_state_dir(self._state_lock)
            self._state_lock = None
            raise in_use(config.state_dir, running)
        try:
            check_state_format(config.state_dir)  # before anything here is read or rewritten
        except StateError:
            release_state_dir(self._state_lock)
            self._state_lock = None
            raise
        self._stalls.start()
        servicer = ToolHubServicer(self._service)
        approvals = ApprovalsServicer(self.approvals, self.authenticator, self.streams)
        extra = [
            (apb_grpc.add_ApprovalsServicer_to_server, approvals, "mcphub.v1.Approvals"),
            self.federation.service(),
        ]
        self._health_names = ["", TOOLHUB_SERVICE, *(name for _, _, name in extra)]
        self._grpc, grpc_port, serve_grpc = create_grpc_server(
            str(config.grpc), servicer, extra_services=extra, health_servicer=self._health
        )
        grpc_dial = _dial_address(config.grpc, grpc_port)
        mcp_url = None
        if config.http is not None:
            mcp_url = self._bind_bridge(config.http, grpc_dial)
        self.addresses = HubAddresses(grpc=grpc_dial, mcp_url=mcp_url)
        try:
            await self.audit.start()
        except OSError as exc:  # the journal, or signing.pub, on a full or read-only disk
            raise StateError(_state_dir_problem(config.state_dir, exc)) from None
        try:  # once the store has rewritten what an older version left (`ApprovalUpgrade`)
            write_state_format(config.state_dir, version_text())
        except OSError as exc:
            raise StateError(_state_dir_problem(config.state_dir, exc)) from None
        unclean = _unclean_previous_stop(config.state_dir)
        if unclean is not None:
            logger.warning(
                "the hub before this one (pid %d) did not stop cleanly: it was killed or crashed, or its "
                "stop could not be recorded; calls it was running have no `finished` record "
                "(this start's `hub started` record says so too)",
                unclean,
            )
        # The packs first: a pack that fails to load (the likeliest refusal from here on) stops a
        # start that then never happened, and leaves no `started` record. From the record on,
        # a failed start is closed by a `stopped` one (`stop`).
        await self._load_packs()
        self.audit.record(
            "hub",
            "-",
            "-",
            "-",
            {
                "event": "started",
                "instance": self.instance,
                "pid": os.getpid(),
                # Which code ran, read back after an upgrade or a rollback (commit: run from git).
                "version": VERSION,
                "commit": checkout_commit(),
                "policy_sha256": policy_digest(self.policy),
                "unclean_stop_of_pid": unclean,
            },
        )
        self._started = True
        failed = await self.approvals.fail_pending_on_restart()
        await self.approvals.start_pruning()
        older = sum(1 for approval in failed if approval.id in self._upgrade.pending)
        self._upgrade.pending.clear()
        if len(failed) > older:
            waited = len(failed) - older
            logger.warning(
                "%s waiting for approval when the hub stopped; %s expired",
                "1 call was" if waited == 1 else f"{waited} calls were",
                "its approval is" if waited == 1 else "their approvals are",
            )
        if older:
            # An older hub did not store whether a call still waited: they fail closed.
            logger.warning(
                "%d approvals pending from a hub of an older version are expired (whether their "
                "calls still waited was not stored); a caller may call again to ask anew",
                older,
            )
        await serve_grpc()
        self._health_task = asyncio.get_running_loop().create_task(self._watch_health(), name="mcphub-health")
        if self._http is not None:
            await self._http.start()
        try:
            write_hub_file(self.config.state_dir, self.addresses.grpc, self.addresses.mcp_url)
        except OSError as exc:
            raise StateError(_state_dir_problem(config.state_dir, exc)) from None
        return self.addresses

    async def _record_stopped(self, grace: float) -> None:
        """Write the `stopped` record and wait until it is durable (up to `grace`, at least a
        second). A start refused before its `started` record leaves none. `hub.json` goes only
        once the log has stopped with nothing lost (see `stop`)."""
        if not self._started:
            return
        self._started = False
        try:
            durable = self.audit.record("hub", "-", "-", "-", {"event": "stopped", "instance": self.instance})
        except Exception:  # a stopped log refuses; the stop goes on (`audit.lost` says what was lost)
            return
        try:
            await asyncio.wait_for(asyncio.shield(durable), max(grace, 1.0))
        except Exception:  # a store that fails or hangs: `audit.stop` reports what it lost
            return

    def listen_addresses(self) -> tuple[str, ...]:
        """Every socket the hub listens on, once bound: gRPC, MCP and the packs' own (the browser's
        proxy). Packs use them to refuse calls back into the hub."""
        found = []
        if self.addresses is not None:
            found.append(self.addresses.grpc)
            if self.addresses.mcp_url:
                found.append(self.addresses.mcp_url.removeprefix("http://").removesuffix("/mcp"))
        return (*found, *self._pack_sockets)

    def _add_pack_socket(self, address: str) -> None:
        self._pack_sockets.append(address)

    async def _load_packs(self) -> None:
        self.registry.set_source("hub:outputs", [output_read_tool(self.outputs)])
        env = PackEnv(
            state_dir=self.config.state_dir,
            outputs=self.outputs,
            redactor=self.redactor,
            listen_addresses=self.listen_addresses,
            add_listen_address=self._add_pack_socket,
            extra={"environ": dict(self.environ)},
        )
        # Variables packs read secrets from leave the hub's environment before any pack starts
        # a process (the shell's spawner, the browser's driver and Chromium inherit it).
        scrub = self.environ if isinstance(self.environ, MutableMapping) else None
        try:
            self.packs = await start_packs(self.config.packs, env, self.registry, scrub)
        except ConfigError as exc:
            problem = _pack_disk_problem(self.config.state_dir, exc)
            if problem is None:
                raise
            raise StateError(problem) from None
        logger.info("loaded %d tools from %d packs", len(self.registry), len(self.packs))

    def _bind_bridge(self, address: Address, grpc_dial: str) -> str:
        from bridge.app import bridge_app
        from bridge.http import HttpServer
        from bridge.options import BridgeOptions
        from bridge.security import default_policy

        config = self.config
        # In the same process the bridge calls the hub's service directly: the same pipeline, the
        # same errors, without a loopback gRPC round trip (`mcphub bridge --stdio` still uses gRPC).
        self._bridge_hub = LocalHub(self._service)
        options = BridgeOptions(
            max_body_bytes=config.max_request_bytes,
            express=config.bridge_express,
            tool_input_schema=self.registry.header_schema_lookup(self.authenticator),
            authenticate=self.authenticator.authenticate,
            max_sessions_per_principal=config.max_sessions_per_principal,
            refusing=self.trail.calls.refusal,
        )
        # The MCP SDK is imported on the first MCP request (`bridge/app.py`).
        app = self.bridge_app = bridge_app(
            self._bridge_hub,
            options,
            default_policy(address.host, config.allowed_hosts, config.allowed_origins),
            health=self.serving_problem,
        )
        self._http = HttpServer(app, address.host, address.port, max_body_bytes=config.max_request_bytes)
        port = self._http.bind()
        return f"http://{_dial_address(address, port)}/mcp"

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls, give running ones `grace` seconds, stop the rest (their callers are
        told why), then stop the servers and the packs.

        Once the drain is over no call can still finish. What is left of gRPC then is answers on
        their way and streams the hub has already ended (a sidecar's Connect, the watches): the
        server gets ANSWERS_FLUSH_S for them, not a second grace, and the bridge its own short
        shutdown; then the `stopped` record, the last one, is written and waited for, so that a
        supervisor's SIGKILL after its timeout (grace + 10 s, README) does not lose it. A client
        that no longer reads (a frozen sidecar, `docker pause`) keeps its connection open after the
        server's GOAWAY, and gRPC's stop waits for every connection to close, so it held the stop
        for the whole grace."""
        if self._health_task is not None:
            self._health_task.cancel()
        await self._health.enter_graceful_shutdown()  # NOT_SERVING from now on, for load balancers
        # Watch streams never end by themselves: ended first, from the hub, their clients go to
        # another replica, and the stop does not wait out its grace for them.
        self.streams.close("the hub is shutting down")
        await self.trail.calls.drain(grace, "the hub is shutting down")
        # No call can finish from here on: the sandboxes' streams end (and their `disconnected`
        # records are written), the approvals' counts are recorded, the servers close.
        await self.federation.close()
        await self.approvals.close()
        if self._http is not None:
            await self._http.stop()
            self._http = None
        if self._bridge_hub is not None:
            await self._bridge_hub.close()
        if self._grpc is not None:
            await self._grpc.stop(min(grace, ANSWERS_FLUSH_S))
            self._grpc = None
        # Last of the records: nothing can reach the hub from here on (a refusal of a late call,
        # an approval decided, a sidecar dialing again would each be a record after it).
        await self._record_stopped(grace)
        await stop_packs(self.packs)
        self.packs.clear()
        self._pack_sockets.clear()
        await self.audit.stop(grace)
        if not self.audit.lost and self._state_lock is not None:
            # Kept when the log lost records (the `stopped` one among them): the next start
            # finds it, its process gone, and records that this stop was not recorded.
            with contextlib.suppress(OSError):
                remove_hub_file(self.config.state_dir)
        await self._stalls.stop()
        if self._state_lock is not None:  # last: the next hub may start on the directory now
            release_state_dir(self._state_lock)
            self._state_lock = None
