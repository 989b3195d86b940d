"""How the gate reads a shell command line: split into simple commands, each an argv, and flag compounds.

Pure functions, no I/O. Anything this module cannot read with certainty
(unbalanced quotes, substitutions, redirects, control operators) is reported
as compound, and the gate treats compound commands as at least `ask`.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

__all__ = ["CommandLine", "parse_command_line"]

_OPERATORS = {
    ";",
    "&&",
    "||",
    "|",
    "&",
    "|&",
    ";;",
    "(",
    ")",
    "<",
    ">",
    ">>",
    "<<",
    "<<<",
    "<>",
    ">&",
    "<&",
    ">|",
}
_SUBSTITUTIONS = ("$(", "`", "<(", ">(", "${")
# Commands that run another command given as their arguments.
_WRAPPERS = {
    "sudo",
    "doas",
    "env",
    "nice",
    "nohup",
    "time",
    "command",
    "exec",
    "stdbuf",
    "ionice",
    "setsid",
    "timeout",
    "chrt",
    "taskset",
    "xargs",
    "watch",
    "strace",
    "busybox",
}
_SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "fish", "eval", "source", "."}


@dataclass(frozen=True, slots=True)
class CommandLine:
    """What a command line may run, and why it counts as compound, if it does.

    `commands` holds every argv a rule should be checked against: each simple command, and
    for a wrapped one (`sudo -u x rm -r /`) every tail after the wrapper, since which word
    is the wrapped command depends on the wrapper's options. Extra candidates can only make
    more rules match, and the strictest matching rule wins, so guessing wide is safe.
    """

    commands: tuple[tuple[str, ...], ...]
    compound_reason: str | None

    @property
    def is_compound(self) -> bool:
        return self.compound_reason is not None


_EXPANDED = frozenset("$*?[")


def _is_assignment(word: str) -> bool:
    return "=" in word and not word.startswith("-") and word.split("=", 1)[0].isidentifier()


def _candidates(argv: tuple[str, ...]) -> tuple[list[tuple[str, ...]], str | None]:
    """The argvs `argv` may run (see `CommandLine`), with program names reduced to their basename."""
    i = 0
    while i < len(argv) and _is_assignment(argv[i]):
        i += 1
    rest = argv[i:]
    found: list[tuple[str, ...]] = []
    nested: str | None = None
    if rest:
        found.append((os.path.basename(rest[0]), *rest[1:]))
    if rest and os.path.basename(rest[0]) in _WRAPPERS:
        for k in range(1, len(rest)):
            if not rest[k].startswith("-") and not _is_assignment(rest[k]):
                found.append((os.path.basename(rest[k]), *rest[k + 1 :]))
    for candidate in found:
        if candidate[0] in _SHELLS:
            nested = f"runs a nested shell ({candidate[0]})"
        elif any(c in candidate[0] for c in _EXPANDED):
            # /bin/sh expands `$R` (the call's own env can set R=rm) and `r[m]`, so the name a
            # rule would match is not the program that runs. Quoting is gone by now; guess wide.
            nested = f"the command name {candidate[0][:40]!r} is expanded by the shell"
        elif candidate[0] == "xargs":
            nested = "runs commands built from its input (xargs)"
    return found, nested


def parse_command_line(command: str) -> CommandLine:
    reason: str | None = None
    if "\n" in command or "\r" in command:
        reason = "contains a newline"
    elif any(s in command for s in _SUBSTITUTIONS):
        reason = "contains a substitution ($(...), backticks, <(...) or ${...})"
    # Newlines separate commands like ';' does; reading them so keeps every line checkable.
    lexer = shlex.shlex(
        command.replace("\r", ";").replace("\n", ";"), posix=True, punctuation_chars=";&|()<>"
    )
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        tokens = list(lexer)
    except ValueError as exc:  # unbalanced quotes
        return CommandLine((), f"cannot be parsed: {exc}")
    commands: list[tuple[str, ...]] = []
    current: list[str] = []
    for token in tokens:
        if token in _OPERATORS or (token and set(token) <= set(";&|()<>")):
            reason = reason or f"uses the shell operator {token!r}"
            if current:
                commands.append(tuple(current))
                current = []
        else:
            current.append(token)
    if current:
        commands.append(tuple(current))
    candidates: list[tuple[str, ...]] = []
    for argv in commands:
        found, nested = _candidates(argv)
        reason = reason or nested
        candidates.extend(found)
    return CommandLine(tuple(candidates), reason)
