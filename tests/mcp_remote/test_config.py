from __future__ import annotations

from pathlib import Path

import pytest

from mcp_local import ConfigError
from mcp_remote.config import load_config, parse_address


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hub.yaml"
    path.write_text(text)
    return path


def test_defaults_are_loopback_with_diagnostics_shell_and_browser(tmp_path: Path) -> None:
    config = load_config(None, {"HOME": str(tmp_path)})
    assert str(config.grpc) == "127.0.0.1:7070" and str(config.http) == "127.0.0.1:7071"
    assert config.state_dir == tmp_path / ".local" / "state" / "mcphub"
    assert [p.name for p in config.packs] == ["diagnostics", "shell", "browser"]


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "grpc: 127.0.0.1:1000\nhttp: 127.0.0.1:1001\nlog_level: warning\n")
    env = {"HOME": str(tmp_path), "MCPHUB_HTTP": "127.0.0.1:2001", "MCPHUB_PACKS": "diagnostics, my.pack"}
    config = load_config(path, env, {"grpc": "127.0.0.1:3000"})
    assert (config.grpc.port, config.http.port if config.http else None) == (3000, 2001)
    assert config.log_level == "warning"
    assert [p.name for p in config.packs] == ["diagnostics", "my.pack"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("grpc: [1, 2]\n", "grpc:"),
        ("principals:\n  - name: a\n", "principals.0: give exactly one of token, token_env, token_file"),
        (
            "principals:\n  - {name: 'bad name', token: xxxxxxxxxxxxxxxxxxxx}\n",
            "principals.0.name: String should match",
        ),
        ("packs:\n  - {name: x, optoins: {}}\n", "packs.0.optoins: unknown key"),
        ("log_level: loud\n", "log_level: Input should be 'debug', 'info', 'warning' or 'error'"),
        ("- a\n- b\n", "expected a mapping of settings at the top level"),
        ("grpc: [\n", "not valid YAML"),
        (
            "principals:\n  - {name: a, token: xxxxxxxxxxxxxxxxxxxxxx}\n"
            "  - {name: a, token: yyyyyyyyyyyyyyyyyyyyyy}\n",
            "the name 'a' appears more than once",
        ),
        (
            "principals:\n  - {name: operator, token: xxxxxxxxxxxxxxxxxxxxxx, tools: [echo]}\n",
            "the name 'operator' is reserved for the hub host's operator",
        ),
        # A sandbox principal registers the sandbox of its name: one that can never register (a
        # principal's `.` and `@`), or whose `<name>__*` reaches another sandbox's tools, is refused.
        *(
            (
                f"principals:\n  - {{name: '{name}', token: xxxxxxxxxxxxxxxxxxxxxx, roles: [sandbox]}}\n",
                f"principals.0: name '{name}': a principal with the role `sandbox` registers the sandbox "
                "of its name, which must be 1-48 characters of [a-zA-Z0-9_-], with no `__`",
            )
            for name in ("team.sbx@99", "sbx-01__x", "sbx-01_", "s" * 49)
        ),
        (
            "audit: {store: postgres, dsn_env: PG, sync: true}\n",
            "sync applies to the sqlite store; PostgreSQL's own fsync setting decides",
        ),
    ],
)
def test_errors_name_the_key_and_what_was_expected(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), {"HOME": str(tmp_path)})
    assert message in str(info.value)


def test_sandbox_names_that_register_and_principal_names_without_the_sandbox_role(tmp_path: Path) -> None:
    text = (
        "principals:\n"
        "  - {name: sbx-42, token: xxxxxxxxxxxxxxxxxxxxxx, roles: [sandbox]}\n"
        "  - {name: _sbx_4-2, token: yyyyyyyyyyyyyyyyyyyyyy, roles: [sandbox]}\n"
        "  - {name: team.ops@99, token: zzzzzzzzzzzzzzzzzzzzzz, roles: [operator]}\n"
        "  - {name: agent__1_, token: wwwwwwwwwwwwwwwwwwwwww}\n"
    )
    config = load_config(write(tmp_path, text), {"HOME": str(tmp_path)})
    assert [p.tools for p in config.principals[:2]] == [["sbx-42__*"], ["_sbx_4-2__*"]]


def test_secrets_are_never_in_error_messages(tmp_path: Path) -> None:
    path = write(tmp_path, "principals:\n  - {name: a, token: 'sup3r-secret-token-value', tokn: 1}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {"HOME": str(tmp_path)})
    assert "sup3r-secret-token-value" not in str(info.value)


def test_exposed_binds_need_principals(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"http: binding 0\.0\.0\.0:7071 \(not loopback\)"):
        load_config(None, {"HOME": str(tmp_path)}, {"http": "0.0.0.0:7071"})
    ok = load_config(
        write(tmp_path, "http: 0.0.0.0:7071\nprincipals:\n  - {name: a, token_env: TOK}\n"),
        {"HOME": str(tmp_path)},
    )
    assert ok.http is not None and not ok.http.is_loopback


def test_token_sources(tmp_path: Path) -> None:
    token_file = tmp_path / "tok"
    token_file.write_text("file-token-0123456789\n")
    path = write(
        tmp_path, f"principals:\n  - {{name: a, token_env: TOK}}\n  - {{name: b, token_file: {token_file}}}\n"
    )
    config = load_config(path, {"HOME": str(tmp_path)})
    assert config.principals[0].resolve_token({"TOK": "env-token-0123456789"}) == "env-token-0123456789"
    assert config.principals[1].resolve_token({}) == "file-token-0123456789"
    with pytest.raises(ConfigError, match="environment variable TOK is not set"):
        config.principals[0].resolve_token({})


@pytest.mark.parametrize(
    ("text", "host", "port"), [("1.2.3.4:5", "1.2.3.4", 5), ("[::1]:80", "::1", 80), (":9", "127.0.0.1", 9)]
)
def test_addresses(text: str, host: str, port: int) -> None:
    address = parse_address(text)
    assert (address.host, address.port) == (host, port)


@pytest.mark.parametrize("text", ["nohost", "host:", "host:port", "1.2.3.4:70000"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_http_off_in_yaml_turns_the_bridge_off(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "http: off\n"), {"HOME": str(tmp_path)})
    assert config.http is None
