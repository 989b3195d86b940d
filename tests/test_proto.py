"""The wire contract: generated code is fresh, and a client built from proto/ alone can call the hub."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
from pathlib import Path

import grpc
import pytest
import setuptools
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from tests.support.hub import REPO, RunningHub

pytestmark = pytest.mark.anyio


def _gen_proto_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_proto", REPO / "scripts" / "gen_proto.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_not_stale() -> None:
    assert _gen_proto_module().main(["--check"]) == 0


def test_the_staleness_check_notices_an_edit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _gen_proto_module()
    copy = tmp_path / "v1"
    shutil.copytree(REPO / "mcphub_proto" / "v1", copy)
    pb2 = copy / "toolhub_pb2.py"
    pb2.write_text(pb2.read_text() + "\n# hand edit\n")
    monkeypatch.setattr(gen, "PACKAGE_DIR", copy)
    assert gen.main(["--check"]) == 1


def test_the_python_package_does_not_take_the_name_proto() -> None:
    # `proto` is proto-plus's package (every google-cloud client library needs it): a wheel that
    # also shipped proto/__init__.py would overwrite theirs, or they ours, in site-packages.
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    shipped = setuptools.find_namespace_packages(where=str(REPO), include=include["include"])
    assert "mcphub_proto.v1" in shipped
    assert not [p for p in shipped if p.split(".")[0] == "proto"], shipped


CLIENT = textwrap.dedent(
    """
    import importlib.util, sys
    for ours in ("mcp_local", "mcp_remote", "bridge"):
        assert importlib.util.find_spec(ours) is None, f"{ours} must not be importable here"
    import grpc
    from mcphub.v1 import toolhub_pb2, toolhub_pb2_grpc
    target = sys.argv[1]
    with grpc.insecure_channel(target) as channel:
        stub = toolhub_pb2_grpc.ToolHubStub(channel)
        names = [t.name for t in stub.ListTools(toolhub_pb2.ListToolsRequest()).tools]
        assert "echo" in names, names
        request = toolhub_pb2.CallToolRequest(name="echo", arguments_json=b'{"text": "from proto alone"}')
        result = stub.CallTool(request)
        print(result.content[0].text.text)
    """
)


def test_a_client_generated_from_proto_alone_calls_echo(tmp_path: Path, open_hub: RunningHub) -> None:
    from grpc_tools import protoc

    proto_file = REPO / "proto" / "mcphub" / "v1" / "toolhub.proto"
    assert (
        protoc.main(
            [
                "protoc",
                f"-I{REPO / 'proto'}",
                f"--python_out={tmp_path}",
                f"--grpc_python_out={tmp_path}",
                str(proto_file),
            ]
        )
        == 0
    )
    (tmp_path / "client.py").write_text(CLIENT)
    site = sysconfig.get_paths()["purelib"]
    # -S: no site initialisation, so the editable install of this repository is not on the path;
    # only the generated code (cwd) and the grpcio/protobuf packages are.
    code = (
        f"import sys; sys.path[:0] = [{str(tmp_path)!r}, {site!r}]; sys.argv[1:] = [{open_hub.grpc!r}]; "
        "exec(open('client.py').read())"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"]},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "from proto alone"


async def test_health_checking_and_reflection_are_on(open_hub: RunningHub) -> None:
    from google.protobuf import descriptor_pb2

    from mcp_local.reflection import SERVICE_NAME

    assert SERVICE_NAME == reflection.SERVICE_NAME
    async with grpc.aio.insecure_channel(open_hub.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "mcphub.v1.ToolHub"):
            response = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def requests():  # type: ignore[no-untyped-def]
            yield reflection_pb2.ServerReflectionRequest(list_services="")
            yield reflection_pb2.ServerReflectionRequest(file_containing_symbol="mcphub.v1.ToolHub")
            yield reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Symbol")

        answers = [r async for r in stub.ServerReflectionInfo(requests())]
        names = {s.name for s in answers[0].list_services_response.service}
        assert names == {
            "mcphub.v1.ToolHub",
            "mcphub.v1.SandboxRegistry",
            "mcphub.v1.Approvals",
            "grpc.health.v1.Health",
            SERVICE_NAME,
        }
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in answers[1].file_descriptor_response.file_descriptor_proto
        ]
        assert "ToolHub" in {s.name for f in files for s in f.service}
        assert answers[2].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_reflection_refuses_a_request_that_is_not_protobuf(open_hub: RunningHub) -> None:
    async with grpc.aio.insecure_channel(open_hub.grpc) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=None,
            response_deserializer=None,
        )

        async def garbage():  # type: ignore[no-untyped-def]
            yield b"\xff\xff\xff"

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call(garbage()):
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid protobuf message" in (caught.value.details() or "")
