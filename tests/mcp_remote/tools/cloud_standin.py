"""A real HTTP server standing in for a cloud API: records every request, echoes, redirects, holds."""

from __future__ import annotations

import gzip
import json
import threading
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class StandIn:
    server: ThreadingHTTPServer
    thread: threading.Thread
    requests: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def received(self, prefix: str = "") -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path.startswith(prefix)]

    def wait_for(self, prefix: str, timeout: float = 20.0) -> Received:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.received(prefix)
            if found:
                return found[-1]
            time.sleep(0.01)
        raise AssertionError(f"no request to {prefix} arrived within {timeout}s")

    def everything_received(self) -> str:
        """Every byte the server saw, as text, to look for things that must never arrive."""
        with self.lock:
            return "\n".join(
                f"{r.method} {r.path} {json.dumps(r.headers)} {r.body.decode('latin-1')}"
                for r in self.requests
            )

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def start_standin() -> StandIn:
    holder: dict[str, StandIn] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def _reply(
            self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Set-Cookie", "session=from-the-cloud")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            standin = holder["s"]
            record = Received(self.command, self.path, dict(self.headers.items()), body)
            with standin.lock:
                standin.requests.append(record)
            url = urllib.parse.urlsplit(self.path)
            params = dict(urllib.parse.parse_qsl(url.query))
            echo = json.dumps(
                {"method": self.command, "path": self.path, "headers": record.headers, "body": body.decode()}
            ).encode()
            if "/redirect" in url.path:
                self._reply(int(params.get("status", "302")), b"", "text/plain", {"Location": params["to"]})
            elif "/hold" in url.path:
                standin.release.wait(60)
                self._reply(307, b"", "text/plain", {"Location": params["to"]})
            elif "/status/" in url.path:
                self._reply(int(url.path.rsplit("/", 1)[1]), echo, "application/json")
            elif "/big" in url.path:
                n = int(params.get("n", "100000"))
                line = (json.dumps(record.headers) + "\n").encode()
                self._reply(200, (line * (n // len(line) + 1))[:n], "text/plain; charset=utf-8")
            elif "/text" in url.path:  # `s` repeated `n` times
                self._reply(200, (params["s"] * int(params["n"])).encode(), "text/plain; charset=utf-8")
            elif "/encoded" in url.path:  # the echo in `?as=` encoding, whatever was asked for
                encoding = params.get("as", "gzip")
                n = int(params.get("n", "1"))
                raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
                packed = {
                    "gzip": lambda data: gzip.compress(data),
                    "deflate": lambda data: zlib.compress(data),
                    "raw-deflate": lambda data: raw_deflate.compress(data) + raw_deflate.flush(),
                    "br": lambda data: b"not really brotli",
                }[encoding](echo * n)
                packed *= int(params.get("members", "1"))  # gzip members, one after another
                packed += {"zeros": b"\0", "junk": b"\x99"}.get(params.get("tail", ""), b"") * int(
                    params.get("tail_bytes", "0")
                )
                packed = packed[: len(packed) - int(params.get("cut", "0"))]
                label = "deflate" if encoding == "raw-deflate" else encoding
                self._reply(200, packed, "application/json", {"Content-Encoding": label})
            elif "/charset" in url.path:  # the echo in `?as=` codec, declared as `?label=` (none: "")
                codec = params.get("as", "utf-16")
                label = params.get("label", codec)
                n = int(params.get("n", "1"))
                data = (echo.decode() * n).encode(codec)  # Python's utf-16 and utf-32 write a BOM
                self._reply(200, data, "application/json" + (f"; charset={label}" if label else ""))
            elif "/binary" in url.path:
                self._reply(200, bytes(range(256)) * 8, "application/octet-stream")
            else:
                self._reply(200, echo, "application/json")

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    standin = StandIn(server, thread)
    holder["s"] = standin
    thread.start()
    return standin
