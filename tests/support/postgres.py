"""A real PostgreSQL for tests: Debian's binaries, a throwaway cluster on 127.0.0.1, run as `postgres`."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


def _bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed: run ./dev setup (Debian package postgresql)")
    return found[-1].parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Postgres:
    port: int
    data: Path

    def dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database} connect_timeout=10"

    def psql(self, *args: str) -> str:
        """`psql` as the superuser, over TCP; its standard output."""
        out = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout

    def create_database(self, name: str) -> str:
        self.psql("-c", f"CREATE DATABASE {name}")
        return self.dsn(name)

    def pg_ctl(self, *args: str) -> None:
        """`pg_ctl -D data -m fast -w <args>`: `restart`, `stop`, `start`, as an operator would."""
        log = self.data.parent / "server.log"
        subprocess.run(
            _as_postgres(
                str(_bindir() / "pg_ctl"),
                *("-D", str(self.data), "-l", str(log), "-m", "fast", "-w", "-t", "60"),
                *(
                    "-o",
                    f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                    f"-c unix_socket_directories={self.data}",
                ),
                *args,
            ),
            check=True,
            capture_output=True,
            timeout=90,
        )

    @contextmanager
    def hung(self) -> Iterator[None]:
        """The server stopped (SIGSTOP, its postmaster and every backend) until the block ends:
        connections stay open and new ones are accepted by the kernel, but nothing answers, as
        for a server that hangs, not one that refuses."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout
        pids = [postmaster, *(int(pid) for pid in children.split())]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def terminate(self, query_like: str) -> int:
        """Cut off the sessions whose current query is like `query_like`; how many were."""
        query = (
            f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE '{query_like}'"
        )
        return int(self.psql("-At", "-c", query).strip())


def _as_postgres(*argv: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)


@contextmanager
def running_postgres() -> Iterator[Postgres]:
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="mcphub-pg-"))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    subprocess.run(
        _as_postgres(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"),
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = _free_port()
    log = root / "server.log"
    if os.geteuid() == 0:
        log.touch()
        shutil.chown(log, "postgres", "postgres")
    subprocess.run(
        _as_postgres(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-t",
            "60",
            "-o",
            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={data}",
            "start",
        ),
        check=True,
        capture_output=True,
        timeout=90,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            probe = subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", str(port)], capture_output=True)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not come up:\n{log.read_text()}")
            time.sleep(0.1)
        yield Postgres(port, data)
    finally:
        subprocess.run(
            _as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)
