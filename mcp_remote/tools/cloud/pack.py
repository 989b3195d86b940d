"""The `cloud` pack: calls to the team's cloud APIs with credentials only the hub holds.

Tools:
    http_request        any allowed method and path of a configured service
    cloud_services      the services the caller may use, with their routes and limits
    cloud_usage         per-principal, per-service counters (principals with the operator role)
    <service>_<opId>    one per chosen operation of a service's OpenAPI document

Every call: the principal must be allowed for the service, the method and path
must match one of its routes, a token is taken from the (principal, service)
bucket, the credential is injected (caller-supplied auth headers are dropped),
the connection goes only to checked addresses, and everything returned is run
through the hub's redactor, which knows every form of every loaded secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from mcp_local.content import TextContent, ToolResult
from mcp_local.errors import ConfigError, PermissionDenied, ResourceExhausted, ToolError
from mcp_local.packs import PackEnv
from mcp_local.tools import Tool, ToolAnnotations, ToolCall

from ...reload import on_reload
from .client import DROPPED_HEADERS
from .credentials import SecretMissing
from .openapi import Operation, tool_name
from .ratelimit import RateLimiter, UsageCounters
from .results import ResponseView, response_result
from .routes import clean_path
from .service import Service, build_service
from .settings import HTTP_METHODS, CloudOptions, Risk, ServiceSettings, load_service_file, parse_options

__all__ = ["EXAMPLES_DIR", "CloudPack", "create_pack"]

logger = logging.getLogger("mcphub.cloud")

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
EXAMPLE_NAMES = ("render", "sentry", "github")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""An HTTP field name: a token (RFC 9110 5.1)."""
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_REQUEST_ANNOTATIONS: dict[Risk, ToolAnnotations] = {
    risk: ToolAnnotations(
        title="Call a cloud API",
        read_only=risk == "read-only",
        destructive=risk == "destructive",
        idempotent=False,
        open_world=True,
    )
    for risk in ("read-only", "write", "destructive")
}
"""`http_request`'s annotations for one call, by its route's risk (`CloudPack._annotations_of_request`)."""
"""What a field value may not hold (RFC 9110 5.5): controls other than the tab."""


def _query_items(query: Mapping[str, Any]) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    for key, value in query.items():
        for v in value if isinstance(value, list) else [value]:
            if v is None:
                continue
            if isinstance(v, bool):
                items.append((key, "true" if v else "false"))
            elif isinstance(v, str | int | float):
                items.append((key, str(v)))
            else:
                raise ToolError(
                    f"query parameter {key!r}: expected a string, number, boolean or a list of them"
                )
    return items


