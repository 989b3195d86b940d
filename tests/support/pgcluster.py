"""A real PostgreSQL server with password (scram) logins on 127.0.0.1, for the sql pack's tests.

A throwaway cluster run as `nobody`: PostgreSQL refuses to run as root, and tests here run as root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass(frozen=True)
class RunningPostgres:
    """TCP on 127.0.0.1 needs a password (scram-sha-256); the Unix socket in `socket_dir` trusts."""

    port: int
    datadir: Path
    socket_dir: Path

    def admin_dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} user={user} dbname={dbname}"

    def dsn(self, user: str = "postgres", password: str | None = None, dbname: str = "postgres") -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_nobody(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    nobody = pwd.getpwnam("nobody")
    prefix = (
        []
        if os.getuid() != 0
        else ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    )
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]


def available() -> bool:
    return (PG_BIN / "initdb").exists()


@contextmanager
def postgres_server() -> Iterator[RunningPostgres]:
    base = Path(tempfile.mkdtemp(prefix="mcphub-pg-"))
    base.chmod(0o755)
    datadir = base / "data"
    nobody = pwd.getpwnam("nobody")
    os.chown(base, nobody.pw_uid, nobody.pw_gid)
    try:
        init = _as_nobody(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(datadir),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            env={"PATH": os.environ["PATH"], "LC_ALL": "C.UTF-8"},
            cwd=base,
        )
        assert init.returncode == 0, init.stderr
        for _attempt in range(5):
            port = _free_port()
            started = _as_nobody(
                [
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(datadir),
                    "-l",
                    str(base / "log"),
                    "-w",
                    "-t",
                    "30",
                    "-o",
                    f"-c listen_addresses=127.0.0.1 -c port={port} "
                    f"-c unix_socket_directories={base} -c fsync=off",
                    "start",
                ],
                env={"PATH": os.environ["PATH"], "LC_ALL": "C.UTF-8"},
                cwd=base,
            )
            if started.returncode == 0:
                break
            time.sleep(0.2)  # the port was taken between probing and binding: try another
        else:
            raise RuntimeError(f"postgres did not start: {started.stderr}\n{(base / 'log').read_text()}")
        try:
            yield RunningPostgres(port, datadir, base)
        finally:
            _as_nobody(
                [str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "stop"], cwd=base
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
