"""A small website for the browser tests: forms, navigation, dialogs, a slow page, cookies, uploads.

Served by the standard library's threaded HTTP server on 127.0.0.1 port 0.
"""

from __future__ import annotations

import html
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

__all__ = ["Site", "own_address", "serve_site"]

INDEX = """<!doctype html>
<html><head><title>Test shop</title></head>
<body>
<h1>Welcome to the test shop</h1>
<a href="/second">Second page</a>
<a href="/echo?n=popup" target="_blank">Open a new tab</a>
<form action="/search" method="get">
  <label>Query <input name="q" type="text"></label>
  <button type="submit">Search</button>
</form>
<form action="/order" method="post">
  <label>Quantity <input name="qty" type="text"></label>
  <button type="submit">Order</button>
</form>
<p id="out">Nothing happened yet</p>
<button onclick="document.getElementById('out').textContent = 'The button was clicked'">Change text</button>
<button onclick="alert('Careful now')">Show alert</button>
<button onclick="document.getElementById('out').textContent =
  confirm('Really?') ? 'confirmed' : 'cancelled'">Ask confirm</button>
<button onclick="document.getElementById('out').textContent =
  'Hello ' + prompt('Your name?')">Ask name</button>
<button onmouseover="document.getElementById('out').textContent = 'Hovered!'">Hover me</button>
</body></html>
"""

FORM = """<!doctype html>
<html><head><title>Order form</title></head>
<body>
<h1>Order</h1>
<label>Name <input id="name" type="text"></label>
<label>Gift wrap <input id="gift" type="checkbox"></label>
<label>Colour <select id="colour"><option value="r">Red</option><option value="g">Green</option>
<option value="b">Blue</option></select></label>
<label>Size <select id="size"><option>Small</option><option>Large</option></select></label>
</body></html>
"""

LATE = """<!doctype html>
<html><head><title>Late</title></head>
<body><p id="p">Loading soon</p>
<script>setTimeout(() => { document.getElementById('p').textContent = 'Late text arrived'; }, 400);</script>
</body></html>
"""

CONSOLE = """<!doctype html>
<html><head><title>Console</title></head>
<body><p>console page</p>
<script>console.log('hello-log'); console.error('boom-error'); console.warn('careful-warn');</script>
<img src="/pixel.png" alt="">
</body></html>
"""

UPLOAD = """<!doctype html>
<html><head><title>Upload</title></head>
<body>
<label>Attachment <input id="file" type="file"
  onchange="document.getElementById('chosen').textContent = 'Chosen: ' + this.files[0].name
    + ' (' + this.files[0].size + ' bytes)'"></label>
<p id="chosen">Nothing chosen</p>
</body></html>
"""

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000100ffff03000006000557bfabd40000000049454e44ae426082"
)


class Site:
    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server
        self.slow_requests = threading.Semaphore(0)
        """Released once per request of /slow as it arrives."""
        self.loads = threading.Semaphore(0)
        """Released once per request of /loading as its body begins."""
        self.loads_stopped = threading.Semaphore(0)
        """Released once per request of /loading whose client stopped reading before its end."""
        self.loaded_once: set[str] = set()
        """The `once=KEY` of /loading already asked for (the first request of one is quick)."""
        self.port = server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path


