"""A real OpenSSH sshd on 127.0.0.1 port 0, with a generated host key and user key.

sshd refuses `Port 0`, so the test binds the port itself and runs `sshd -i` for each connection
it accepts, as inetd does: every connection is served by a real sshd.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

SSHD = shutil.which("sshd", path="/usr/sbin:/usr/bin:/sbin:/bin")


@dataclass
class RunningSshd:
    listener: socket.socket
    config: Path
    port: int
    user: str
    host_key_pub: str
    """The server's public host key line (`ssh-ed25519 AAAA...`), to pin."""
    user_key: Path
    log_path: Path
    sessions: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _thread: threading.Thread | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logins(self) -> int:
        """Connections that authenticated so far."""
        return self.log().count("Accepted publickey")

    def _serve(self) -> None:
        assert SSHD is not None
        with self.log_path.open("ab") as log:
            while True:
                try:
                    conn, _ = self.listener.accept()
                except OSError:
                    return
                with conn:
                    self.sessions.append(
                        subprocess.Popen(
                            [SSHD, "-i", "-e", "-f", str(self.config)],
                            stdin=conn.fileno(),
                            stdout=conn.fileno(),
                            stderr=log,
                        )
                    )

    def stop(self) -> None:
        # Closing a socket does not wake a thread blocked in its accept(); shutting it down does
        # (the join below waited out its 5 s at every stop).
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        if self._thread is not None:
            self._thread.join(5)
        for process in self.sessions:
            if process.poll() is None:
                process.terminate()
        for process in self.sessions:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


def start_sshd(workdir: Path, *, max_sessions: int = 10) -> RunningSshd:
    if SSHD is None:
        raise RuntimeError("OpenSSH's sshd is not installed (Debian: apt-get install openssh-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    host_key = workdir / "host_ed25519"
    user_key = workdir / "user_ed25519"
    host_pub = _keygen(host_key)
    user_pub = _keygen(user_key)
    authorized = workdir / "authorized_keys"
    authorized.write_text(user_pub + "\n")
    if os.geteuid() == 0 and not Path("/run/sshd").is_dir():
        # sshd's privilege-separation directory, as the openssh-server service would create it.
        Path("/run/sshd").mkdir(mode=0o755)
    config = workdir / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {authorized}",
                "PidFile none",
                "UsePAM no",
                "StrictModes no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                f"AllowUsers {getpass.getuser()}",
                "Subsystem sftp internal-sftp",
                f"MaxSessions {max_sessions}",
                "MaxStartups 100",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    log_path = workdir / "sshd.log"
    log_path.touch()
    sshd = RunningSshd(
        listener, config, listener.getsockname()[1], getpass.getuser(), host_pub, user_key, log_path
    )
    check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
    if check.returncode != 0:
        listener.close()
        raise RuntimeError(f"sshd rejects its test configuration: {check.stderr}")
    sshd._thread = threading.Thread(target=sshd._serve, name="test-sshd", daemon=True)
    sshd._thread.start()
    return sshd
