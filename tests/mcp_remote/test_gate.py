"""The human-in-the-loop gate against a real hub: approve, deny, timeout, replay, changed arguments,
self-approval, approver groups, restart with a call pending, and the bridge's view of an approval."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from bridge.hubclient import HubClient
from mcp_remote.audit import RecordQuery
from mcp_remote.audit.sqlite import SQLiteStore
from mcphub_proto.v1 import toolhub_pb2 as pb
from tests.mcp_remote.tools.cloud_standin import start_standin
from tests.support.approvals import decide, listing, start_call, text_of
from tests.support.clients import connect
from tests.support.hub import PROBE_PACK, REPO, RunningHub, hub_command, start_hub

pytestmark = pytest.mark.anyio

RISKY_PACK = str(REPO / "tests" / "packs" / "risky.py")
TOKENS = {
    "agent-a": "gate-token-agent-a-0123456789",
    "agent-b": "gate-token-agent-b-0123456789",
    "alice": "gate-token-alice-approver-0123",
    "bob": "gate-token-bob-oncall-approver",
    "selfish": "gate-token-selfish-approver-01",
    "carol": "gate-token-carol-security-0123",
    "dave": "gate-token-dave-oncall-security",
    "erin": "gate-token-erin-auditor-012345",
}
CONFIG: dict[str, Any] = {
    "principals": [
        {"name": "agent-a", "token": TOKENS["agent-a"]},
        {"name": "agent-b", "token": TOKENS["agent-b"]},
        {"name": "alice", "token": TOKENS["alice"], "roles": ["approver"]},
        {"name": "bob", "token": TOKENS["bob"], "roles": ["approver"], "groups": ["oncall"]},
        {"name": "selfish", "token": TOKENS["selfish"], "roles": ["approver"]},
        {"name": "carol", "token": TOKENS["carol"], "roles": ["approver"], "groups": ["security"]},
        {"name": "dave", "token": TOKENS["dave"], "roles": ["approver"], "groups": ["oncall", "security"]},
        {"name": "erin", "token": TOKENS["erin"], "roles": ["approver"], "groups": ["auditors"]},
    ],
    "policy": {
        "extends": "default",
        "rules": [
            {
                "name": "prod needs oncall",
                "tools": ["plain_thing"],
                "args": {"name": "prod-*"},
                "decision": "ask",
                "approvers": ["oncall"],
                "reason": "touches production",
            },
            {
                "name": "secrets need security",
                "tools": ["plain_thing"],
                "args": {"name": "*-secrets"},
                "decision": "ask",
                "approvers": ["security", "admins"],
            },
            {
                "name": "audits need auditors",
                "tools": ["plain_thing"],
                "args": {"name": "*-audit"},
                "decision": "ask",
                "approvers": ["auditors"],
                "timeout_s": 1,
            },
            {
                "name": "quick",
                "tools": ["plain_thing"],
                "args": {"name": "quick-*"},
                "decision": "ask",
                "timeout_s": 1,
            },
            {
                "name": "brief",
                "tools": ["plain_thing"],
                "args": {"name": "brief-*"},
                "decision": "ask",
                "timeout_s": 3,
            },
            {
                "name": "never everything",
                "tools": ["delete_thing"],
                "args": {"name": "everything"},
                "decision": "deny",
                "reason": "nobody deletes everything",
            },
        ],
    },
    "audit": {"checkpoint_every": 5},
}


@pytest.fixture(scope="module")
def gated_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    hub = start_hub(tmp_path_factory.mktemp("gated"), config=CONFIG, packs=[PROBE_PACK, RISKY_PACK])
    yield hub
    hub.stop()


@pytest.fixture
async def hub_client(gated_hub: RunningHub) -> AsyncIterator[HubClient]:
    client = HubClient(gated_hub.grpc)
    yield client
    await client.close()


async def records_of(hub: RunningHub, call_id: str) -> list[tuple[str, dict[str, Any]]]:
    store = SQLiteStore(hub.state_dir / "audit" / "audit.db", read_only=True)
    await store.open()
    try:
        found = await store.query(RecordQuery(call_id=call_id, newest_first=False))
    finally:
        await store.close()
    return [(r.kind, r.body_json()) for r in found]


async def test_an_approved_call_runs_and_leaves_every_record(
    gated_hub: RunningHub, hub_client: HubClient
) -> None:
    call = start_call(hub_client, TOKENS["agent-a"], "delete_thing", {"name": "old-logs"})
    approval_id = await call.approval_id()
    pending = await listing(gated_hub.grpc, TOKENS["alice"])
    assert approval_id in [a.id for a in pending]
    mine = next(a for a in pending if a.id == approval_id)
    assert (mine.principal, mine.tool, mine.rule) == ("agent-a", "delete_thing", "destructive tools")
    decided = await decide(gated_hub.grpc, TOKENS["alice"], approval_id, True, "fine")
    assert (decided.state, decided.decided_by) == ("approved", "alice")
    result = await call.result()
    assert text_of(result) == "deleted old-logs" and not result.get("isError")
    kinds = [kind for kind, _ in await records_of(gated_hub, mine.call_id)]
    assert kinds[:3] == ["requested", "decided", "approval"]
    assert kinds[-2:] == ["started", "finished"]
    bodies = dict(await records_of(gated_hub, mine.call_id))
    assert bodies["decided"] == {
        "decision": "ask",
        "rule": "destructive tools",
        "reason": "the tool may change or delete things outside the caller's sandbox",
    }
    approval_states = [b["state"] for k, b in await records_of(gated_hub, mine.call_id) if k == "approval"]
    assert approval_states == ["pending", "decided", "used"]


async def test_a_denied_call_returns_a_readable_error(gated_hub: RunningHub, hub_client: HubClient) -> None:
    call = start_call(hub_client, TOKENS["agent-a"], "delete_thing", {"name": "db"})
    approval_id = await call.approval_id()
    await decide(gated_hub.grpc, TOKENS["alice"], approval_id, False, "not today")
    result = await call.result()
    assert result["isError"] is True
    assert text_of(result) == f"alice denied this call (approval {approval_id}): not today"


async def test_a_timeout_is_a_denial(gated_hub: RunningHub, hub_client: HubClient) -> None:
    call = start_call(hub_client, TOKENS["agent-a"], "plain_thing", {"name": "quick-1"})
    approval_id = await call.approval_id()
    result = await call.result()
    assert result["isError"] is True and "a timeout is a denial" in text_of(result)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await decide(gated_hub.grpc, TOKENS["alice"], approval_id, True)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already expired" in (info.value.details() or "")


async def test_an_approval_is_bound_to_its_arguments_and_good_for_one_call(
    gated_hub: RunningHub, hub_client: HubClient
) -> None:
    first = start_call(hub_client, TOKENS["agent-a"], "delete_thing", {"name": "cache"})
    approval_id = await first.approval_id()
    call_id = next(a.call_id for a in await listing(gated_hub.grpc, TOKENS["alice"]) if a.id == approval_id)
    first.task.cancel()  # the agent gave up waiting; the approval stays pending
    async with asyncio.timeout(20):  # until the hub has seen the caller go (else the first call could use it)
        while "finished" not in [kind for kind, _ in await records_of(gated_hub, call_id)]:  # noqa: ASYNC110 - polling the log
            await asyncio.sleep(0.05)
    await decide(gated_hub.grpc, TOKENS["alice"], approval_id, True)

    changed = await start_call(
        hub_client, TOKENS["agent-a"], "delete_thing", {"name": "cache2"}, approval_id
    ).result()
    assert changed["isError"] is True and "the arguments changed" in text_of(changed)
    stranger = await start_call(
        hub_client, TOKENS["agent-b"], "delete_thing", {"name": "cache"}, approval_id
    ).result()
    assert stranger["isError"] is True and "another principal or tool" in text_of(stranger)

    spent = await start_call(
        hub_client, TOKENS["agent-a"], "delete_thing", {"name": "cache"}, approval_id
    ).result()
    assert text_of(spent) == "deleted cache"
    replay = await start_call(
        hub_client, TOKENS["agent-a"], "delete_thing", {"name": "cache"}, approval_id
    ).result()
    assert replay["isError"] is True and "already used" in text_of(replay)


async def gave_up(hub: RunningHub, call: Any) -> tuple[str, str]:
    """The approval id and call id of a call whose caller gives up waiting, once the hub saw it go."""
    approval_id = await call.approval_id()
    call_id = next(a.call_id for a in await listing(hub.grpc, TOKENS["alice"]) if a.id == approval_id)
    call.task.cancel()
    async with asyncio.timeout(20):
        while "finished" not in [kind for kind, _ in await records_of(hub, call_id)]:  # noqa: ASYNC110 - polling the log
            await asyncio.sleep(0.05)
    return approval_id, call_id


async def call_ids_of(hub: RunningHub, tool: str, name: str) -> list[str]:
    """The ids of the calls of `tool` with argument `name`, oldest first."""
    store = SQLiteStore(hub.state_dir / "audit" / "audit.db", read_only=True)
    await store.open()
    try:
        found = await store.query(RecordQuery(tool=tool, limit=10_000, newest_first=False))
    finally:
        await store.close()
    requested = [r for r in found if r.kind == "requested"]
    return [r.call_id for r in requested if r.body_json().get("arguments", {}).get("name") == name]


async def state_of(hub: RunningHub, approval_id: str) -> str:
    found = await listing(hub.grpc, TOKENS["alice"], "pending", "approved", "denied", "expired", "used")
    return next(a.state for a in found if a.id == approval_id)


async def test_an_approved_approval_is_no_good_after_it_expires(
    gated_hub: RunningHub, hub_client: HubClient
) -> None:
    """Once approved, an approval's expiry is the time by which a retry must use it."""
    call = start_call(hub_client, TOKENS["agent-a"], "plain_thing", {"name": "brief-late"})
    approval_id, call_id = await gave_up(gated_hub, call)
    await decide(gated_hub.grpc, TOKENS["alice"], approval_id, True)
    async with asyncio.timeout(20):  # the hub that asked expires it when its time passes
        while await state_of(gated_hub, approval_id) != "expired":  # noqa: ASYNC110 - polling the hub
            await asyncio.sleep(0.1)
    late = await start_call(
        hub_client, TOKENS["agent-a"], "plain_thing", {"name": "brief-late"}, approval_id
    ).result()
    assert late["isError"] is True and late["_meta"] == {"dev.mcphub/refused": "approval"}
    assert f"approval {approval_id} cannot be used for this call: it expired at " in text_of(late)
    expired = [b for k, b in await records_of(gated_hub, call_id) if b.get("state") == "expired"]
    assert expired and expired[0]["by"] == "alice" and "not used" in expired[0]["reason"]


