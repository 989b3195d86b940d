"""What `mcphub local serve` passes to the interpreter it execs: the options it was started with."""

from __future__ import annotations

import sys

import pytest

from mcp_local.handover import _interpreter_options

M, SCRIPT = "/m/__main__.py", "/v/bin/mcphub"
CASES = [
    # (sys.orig_argv, sys.argv, the options handed on)
    (["py", SCRIPT, "local", "serve", "--json"], [SCRIPT, "local", "serve", "--json"], []),
    (["py", "-X", "importtime", "-m", "mcp_local", "serve"], [M, "serve"], ["-X", "importtime"]),
    (["py", "-mmcp_local", "serve"], [M, "serve"], []),
    (["py", "-um", "mcp_local", "serve"], [M, "serve"], ["-u"]),
    (["py", "-W", "error", "-u", SCRIPT, "local"], [SCRIPT, "local"], ["-W", "error", "-u"]),
    (["py", "-X", "int_max_str_digits=0", "-m", "mcp_local"], [M], ["-X", "int_max_str_digits=0"]),
]


@pytest.mark.parametrize(("orig_argv", "argv", "options"), CASES)
def test_the_interpreter_options_are_handed_on(
    orig_argv: list[str], argv: list[str], options: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "orig_argv", orig_argv)
    monkeypatch.setattr(sys, "argv", argv)
    assert _interpreter_options() == options


def test_when_argv_was_changed_the_recorded_flags_are_handed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "orig_argv", ["py", "-m", "mcp_local", "serve"])
    monkeypatch.setattr(sys, "argv", ["somebody", "else"])
    import subprocess

    assert _interpreter_options() == subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
