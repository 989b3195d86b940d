"""The policy in process: strictest rule wins whatever the order, unnamed tools ask, compound commands ask."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from mcp_local import ConfigError, ToolAnnotations
from mcp_remote.policy import (
    Policy,
    PolicyConfig,
    RuleConfig,
    broad_allows,
    describe_approver_groups,
    load_policy_file,
    missing_approver_groups,
    resolve_policy,
)
from mcp_remote.shellwords import parse_command_line

RO = ToolAnnotations(read_only=True, destructive=False)
DESTRUCTIVE = ToolAnnotations(destructive=True)
NONE = ToolAnnotations()


def policy(*rules: dict[str, object], **settings: object) -> Policy:
    return Policy(PolicyConfig.model_validate({"rules": list(rules), **settings}))


def test_a_tool_no_rule_names_is_ask() -> None:
    decision = policy({"name": "echo ok", "tools": ["echo"], "decision": "allow"}).evaluate(
        "a", "other", {}, NONE
    )
    assert (decision.verdict, decision.rules) == ("ask", ("(no rule names this tool)",))


@pytest.mark.parametrize("order", [1, -1])
def test_the_strictest_rule_wins_whatever_the_order(order: int) -> None:
    rules = [
        {"name": "allow all", "decision": "allow"},
        {"name": "deny deletes", "tools": ["delete_*"], "decision": "deny", "reason": "never"},
        {"name": "ask deletes", "tools": ["delete_*"], "decision": "ask"},
    ][::order]
    decision = policy(*rules).evaluate("a", "delete_db", {}, NONE)
    assert (decision.verdict, decision.rules, decision.reason) == ("deny", ("deny deletes",), "never")


def test_a_read_only_claim_never_lowers_a_rule() -> None:
    p = policy(
        {"name": "read-only", "annotations": {"read_only": True}, "decision": "allow"},
        {"name": "careful with x", "tools": ["x"], "decision": "ask"},
    )
    assert p.evaluate("a", "x", {}, RO).verdict == "ask"
    assert p.evaluate("a", "y", {}, RO).verdict == "allow"


def test_a_sandbox_cannot_claim_its_way_to_allow_but_can_raise_risk() -> None:
    p = resolve_policy(None)
    assert p.evaluate("a", "sbx__query", {}, RO, trusted=False).verdict == "ask"
    assert p.evaluate("a", "sbx__drop", {}, DESTRUCTIVE, trusted=False).rules == ("destructive tools",)


def test_arguments_principals_approvers_and_timeouts() -> None:
    p = policy(
        {
            "name": "reads",
            "tools": ["http_request"],
            "args": {"method": ["GET", "HEAD"]},
            "decision": "allow",
        },
        {
            "name": "prod writes",
            "tools": ["http_request"],
            "args": {"path": "/prod/*"},
            "decision": "ask",
            "approvers": ["oncall"],
            "timeout_s": 30,
        },
        {
            "name": "writes",
            "tools": ["http_request"],
            "principals": ["agent-*"],
            "decision": "ask",
            "timeout_s": 60,
            "approvers": ["leads"],
        },
    )
    assert p.evaluate("agent-1", "http_request", {"method": "GET", "path": "/dev/x"}, NONE).verdict == "ask"
    assert p.evaluate("svc", "http_request", {"method": "GET", "path": "/dev/x"}, NONE).verdict == "allow"
    both = p.evaluate("agent-1", "http_request", {"method": "POST", "path": "/prod/db"}, NONE)
    assert both.verdict == "ask" and both.approvers == ("leads", "oncall") and both.timeout_s == 30
    # Each rule's groups are one requirement: the approver meets every rule, through any of its groups.
    assert missing_approver_groups(both.approvers, frozenset({"oncall"})) == ["leads"]
    assert missing_approver_groups(both.approvers, frozenset({"oncall", "leads"})) == []


def test_a_rule_s_approver_groups_are_alternatives_and_rules_add_up() -> None:
    p = policy(
        {
            "name": "secrets",
            "tools": ["t"],
            "args": {"x": "*secret*"},
            "decision": "ask",
            "approvers": ["security", "admins"],
        },
        {"name": "prod", "tools": ["t"], "args": {"x": "*prod*"}, "decision": "ask", "approvers": ["oncall"]},
        {"name": "any", "tools": ["t"], "args": {"x": "*any*"}, "decision": "ask"},
    )
    one = p.evaluate("a", "t", {"x": "secret"}, NONE)
    assert one.approvers == ("admins|security",)
    assert missing_approver_groups(one.approvers, frozenset({"admins"})) == []
    both = p.evaluate("a", "t", {"x": "prod secret any"}, NONE)
    assert both.approvers == ("admins|security", "oncall")
    assert missing_approver_groups(both.approvers, frozenset({"security"})) == ["oncall"]
    assert describe_approver_groups(both.approvers) == "admins or security, and oncall"
    assert describe_approver_groups(("a", "b")) == "a and b"
    with pytest.raises(ValidationError, match="without '\\|'"):
        RuleConfig(name="x", decision="ask", approvers=["a|b"])


@pytest.mark.parametrize(
    "command",
    [
        "ls; id",
        "ls && id",
        "ls || id",
        "ls | sh",
        "echo $(id)",
        "echo `id`",
        "diff <(ls) x",
        "echo x > /etc/passwd",
        "cat < f",
        "ls\nid",
        "bash -c 'ls'",
        "echo 'unterminated",
        "ls &",
        "FOO=1 sh -c id",
        # The shell expands the name the rules would match (an adversarial pass ran these unasked):
        "$R -rf important",
        "/usr/bin/r[m] -rf important",
        "r? -rf important",
        "xargs rm",
    ],
)
def test_compound_commands_are_at_least_ask(command: str) -> None:
    p = policy({"name": "shell", "tools": ["shell_exec"], "decision": "allow"})
    decision = p.evaluate("a", "shell_exec", {"command": command}, NONE)
    assert decision.verdict == "ask", command
    assert "(compound shell command)" in decision.rules
    assert parse_command_line(command).is_compound


@pytest.mark.parametrize(
    ("command", "verdict"),
    [
        ("ls -la", "allow"),
        ("git status", "allow"),
        ("git push origin main", "allow"),
        ("rm -r build", "ask"),
        ("rm -rf /", "ask"),
        ("rm -fr x", "ask"),
        ("/bin/rm --recursive x", "ask"),
        ("sudo -u root rm -R x", "ask"),
        ("timeout 5 rm -r x", "ask"),
        ("env A=1 git push --force origin main", "ask"),
        ("git -C repo push -f", "ask"),
        ("git push --force-with-lease", "ask"),
        ("git push origin +main", "ask"),
        ("git push origin +HEAD:refs/heads/main", "ask"),
        ("git push origin :old-branch", "ask"),
        ("git push origin main:main", "allow"),
        ("git push origin feature+x", "allow"),
        ("kubectl delete pod x", "ask"),
        ("kubectl get pods", "allow"),
        ("echo rm -rf", "allow"),
        # Long options abbreviated, as GNU getopt and git accept them.
        ("rm --recursiv x", "ask"),
        ("rm --r x", "ask"),
        ("rm --forc x", "ask"),
        ("git reset --har", "ask"),
        ("git push --delet origin x", "ask"),
        ("git push --mirro", "ask"),
        ("git push --force-w origin main", "ask"),
        ("git clean --forc", "ask"),
        ("chmod --recurs 777 /", "ask"),
        ("git branch --delete --force x", "ask"),
        ("git branch -df x", "ask"),
        ("git branch -d x", "allow"),
        ("rm -- x", "allow"),
        ("ls --all", "allow"),
    ],
)
def test_obviously_dangerous_commands_ask_by_default(command: str, verdict: str) -> None:
    assert (
        resolve_policy(None).evaluate("a", "shell_exec", {"command": command}, DESTRUCTIVE).verdict == verdict
    )


def test_an_option_pattern_matches_however_the_command_spells_it() -> None:
    p = policy(
        {"name": "shell", "tools": ["shell_exec"], "decision": "allow"},
        {"name": "no rf", "tools": ["shell_exec"], "argv": [["rm", "-rf"]], "decision": "deny"},
        {"name": "long listing", "tools": ["shell_exec"], "argv": [["ls", "-la"]], "decision": "ask"},
        {"name": "find deletes", "tools": ["shell_exec"], "argv": [["find", "-delete"]], "decision": "deny"},
        {
            "name": "find runs",
            "tools": ["shell_exec"],
            "argv": [["find", "-exec|-execdir"]],
            "decision": "deny",
        },
    )
    for command, verdict in [
        ("rm -rf /", "deny"),
        ("rm -fr /", "deny"),
        ("rm -r -f /", "deny"),
        ("rm -r /", "allow"),
        ("ls -al", "ask"),
        ("ls -l -a", "ask"),
        ("ls -l", "allow"),
        ("find . -delete", "deny"),
        ("find . -name x", "allow"),
        # A single-dash long option is one word, not letters: these hold d, e, l and t.
        ("find . -maxdepth 1 -type f -ls", "allow"),
        ("find / -xdev -ctime -1", "allow"),
        ("find . -exec rm {} +", "deny"),
    ]:
        assert p.evaluate("a", "shell_exec", {"command": command}, NONE).verdict == verdict, command


def test_an_allow_rule_takes_no_abbreviation() -> None:
    # `--force` is a prefix of `--force-if-includes`: as an allow, that would let `--force` through.
    p = policy(
        {
            "name": "careful force",
            "tools": ["shell_exec"],
            "argv": [["git", "push", "--force-if-includes"]],
            "decision": "allow",
        },
    )
    assert p.evaluate("a", "shell_exec", {"command": "git push --force-if-includes"}, NONE).verdict == "allow"
    assert p.evaluate("a", "shell_exec", {"command": "git push --force"}, NONE).verdict == "ask"


def test_a_deny_in_any_segment_of_a_compound_command_wins() -> None:
    p = policy(
        {"name": "shell", "tools": ["shell_exec"], "decision": "allow"},
        {
            "name": "no force push",
            "tools": ["shell_exec"],
            "argv": [["git", "push", "--force"]],
            "decision": "deny",
        },
    )
    assert p.evaluate("a", "shell_exec", {"command": "ls && git push --force"}, NONE).verdict == "deny"


def test_the_shipped_default_is_safe_and_useful() -> None:
    p = resolve_policy(None)
    assert p.evaluate("a", "echo", {"text": "x"}, RO).verdict == "allow"
    assert p.evaluate("a", "browser_click", {}, NONE).verdict == "allow"
    assert p.evaluate("a", "browser_evaluate", {}, DESTRUCTIVE).verdict == "ask"
    assert p.evaluate("a", "fs_write", {"path": "x"}, DESTRUCTIVE).verdict == "allow"
    assert p.evaluate("a", "delete_service", {}, DESTRUCTIVE).verdict == "ask"
    assert p.evaluate("a", "brand_new_tool", {}, NONE).verdict == "ask"
    assert p.evaluate("a", "http_request", {"method": "GET"}, NONE).verdict == "allow"
    assert p.evaluate("a", "http_request", {"method": "DELETE"}, NONE).verdict == "ask"


def test_a_call_only_argument_rules_name_says_so() -> None:
    # "no rule names this tool" was said of http_request, which a rule names for GET and HEAD.
    write = resolve_policy(None).evaluate("a", "http_request", {"method": "POST", "path": "/x"}, NONE)
    assert (write.verdict, write.rules) == ("ask", ("(no rule matches these arguments)",))
    assert write.reason == (
        "no policy rule matches these arguments (rules for this tool with other arguments: "
        "'reading cloud APIs')"
    )


def test_extending_the_default_can_only_be_stricter() -> None:
    extended = resolve_policy(
        PolicyConfig(extends="default", rules=[RuleConfig(name="no echo", tools=["echo"], decision="deny")])
    )
    assert extended.evaluate("a", "echo", {}, RO).verdict == "deny"
    assert "read-only tools" in extended.rule_names


def test_an_added_allow_of_every_tool_is_warned_of() -> None:
    # It cannot lift the default's asks, but it decides every tool the default does not name.
    rules = [
        RuleConfig(name="trust everything", tools=["*"], decision="allow"),
        RuleConfig(name="trusted sandbox", tools=["sbx-42__*"], decision="allow"),
        RuleConfig(name="reads", tools=["*"], args={"method": "GET"}, decision="allow"),
    ]
    extended = PolicyConfig(extends="default", rules=rules)
    assert resolve_policy(extended).evaluate("a", "made_up_tool", {}, NONE).verdict == "allow"
    assert resolve_policy(extended).evaluate("a", "delete_thing", {}, DESTRUCTIVE).verdict == "ask"
    (warning,) = broad_allows(extended)
    assert warning.startswith("rule 'trust everything' allows every tool no rule of the default policy names")
    assert broad_allows(PolicyConfig(rules=rules)) == []  # a policy of its own is the operator's whole word


def test_a_rule_extending_the_default_cannot_take_a_default_rules_name() -> None:
    with pytest.raises(ConfigError, match="'browsing' is the name of a rule of the default policy"):
        resolve_policy(
            PolicyConfig(extends="default", rules=[RuleConfig(name="browsing", tools=["x"], decision="deny")])
        )


def test_policy_files_are_validated_with_named_keys(tmp_path: Path) -> None:
    good = tmp_path / "p.yaml"
    good.write_text("rules:\n  - {name: all, decision: allow}\n")
    assert load_policy_file(good).rules[0].name == "all"
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {name: x, decision: maybe}\n  - {name: y, decision: ask, tool: [a]}\n")
    with pytest.raises(ConfigError) as info:
        load_policy_file(bad)
    assert "rules.0.decision: Input should be 'allow', 'ask' or 'deny'" in str(info.value)
    assert "rules.1.tool: unknown key" in str(info.value)
    wrapped = tmp_path / "hub.yaml"
    wrapped.write_text(
        "grpc: 127.0.0.1:0\npolicy:\n  rules:\n    - {name: z, decision: deny, argv: [[-x]]}\n"
    )
    with pytest.raises(ConfigError, match="must start with a program name"):
        load_policy_file(wrapped)


def test_an_option_value_written_into_its_word_is_matched_by_a_deny() -> None:
    """`curl -X DELETE` was denied while `curl -XDELETE` and `curl --request=DELETE` (the same
    request to curl) were allowed: the value was looked for only as a word of its own."""
    p = policy(
        {"name": "curl", "tools": ["shell_exec"], "decision": "allow"},
        {
            "name": "no deletes",
            "tools": ["shell_exec"],
            "argv": [["curl", "-X|--request", "DELETE"]],
            "decision": "deny",
        },
        {
            "name": "gets only",
            "tools": ["shell_exec"],
            "argv": [["wget", "--method", "GET"]],
            "decision": "allow",
        },
    )
    for command, verdict in [
        ("curl -X DELETE http://x", "deny"),
        ("curl -XDELETE http://x", "deny"),
        ("curl --request=DELETE http://x", "deny"),
        ("curl -sX DELETE http://x", "deny"),
        ("curl --requ=DELETE http://x", "deny"),
        ("curl -X GET http://x", "allow"),
        ("curl -XGET http://x/DELETE-me", "allow"),
    ]:
        assert p.evaluate("a", "shell_exec", {"command": command}, NONE).verdict == verdict, command
    # An allow does not read attached values: `--method=GET` is not `--method GET` to it.
    allow_only = policy(
        {
            "name": "gets only",
            "tools": ["shell_exec"],
            "argv": [["wget", "--method", "GET"]],
            "decision": "allow",
        }
    )
    assert allow_only.evaluate("a", "shell_exec", {"command": "wget --method GET u"}, NONE).verdict == "allow"
    assert allow_only.evaluate("a", "shell_exec", {"command": "wget --method=GET u"}, NONE).verdict != "allow"


@pytest.mark.parametrize(
    "command",
    [
        "terraform plan -target=module.destroy",
        "terraform plan -var=mode=apply",
        "kubectl get pods -lapp=delete",
        "docker run -w/srv/rm alpine",
    ],
)
def test_an_attached_value_is_read_whole_not_by_its_tails(command: str) -> None:
    """Review: every tail of a single-dash word counted as a word, so these harmless commands
    matched the shipped rules (`destroy`, `apply`, `delete`, `push`, `+*`) and asked a person."""
    assert (
        resolve_policy(None).evaluate("a", "shell_exec", {"command": command}, DESTRUCTIVE).verdict == "allow"
    )
