"""SIGHUP applies the config file's principals, policy and log level to a running hub: a leaked
token is revoked, a principal added or a rule changed without cutting every caller off; a file
with a mistake is refused whole and the hub goes on as it was; the change is in the audit log."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx2
import pytest
import yaml

from bridge.hubclient import HubClient
from mcphub_proto.v1 import approvals_pb2 as apb
from mcphub_proto.v1 import approvals_pb2_grpc as apb_grpc
from mcphub_proto.v1 import sidecar_pb2 as spb
from mcphub_proto.v1 import sidecar_pb2_grpc as spb_grpc
from mcphub_proto.v1 import toolhub_pb2 as pb
from tests.bridge.test_session_door import open_session, works
from tests.support.approvals import decide, listing, start_call, text_of
from tests.support.clients import ProtocolFailure, connect
from tests.support.hub import PROBE_PACK, RunningHub, hub_command, start_hub
from tests.support.postgres import running_postgres
from tests.support.sidecar import start_sidecar

pytestmark = pytest.mark.anyio

TOKENS = {
    "alice": "alice-token-0123456789abcdef",
    "alice-rotated": "alice-token-rotated-0123456789",
    "bob": "bob-token-0123456789abcdefgh",
    "carol": "carol-token-0123456789abcdef",
    "sbx-1": "sandbox-1-token-0123456789ab",
    "ops": "operator-token-0123456789abc",
}
NO_ECHO_FOR_ALICE = {
    "name": "no echo for alice",
    "tools": ["echo"],
    "principals": ["alice"],
    "decision": "deny",
}


def first_config() -> dict[str, Any]:
    return {
        "packs": ["diagnostics", PROBE_PACK],
        "principals": [
            {"name": "alice", "token": TOKENS["alice"], "tools": ["echo", "whoami"]},
            {"name": "bob", "token": TOKENS["bob"], "tools": ["echo", "whoami"]},
            {"name": "ops", "token": TOKENS["ops"], "roles": ["operator"]},
        ],
        "policy": {"extends": "default", "rules": [NO_ECHO_FOR_ALICE]},
    }


def reload(hub: RunningHub, config: dict[str, Any] | str) -> str:
    """Write the hub's config file, send SIGHUP and return the log line that answers it."""
    path = hub.state_dir.parent / "hub.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    log = hub.state_dir.parent / "hub.log"
    seen = log.read_text().count("mcphub.reload")
    hub.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [line for line in log.read_text().splitlines() if "mcphub.reload" in line]
        answers = [line for line in lines[seen:] if "reloaded:" in line or "refused" in line]
        if answers:
            time.sleep(0.1)  # a warning about keys that wait for a restart follows the answer
            return answers[0]
        time.sleep(0.05)
    raise AssertionError(f"no answer to SIGHUP in the log:\n{log.read_text()}")


async def whoami(transport: str, hub: RunningHub, token: str) -> str:
    async with connect(transport, hub.grpc, hub.mcp_url, token) as client:
        return (await client.call("whoami", {})).text


async def refused(transport: str, hub: RunningHub, token: str, tool: str = "whoami") -> ProtocolFailure:
    with pytest.raises(ProtocolFailure) as info:
        async with connect(transport, hub.grpc, hub.mcp_url, token) as client:
            await client.call(tool, {"text": "x"} if tool == "echo" else {})
    return info.value