class CloudPack:
    name = "cloud"

    def __init__(
        self,
        options: CloudOptions,
        env: PackEnv,
        services: Mapping[str, Service],
        disabled: Mapping[str, str],
        missing: Mapping[str, ServiceSettings] | None = None,
        environ: MutableMapping[str, str] | None = None,
    ) -> None:
        self.options = options
        self.env = env
        self.services = dict(services)
        self.disabled = dict(disabled)
        self._missing = dict(missing or {})
        """Services off because their secret was missing: checked again on every reload."""
        self._environ: MutableMapping[str, str] = environ if environ is not None else {}
        self.limiter = RateLimiter()
        self.usage = UsageCounters()
        self.reloads = 0
        self._redactor = env.redactor
        self._tools = self._build_tools()
        self._unsubscribe: Any = None
        self._flusher: asyncio.Task[None] | None = None
        self._usage_path = env.state_dir / "cloud" / "usage.json"

    # --- lifecycle ------------------------------------------------------------------------------

    def tools(self) -> Sequence[Tool]:
        return self._tools

    async def start(self) -> None:
        self._unsubscribe = on_reload(self.reload)
        self._flusher = asyncio.create_task(self._flush_loop(), name="mcphub-cloud-usage")
        for name, why in sorted(self.disabled.items()):
            logger.warning("service %s is off: %s", name, why)
        logger.info("%d services on (%s)", len(self.services), ", ".join(sorted(self.services)) or "none")

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        self._write_usage()
        for service in self.services.values():
            await service.client.aclose()

    def reload(self) -> None:
        """Re-read every file secret (SIGHUP). Calls in flight keep the credential they started with.
        A service that is off because its secret was missing is checked again, and turned on
        (its tools appear) when the secret is there now."""
        self.reloads += 1
        for service in self.services.values():
            service.credential.reload()
        logger.info("credentials reloaded (reload %d)", self.reloads)
        self._turn_on_found()

    def _turn_on_found(self) -> None:
        turned_on: list[str] = []
        for name, settings in sorted(self._missing.items()):
            try:
                service = build_service(
                    name,
                    settings,
                    environ=self._environ,
                    register_secret=self.env.redactor.add,
                    listen=self.env.listen_addresses,
                )
            except SecretMissing as exc:
                self.disabled[name] = str(exc)  # still missing (an environment variable never appears)
                continue
            except ConfigError as exc:  # there, but unusable (too short, unreadable): stays off
                self.disabled[name] = str(exc)
                logger.warning("service %s stays off: %s", name, exc)
                continue
            self.services[name] = service
            try:
                tools = self._build_tools()
            except ConfigError as exc:  # a generated tool's name is taken: it cannot be turned on
                del self.services[name]
                del self._missing[name]
                self.disabled[name] = str(exc)
                logger.error("service %s stays off: %s", name, exc)
                continue  # its client never opened a connection: nothing to close
            self._tools = tools
            del self._missing[name]
            self.disabled.pop(name, None)
            turned_on.append(name)
            logger.info("service %s is on: its credential is there now (reload %d)", name, self.reloads)
        if turned_on:
            self.env.tools_changed(self)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.usage_flush_s)
            if self.usage.dirty:
                self._write_usage()

    def _write_usage(self) -> None:
        self.usage.dirty = False
        data = {"pid": os.getpid(), "updated_at": time.time(), "usage": self.usage.snapshot()}
        try:
            self._usage_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self._usage_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1))
            tmp.replace(self._usage_path)
        except OSError as exc:
            logger.warning("cannot write %s: %s", self._usage_path, exc.strerror)

    # --- the gate's view ------------------------------------------------------------------------

    def classify(self, tool: str, arguments: Mapping[str, Any]) -> Risk | None:
        """The risk of a call before it runs (for the approval gate); None when it would be refused anyway."""
        if tool == "http_request":
            service = self.services.get(str(arguments.get("service")))
            if service is None:
                return None
            try:
                path = clean_path(str(arguments.get("path", "")))
            except ToolError:
                return None
            found = service.routes.match(str(arguments.get("method", "")).upper(), path)
            return found[1] if found else None
        for service in self.services.values():
            for op in service.operations:
                if tool_name(service.name, op.operation_id) == tool:
                    found = service.routes.match(op.method, op.path)
                    return found[1] if found else None
        return None

    def _annotations_of_request(self, arguments: Mapping[str, Any]) -> ToolAnnotations | None:
        """The annotations of one `http_request` call: its route's risk, for the gate's rules (the
        tool's own say destructive once any route is; a GET on a read-only route must not wait for
        a person because another route of another service deletes)."""
        risk = self.classify("http_request", arguments)
        if risk is None:
            return None  # refused before it is sent (`_precheck`): the tool's own annotations
        return _REQUEST_ANNOTATIONS[risk]

    # --- tools ------------------------------------------------------------------------------------

    def _build_tools(self) -> list[Tool]:
        names = sorted(self.services)
        destructive = any(
            route.risk_for(m, s.routes.service_risk) == "destructive"
            for s in self.services.values()
            for route in s.routes.routes
            for m in route.methods
        )
        longest = max((s.settings.timeout_s for s in self.services.values()), default=30.0)
        service_schema: dict[str, Any] = {"type": "string", "description": "A service from cloud_services."}
        if names:
            service_schema["enum"] = names
        tools = [
            Tool(
                name="http_request",
                title="Call a cloud API",
                description=(
                    "Send an HTTP request to a configured cloud service (see cloud_services for the "
                    "services you may use, and the methods and paths each accepts). The hub adds the "
                    "service's credential: never send one yourself (Authorization and similar headers are "
                    "dropped). `path` is relative to the service's base URL and starts with '/'; query "
                    "parameters go in `query`, a JSON body in `json`. A response of HTTP 400 or more is "
                    "reported as an error result carrying the service's answer."
                ),
                input_schema={
                    "type": "object",
                    "properties": {
                        "service": service_schema,
                        "method": {"type": "string", "enum": list(HTTP_METHODS)},
                        "path": {"type": "string", "pattern": "^/", "maxLength": 4096},
                        "query": {
                            "type": "object",
                            "additionalProperties": {
                                "type": ["string", "number", "boolean", "null", "array"],
                                "items": {"type": ["string", "number", "boolean"]},
                            },
                        },
                        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                        "json": {"description": "A JSON request body (not for GET or HEAD)."},
                    },
                    "required": ["service", "method", "path"],
                    "additionalProperties": False,
                },
                handler=self._http_request,
                precheck=self._precheck,
                annotate=self._annotations_of_request,
                annotations=ToolAnnotations(
                    title="Call a cloud API",
                    read_only=False,
                    destructive=destructive,
                    idempotent=False,
                    open_world=True,
                ),
                meta={"mcphub/cloud": {"services": names, "classify": "per call: service, method, path"}},
                timeout_s=longest + 10,
            ),
            Tool(
                name="cloud_services",
                title="List cloud services",
                description=(
                    "List the cloud services you may call with http_request (and their generated tools): "
                    "base URL, allowed methods and path patterns with their risk, rate limit."
                ),
                input_schema={"type": "object", "properties": {}, "additionalProperties": False},
                handler=self._cloud_services,
                annotations=ToolAnnotations(
                    title="List cloud services", read_only=True, destructive=False, idempotent=True
                ),
            ),
            Tool(
                name="cloud_usage",
                title="Cloud API usage counters",
                description=(
                    "Operators only: calls, outcomes, bytes and rate-limit refusals per principal and "
                    "service since the hub started, and the state of each service's credential."
                ),
                input_schema={"type": "object", "properties": {}, "additionalProperties": False},
                handler=self._cloud_usage,
                roles=frozenset({"operator"}),
                annotations=ToolAnnotations(
                    title="Cloud API usage counters", read_only=True, destructive=False, idempotent=True
                ),
            ),
        ]
        taken = {t.name for t in tools}
        for service in self.services.values():
            for op in service.operations:
                tool = self._operation_tool(service, op)
                if tool.name in taken:
                    raise ConfigError(
                        f"services.{service.name}.openapi: tool name {tool.name!r} is taken twice "
                        f"(operation {op.operation_id!r})"
                    )
                taken.add(tool.name)
                tools.append(tool)
        return tools

    def _operation_tool(self, service: Service, op: Operation) -> Tool:
        found = service.routes.match(op.method, op.path)
        risk: Risk = found[1] if found else "write"

        async def handler(call: ToolCall) -> ToolResult:
            return await self._operation_call(call, service, op)

        summary = op.summary or f"{op.operation_id} on {service.name}"
        return Tool(
            name=tool_name(service.name, op.operation_id),
            title=f"{service.name}: {op.operation_id}",
            description=f"{summary}\n\n{op.method} {op.path} on {service.name} ({risk}).",
            input_schema=op.input_schema,
            handler=handler,
            annotations=ToolAnnotations(
                title=f"{service.name}: {op.operation_id}",
                read_only=risk == "read-only",
                destructive=risk == "destructive",
                idempotent=op.method in ("GET", "HEAD", "OPTIONS", "PUT", "DELETE"),
                open_world=True,
            ),
            meta={
                "mcphub/cloud": {
                    "service": service.name,
                    "operation": op.operation_id,
                    "method": op.method,
                    "path": op.path,
                    "risk": risk,
                }
            },
            timeout_s=service.settings.timeout_s + 10,
        )

    def _service(self, call: ToolCall, name: str) -> Service:
        assert call.principal is not None
        service = self.services.get(name)
        if service is None:
            if name in self._missing:
                raise ToolError(
                    f"service {name!r} is off: its credential is not configured on the hub (an operator "
                    "can provide it and send the hub SIGHUP)"
                )
            if name in self.disabled:
                raise ToolError(f"service {name!r} is off: its credential is not configured on the hub")
            raise ToolError(f"no service {name!r}; cloud_services lists the ones you may call")
        if not service.allows(call.principal.name):
            raise PermissionDenied(f"principal {call.principal.name!r} may not call service {name!r}")
        return service

    def _precheck(self, call: ToolCall) -> str | None:
        """What `_http_request` refuses before it sends anything (for the gate: nobody is asked
        to approve such a call). A principal refused the service is left to the handler, which
        answers PERMISSION_DENIED."""
        args = call.arguments
        try:
            service = self._service(call, str(args.get("service")))
            path = clean_path(str(args.get("path", "")))
        except ToolError as exc:
            return str(exc)
        except PermissionDenied:
            return None
        method = str(args.get("method", "")).upper()
        if service.routes.match(method, path) is None:
            return service.routes.refusal(method, path, service.name)
        return None

    async def _http_request(self, call: ToolCall) -> ToolResult:
        args = call.arguments
        service = self._service(call, args["service"])
        method = str(args["method"]).upper()
        path = clean_path(args["path"])
        found = service.routes.match(method, path)
        if found is None:
            raise ToolError(service.routes.refusal(method, path, service.name))
        query = _query_items(args.get("query") or {})
        return await self._send(
            call,
            service,
            method,
            path,
            query,
            args.get("headers") or {},
            "json" in args,
            args.get("json"),
            found[1],
        )

    async def _operation_call(self, call: ToolCall, service: Service, op: Operation) -> ToolResult:
        service = self._service(call, service.name)
        args = call.arguments
        path = op.path
        query: list[tuple[str, str]] = []
        headers: dict[str, str] = {}
        for param in op.parameters:
            if param.argument not in args:
                continue
            value = args[param.argument]
            if param.location == "path":
                text = "true" if value is True else "false" if value is False else str(value)
                if text in ("", ".", "..") or "/" in text or "\\" in text:
                    raise ToolError(f"{param.argument}: {text[:80]!r} is not a usable path segment")
                path = path.replace("{" + param.name + "}", urllib.parse.quote(text, safe=""))
            elif param.location == "query":
                query.extend(_query_items({param.name: value}))
            else:
                headers[param.name] = str(value)
        found = service.routes.match(op.method, clean_path(path))
        if found is None:  # the operation's own route always matches; this guards the substitution
            raise ToolError(service.routes.refusal(op.method, path, service.name))
        has_body = op.body_argument is not None and op.body_argument in args
        body = args.get(op.body_argument) if op.body_argument else None
        return await self._send(call, service, op.method, path, query, headers, has_body, body, found[1])

    def _caller_headers(
        self, service: Service, given: Mapping[str, str]
    ) -> tuple[list[tuple[str, str]], list[str]]:
        auth = service.settings.auth
        banned = set(DROPPED_HEADERS)
        if auth.type == "header" and auth.name:
            banned.add(auth.name.lower().replace("_", "-"))
        fixed = {k.lower().replace("_", "-") for k in service.settings.headers}
        kept: list[tuple[str, str]] = [(k, v) for k, v in service.settings.headers.items()]
        dropped: list[str] = []
        for name, raw in given.items():
            # Compared as CGI, WSGI and Rack see them: `X_Original_URL` is `X-Original-URL` there.
            lowered = name.lower().replace("_", "-")
            value = raw.strip(" \t")  # optional whitespace around a value is not part of it (RFC 9110 5.5)
            if lowered in banned or lowered.startswith("proxy-") or lowered in fixed:
                dropped.append(name)
            elif "\r" in value or "\n" in value or "\0" in value:
                raise ToolError(f"header {name!r}: the value has a line break")
            elif _CONTROL.search(value):
                raise ToolError(
                    f"header {name!r}: the value has a control character (only tabs between other "
                    "characters may be in a header value)"
                )
            elif not _HEADER_NAME.fullmatch(name):
                raise ToolError(f"{name!r} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)")
            elif not value.isascii():
                raise ToolError(
                    f"header {name!r}: the value must be ASCII (HTTP sends header values as bytes); "
                    "percent-encode or base64 anything else"
                )
            else:
                kept.append((name, value))
        return kept, dropped

    async def _send(
        self,
        call: ToolCall,
        service: Service,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        given_headers: Mapping[str, str],
        has_body: bool,
        body_value: Any,
        risk: Risk,
    ) -> ToolResult:
        assert call.principal is not None
        principal = call.principal.name
        if has_body and method in ("GET", "HEAD"):
            raise ToolError(f"{method} takes no body: leave `json` out or use another method")
        headers, dropped = self._caller_headers(service, given_headers)
        auth = service.settings.auth
        if auth.type == "query" and auth.name:
            kept_query = [(k, v) for k, v in query if k.lower() != auth.name.lower()]
            if len(kept_query) != len(query):
                dropped.append(f"?{auth.name}")
            query = kept_query
        limit = service.settings.rate_limit
        wait = self.limiter.take(principal, service.name, limit.per_minute, limit.burst)
        if wait > 0:
            self.usage.rate_limited(principal, service.name)
            raise ResourceExhausted(
                f"rate limit for service {service.name!r} reached ({limit.per_minute:g} calls a minute, "
                f"bursts of {limit.burst}); retry in {wait:.1f}s",
                data={"retryAfterSeconds": round(wait, 3), "service": service.name},
            )
        credential = service.credential.current()  # taken once: a rotation affects the next call
        url = service.client.url(path, query)
        body = orjson.dumps(body_value) if has_body else None
        self.usage.started(principal, service.name, risk, len(body or b""))
        try:
            async with asyncio.timeout(service.settings.timeout_s):
                response = await service.client.send(method, url, headers, body, credential)
        except TimeoutError:
            self.usage.finished(principal, service.name, None, 0)
            raise ToolError(
                f"{service.name}: no complete answer within {service.settings.timeout_s:g}s"
            ) from None
        except ToolError as exc:
            self.usage.finished(principal, service.name, None, 0)
            raise ToolError(self._redactor.text(str(exc))) from None
        except asyncio.CancelledError:
            # The caller cancelled, or its deadline passed: no response reached it. Counted, so
            # that every call started has an outcome (`calls` = ok + client + server + failed).
            self.usage.finished(principal, service.name, None, 0)
            raise
        settings = service.settings
        self.usage.finished(
            principal, service.name, response.status, min(len(response.body), settings.max_response_bytes)
        )
        view = ResponseView(
            principal, service.name, method, path, settings.inline_bytes, settings.max_response_bytes
        )
        return response_result(view, response, dropped, self._redactor, self.env.outputs)

    async def _cloud_services(self, call: ToolCall) -> ToolResult:
        assert call.principal is not None
        visible = [s for s in self.services.values() if s.allows(call.principal.name)]
        listed = []
        for service in sorted(visible, key=lambda s: s.name):
            entry = service.describe()
            entry["tools"] = [tool_name(service.name, op.operation_id) for op in service.operations]
            listed.append(entry)
        lines = []
        for entry in listed:
            lines.append(f"{entry['service']}: {entry['base_url']}  {entry['description']}".rstrip())
            for route in entry["routes"]:
                op = f"  [{route['operation']}]" if "operation" in route else ""
                methods, paths = " ".join(route["methods"]), " ".join(route["paths"])
                lines.append(f"  {methods} {paths} ({', '.join(route['risk'])}){op}")
        text = "\n".join(lines) if lines else "no cloud services are available to you"
        return ToolResult(content=(TextContent(text),), structured={"services": listed})

    async def _cloud_usage(self, call: ToolCall) -> ToolResult:
        assert call.principal is not None
        if not call.principal.has_role("operator"):
            raise PermissionDenied("cloud_usage is for operators (principals with the operator role)")
        services = []
        for name, service in sorted(self.services.items()):
            cred = service.credential
            services.append(
                {
                    "service": name,
                    "state": "on",
                    "credential": cred.describe(),
                    "credential_generation": cred.generation,
                    "credential_loaded_at": cred.loaded_at,
                    "reload_failures": cred.failures,
                }
            )
        services += [{"service": n, "state": "off", "why": w} for n, w in sorted(self.disabled.items())]
        structured = {"usage": self.usage.snapshot(), "services": services, "reloads": self.reloads}
        return ToolResult(content=(TextContent(json.dumps(structured, indent=1)),), structured=structured)


