"""The tool-server runtime (tool model, registry, dispatch pipeline, gRPC servicer) and the sidecar.

The names below are imported on first use (PEP 562): `mcphub --help` and the other client
commands build their parser with `mcp_local.cli` and should not load gRPC and jsonschema for it.
"""

# No `from __future__ import annotations` here: it imports the module `__future__`, which a
# workspace could plant (see _leave_the_current_directory); `os` is frozen, `sys` built in.
import os
import sys

_NO_VALUE_OPTIONS = "bBdEiIOPqRsSuvx"
"""The interpreter's one-letter options that take no value, which may come before `m` (`-um`)."""


def _leave_the_current_directory() -> None:
    """`python -m mcp_local` from the agent's workspace puts that directory first on sys.path:
    a `typing.py` or `pickle.py` planted there would run in the sidecar on import. While runpy
    locates the package (sys.argv[0] is "-m", before anything else of ours is imported), the
    directory leaves sys.path, unless the package itself was found there (a source checkout).
    `-P` (Python 3.11) does this for the whole start."""
    if sys.argv[:1] != ["-m"] or sys.flags.safe_path or not sys.path:
        return
    argv = sys.orig_argv
    for i, arg in enumerate(argv[1:], 1):  # the interpreter's options, up to `-m MODULE`
        flags, m, rest = arg[1:].partition("m")
        if arg.startswith("-") and not arg.startswith("--") and m and set(flags) <= set(_NO_VALUE_OPTIONS):
            module = rest or (argv[i + 1] if i + 1 < len(argv) else "")
            break
    else:
        return
    here = os.getcwd()
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if module.partition(".")[0] == __name__ and sys.path[0] in ("", here) and package_root != here:
        del sys.path[0]


_leave_the_current_directory()

from typing import TYPE_CHECKING  # noqa: E402 - after the current directory has left sys.path

from .lazy import names_on_first_use  # noqa: E402

if TYPE_CHECKING:
    from .content import AudioContent as AudioContent
    from .content import Content as Content
    from .content import ContentAnnotations as ContentAnnotations
    from .content import EmbeddedResource as EmbeddedResource
    from .content import ImageContent as ImageContent
    from .content import ResourceLink as ResourceLink
    from .content import TextContent as TextContent
    from .content import ToolResult as ToolResult
    from .errors import ConfigError as ConfigError
    from .errors import DeadlineExceeded as DeadlineExceeded
    from .errors import HubError as HubError
    from .errors import InvalidArgument as InvalidArgument
    from .errors import MissingCapability as MissingCapability
    from .errors import PermissionDenied as PermissionDenied
    from .errors import ResourceExhausted as ResourceExhausted
    from .errors import ToolError as ToolError
    from .errors import ToolHubError as ToolHubError
    from .errors import ToolNotFound as ToolNotFound
    from .errors import Unauthenticated as Unauthenticated
    from .errors import Unavailable as Unavailable
    from .outputs import OutputStore as OutputStore
    from .outputs import output_read_tool as output_read_tool
    from .packs import PackEnv as PackEnv
    from .packs import StaticPack as StaticPack
    from .packs import ToolPack as ToolPack
    from .packs import load_pack as load_pack
    from .pipeline import Authenticate as Authenticate
    from .pipeline import Authorize as Authorize
    from .pipeline import Next as Next
    from .pipeline import Pipeline as Pipeline
    from .pipeline import ResolveTool as ResolveTool
    from .pipeline import Stage as Stage
    from .pipeline import ValidateArguments as ValidateArguments
    from .pipeline import execute as execute
    from .principals import LOCAL as LOCAL
    from .principals import Authenticator as Authenticator
    from .principals import OpenAccess as OpenAccess
    from .principals import Principal as Principal
    from .redaction import REDACTED as REDACTED
    from .redaction import RedactingFilter as RedactingFilter
    from .redaction import Redactor as Redactor
    from .registry import RegisteredTool as RegisteredTool
    from .registry import ToolRegistry as ToolRegistry
    from .servicer import ToolHubServicer as ToolHubServicer
    from .servicer import start_grpc_server as start_grpc_server
    from .tools import Tool as Tool
    from .tools import ToolAnnotations as ToolAnnotations
    from .tools import ToolCall as ToolCall

_HOMES = {
    "AudioContent": "content",
    "Content": "content",
    "ContentAnnotations": "content",
    "EmbeddedResource": "content",
    "ImageContent": "content",
    "ResourceLink": "content",
    "TextContent": "content",
    "ToolResult": "content",
    "ConfigError": "errors",
    "DeadlineExceeded": "errors",
    "HubError": "errors",
    "InvalidArgument": "errors",
    "MissingCapability": "errors",
    "PermissionDenied": "errors",
    "ResourceExhausted": "errors",
    "ToolError": "errors",
    "ToolHubError": "errors",
    "ToolNotFound": "errors",
    "Unauthenticated": "errors",
    "Unavailable": "errors",
    "OutputStore": "outputs",
    "output_read_tool": "outputs",
    "PackEnv": "packs",
    "StaticPack": "packs",
    "ToolPack": "packs",
    "load_pack": "packs",
    "Authenticate": "pipeline",
    "Authorize": "pipeline",
    "Next": "pipeline",
    "Pipeline": "pipeline",
    "ResolveTool": "pipeline",
    "Stage": "pipeline",
    "ValidateArguments": "pipeline",
    "execute": "pipeline",
    "Authenticator": "principals",
    "LOCAL": "principals",
    "OpenAccess": "principals",
    "Principal": "principals",
    "REDACTED": "redaction",
    "RedactingFilter": "redaction",
    "Redactor": "redaction",
    "RegisteredTool": "registry",
    "ToolRegistry": "registry",
    "ToolHubServicer": "servicer",
    "start_grpc_server": "servicer",
    "Tool": "tools",
    "ToolAnnotations": "tools",
    "ToolCall": "tools",
}

__all__ = sorted(_HOMES)

__getattr__ = names_on_first_use(__name__, _HOMES)
