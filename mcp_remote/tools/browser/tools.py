"""The browser tools' definitions: playwright-mcp's names and argument shapes, plus `session`.

Only definitions live here (names, schemas, annotations, descriptions); the
handlers are in `actions.py`. Every tool takes an optional `session` handle;
without one a principal uses its own default session.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mcp_local.tools import Tool, ToolAnnotations, ToolHandler

__all__ = ["DEFAULT_SESSION", "MODAL_TOOLS", "SESSION_PATTERN", "TOOL_SPECS", "ToolSpec", "build_tools"]

DEFAULT_SESSION = "default"
SESSION_PATTERN = "^[A-Za-z0-9_.-]{1,64}$"

SESSION = {
    "type": "string",
    "pattern": SESSION_PATTERN,
    "description": (
        "Browser session handle: each session is a separate browser profile (cookies, storage, tabs). "
        f"Omit it to use your default session ({DEFAULT_SESSION!r})."
    ),
}
ELEMENT = {
    "type": "string",
    "description": "Human-readable description of the element, shown when the call needs approval.",
}
TARGET = {
    "type": "string",
    "minLength": 1,
    "description": "The element: its ref from the latest browser_snapshot (e.g. e12), or a unique selector.",
}

MODAL_TOOLS = frozenset(
    {
        "browser_handle_dialog",
        "browser_file_upload",
        "browser_close",
        "browser_tabs",
        "browser_console_messages",
        "browser_network_requests",
    }
)
"""The tools that work while a dialog or file chooser is open (the others would wait on it)."""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    title: str
    description: str
    properties: Mapping[str, Any]
    required: tuple[str, ...] = ()
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = False
    open_world: bool = True


def _obj(**props: Any) -> dict[str, Any]:
    return dict(props)


TOOL_SPECS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "browser_navigate",
        "Navigate to a URL",
        "Open a URL in the current tab (http and https only) and return the page's snapshot.",
        _obj(url={"type": "string", "minLength": 1, "description": "The URL to open."}),
        ("url",),
    ),
    ToolSpec(
        "browser_navigate_back",
        "Go back",
        "Go back to the previous page in the current tab's history.",
        {},
    ),
    ToolSpec(
        "browser_snapshot",
        "Page snapshot",
        "Capture the accessibility snapshot of the current page: its text, structure and element refs "
        "([ref=e12]) that other tools take as `target`. Better than a screenshot for acting on a page. "
        "A large snapshot is cut; the whole stays readable with output_read.",
        _obj(
            target={**TARGET, "description": "Snapshot only this element (a ref or a selector)."},
            depth={
                "type": "integer",
                "minimum": 1,
                "maximum": 1000,
                "description": "Limit the tree's depth.",
            },
        ),
        read_only=True,
        idempotent=True,
        open_world=False,
    ),
    ToolSpec(
        "browser_click",
        "Click",
        "Click an element of the page.",
        _obj(
            element=ELEMENT,
            target=TARGET,
            doubleClick={"type": "boolean", "description": "Double-click instead of a single click."},
            button={"type": "string", "enum": ["left", "right", "middle"], "description": "Default left."},
            modifiers={
                "type": "array",
                "items": {"type": "string", "enum": ["Alt", "Control", "ControlOrMeta", "Meta", "Shift"]},
                "description": "Modifier keys to hold while clicking.",
            },
        ),
        ("target",),
    ),
    ToolSpec(
        "browser_type",
        "Type text",
        "Type text into an editable element (replacing its content), optionally pressing Enter after.",
        _obj(
            element=ELEMENT,
            target=TARGET,
            text={"type": "string", "description": "The text to type."},
            submit={"type": "boolean", "description": "Press Enter after typing."},
            slowly={
                "type": "boolean",
                "description": "Type one character at a time (fires key handlers); default fills at once.",
            },
        ),
        ("target", "text"),
    ),
    ToolSpec(
        "browser_fill_form",
        "Fill form",
        "Fill several form fields at once.",
        _obj(
            fields={
                "type": "array",
                "minItems": 1,
                "maxItems": 100,
                "description": "The fields to fill.",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "description": "Human-readable field name."},
                        "type": {
                            "type": "string",
                            "enum": ["textbox", "checkbox", "radio", "combobox", "slider"],
                            "description": "The kind of field.",
                        },
                        "target": TARGET,
                        "ref": {"type": "string", "description": "Same as target (older clients' name)."},
                        "value": {
                            "type": "string",
                            "description": "The value: 'true'/'false' for a checkbox or radio, the option's "
                            "label for a combobox, the text otherwise.",
                        },
                    },
                    "required": ["type", "value"],
                    "additionalProperties": False,
                },
            }
        ),
        ("fields",),
    ),
    ToolSpec(
        "browser_select_option",
        "Select option",
        "Select one or more options of a dropdown (by value or label).",
        _obj(
            element=ELEMENT,
            target=TARGET,
            values={
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "description": "Values to select.",
            },
        ),
        ("target", "values"),
    ),
    ToolSpec(
        "browser_hover",
        "Hover",
        "Move the mouse over an element.",
        _obj(element=ELEMENT, target=TARGET),
        ("target",),
    ),
    ToolSpec(
        "browser_press_key",
        "Press a key",
        "Press a key on the keyboard, e.g. ArrowLeft, Enter, a, Control+A.",
        _obj(key={"type": "string", "minLength": 1, "description": "Key name or character."}),
        ("key",),
    ),
    ToolSpec(
        "browser_wait_for",
        "Wait for",
        "Wait for text to appear or disappear, or for a number of seconds.",
        _obj(
            time={"type": "number", "minimum": 0, "description": "Seconds to wait."},
            text={"type": "string", "minLength": 1, "description": "Wait until this text is visible."},
            textGone={"type": "string", "minLength": 1, "description": "Wait until this text is gone."},
        ),
        read_only=True,
        open_world=False,
    ),
    ToolSpec(
        "browser_take_screenshot",
        "Take a screenshot",
        "Take a screenshot of the page or an element (an image; act on the page with browser_snapshot refs).",
        _obj(
            element=ELEMENT,
            target={**TARGET, "description": "Screenshot only this element (a ref or a selector)."},
            type={"type": "string", "enum": ["png", "jpeg"], "description": "Image format, default png."},
            fullPage={"type": "boolean", "description": "The whole scrollable page, not only the viewport."},
        ),
        read_only=True,
        idempotent=True,
        open_world=False,
    ),
    ToolSpec(
        "browser_tabs",
        "Manage tabs",
        "List, open, close or select the tabs of the session.",
        _obj(
            action={
                "type": "string",
                "enum": ["list", "new", "close", "select"],
                "description": "What to do.",
            },
            index={"type": "integer", "minimum": 0, "description": "Tab index for close and select."},
            url={"type": "string", "description": "URL to open in the new tab (for new)."},
        ),
        ("action",),
    ),
    ToolSpec(
        "browser_close",
        "Close the session",
        "Close the browser session: its tabs, cookies and storage are dropped.",
        {},
        idempotent=True,
        open_world=False,
    ),
    ToolSpec(
        "browser_console_messages",
        "Console messages",
        "The console messages (and uncaught errors) of the current tab.",
        _obj(
            level={
                "type": "string",
                "enum": ["error", "warning", "info", "debug"],
                "description": "Lowest level to return (each includes the more severe ones); default info.",
            },
            all={
                "type": "boolean",
                "description": "Since the tab opened, not only since the last navigation.",
            },
        ),
        read_only=True,
        idempotent=True,
        open_world=False,
    ),
    ToolSpec(
        "browser_network_requests",
        "Network requests",
        "The session's recent network requests of the current tab, with status or failure.",
        _obj(
            static={"type": "boolean", "description": "Include successful images, fonts, scripts, styles."},
            filter={"type": "string", "description": "Only URLs matching this regular expression."},
        ),
        read_only=True,
        idempotent=True,
        open_world=False,
    ),
    ToolSpec(
        "browser_handle_dialog",
        "Handle a dialog",
        "Accept or dismiss the open alert, confirm or prompt dialog.",
        _obj(
            accept={"type": "boolean", "description": "Accept (true) or dismiss (false)."},
            promptText={"type": "string", "description": "The answer to a prompt dialog."},
        ),
        ("accept",),
    ),
    ToolSpec(
        "browser_file_upload",
        "Upload files",
        "Choose files for the open file chooser (or for the file input `target`). Paths must lie inside "
        "your workspace; without paths the chooser is cancelled.",
        _obj(
            paths={
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "description": "Files in your workspace (relative to it, or absolute inside it).",
            },
            element=ELEMENT,
            target={**TARGET, "description": "A file input to set directly, instead of an open chooser."},
        ),
    ),
    ToolSpec(
        "browser_evaluate",
        "Evaluate JavaScript",
        "Run a JavaScript function in the page, or on an element, and return its JSON result.",
        _obj(
            function={
                "type": "string",
                "minLength": 1,
                "description": "() => { ... } or (element) => { ... } when target is given.",
            },
            element=ELEMENT,
            target={**TARGET, "description": "The element passed to the function."},
        ),
        ("function",),
        destructive=True,
    ),
)


def build_tools(handler_for: Callable[[str], ToolHandler], timeout_s: float) -> list[Tool]:
    """The Tool objects, each with the handler `handler_for(name)` gives."""
    tools = []
    for spec in TOOL_SPECS:
        tools.append(
            Tool(
                name=spec.name,
                title=spec.title,
                description=spec.description,
                input_schema={
                    "type": "object",
                    "properties": {**spec.properties, "session": SESSION},
                    "required": list(spec.required),
                    "additionalProperties": False,
                },
                handler=handler_for(spec.name),
                annotations=ToolAnnotations(
                    title=spec.title,
                    read_only=spec.read_only,
                    destructive=spec.destructive,
                    idempotent=spec.idempotent,
                    open_world=spec.open_world,
                ),
                timeout_s=timeout_s,
            )
        )
    return tools