async def test_an_approval_whose_caller_gave_up_expires_when_its_time_passes(
    gated_hub: RunningHub, hub_client: HubClient
) -> None:
    call = start_call(hub_client, TOKENS["agent-a"], "plain_thing", {"name": "brief-gone"})
    approval_id, call_id = await gave_up(gated_hub, call)
    assert await state_of(gated_hub, approval_id) == "pending", "a retry may still use it once approved"
    async with asyncio.timeout(20):
        while await state_of(gated_hub, approval_id) != "expired":  # noqa: ASYNC110 - polling the hub
            await asyncio.sleep(0.1)
    records = await records_of(gated_hub, call_id)
    assert ("approval", "expired") in [(k, b.get("state")) for k, b in records]


async def test_a_retry_s_records_say_which_approval_it_used_and_who_approved_it(
    gated_hub: RunningHub, hub_client: HubClient
) -> None:
    call = start_call(hub_client, TOKENS["agent-a"], "delete_thing", {"name": "retried"})
    approval_id, first_call = await gave_up(gated_hub, call)
    decided = await decide(gated_hub.grpc, TOKENS["alice"], approval_id, True)
    retry = start_call(hub_client, TOKENS["agent-a"], "delete_thing", {"name": "retried"}, approval_id)
    assert text_of(await retry.result()) == "deleted retried"
    retry_call = (await call_ids_of(gated_hub, "delete_thing", "retried"))[-1]
    assert retry_call != first_call
    records = await records_of(gated_hub, retry_call)
    assert [k for k, _ in records] == ["requested", "decided", "approval", "started", "finished"]
    used = records[2][1]
    assert used["state"] == "used" and used["approval_id"] == approval_id
    assert (used["approved_by"], used["approved_at_ms"]) == ("alice", decided.decided_at_unix_ms)
    assert used["approval_call_id"] == first_call
    told = [b for k, b in await records_of(gated_hub, first_call) if b.get("state") == "used"]
    assert told and told[0]["used_by_call"] == retry_call