@pytest.mark.parametrize("transport", ["grpc", "mcp-2026", "mcp-2025"])
async def test_principals_and_policy_change_without_a_restart(transport: str, tmp_path: Path) -> None:
    hub = start_hub(tmp_path, config=first_config())
    try:
        assert await whoami(transport, hub, TOKENS["alice"]) == "alice"
        assert await whoami(transport, hub, TOKENS["bob"]) == "bob"
        async with connect(transport, hub.grpc, hub.mcp_url, TOKENS["alice"]) as client:
            denied = await client.call("echo", {"text": "x"})
        assert denied.is_error and "refused by policy rule 'no echo for alice'" in denied.text, denied
        pid = hub.process.pid

        # Alice's token leaked: she gets a new one (from a file), Bob leaves, Carol joins, and
        # the rule that kept Alice from `echo` goes.
        token_file = tmp_path / "alice.token"
        token_file.write_text(TOKENS["alice-rotated"] + "\n")
        second = first_config()
        second["principals"] = [
            {"name": "alice", "token_file": str(token_file), "tools": ["echo", "whoami"]},
            {"name": "carol", "token": TOKENS["carol"], "tools": ["whoami"]},
            {"name": "ops", "token": TOKENS["ops"], "roles": ["operator"]},
        ]
        second["policy"] = {"extends": "default", "rules": []}
        answer = reload(hub, second)
        assert "principals added: carol" in answer and "removed: bob" in answer, answer
        assert "new token: alice" in answer and "policy changed" in answer, answer
        assert hub.process.pid == pid and hub.process.poll() is None

        assert "not one this hub knows" in (await refused(transport, hub, TOKENS["alice"])).message
        assert "not one this hub knows" in (await refused(transport, hub, TOKENS["bob"])).message
        assert await whoami(transport, hub, TOKENS["alice-rotated"]) == "alice"
        assert await whoami(transport, hub, TOKENS["carol"]) == "carol"
        async with connect(transport, hub.grpc, hub.mcp_url, TOKENS["alice-rotated"]) as client:
            assert (await client.call("echo", {"text": "allowed now"})).text == "allowed now"
        # Carol's grants are hers: `echo` is not among them.
        assert "may not call tool 'echo'" in (await refused(transport, hub, TOKENS["carol"], "echo")).message

        # A file with a mistake changes nothing.
        broken = dict(second, principals=[*second["principals"], {"name": "dave", "tokn": "x" * 30}])
        answer = reload(hub, broken)
        assert "reload refused" in answer and "principals.3" in answer, answer
        token_file.write_text("short\n")  # a rotated token file that is no token
        answer = reload(hub, second)
        assert "reload refused" in answer and "at least" in answer, answer
        assert await whoami(transport, hub, TOKENS["alice-rotated"]) == "alice"
        assert await whoami(transport, hub, TOKENS["carol"]) == "carol"
    finally:
        assert hub.stop() == 0

    records = audit_records(hub, "hub")
    reloaded = [r["body"] for r in records if r["body"].get("event") == "reloaded"]
    started = next(r["body"] for r in records if r["body"].get("event") == "started")
    assert reloaded == [
        {
            "event": "reloaded",
            "instance": reloaded[0]["instance"],
            "principals_added": ["carol"],
            "principals_removed": ["bob"],
            "new_token": ["alice"],
            "policy_changed": True,
            "policy_sha256": reloaded[0]["policy_sha256"],
        }
    ]
    assert len(started["policy_sha256"]) == 64 and started["policy_sha256"] != reloaded[0]["policy_sha256"]
    assert TOKENS["alice-rotated"] not in (hub.state_dir.parent / "hub.log").read_text()
    verify = await asyncio.to_thread(
        subprocess.run,
        hub_command("audit", "verify", "--state-dir", str(hub.state_dir)),
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def audit_records(hub: RunningHub, principal_or_kind: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        hub_command("audit", "tail", "--state-dir", str(hub.state_dir), "-n", "1000", "--json"),
        capture_output=True,
        text=True,
        check=True,
    )
    records = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    return [r for r in records if principal_or_kind in (r["kind"], r["principal"])]


async def test_keys_that_need_a_restart_are_named_and_a_token_from_a_variable_is_kept(tmp_path: Path) -> None:
    config = first_config()
    config["principals"][0] = {"name": "alice", "token_env": "ALICE_TOKEN", "tools": ["whoami"]}
    hub = start_hub(tmp_path, config=config, http=False, env={"ALICE_TOKEN": TOKENS["alice"]})
    try:
        # Out of its environment, and out of the block /proc/PID/environ shows (to root, as here).
        block = Path(f"/proc/{hub.process.pid}/environ").read_bytes()
        assert b"ALICE_TOKEN=" in block and TOKENS["alice"].encode() not in block
        assert b"PATH=" + os.environ["PATH"].encode() in block  # what it still has is untouched
        # The hub took the variable out of its environment once read; reloading the same entry
        # keeps the token it gave, and a file that now wants a different variable is refused.
        config["max_request_bytes"] = 12345
        config["log_level"] = "debug"
        answer = reload(hub, config)
        assert answer.endswith("config reloaded: log level debug"), answer
        log = (tmp_path / "hub.log").read_text()
        assert "applied only when the hub restarts: max_request_bytes" in log
        assert "log_level" not in log.split("applied only when the hub restarts")[1].splitlines()[0]
        assert await whoami("grpc", hub, TOKENS["alice"]) == "alice"
        # A sandbox principal whose sidecar could never register is refused at once.
        sandbox = {"name": "team.sbx@99", "token": TOKENS["sbx-1"], "roles": ["sandbox"]}
        answer = reload(hub, dict(config, principals=[*config["principals"], sandbox]))
        assert "reload refused" in answer and "principals.3: name 'team.sbx@99': a principal with" in answer
        assert "the role `sandbox` registers the sandbox of its name, which must be 1-48" in answer, answer
        config["principals"][0] = {"name": "alice", "token_env": "ALICE_NEW_TOKEN", "tools": ["whoami"]}
        answer = reload(hub, config)
        assert "reload refused" in answer and "reads no environment variable again" in answer, answer
        assert await whoami("grpc", hub, TOKENS["alice"]) == "alice"
        # A variable's token revoked (the entry moved to a file) does not come back with the entry.
        token_file = tmp_path / "alice.token"
        token_file.write_text(TOKENS["alice-rotated"])
        config["principals"][0] = {"name": "alice", "token_file": str(token_file), "tools": ["whoami"]}
        assert "new token: alice" in reload(hub, config)
        config["principals"][0] = {"name": "alice", "token_env": "ALICE_TOKEN", "tools": ["whoami"]}
        answer = reload(hub, config)
        assert "reload refused" in answer and "reads no environment variable again" in answer, answer
        assert "not one this hub knows" in (await refused("grpc", hub, TOKENS["alice"])).message
        # A token file that is not text is refused in one line, without its content.
        token_file.write_bytes(b"\xef\xbb\xff" + TOKENS["alice-rotated"].encode())
        config["principals"][0] = {"name": "alice", "token_file": str(token_file), "tools": ["whoami"]}
        answer = reload(hub, config)
        assert "reload refused" in answer and "is not text (UTF-8)" in answer, answer
        assert await whoami("grpc", hub, TOKENS["alice-rotated"]) == "alice"
        assert "Traceback" not in (tmp_path / "hub.log").read_text()
        # Packs wait for a restart, which a pack that is not there would stop: refused now.
        answer = reload(hub, {**config, "packs": [*config["packs"], "nosuchpack"]})
        assert "reload refused" in answer and "packs[nosuchpack]: pack 'nosuchpack': no such pack" in answer
        assert "the next start would stop on it" in answer, answer
        answer = reload(hub, {**config, "packs": [*config["packs"], str(tmp_path / "gone.py")]})
        assert "reload refused" in answer and "no such file" in answer, answer
        # An open hub cannot become a guarded one by a reload, nor the other way round.
        answer = reload(hub, {k: v for k, v in config.items() if k != "principals"})
        assert "reload refused" in answer and "restart the hub" in answer, answer
    finally:
        assert hub.stop() == 0


async def test_a_sandbox_whose_principal_is_removed_is_disconnected(tmp_path: Path) -> None:
    config = first_config()
    config["principals"].append({"name": "sbx-1", "token": TOKENS["sbx-1"], "roles": ["sandbox"]})
    hub = start_hub(tmp_path / "hub", config=config, http=False)
    root = tmp_path / "sbx"
    (root / "workspace").mkdir(parents=True)
    sidecar = start_sidecar(
        root,
        {"workspace": str(root / "workspace"), "packs": ["diagnostics"]},
        hub=hub.grpc,
        token=TOKENS["sbx-1"],
    )
    client = HubClient(hub.grpc)

    async def sandbox_tools() -> set[str]:
        return {t.name for t in await client.all_tools(TOKENS["ops"]) if t.name.startswith("sbx-1__")}

    async def until(predicate: Any, what: str) -> None:
        deadline = time.monotonic() + 20
        while not await predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    try:

        async def registered() -> bool:
            return bool(await sandbox_tools())

        async def gone() -> bool:
            return not await sandbox_tools()

        await until(registered, "the sandbox to register")
        config["principals"] = [p for p in config["principals"] if p["name"] != "sbx-1"]
        answer = reload(hub, config)
        assert "removed: sbx-1" in answer and "sandboxes disconnected: sbx-1" in answer, answer
        await until(gone, "the sandbox's tools to go")
        await asyncio.sleep(1.5)  # the sidecar redials (backoff at most 0.5 s) and is refused
        assert not await sandbox_tools()
        assert sidecar.alive()
        # The sidecar was told why its stream ended (it said only "reconnecting ... in 0.4s").
        assert "UNAVAILABLE: principal sbx-1 was removed from the hub's config (reloaded)" in sidecar.log()
        assert "not one this hub knows" in sidecar.log()
    finally:
        await client.close()
        sidecar.stop()
        hub.stop()


async def test_open_watches_end_when_their_principal_is_revoked(tmp_path: Path) -> None:
    """A watch authenticated before the reload is asked again at the reload: a removed
    approver stops seeing calls' arguments, a removed agent stops hearing of tool changes."""
    config = first_config()
    config["principals"] += [
        {"name": "judge", "token": "judge-token-0123456789abcdef", "roles": ["approver"]},
        {"name": "sbx-1", "token": TOKENS["sbx-1"], "roles": ["sandbox"]},
    ]
    config["policy"] = {
        "extends": "default",
        "rules": [{"name": "ask for sleep", "tools": ["sleep"], "decision": "ask"}],
    }
    config["principals"][0]["tools"] = ["echo", "whoami", "sleep"]
    hub = start_hub(tmp_path / "hub", config=config, http=False)
    client = HubClient(hub.grpc)
    approvals: list[str] = []
    watch_errors: dict[str, grpc.StatusCode] = {}

    async def watch_approvals() -> None:
        async with grpc.aio.insecure_channel(hub.grpc) as channel:
            stub = apb_grpc.ApprovalsStub(channel)
            metadata = (("authorization", "Bearer judge-token-0123456789abcdef"),)
            try:
                async for approval in stub.WatchApprovals(apb.WatchApprovalsRequest(), metadata=metadata):
                    approvals.append(approval.tool)
            except grpc.aio.AioRpcError as exc:
                watch_errors["approvals"] = exc.code()

    async def watch_tools() -> None:
        try:
            async for _ in client.watch_tools(TOKENS["bob"]):
                pass
        except grpc.aio.AioRpcError as exc:
            watch_errors["tools"] = exc.code()

    watchers = [asyncio.create_task(watch_approvals()), asyncio.create_task(watch_tools())]
    try:
        first = start_call(client, TOKENS["alice"], "sleep", {"seconds": 0})
        await first.approval_id()
        deadline = time.monotonic() + 10
        while approvals != ["sleep"]:
            assert time.monotonic() < deadline, approvals
            await asyncio.sleep(0.05)

        config["principals"] = [p for p in config["principals"] if p["name"] not in ("judge", "bob")]
        answer = reload(hub, config)
        assert "removed: bob, judge" in answer, answer
        # The reload itself ends them (it ended them at the next approval or tool change, which
        # in a quiet hour may be hours away).
        await asyncio.wait_for(asyncio.gather(*watchers), 20)
        assert watch_errors == {
            "approvals": grpc.StatusCode.UNAUTHENTICATED,
            "tools": grpc.StatusCode.UNAUTHENTICATED,
        }
        assert approvals == ["sleep"]
    finally:
        for task in watchers:
            task.cancel()
        await client.close()
        hub.stop()


def test_the_session_cap_holds_across_reloads(tmp_path: Path) -> None:
    """Sessions were counted per `Principal` object, and a reload makes new ones: every SIGHUP
    gave each principal a fresh allowance and forgot the sessions it held."""
    config = first_config()
    config["max_sessions_per_principal"] = 2
    hub = start_hub(tmp_path, config=config)
    try:
        with httpx2.Client(base_url=hub.http_base, timeout=30) as http:
            sessions = [open_session(http, TOKENS["bob"]) for _ in range(2)]
            for _ in range(2):
                assert "nothing changed" in reload(hub, config)
                sessions += [open_session(http, TOKENS["bob"]) for _ in range(2)]
            live = [s for s in sessions if works(http, TOKENS["bob"], s)]
            assert live == sessions[-2:], (sessions, live)
    finally:
        assert hub.stop() == 0


async def test_a_call_waiting_for_approval_is_decided_again_when_approved_after_a_reload(
    tmp_path: Path,
) -> None:
    """The reload happens while two calls wait for a person: Alice is removed, and the new policy
    denies `sleep`. Approved afterwards, neither runs."""
    config = first_config()
    config["principals"][0]["tools"] = config["principals"][1]["tools"] = ["whoami", "sleep"]
    config["principals"].append(
        {"name": "judge", "token": "judge-token-0123456789abcdef", "roles": ["approver"]}
    )
    config["policy"] = {
        "extends": "default",
        "rules": [{"name": "ask for sleep", "tools": ["sleep"], "decision": "ask"}],
    }
    hub = start_hub(tmp_path, config=config, http=False)
    client = HubClient(hub.grpc)
    try:
        alices = start_call(client, TOKENS["alice"], "sleep", {"seconds": 0})
        bobs = start_call(client, TOKENS["bob"], "sleep", {"seconds": 0})
        waiting = [await alices.approval_id(), await bobs.approval_id()]
        config["principals"] = [p for p in config["principals"] if p["name"] != "alice"]
        config["policy"]["rules"] = [{"name": "no sleep", "tools": ["sleep"], "decision": "deny"}]
        assert "removed: alice" in reload(hub, config)
        for approval_id in waiting:
            await decide(hub.grpc, "judge-token-0123456789abcdef", approval_id, True)
        alice_result, bob_result = text_of(await alices.result()), text_of(await bobs.result())
        assert "principal 'alice' was removed by a reload" in alice_result, alice_result
        assert "refused by policy rule 'no sleep' (the hub's config was reloaded" in bob_result, bob_result
        assert "slept" not in alice_result + bob_result
        # Refused before it was spent: the approvals are approved still, not used.
        approved = await listing(hub.grpc, "judge-token-0123456789abcdef", "approved", "used")
        assert {(a.id, a.state) for a in approved} == {(i, "approved") for i in waiting}, approved
    finally:
        await client.close()
        assert hub.stop() == 0
    started = [r for r in audit_records(hub, "started") if r["tool"] == "sleep"]
    assert started == []
    assert [r for r in audit_records(hub, "approval") if r["body"]["state"] == "used"] == []


ONCALL = "oncall-token-0123456789abcdef"


def approvals_config() -> dict[str, Any]:
    """Alice asks to `sleep`; Bob (in no group) and Olga (oncall) may approve."""
    config = first_config()
    config["principals"] = [
        {"name": "alice", "token": TOKENS["alice"], "tools": ["sleep"]},
        {"name": "bob", "token": TOKENS["bob"], "roles": ["approver"]},
        {"name": "olga", "token": ONCALL, "roles": ["approver"], "groups": ["oncall"]},
        {"name": "ops", "token": TOKENS["ops"], "roles": ["operator"]},
    ]
    config["policy"] = {
        "extends": "default",
        "rules": [{"name": "ask for sleep", "tools": ["sleep"], "decision": "ask"}],
    }
    return config


async def asked_and_left(client: HubClient) -> str:
    """An approval whose caller gave up waiting: a retry with its id may use it."""
    call = start_call(client, TOKENS["alice"], "sleep", {"seconds": 0})
    approval_id = await call.approval_id()
    call.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call.task
    return approval_id


async def retried(client: HubClient, approval_id: str) -> str:
    return text_of(await start_call(client, TOKENS["alice"], "sleep", {"seconds": 0}, approval_id).result())


def refused_approvals(hub: RunningHub) -> dict[str, str]:
    return {
        r["body"]["approval_id"]: r["body"]["why"]
        for r in audit_records(hub, "approval")
        if r["body"]["state"] == "refused"
    }


async def test_approvals_decided_after_a_reload_must_meet_its_approver_groups(tmp_path: Path) -> None:
    """The reload makes `sleep` need an approver in oncall while one call waits and another's
    caller gave up. Bob, in no group, approves both after it: neither runs, as a fresh approval
    of his would not; Olga's approval still lets a call run."""
    config = approvals_config()
    hub = start_hub(tmp_path, config=config, http=False)
    client = HubClient(hub.grpc)
    try:
        waiting = start_call(client, TOKENS["alice"], "sleep", {"seconds": 0})
        waiting_id = await waiting.approval_id()
        left_id = await asked_and_left(client)
        config["policy"]["rules"][0]["approvers"] = ["oncall"]
        assert "policy changed" in reload(hub, config)
        for approval_id in (waiting_id, left_id):
            await decide(hub.grpc, TOKENS["bob"], approval_id, True)
        waited = text_of(await waiting.result())
        assert f"approval {waiting_id} could not be used: it was approved by 'bob'" in waited, waited
        assert "now needs an approver in oncall ('bob' is in no group)" in waited, waited
        retry = await retried(client, left_id)
        assert f"approval {left_id} cannot be used for this call: it was approved by 'bob'" in retry, retry
        assert "slept" not in waited + retry
        fresh = start_call(client, TOKENS["alice"], "sleep", {"seconds": 0})
        await decide(hub.grpc, ONCALL, await fresh.approval_id(), True)
        assert "slept" in text_of(await fresh.result())
    finally:
        await client.close()
        assert hub.stop() == 0
    refusals = refused_approvals(hub)
    assert set(refusals) == {waiting_id, left_id}, refusals
    assert all("needs an approver in oncall" in why for why in refusals.values()), refusals


@pytest.mark.parametrize("change", ["removed", "new token", "no longer an approver"])
async def test_approvals_of_an_approver_a_reload_revoked_are_not_used(change: str, tmp_path: Path) -> None:
    """Bob approved a call whose caller had given up; then a reload revokes him. A retry with the
    approval is refused; what Bob approves after the reload (with his new token) counts."""
    config = approvals_config()
    hub = start_hub(tmp_path, config=config, http=False)
    client = HubClient(hub.grpc)
    new_token = "bob-token-rotated-0123456789ab"
    try:
        approval_id = await asked_and_left(client)
        await decide(hub.grpc, TOKENS["bob"], approval_id, True)
        bob = config["principals"][1]
        if change == "removed":
            config["principals"].remove(bob)
        elif change == "new token":
            bob["token"] = new_token
        else:
            bob["roles"] = []
        reload(hub, config)
        retry = await retried(client, approval_id)
        assert f"approval {approval_id} cannot be used for this call: it was approved by 'bob'" in retry, (
            retry
        )
        assert "whose approver token or role a reload of the hub's config revoked" in retry, retry
        if change == "new token":
            fresh = start_call(client, TOKENS["alice"], "sleep", {"seconds": 0})
            await decide(hub.grpc, new_token, await fresh.approval_id(), True)
            assert "slept" in text_of(await fresh.result())
    finally:
        await client.close()
        assert hub.stop() == 0
    refusals = refused_approvals(hub)
    assert list(refusals) == [approval_id] and "revoked" in refusals[approval_id], refusals


async def test_a_registration_waiting_for_its_hello_is_refused_once_its_token_is_revoked(
    tmp_path: Path,
) -> None:
    config = first_config()
    config["principals"].append({"name": "sbx-1", "token": TOKENS["sbx-1"], "roles": ["sandbox"]})
    hub = start_hub(tmp_path, config=config, http=False)
    revoked = asyncio.Event()

    async def late_hello() -> AsyncIterator[spb.SidecarMessage]:
        await revoked.wait()
        tool = pb.Tool(name="read_secrets", input_schema_json=b'{"type": "object"}')
        yield spb.SidecarMessage(hello=spb.SidecarHello(sandbox="sbx-1", tools=[tool]))
        await asyncio.sleep(5)

    try:
        async with grpc.aio.insecure_channel(hub.grpc) as channel:
            stub = spb_grpc.SandboxRegistryStub(channel)  # type: ignore[no-untyped-call]
            stream = stub.Connect(late_hello(), metadata=(("authorization", f"Bearer {TOKENS['sbx-1']}"),))
            await asyncio.sleep(0.5)  # the hub has authenticated the stream and waits for its hello
            config["principals"] = [p for p in config["principals"] if p["name"] != "sbx-1"]
            assert "removed: sbx-1" in await asyncio.to_thread(reload, hub, config)
            revoked.set()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stream.read()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ops = HubClient(hub.grpc)
        try:
            assert not [t for t in await ops.all_tools(TOKENS["ops"]) if t.name.startswith("sbx-1__")]
        finally:
            await ops.close()
    finally:
        assert hub.stop() == 0


async def test_an_approver_of_another_hub_sharing_the_store_still_counts_after_a_reload(
    tmp_path: Path,
) -> None:
    """Hubs sharing a PostgreSQL store: Rita is an approver (oncall) of the other hub only. A
    reload here asks for oncall; her approval, which this hub cannot judge, lets the call run."""
    with running_postgres() as pg:
        dsn = pg.create_database("shared")
        here_config = approvals_config()
        there_config = approvals_config()
        there_config["principals"] = [
            {
                "name": "rita",
                "token": "rita-token-0123456789abcdefgh",
                "roles": ["approver"],
                "groups": ["oncall"],
            }
        ]
        for config in (here_config, there_config):
            config["audit"] = {"store": "postgres", "dsn_env": "AUDIT_DSN"}
        here = start_hub(tmp_path / "here", config=here_config, http=False, env={"AUDIT_DSN": dsn})
        there = start_hub(tmp_path / "there", config=there_config, http=False, env={"AUDIT_DSN": dsn})
        client = HubClient(here.grpc)
        try:
            approval_id = await asked_and_left(client)
            here_config["policy"]["rules"][0]["approvers"] = ["oncall"]
            assert "policy changed" in reload(here, here_config)
            await decide(there.grpc, "rita-token-0123456789abcdefgh", approval_id, True)
            assert "slept" in await retried(client, approval_id)
        finally:
            await client.close()
            assert here.stop() == 0
            assert there.stop() == 0


async def test_a_reload_that_changes_a_principals_tools_changes_its_list_and_tells_it_alone(
    tmp_path: Path,
) -> None:
    """Found by a tester: after a reload gave a principal other tools, tools/list still showed the
    old ones (cached by name) and no list_changed came; and every watcher heard of every change,
    its own list changed or not."""
    hub = start_hub(tmp_path / "hub", config=first_config(), http=False)
    client = HubClient(hub.grpc)
    heard: dict[str, int] = {"alice": 0, "bob": 0}

    async def watch(name: str) -> None:
        async for _ in client.watch_tools(TOKENS[name]):
            heard[name] += 1

    async def until_heard(name: str, times: int) -> None:
        async with asyncio.timeout(10):
            while heard[name] < times:  # noqa: ASYNC110 - polling a count the watchers grow
                await asyncio.sleep(0.02)

    async def names(name: str) -> list[str]:
        listed = await client.list_tools(TOKENS[name])
        return sorted(t.name for t in listed.tools)

    watchers = [asyncio.create_task(watch("alice")), asyncio.create_task(watch("bob"))]
    try:
        await until_heard("alice", 1)
        await until_heard("bob", 1)
        assert await names("bob") == ["echo", "whoami"]
        config = first_config()
        config["principals"][1]["tools"] = ["echo", "whoami", "sleep"]
        assert "reloaded" in await asyncio.to_thread(reload, hub, config)
        await until_heard("bob", 2)
        assert await names("bob") == ["echo", "sleep", "whoami"]
        config["principals"][0]["tools"] = ["echo"]
        assert "reloaded" in await asyncio.to_thread(reload, hub, config)
        await until_heard("alice", 2)
        assert await names("alice") == ["echo"]
        await asyncio.sleep(0.3)
        # Each heard of its own change only: alice not of bob's, bob not of alice's.
        assert heard == {"alice": 2, "bob": 2}
    finally:
        for task in watchers:
            task.cancel()
        await client.close()
        hub.stop()


def approvals_list(hub: RunningHub, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")}
    return subprocess.run(
        hub_command("approvals", "list", *args), capture_output=True, text=True, timeout=60, env=env
    )


def sighup_answer(hub: RunningHub) -> str:
    """Send SIGHUP to a hub started without --config and return the log line that answers it."""
    seen = hub.log_path.read_text().count("config reloaded")
    hub.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [line for line in hub.log_path.read_text().splitlines() if "config reloaded" in line]
        if len(lines) > seen:
            return lines[seen]
        time.sleep(0.05)
    raise AssertionError(f"no answer to SIGHUP in the log:\n{hub.log_path.read_text()}")


@pytest.mark.parametrize("configured", [True, False], ids=["principals", "open-without-config"])
def test_sighup_reads_the_operator_token_again(configured: bool, tmp_path: Path) -> None:
    """operator.token was read once at start: replaced (a leaked token) and SIGHUP sent, the old
    token still worked and the CLI's, read from the new file, was refused until a restart."""
    hub = start_hub(tmp_path, config=first_config() if configured else None)
    path = hub.state_dir / "operator.token"
    try:
        old = path.read_text().strip()
        staged = path.with_name("operator.token.new")
        staged.write_text("op_" + "Q" * 40 + "\n")
        staged.chmod(0o600)
        staged.replace(path)
        if configured:  # before the SIGHUP, the CLI says why the file's token is refused
            out = approvals_list(hub, "--state-dir", str(hub.state_dir))
            assert out.returncode == 3 and f"the token sent is {path}'s" in out.stderr, out.stderr
            assert "send it SIGHUP to read the file again" in out.stderr, out.stderr
        line = reload(hub, first_config()) if configured else sighup_answer(hub)
        assert "new token: operator" in line, line
        assert approvals_list(hub, "--state-dir", str(hub.state_dir)).returncode == 0
        if configured:  # an open hub takes any token, as its local principal (not the operator)
            out = approvals_list(hub, "--hub", hub.grpc, "--token", old)
            assert out.returncode == 3 and "not one this hub knows" in out.stderr, out.stderr
        path.unlink()  # deleted: a new one is made, and the one before is revoked
        line = reload(hub, first_config()) if configured else sighup_answer(hub)
        assert "new token: operator" in line, line
        assert path.read_text().strip() not in (old, "op_" + "Q" * 40)
        assert approvals_list(hub, "--state-dir", str(hub.state_dir)).returncode == 0
        if configured:
            out = approvals_list(hub, "--hub", hub.grpc, "--token", "op_" + "Q" * 40)
            assert out.returncode == 3 and "not one this hub knows" in out.stderr, out.stderr
    finally:
        hub.stop()
