from . import toolhub_pb2 as _toolhub_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SidecarHello(_message.Message):
    __slots__ = ("sandbox", "tools", "version")
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    sandbox: str
    tools: _containers.RepeatedCompositeFieldContainer[_toolhub_pb2.Tool]
    version: str
    def __init__(self, sandbox: _Optional[str] = ..., tools: _Optional[_Iterable[_Union[_toolhub_pb2.Tool, _Mapping]]] = ..., version: _Optional[str] = ...) -> None: ...

class SidecarTools(_message.Message):
    __slots__ = ("tools",)
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    tools: _containers.RepeatedCompositeFieldContainer[_toolhub_pb2.Tool]
    def __init__(self, tools: _Optional[_Iterable[_Union[_toolhub_pb2.Tool, _Mapping]]] = ...) -> None: ...

class SidecarCallEvent(_message.Message):
    __slots__ = ("call_id", "event")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    event: _toolhub_pb2.CallToolEvent
    def __init__(self, call_id: _Optional[str] = ..., event: _Optional[_Union[_toolhub_pb2.CallToolEvent, _Mapping]] = ...) -> None: ...

class SidecarCallFailure(_message.Message):
    __slots__ = ("call_id", "code", "message")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    code: int
    message: str
    def __init__(self, call_id: _Optional[str] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class SidecarMessage(_message.Message):
    __slots__ = ("hello", "tools", "event", "failure", "pong")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    hello: SidecarHello
    tools: SidecarTools
    event: SidecarCallEvent
    failure: SidecarCallFailure
    pong: Pong
    def __init__(self, hello: _Optional[_Union[SidecarHello, _Mapping]] = ..., tools: _Optional[_Union[SidecarTools, _Mapping]] = ..., event: _Optional[_Union[SidecarCallEvent, _Mapping]] = ..., failure: _Optional[_Union[SidecarCallFailure, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ...) -> None: ...

class BlockedTool(_message.Message):
    __slots__ = ("name", "reason", "pinned_sha256", "announced_sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PINNED_SHA256_FIELD_NUMBER: _ClassVar[int]
    ANNOUNCED_SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    pinned_sha256: str
    announced_sha256: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ..., pinned_sha256: _Optional[str] = ..., announced_sha256: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("sandbox", "exposed", "blocked", "ping_interval_s")
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    EXPOSED_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    PING_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    sandbox: str
    exposed: _containers.RepeatedScalarFieldContainer[str]
    blocked: _containers.RepeatedCompositeFieldContainer[BlockedTool]
    ping_interval_s: int
    def __init__(self, sandbox: _Optional[str] = ..., exposed: _Optional[_Iterable[str]] = ..., blocked: _Optional[_Iterable[_Union[BlockedTool, _Mapping]]] = ..., ping_interval_s: _Optional[int] = ...) -> None: ...

class SidecarCallRequest(_message.Message):
    __slots__ = ("call_id", "request", "principal", "timeout_ms")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    request: _toolhub_pb2.CallToolRequest
    principal: str
    timeout_ms: int
    def __init__(self, call_id: _Optional[str] = ..., request: _Optional[_Union[_toolhub_pb2.CallToolRequest, _Mapping]] = ..., principal: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class SidecarCancel(_message.Message):
    __slots__ = ("call_id",)
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    def __init__(self, call_id: _Optional[str] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class HubMessage(_message.Message):
    __slots__ = ("welcome", "call", "cancel", "ping")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    call: SidecarCallRequest
    cancel: SidecarCancel
    ping: Ping
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., call: _Optional[_Union[SidecarCallRequest, _Mapping]] = ..., cancel: _Optional[_Union[SidecarCancel, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ...) -> None: ...

class ListSandboxesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SandboxInfo(_message.Message):
    __slots__ = ("name", "principal", "exposed", "blocked", "connected_at_unix_ms", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    EXPOSED_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    principal: str
    exposed: _containers.RepeatedScalarFieldContainer[str]
    blocked: _containers.RepeatedCompositeFieldContainer[BlockedTool]
    connected_at_unix_ms: int
    version: str
    def __init__(self, name: _Optional[str] = ..., principal: _Optional[str] = ..., exposed: _Optional[_Iterable[str]] = ..., blocked: _Optional[_Iterable[_Union[BlockedTool, _Mapping]]] = ..., connected_at_unix_ms: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...

class ListSandboxesResponse(_message.Message):
    __slots__ = ("sandboxes",)
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    sandboxes: _containers.RepeatedCompositeFieldContainer[SandboxInfo]
    def __init__(self, sandboxes: _Optional[_Iterable[_Union[SandboxInfo, _Mapping]]] = ...) -> None: ...

class AcceptToolsRequest(_message.Message):
    __slots__ = ("sandbox", "tools")
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    sandbox: str
    tools: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sandbox: _Optional[str] = ..., tools: _Optional[_Iterable[str]] = ...) -> None: ...

class AcceptToolsResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, accepted: _Optional[_Iterable[str]] = ...) -> None: ...

class ForgetSandboxRequest(_message.Message):
    __slots__ = ("sandbox",)
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    sandbox: str
    def __init__(self, sandbox: _Optional[str] = ...) -> None: ...

class ForgetSandboxResponse(_message.Message):
    __slots__ = ("pins",)
    PINS_FIELD_NUMBER: _ClassVar[int]
    pins: int
    def __init__(self, pins: _Optional[int] = ...) -> None: ...