async def test_a_deny_reason_is_redacted_before_anyone_sees_it(
    gated_hub: RunningHub, hub_client: HubClient
) -> None:
    key = "ghp_" + "A1b2C3d4E5" * 4
    reason = f"no: your token {TOKENS['agent-b']} and {key} are in the logs, and PGPASSWORD=Hunter2Secret"
    call = start_call(hub_client, TOKENS["agent-a"], "delete_thing", {"name": "leaky"})
    approval_id = await call.approval_id()
    await decide(gated_hub.grpc, TOKENS["alice"], approval_id, False, reason)
    told = text_of(await call.result())
    shown = next(a for a in await listing(gated_hub.grpc, TOKENS["alice"], "denied") if a.id == approval_id)
    stored = _stored_approval(gated_hub, approval_id)["decision_reason"]
    for text in (told, shown.decision_reason, stored):
        assert "[REDACTED]" in text and TOKENS["agent-b"] not in text and key not in text, text
        assert "Hunter2Secret" not in text, text


async def test_a_refused_attempt_to_decide_is_recorded(gated_hub: RunningHub, hub_client: HubClient) -> None:
    call = start_call(hub_client, TOKENS["selfish"], "plain_thing", {"name": "prod-refusals"})
    approval_id = await call.approval_id()
    call_id = next(a.call_id for a in await listing(gated_hub.grpc, TOKENS["alice"]) if a.id == approval_id)
    for who in ("selfish", "alice", "agent-b", "agent-b", "agent-b"):  # a repeat is recorded once
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await decide(gated_hub.grpc, TOKENS[who], approval_id, True)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await decide(gated_hub.grpc, TOKENS["bob"], approval_id, True)
    assert text_of(await call.result()) == "did prod-refusals"
    refused = [b for k, b in await records_of(gated_hub, call_id) if b.get("state") == "refused"]
    assert [(b["by"], b["approval_id"]) for b in refused] == [
        ("selfish", approval_id),
        ("alice", approval_id),
        ("agent-b", approval_id),
    ]
    assert "principal that asked" in refused[0]["why"]
    assert "needs an approver in oncall" in refused[1]["why"]
    assert "not have the approver role" in refused[2]["why"]


