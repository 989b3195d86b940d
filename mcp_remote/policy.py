"""The gate's policy: rules that match principal, tool and arguments, and the decision they make.

    decision = the strictest of every matching rule (deny > ask > allow), whatever their order
    no rule matches                     -> ask
    a shell command that is compound    -> at least ask

Pure and cached: `Policy.evaluate` runs on every call, so what depends only on
(principal, tool) is worked out once; only rules that look at arguments are
checked per call.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mcp_local.errors import ConfigError
from mcp_local.plainerrors import read_text, yaml_problem
from mcp_local.principals import Principal
from mcp_local.tools import ToolAnnotations

from .shellwords import parse_command_line

__all__ = [
    "Decision",
    "Policy",
    "PolicyConfig",
    "RuleConfig",
    "Verdict",
    "broad_allows",
    "default_policy_config",
    "describe_approver_groups",
    "load_policy_file",
    "missing_approver_groups",
    "unapprovable",
]

Verdict = Literal["allow", "ask", "deny"]
_SEVERITY: dict[str, int] = {"allow": 0, "ask": 1, "deny": 2}
NO_RULE = "(no rule names this tool)"
NO_MATCH = "(no rule matches these arguments)"
COMPOUND = "(compound shell command)"
GROUP_ALTERNATIVES = "|"
"""Joins the groups of one rule's `approvers` in a decision's requirement (`oncall|security`)."""


class AnnotationMatch(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    read_only: bool | None = None
    destructive: bool | None = None
    idempotent: bool | None = None
    open_world: bool | None = None


class RuleConfig(BaseModel):
    """One rule. Every condition given must hold for the rule to match."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    decision: Verdict
    tools: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    """Tool name globs."""
    exclude_tools: list[str] = Field(default_factory=list)
    principals: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    """Principal name globs."""
    annotations: AnnotationMatch | None = None
    """Match on the tool's annotations. A sidecar's claims of read-only or non-destructive never count."""
    args: dict[str, str | list[str]] | None = None
    """Argument name -> glob(s) its value (as text) must match."""
    argv: list[list[str]] | None = None
    """For shell tools: argv patterns, e.g. [["rm", "-r|-R|--recursive"], ["git", "push", "--force|-f"]].
    Words after the program are globs (`+*` is any word that starts with `+`). A cluster of two or
    three short options matches in any order or split (`-rf` as `-fr` or `-r -f`), and in ask and
    deny rules a long option also by a prefix (`--recursiv`), as GNU tools and git accept one. Short
    and long spellings are not linked: list both (`-r|-R|--recursive`)."""
    approvers: list[str] = Field(default_factory=list)
    """Approver groups that may decide an `ask` (default: any approver): the approver must be in
    one of them. When several `ask` rules match a call, the approver must meet every one's."""
    timeout_s: float | None = Field(default=None, gt=0)
    """How long an `ask` waits for a person; a timeout is a denial."""
    reason: str = ""
    """Shown to the approver and the caller."""

    @field_validator("approvers")
    @classmethod
    def _approver_groups(cls, value: list[str]) -> list[str]:
        for group in value:
            if not group or GROUP_ALTERNATIVES in group:
                raise ValueError(
                    f"approver group {group!r}: must be a non-empty name without {GROUP_ALTERNATIVES!r}"
                )
        return value

    @field_validator("argv")
    @classmethod
    def _argv(cls, value: list[list[str]] | None) -> list[list[str]] | None:
        for pattern in value or []:
            if not pattern or not pattern[0] or pattern[0].startswith("-"):
                raise ValueError(f"argv pattern {pattern!r}: must start with a program name")
        return value


class PolicyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    extends: Literal["default"] | None = None
    """`default`: add these rules to the shipped default policy (they cannot lift its asks and
    denies; an added allow decides only tools no shipped rule names)."""
    approval_timeout_s: float = Field(default=300.0, gt=0)
    shell_tools: dict[str, str] = Field(
        default_factory=lambda: {"shell_exec": "command", "shell_start": "command"}
    )
    """Tool name -> the argument holding its shell command line."""
    rules: list[RuleConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names_are_unique(self) -> PolicyConfig:
        first: dict[str, int] = {}
        for index, rule in enumerate(self.rules):
            if rule.name in first:
                raise ValueError(
                    f"rules.{index}.name: {rule.name!r} is also the name of rules.{first[rule.name]}; "
                    "decisions and the audit log name rules, so each needs its own"
                )
            first[rule.name] = index
        return self


def unapprovable(policy: PolicyConfig, principals: Iterable[Principal]) -> list[str]:
    """The rules whose `ask` no principal could approve: they require approver groups that no
    principal with the approver role is in, so every call they match waits out its timeout
    and is denied."""
    members = set().union(*(p.groups for p in principals if p.has_role("approver")))
    problems = []
    for rule in policy.rules:
        if rule.decision == "ask" and rule.approvers and not members & set(rule.approvers):
            problems.append(
                f"rule {rule.name!r} asks an approver in {', '.join(rule.approvers)}, and no principal "
                "with the role `approver` is in that group: its calls can only time out"
            )
    return problems


def missing_approver_groups(required: Iterable[str], groups: frozenset[str]) -> list[str]:
    """The entries of a decision's `approvers` that an approver in `groups` does not meet."""
    return [entry for entry in required if not groups & set(entry.split(GROUP_ALTERNATIVES))]


def describe_approver_groups(required: Sequence[str]) -> str:
    """`oncall` / `oncall or security` / `oncall, and security or admins`, for people."""
    words = [" or ".join(entry.split(GROUP_ALTERNATIVES)) for entry in required]
    return ", and ".join(words) if len(words) > 1 and any(" or " in w for w in words) else " and ".join(words)


def broad_allows(policy: PolicyConfig) -> list[str]:
    """Rules of a policy extending the default that allow any tool whatever its name: under
    `extends: default` an added allow cannot lift the default's asks or denies, but it does
    decide every tool no shipped rule names, including tools added later (a new pack, a
    sandbox's tools), which would then run without a person asked."""
    if policy.extends != "default":
        return []
    unnamed = "mcphub-a-tool-nobody-named"
    return [
        f"rule {rule.name!r} allows every tool no rule of the default policy names, including tools "
        "added later (a new pack, a sandbox's tools): they run without asking anybody"
        for rule in policy.rules
        if rule.decision == "allow"
        and not (rule.args or rule.argv or rule.annotations)
        and any(fnmatch.fnmatchcase(unnamed, glob) for glob in rule.tools)
        and not any(fnmatch.fnmatchcase(unnamed, glob) for glob in rule.exclude_tools)
    ]


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    rules: tuple[str, ...]
    """The rules that made the decision (the matching rules of the strictest kind)."""
    reason: str
    approvers: tuple[str, ...] = ()
    """What the approver must meet: one entry per deciding rule that names groups, each the
    rule's groups joined by `|`; the approver must be in a group of every entry."""
    timeout_s: float = 300.0

    @property
    def rule(self) -> str:
        return ", ".join(self.rules)


def _glob(patterns: Sequence[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns) or "(?!)")


def _options(argv: Sequence[str], *, attached: bool = False) -> tuple[list[str], set[str]]:
    """Positional words and the set of options of an argv (`-rf` -> -r, -f; `--a=b` -> --a).

    `attached`: an option's value written into its word counts as a word too, where it stands:
    `--request=DELETE` and `-XDELETE` read as `-X DELETE` does. Of a single-dash word, the rest
    after its first letter: not every tail, which took `-target=module.destroy` for `destroy`.
    (`-sXDELETE`, a value after grouped flags, is read as -s's: which letters take a value only
    the program knows; `git log -Spush` reads as `git log -S push` does.)"""
    positional: list[str] = []
    options: set[str] = set()
    for word in argv:
        if word.startswith("--"):
            name, equals, value = word.partition("=")
            options.add(name)
            if attached and equals:
                positional.append(value)
        elif word.startswith("-") and len(word) > 1:
            options.add(word)
            options.update(f"-{ch}" for ch in word[1:] if ch.isalpha())
            if attached and len(word) > 2:
                positional.append(word[2:])
        else:
            positional.append(word)
    return positional, options


def _given(option: str, options: set[str], longs: Sequence[str]) -> bool:
    """Whether a pattern's `option` is among a command's `options`, however the command spells it."""
    if option in options:
        return True
    if option.startswith("--"):
        # GNU getopt and git take any unambiguous prefix of a long option: `--recursiv`.
        return any(option.startswith(given) for given in longs)
    # `-rf` in a pattern is -r and -f, as the command's own words are read: `-fr`, `-r -f`. Only
    # two or three letters: a longer word is a single-dash long option (`find -delete`), whose
    # letters any `find -maxdepth 1 -type f -ls` also holds.
    letters = [f"-{ch}" for ch in option[1:] if ch.isalpha()]
    return 3 <= len(option) <= 4 and len(letters) == len(option) - 1 and all(o in options for o in letters)


@dataclass(frozen=True, slots=True)
class _ArgvPattern:
    program: str
    words: tuple[str, ...]
    options: tuple[tuple[str, ...], ...]
    """Each: options of which the command must give one."""

    @classmethod
    def parse(cls, pattern: Sequence[str]) -> _ArgvPattern:
        words = [w for w in pattern[1:] if not w.startswith("-")]
        options = [tuple(w.split("|")) for w in pattern[1:] if w.startswith("-")]
        return cls(pattern[0], tuple(words), tuple(options))

    def matches(self, argv: Sequence[str], *, abbreviations: bool = False) -> bool:
        """`abbreviations`: a prefix of a long option counts as the option, and a value attached
        to its option's word counts as a word. Rules that ask or deny take them (a prefix the
        program would refuse as ambiguous only asks needlessly); an allow must not, as `--force`
        is a prefix of `--force-if-includes`."""
        if not argv or argv[0] != self.program:
            return False
        # Values written into their option's word likewise count only for rules that ask or
        # deny: an allow of `curl -X GET` must not take `-XPOST -dGET` for it.
        positional, options = _options(argv[1:], attached=abbreviations)
        # The words must appear in order but not necessarily adjacent: `git -C dir push` still
        # reads as `git push` although `dir` (the value of -C) looks like a word too.
        remaining = iter(positional)
        if not all(any(fnmatch.fnmatchcase(found, word) for found in remaining) for word in self.words):
            return False
        longs = [o for o in options if o.startswith("--") and len(o) > 2] if abbreviations else []
        return all(any(_given(o, options, longs) for o in alternatives) for alternatives in self.options)


@dataclass(frozen=True, slots=True)
class _Rule:
    config: RuleConfig
    tools: re.Pattern[str]
    excluded: re.Pattern[str]
    principals: re.Pattern[str]
    args: tuple[tuple[str, re.Pattern[str]], ...]
    argv: tuple[_ArgvPattern, ...]

    @classmethod
    def compile(cls, rule: RuleConfig) -> _Rule:
        args = tuple(
            (name, _glob([globs] if isinstance(globs, str) else globs))
            for name, globs in (rule.args or {}).items()
        )
        return cls(
            rule,
            _glob(rule.tools),
            _glob(rule.exclude_tools),
            _glob(rule.principals),
            args,
            tuple(_ArgvPattern.parse(p) for p in rule.argv or ()),
        )

    @property
    def dynamic(self) -> bool:
        return bool(self.args or self.argv)

    def static_match(self, principal: str, tool: str, annotations: ToolAnnotations) -> bool:
        if not self.tools.match(tool) or self.excluded.match(tool) or not self.principals.match(principal):
            return False
        want = self.config.annotations
        if want is not None:
            for key in ("read_only", "destructive", "idempotent", "open_world"):
                expected = getattr(want, key)
                if expected is not None and getattr(annotations, key) is not expected:
                    return False
        return True

    def dynamic_match(self, arguments: Mapping[str, Any], argvs: Sequence[Sequence[str]] | None) -> bool:
        for name, pattern in self.args:
            if name not in arguments or not pattern.match(_text(arguments[name])):
                return False
        if self.argv:
            if argvs is None:
                return False
            abbreviations = self.config.decision != "allow"
            return any(p.matches(argv, abbreviations=abbreviations) for p in self.argv for argv in argvs)
        return True


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def untrusted_view(annotations: ToolAnnotations) -> ToolAnnotations:
    """How the gate reads annotations it cannot trust (a sidecar's): claims may raise risk, never lower it."""
    return ToolAnnotations(
        title=annotations.title,
        read_only=False,
        destructive=True if annotations.destructive else None,
        idempotent=False,
        open_world=True if annotations.open_world else None,
    )


@dataclass(slots=True)
class _Plan:
    """What (principal, tool) reduces to: matching static rules, and rules still to check per call."""

    static: tuple[_Rule, ...]
    dynamic: tuple[_Rule, ...]
    fixed: Decision | None


@dataclass
class Policy:
    config: PolicyConfig
    _rules: tuple[_Rule, ...] = field(init=False)
    _plans: dict[tuple[str, str, bool, ToolAnnotations], _Plan] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._rules = tuple(_Rule.compile(r) for r in self.config.rules)

    @property
    def rule_names(self) -> list[str]:
        return [r.config.name for r in self._rules]

    def evaluate(
        self,
        principal: str,
        tool: str,
        arguments: Mapping[str, Any],
        annotations: ToolAnnotations,
        *,
        trusted: bool = True,
    ) -> Decision:
        key = (principal, tool, trusted, annotations)  # one tool's calls may differ (`Tool.annotate`)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(principal, tool, annotations if trusted else untrusted_view(annotations))
            if len(self._plans) > 65536:
                self._plans.clear()
            self._plans[key] = plan
        if plan.fixed is not None:
            return plan.fixed
        matched = list(plan.static)
        compound: str | None = None
        argvs: Sequence[Sequence[str]] | None = None
        command_arg = self.config.shell_tools.get(tool)
        if command_arg is not None:
            command = arguments.get(command_arg)
            if isinstance(command, str):
                parsed = parse_command_line(command)
                argvs = parsed.commands
                compound = parsed.compound_reason
        matched.extend(r for r in plan.dynamic if r.dynamic_match(arguments, argvs))
        return self._decide(matched, compound, plan.dynamic)

    def _plan(self, principal: str, tool: str, annotations: ToolAnnotations) -> _Plan:
        static: list[_Rule] = []
        dynamic: list[_Rule] = []
        for rule in self._rules:
            if rule.static_match(principal, tool, annotations):
                (dynamic if rule.dynamic else static).append(rule)
        fixed = None
        if not dynamic and tool not in self.config.shell_tools:
            fixed = self._decide(static, None)
        return _Plan(tuple(static), tuple(dynamic), fixed)

    def _decide(
        self, matched: Sequence[_Rule], compound: str | None, unmet: Sequence[_Rule] = ()
    ) -> Decision:
        """`unmet`: rules naming the tool whose conditions on arguments were checked (a call that
        matches none of them asks "no rule matches these arguments", naming them)."""
        timeout = self.config.approval_timeout_s
        if not matched and unmet:
            verdict: Verdict = "ask"
            names: tuple[str, ...] = (NO_MATCH,)
            others = ", ".join(repr(r.config.name) for r in unmet[:3]) + (", ..." if len(unmet) > 3 else "")
            reasons = [
                f"no policy rule matches these arguments (rules for this tool with other arguments: {others})"
            ]
            deciding: list[_Rule] = []
        elif not matched:
            verdict = "ask"
            names = (NO_RULE,)
            reasons = ["no policy rule names this tool"]
            deciding = []
        else:
            top = max(_SEVERITY[r.config.decision] for r in matched)
            deciding = [r for r in matched if _SEVERITY[r.config.decision] == top]
            verdict = deciding[0].config.decision
            names = tuple(r.config.name for r in deciding)
            reasons = [r.config.reason for r in deciding if r.config.reason]
        if compound is not None and _SEVERITY[verdict] < _SEVERITY["ask"]:
            verdict, names, reasons, deciding = "ask", (COMPOUND,), [f"the command {compound}"], []
        elif compound is not None and verdict == "ask":
            names = (*names, COMPOUND)
            reasons.append(f"the command {compound}")
        approvers = tuple(
            sorted(
                {
                    GROUP_ALTERNATIVES.join(sorted(set(r.config.approvers)))
                    for r in deciding
                    if r.config.approvers
                }
            )
        )
        timeouts = [r.config.timeout_s for r in deciding if r.config.timeout_s is not None]
        return Decision(verdict, names, "; ".join(reasons), approvers, min(timeouts) if timeouts else timeout)


def default_policy_config() -> PolicyConfig:
    text = files("mcp_remote").joinpath("default_policy.yaml").read_text()
    return PolicyConfig.model_validate(yaml.safe_load(text))


def resolve_policy(config: PolicyConfig | None) -> Policy:
    """The policy a hub enforces: the shipped default, the given one, or the default plus given rules."""
    if config is None:
        return Policy(default_policy_config())
    if config.extends == "default":
        base = default_policy_config()
        taken = {rule.name for rule in base.rules}
        for index, rule in enumerate(config.rules):
            if rule.name in taken:
                raise ConfigError(
                    f"policy.rules.{index}.name: {rule.name!r} is the name of a rule of the default "
                    "policy, which this one extends; decisions and the audit log name rules, so give "
                    "it another"
                )
        merged = base.model_copy(
            update={
                "rules": [*base.rules, *config.rules],
                "shell_tools": {**base.shell_tools, **config.shell_tools},
                "approval_timeout_s": config.approval_timeout_s,
            }
        )
        return Policy(merged)
    return Policy(config)


def load_policy_file(path: Path) -> PolicyConfig | None:
    """A policy document, or a hub config file holding one under `policy:`; None for a hub config
    without one (its hub enforces the shipped default); raises ConfigError."""
    from .config import HubConfig, format_validation_error

    text = read_text(path, "the policy or config file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
    if isinstance(data, dict) and "policy" in data:
        data = data["policy"]
        if data is None:
            return None
    elif (
        isinstance(data, dict)
        and data.keys() & HubConfig.model_fields.keys()
        and not (data.keys() & PolicyConfig.model_fields.keys())
    ):
        return None  # a hub config that leaves the policy to the default
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a policy mapping (rules: [...]) or a hub config with `policy:`")
    try:
        return PolicyConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None