def _gather_settings(options: CloudOptions) -> dict[str, ServiceSettings]:
    chosen = list(EXAMPLE_NAMES) if options.examples == "all" else list(options.examples)
    found: dict[str, ServiceSettings] = {}
    for name in chosen:
        if name in options.services:
            continue  # the operator's own definition wins
        data = load_service_file(EXAMPLES_DIR / f"{name}.yaml")
        wrapped = parse_options({"services": {name: data}}, where=f"examples/{name}.yaml")
        found[name] = wrapped.services[name]
    found.update(options.services)
    return found


def secret_variables(options: Mapping[str, Any]) -> list[str]:
    """The variables this pack's services read their secrets from (see `mcp_local.packs`): the
    hub takes them out of its environment before any pack starts a process, and hands them to
    this pack alone (in `env.extra["environ"]`). None with `keep_secret_env`."""
    parsed = parse_options(options)
    if parsed.keep_secret_env:
        return []
    return [
        ref.env
        for settings in _gather_settings(parsed).values()
        if (ref := settings.auth.secret) is not None and ref.env is not None
    ]


def create_pack(
    options: Mapping[str, Any], env: PackEnv, environ: MutableMapping[str, str] | None = None
) -> CloudPack:
    """The pack's entry point (`cloud`). `environ` defaults to the hub's own environment."""
    parsed = parse_options(options)
    if environ is None:
        extra = env.extra.get("environ")
        environ = extra if isinstance(extra, MutableMapping) else os.environ
    services: dict[str, Service] = {}
    disabled: dict[str, str] = {}
    missing: dict[str, ServiceSettings] = {}
    for name, settings in _gather_settings(parsed).items():
        if not settings.enabled:
            disabled[name] = "enabled: false in its configuration"
            continue
        try:
            services[name] = build_service(
                name, settings, environ=environ, register_secret=env.redactor.add, listen=env.listen_addresses
            )
        except SecretMissing as exc:
            disabled[name] = str(exc)
            missing[name] = settings
    if not parsed.keep_secret_env:
        # The values now live in the pack; no process the hub starts may inherit them.
        for service in services.values():
            ref = service.settings.auth.secret
            if ref is not None and ref.env is not None:
                environ.pop(ref.env, None)
    return CloudPack(parsed, env, services, disabled, missing, environ)