async def test_deciding_an_approval_already_expired_or_used_is_a_recorded_refusal(
    gated_hub: RunningHub, hub_client: HubClient
) -> None:
    """README: "a refused attempt to decide is recorded"; one that came too late was not."""
    late = start_call(hub_client, TOKENS["agent-a"], "plain_thing", {"name": "quick-too-late"})
    late_id = await late.approval_id()
    assert (await late.result())["_meta"] == {"dev.mcphub/refused": "timeout"}
    used = start_call(hub_client, TOKENS["agent-a"], "plain_thing", {"name": "quick-used"})
    used_id = await used.approval_id()
    await decide(gated_hub.grpc, TOKENS["alice"], used_id, True)
    assert text_of(await used.result()) == "did quick-used"
    for approval_id, state in ((late_id, "expired"), (used_id, "used")):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await decide(gated_hub.grpc, TOKENS["bob"], approval_id, False, "too late")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        call_id = next(
            a.call_id for a in await listing(gated_hub.grpc, TOKENS["alice"], state) if a.id == approval_id
        )
        async with asyncio.timeout(10):  # the record is queued as the refusal goes back
            while not (  # noqa: ASYNC110 - polling the log
                refused := [b for k, b in await records_of(gated_hub, call_id) if b.get("state") == "refused"]
            ):
                await asyncio.sleep(0.05)
        assert [(b["by"], b["why"], b["attempts"]) for b in refused] == [
            ("bob", f"approval {approval_id} is already {state}", 1)
        ]


async def test_nobody_approves_their_own_call(gated_hub: RunningHub, hub_client: HubClient) -> None:
    call = start_call(hub_client, TOKENS["selfish"], "delete_thing", {"name": "mine"})
    approval_id = await call.approval_id()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await decide(gated_hub.grpc, TOKENS["selfish"], approval_id, True)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "principal that asked" in (info.value.details() or "")
    await decide(gated_hub.grpc, TOKENS["alice"], approval_id, True)
    assert text_of(await call.result()) == "deleted mine"