def _page(title: str, body: str) -> bytes:
    return f"<!doctype html><html><head><title>{title}</title></head><body>{body}</body></html>".encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return None

    def _send(
        self, body: bytes, *, status: int = 200, ctype: str = "text/html; charset=utf-8", **headers: str
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _loading(self, seconds: float) -> None:
        """A page whose body comes a few bytes every 50 ms for `seconds`: its load goes on until
        then, and a browser that stops it is seen here (`Site.loads_stopped`)."""
        site: Site = self.server.site  # type: ignore[attr-defined]
        head = b"<!doctype html><html><head><title>Loading</title></head><body><h1>Loading</h1>"
        steps = max(1, int(seconds / 0.05))
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(head) + steps))
        self.send_header("Cache-Control", "no-store")  # going back to it asks again
        self.end_headers()
        site.loads.release()
        try:
            self.wfile.write(head)
            self.wfile.flush()
            for _ in range(steps):
                time.sleep(0.05)
                self.wfile.write(b" ")
                self.wfile.flush()
        except OSError:
            site.loads_stopped.release()
            self.close_connection = True

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        if urlsplit(self.path).path == "/order":
            qty = html.escape(form.get("qty", ""))
            self._send(_page("Ordered", f"<h1>Ordered {qty} items</h1>"))
        else:
            self._send(_page("Not found", "<h1>Not found</h1>"), status=404)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        if path == "/":
            self._send(INDEX.encode())
        elif path == "/second":
            self._send(_page("Second", "<h1>The second page</h1><a href='/'>Back home</a>"))
        elif path == "/search":
            q = html.escape(query.get("q", ""))
            self._send(_page("Results", f"<h1>Results for {q}</h1>"))
        elif path == "/form":
            self._send(FORM.encode())
        elif path == "/slow":
            site: Site = self.server.site  # type: ignore[attr-defined]
            site.slow_requests.release()
            time.sleep(int(query.get("ms", "1000")) / 1000)
            self._send(_page("Slow", "<h1>Slow page loaded</h1>"))
        elif path == "/loading":
            # once=KEY: quick the first time (a page to come back to), slow after.
            site = self.server.site  # type: ignore[attr-defined]
            quick = "once" in query and query["once"] not in site.loaded_once
            site.loaded_once.add(query.get("once", ""))
            self._loading(0.1 if quick else int(query.get("ms", "20000")) / 1000)
        elif path == "/link":
            to = html.escape(query.get("to", "/"), quote=True)
            self._send(_page("Link", f"<h1>A link</h1><a href='{to}'>Go there</a>"))
        elif path == "/late":
            self._send(LATE.encode())
        elif path == "/echo":
            self._send(_page("Echo", f"<h1>Echo {html.escape(query.get('n', ''))}</h1>"))
        elif path == "/cookie/set":
            value = query.get("v", "none")
            self._send(
                _page("Cookie set", f"<p>cookie set to {html.escape(value)}</p>"),
                Set_Cookie=f"who={value}; Path=/",
            )
        elif path == "/cookie/show":
            cookie = html.escape(self.headers.get("Cookie") or "no cookie")
            self._send(_page("Cookie", f"<p>cookie is {cookie}</p>"))
        elif path == "/redirect":
            self._send(b"", status=302, Location=query.get("to", "/"))
        elif path == "/big":
            items = "".join(f"<li>Item number {i}</li>" for i in range(int(query.get("n", "2000"))))
            self._send(_page("Big", f"<h1>Big list</h1><ul>{items}</ul><p>The very end</p>"))
        elif path == "/console":
            self._send(CONSOLE.encode())
        elif path == "/pixel.png":
            self._send(PNG, ctype="image/png")
        elif path == "/upload":
            self._send(UPLOAD.encode())
        elif path == "/downloads":
            name = html.escape(query.get("name", "report.csv"), quote=True)
            self._send(_page("Downloads", f"<a href='/download?name={name}'>Get the report</a>"))
        elif path == "/download":
            name = query.get("name", "report.csv").replace('"', "")
            self._send(
                b"a,b\n1,2\n",
                ctype="text/csv",
                Content_Disposition=f'attachment; filename="{name}"',
            )
        elif path == "/image":
            src = html.escape(query.get("src", ""), quote=True)
            self._send(_page("Image", f"<p>image page</p><img src='{src}' alt=''>"))
        elif path == "/nag":
            body = "<p>nag page</p><button onclick=\"while (true) alert('again')\">Nag</button>"
            self._send(_page("Nag", body))
        elif path == "/popups":
            n = int(query.get("n", "5"))
            script = f"for (let i = 0; i < {n}; i++) window.open('/echo?n=popup-' + i);"
            self._send(_page("Popups", f"<p>popups page</p><script>{script}</script>"))
        elif path == "/trickle-page":
            button = "<button onclick=\"this.textContent='Clicked'\">Press</button>"
            body = f"<a href='/trickle'>Get the big file</a>{button}"
            self._send(_page("Trickle", body))
        elif path == "/trickle":  # a download that takes minutes: 10 bytes every 0.1 s of 10 MB
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Disposition", 'attachment; filename="big.bin"')
            self.send_header("Content-Length", str(10_000_000))
            self.end_headers()
            try:
                for _ in range(600):
                    self.wfile.write(b"0123456789")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass  # the browser gave up on it
        elif path == "/polling":
            script = "setInterval(() => fetch('/echo?n=poll'), 50);"
            body = "<p>polling page</p><button onclick=\"this.textContent='Clicked'\">Press</button>"
            self._send(_page("Polling", f"{body}<script>{script}</script>"))
        elif path == "/metadata-image":
            self._send(
                _page("Image", "<p>image page</p><img src='http://169.254.169.254/latest/x.png' alt=''>")
            )
        else:
            self._send(_page("Not found", "<h1>Not found</h1>"), status=404)


@contextmanager
def serve_site(host: str = "127.0.0.1") -> Iterator[Site]:
    """The site on `host` (`0.0.0.0`: every address of this machine); `Site.base` names 127.0.0.1."""
    server = ThreadingHTTPServer((host, 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="browser-site", daemon=True)
    thread.start()
    site = Site(server)
    server.site = site  # type: ignore[attr-defined]
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def own_address() -> str | None:
    """An address of this machine other than loopback (the one its default route leaves by), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # a UDP "connect" only picks the source address: nothing is sent
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if ipaddress.ip_address(address).is_loopback else address