async def test_approver_groups_and_roles_are_enforced(gated_hub: RunningHub, hub_client: HubClient) -> None:
    call = start_call(hub_client, TOKENS["agent-a"], "plain_thing", {"name": "prod-db"})
    approval_id = await call.approval_id()
    for token, expected in (
        (TOKENS["alice"], "needs an approver in oncall"),
        (TOKENS["agent-b"], "not have the approver role"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await decide(gated_hub.grpc, token, approval_id, True)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert expected in (info.value.details() or "")
    await decide(gated_hub.grpc, TOKENS["bob"], approval_id, True)
    assert text_of(await call.result()) == "did prod-db"


async def test_every_matching_rule_s_approver_groups_must_be_met(
    gated_hub: RunningHub, hub_client: HubClient
) -> None:
    # Two ask rules: oncall for production, security (or admins) for secrets. A second rule
    # must not widen who may approve what the first one guards.
    call = start_call(hub_client, TOKENS["agent-a"], "plain_thing", {"name": "prod-secrets"})
    approval_id = await call.approval_id()
    mine = next(a for a in await listing(gated_hub.grpc, TOKENS["alice"]) if a.id == approval_id)
    assert list(mine.approver_groups) == ["admins|security", "oncall"]
    for token in (TOKENS["bob"], TOKENS["carol"]):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await decide(gated_hub.grpc, token, approval_id, True)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "needs an approver in admins or security, and oncall" in (info.value.details() or "")
    await decide(gated_hub.grpc, TOKENS["dave"], approval_id, True)
    assert text_of(await call.result()) == "did prod-secrets"


async def test_an_approval_nobody_of_this_hub_can_decide_is_warned_of(
    gated_hub: RunningHub, hub_client: HubClient
) -> None:
    # Production needs oncall and audits need auditors: bob, dave and erin each meet one rule.
    call = start_call(hub_client, TOKENS["agent-a"], "plain_thing", {"name": "prod-audit"})
    approval_id = await call.approval_id()
    assert "a timeout is a denial" in text_of(await call.result())
    line = next(x for x in gated_hub.log().splitlines() if approval_id in x and "WARNING" in x)
    assert f"approval {approval_id} needs an approver in auditors and oncall, and no principal" in line
    lone = start_call(hub_client, TOKENS["agent-a"], "plain_thing", {"name": "lone-audit"})
    lone_id = await lone.approval_id()
    await decide(gated_hub.grpc, TOKENS["erin"], lone_id, True)
    assert text_of(await lone.result()) == "did lone-audit"
    assert not any(lone_id in x and "WARNING" in x for x in gated_hub.log().splitlines())


async def test_a_policy_deny_never_reaches_a_person(gated_hub: RunningHub, hub_client: HubClient) -> None:
    result = await start_call(hub_client, TOKENS["agent-a"], "delete_thing", {"name": "everything"}).result()
    assert result["isError"] is True
    assert text_of(result) == "refused by policy rule 'never everything': nobody deletes everything"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(hub_command(*args), capture_output=True, text=True, timeout=60, cwd=REPO)


async def newest_finished(hub: RunningHub, tool: str) -> dict[str, Any]:
    store = SQLiteStore(hub.state_dir / "audit" / "audit.db", read_only=True)
    await store.open()
    try:
        found = await store.query(RecordQuery(tool=tool, principal="agent-a", limit=20))
    finally:
        await store.close()
    return next(r.body_json() for r in found if r.kind == "finished")


async def test_call_cli_exits_3_when_the_hub_refuses_and_uses_an_approval_given_earlier(
    gated_hub: RunningHub, hub_client: HubClient
) -> None:
    """`mcphub call` tells a refusal (exit 3) from a tool's failure (exit 1) by the result's
    `_meta`, which only the hub may set; the audit log's `finished` says `refused`. A refusal is
    no tool's output: it goes to stderr, as the hub's other refusals do."""
    common = ["--hub", gated_hub.grpc, "--token", TOKENS["agent-a"]]
    everything = ["call", "delete_thing", "--args", '{"name": "everything"}', *common]
    denied = await asyncio.to_thread(cli, *everything)
    assert denied.returncode == 3 and "refused by policy rule 'never everything'" in denied.stderr, denied
    assert denied.stdout == ""
    assert (await newest_finished(gated_hub, "delete_thing"))["status"] == "refused"
    as_json = await asyncio.to_thread(cli, *everything, "--json")
    assert as_json.returncode == 3 and json.loads(as_json.stdout)["_meta"] == {"dev.mcphub/refused": "policy"}

    timed_out = await asyncio.to_thread(cli, "call", "plain_thing", "--args", '{"name": "quick-c"}', *common)
    assert timed_out.returncode == 3 and "Calling again asks for a new approval" in timed_out.stderr

    claim = await asyncio.to_thread(cli, "call", "claims_refusal", "--json", *common)
    assert claim.returncode == 1 and json.loads(claim.stdout)["_meta"] == {"x": 1}, claim
    assert (await newest_finished(gated_hub, "claims_refusal"))["status"] == "tool_error"

    first = start_call(hub_client, TOKENS["agent-a"], "delete_thing", {"name": "later"})
    approval_id = await first.approval_id()
    call_id = next(a.call_id for a in await listing(gated_hub.grpc, TOKENS["alice"]) if a.id == approval_id)
    first.task.cancel()  # the agent gave up waiting; the approval stays pending
    async with asyncio.timeout(20):
        while "finished" not in [kind for kind, _ in await records_of(gated_hub, call_id)]:  # noqa: ASYNC110 - polling the log
            await asyncio.sleep(0.05)
    await decide(gated_hub.grpc, TOKENS["alice"], approval_id, True)
    args = ["call", "delete_thing", "--args", '{"name": "later"}', "--approval", approval_id, *common]
    used = await asyncio.to_thread(cli, *args)
    assert (used.returncode, used.stdout) == (0, "deleted later"), used.stderr
    again = await asyncio.to_thread(cli, *args)
    assert again.returncode == 3 and "already used" in again.stderr


async def test_the_approvals_cli(gated_hub: RunningHub, hub_client: HubClient) -> None:
    call = start_call(hub_client, TOKENS["agent-a"], "delete_thing", {"name": "via-cli"})
    approval_id = await call.approval_id()
    common = ["--hub", gated_hub.grpc, "--token", TOKENS["alice"]]
    listed = await asyncio.to_thread(cli, "approvals", "list", "--json", *common)
    assert listed.returncode == 0, listed.stderr
    row = next(a for a in json.loads(listed.stdout) if a["id"] == approval_id)
    assert json.loads(row["arguments_json"]) == {"name": "via-cli"}
    assert isinstance(row["created_at_unix_ms"], int) and isinstance(row["expires_at_unix_ms"], int), row
    assert row["decided_at_unix_ms"] == 0
    no_reason = await asyncio.to_thread(cli, "approvals", "deny", approval_id, *common)
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    approved = await asyncio.to_thread(cli, "approvals", "approve", approval_id, *common)
    assert approved.returncode == 0 and f"{approval_id} approved by alice" in approved.stdout
    assert text_of(await call.result()) == "deleted via-cli"
    again = await asyncio.to_thread(cli, "approvals", "approve", approval_id, *common)
    assert again.returncode == 3 and "already" in again.stderr


async def test_the_approvals_cli_shows_who_may_approve_and_escapes_what_would_hide(
    gated_hub: RunningHub, hub_client: HubClient
) -> None:
    sneaky = "prod-\u202eexe.txt\u2066\u200b\u3164"
    calls = [
        start_call(hub_client, TOKENS["agent-a"], "plain_thing", {"name": sneaky}),
        start_call(hub_client, TOKENS["agent-a"], "plain_thing", {"name": "prod-2-secrets"}),
        start_call(hub_client, TOKENS["agent-a"], "delete_thing", {"name": "anyone"}),
    ]
    ids = [await c.approval_id() for c in calls]
    listed = await asyncio.to_thread(
        cli, "approvals", "list", "--hub", gated_hub.grpc, "--token", TOKENS["alice"]
    )
    assert listed.returncode == 0, listed.stderr
    shown = {i: listed.stdout.split(i, 1)[1].split("\napr_", 1)[0] for i in ids}
    assert "approvers: oncall\n" in shown[ids[0]] + "\n"
    assert "approvers: admins or security, and oncall" in shown[ids[1]]
    assert "approvers: any approver" in shown[ids[2]]
    assert "prod-\\u202eexe.txt\\u2066\\u200b\\u3164" in shown[ids[0]]
    for ch in "\u202e\u2066\u200b\u3164":
        assert ch not in listed.stdout
    await decide(gated_hub.grpc, TOKENS["dave"], ids[0], False, "no")
    await decide(gated_hub.grpc, TOKENS["dave"], ids[1], False, "no")
    await decide(gated_hub.grpc, TOKENS["alice"], ids[2], False, "no")
    for c in calls:
        await c.result()


async def test_a_deadline_that_passes_while_waiting_for_approval_is_recorded_as_one(
    gated_hub: RunningHub, hub_client: HubClient
) -> None:
    """It was recorded as `cancelled`, "the caller went away", unlike a deadline passing in the tool."""
    request = pb.CallToolRequest(name="plain_thing", arguments_json=b'{"name": "no-time-to-wait"}')
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await hub_client.call_tool(TOKENS["agent-a"], request, timeout=1)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    pending = [a for a in await listing(gated_hub.grpc, TOKENS["alice"]) if "no-time" in a.arguments_json]
    assert len(pending) == 1
    async with asyncio.timeout(20):
        while not (  # noqa: ASYNC110 - polling the log
            finished := [b for k, b in await records_of(gated_hub, pending[0].call_id) if k == "finished"]
        ):
            await asyncio.sleep(0.05)
    assert finished[0]["status"] == "deadline_exceeded", finished
    assert finished[0]["error"] == "the call's deadline passed before its tool ran"
    await decide(gated_hub.grpc, TOKENS["alice"], pending[0].id, False, "no")


async def test_call_cli_names_the_approval_when_its_deadline_passes(
    gated_hub: RunningHub, hub_client: HubClient
) -> None:
    args = ["call", "delete_thing", "--args", '{"name": "impatient"}', "--timeout", "1"]
    out = await asyncio.to_thread(cli, *args, "--hub", gated_hub.grpc, "--token", TOKENS["agent-a"])
    pending = [a for a in await listing(gated_hub.grpc, TOKENS["alice"]) if "impatient" in a.arguments_json]
    assert len(pending) == 1, "the approval stays pending for a retry"
    assert out.returncode == 3
    assert f"waiting for approval {pending[0].id}" in out.stderr
    assert f"--approval {pending[0].id}" in out.stderr
    # The progress line ran state, reason and command together ("pending deleting ... mcphub ...").
    reason = pending[0].reason or pending[0].rule
    assert (
        f"approval {pending[0].id}: pending ({reason}); to approve: mcphub approvals approve {pending[0].id}"
    ) in out.stderr, out.stderr
    await decide(gated_hub.grpc, TOKENS["alice"], pending[0].id, False, "no")


@pytest.mark.parametrize("transport", ["mcp-2026", "mcp-2025"])
async def test_through_the_bridge_progress_names_the_approval(transport: str, gated_hub: RunningHub) -> None:
    seen: list[str] = []
    values: list[float] = []
    decided = asyncio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(message or "")
        values.append(progress)
        if message and message.startswith("approval apr_") and "pending" in message and not decided.is_set():
            decided.set()
            await decide(gated_hub.grpc, TOKENS["alice"], message.split()[1], True)

    async with connect(transport, gated_hub.grpc, gated_hub.mcp_url, TOKENS["agent-a"]) as client:
        outcome = await client.call("delete_thing", {"name": f"bridged-{transport}"}, progress=on_progress)
    assert outcome.text == f"deleted bridged-{transport}"
    assert "mcphub approvals approve apr_" in seen[0]
    assert len(values) >= 2 and "approved" in seen[1], seen
    # MCP: "The progress value MUST increase with each notification, even if the total is unknown."
    assert all(a < b for a, b in itertools.pairwise(values)), values


async def test_a_restart_fails_pending_calls_closed(tmp_path: Path) -> None:
    """Only calls still waiting when the hub died are failed; an approval whose caller had gone
    keeps its time, for a retry."""
    hub = start_hub(tmp_path, config=CONFIG, packs=[PROBE_PACK, RISKY_PACK])
    client = HubClient(hub.grpc)
    try:
        gone = start_call(client, TOKENS["agent-a"], "delete_thing", {"name": "gave-up"})
        gone_id, _ = await gave_up(hub, gone)
        async with asyncio.timeout(20):
            while _stored_approval(hub, gone_id).get("waiting") is not False:  # noqa: ASYNC110 - polling the store
                await asyncio.sleep(0.05)
        call = start_call(client, TOKENS["agent-a"], "delete_thing", {"name": "during-restart"})
        approval_id = await call.approval_id()
        hub.process.send_signal(signal.SIGKILL)
        hub.stop()
        with pytest.raises(grpc.aio.AioRpcError):
            await call.result()
    finally:
        await client.close()
    again = start_hub(tmp_path, config=CONFIG, packs=[PROBE_PACK, RISKY_PACK])
    try:
        expired = await listing(again.grpc, TOKENS["alice"], "expired")
        mine = next(a for a in expired if a.id == approval_id)
        assert mine.decision_reason == "the hub restarted while the call was waiting"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await decide(again.grpc, TOKENS["alice"], approval_id, True)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        records = await records_of(again, mine.call_id)
        assert ("approval", "expired") in [(k, b.get("state")) for k, b in records]
        assert "1 call was waiting for approval when the hub stopped" in again.log()
        assert gone_id in [a.id for a in await listing(again.grpc, TOKENS["alice"], "pending")]
        await decide(again.grpc, TOKENS["alice"], gone_id, True)
        retry_client = HubClient(again.grpc)
        try:
            retried = start_call(
                retry_client, TOKENS["agent-a"], "delete_thing", {"name": "gave-up"}, gone_id
            )
            assert text_of(await retried.result()) == "deleted gave-up"
            # The failed one says why it cannot be used, not an expiry time still to come.
            used = start_call(
                retry_client, TOKENS["agent-a"], "delete_thing", {"name": "during-restart"}, approval_id
            )
            refusal = text_of(await used.result())
            assert "it ended early: the hub restarted while the call was waiting" in refusal, refusal
            assert "it expired at" not in refusal
        finally:
            await retry_client.close()
    finally:
        again.stop()


def _stored_approval(hub: RunningHub, approval_id: str) -> dict[str, Any]:
    import sqlite3

    db = sqlite3.connect(f"file:{hub.state_dir / 'audit' / 'audit.db'}?mode=ro", uri=True)
    try:
        (data,) = db.execute("SELECT data FROM approvals WHERE id = ?", (approval_id,)).fetchone()
    finally:
        db.close()
    stored: dict[str, Any] = json.loads(data)
    return stored


async def test_the_argument_digest_lets_no_reader_confirm_a_guess(
    gated_hub: RunningHub, hub_client: HubClient
) -> None:
    """What the audit log and the approvals API show is keyed per approval: a reader who can
    guess the arguments (all but a redacted one are in the record) cannot check the guess."""
    arguments = {"name": "cache-7"}
    plain = hashlib.sha256(json.dumps(arguments, separators=(",", ":"), sort_keys=True).encode()).hexdigest()
    calls = [start_call(hub_client, TOKENS["agent-a"], "delete_thing", arguments) for _ in range(2)]
    ids = [await c.approval_id() for c in calls]
    shown = {a.id: a for a in await listing(gated_hub.grpc, TOKENS["alice"]) if a.id in ids}
    digests = [shown[i].arguments_sha256 for i in ids]
    assert plain not in digests and digests[0] != digests[1], "the same arguments, two keys"
    key = _stored_approval(gated_hub, ids[0])["args_key"]
    assert len(key) == 64
    await decide(gated_hub.grpc, TOKENS["alice"], ids[0], True)
    await decide(gated_hub.grpc, TOKENS["alice"], ids[1], False, "not this one")
    assert text_of(await calls[0].result()) == "deleted cache-7"
    assert (await calls[1].result())["isError"] is True
    for approval_id, call_id in ((i, shown[i].call_id) for i in ids):
        assert _stored_approval(gated_hub, approval_id)["args_key"] == "", "wiped once it cannot be used"
        records = json.dumps(await records_of(gated_hub, call_id))
        assert shown[approval_id].arguments_sha256 in records and key not in records and plain not in records


async def test_an_approval_stored_before_digests_were_keyed_still_binds_its_arguments(tmp_path: Path) -> None:
    from mcp_local.principals import Principal
    from mcp_remote.approvals import Approval, ApprovalBook

    store = SQLiteStore(tmp_path / "audit.db")
    await store.open()
    try:
        book = ApprovalBook(store, "test")
        canonical = json.dumps({"name": "x"}, separators=(",", ":")).encode()
        legacy = Approval(
            id="apr_legacy",
            call_id="c1",
            principal="agent-a",
            tool="delete_thing",
            args_sha256=hashlib.sha256(canonical).hexdigest(),
            arguments_json='{"name":"x"}',
            reason="",
            rule="r",
            approvers=(),
            state="pending",
            created_ms=0,
            expires_ms=2**62,
            instance="old",
        )
        await store.put_approval(legacy)
        await book.decide("apr_legacy", Principal("alice", roles=frozenset({"approver"})), True, "")
        changed, why = await book.use("apr_legacy", "agent-a", "delete_thing", {"name": "y"}, "c1")
        assert changed is None and "the arguments changed" in why
        used, _ = await book.use("apr_legacy", "agent-a", "delete_thing", {"name": "x"}, "c1")
        assert used is not None and used.state == "used"
    finally:
        await store.close()


async def test_nobody_is_asked_about_a_call_its_tool_refuses_anyway(tmp_path: Path) -> None:
    """A cloud call the pack refuses before sending anything (a method or path the service does
    not allow) waited for a person, up to the approval timeout, to be refused after approval."""
    standin = start_standin()
    service = {
        "base_url": f"{standin.base}/api",
        "auth": {"type": "none"},
        "allow_private_network": ["127.0.0.1/32"],
        "allow": [{"methods": ["GET"], "paths": ["/**"]}, {"methods": ["POST"], "paths": ["/items"]}],
    }
    config = {
        "principals": CONFIG["principals"],
        "packs": [{"name": "cloud", "options": {"services": {"plain": service}}}],
    }
    hub = start_hub(tmp_path, config=config, http=False)
    client = HubClient(hub.grpc)
    try:
        for method, path, says in (
            ("DELETE", "/items", "DELETE /items is not allowed for service 'plain'"),
            ("POST", "/items/../admin", "'..'"),
        ):
            arguments = {"service": "plain", "method": method, "path": path}
            call = start_call(client, TOKENS["agent-a"], "http_request", arguments)
            result = await asyncio.wait_for(call.result(), 20)  # the approval would wait 300 s
            assert result["isError"] is True and says in text_of(result), text_of(result)
            assert not await listing(hub.grpc, TOKENS["alice"])
        # A call the service allows still asks (the default policy asks about writes).
        call = start_call(
            client,
            TOKENS["agent-a"],
            "http_request",
            {"service": "plain", "method": "POST", "path": "/items"},
        )
        approval_id = await call.approval_id()
        await decide(hub.grpc, TOKENS["alice"], approval_id, False, "not now")
        assert "not now" in text_of(await call.result())
    finally:
        await client.close()
        hub.stop()
        standin.stop()
    store = SQLiteStore(hub.state_dir / "audit" / "audit.db", read_only=True)
    await store.open()
    try:
        decided = [
            r.body_json()
            for r in await store.query(RecordQuery(tool="http_request", limit=100))
            if r.kind == "decided"
        ]
    finally:
        await store.close()
    refused = [d for d in decided if "tool_refuses" in d]
    assert len(refused) == 2 and all(d["decision"] == "ask" for d in refused)
