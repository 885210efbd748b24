"""A real HTTP image server on loopback, with the faults the web throws at a downloader.

Tests and benchmarks start it as a context manager; it binds 127.0.0.1 on a
free port and never reaches anything else. Routes (``n`` is an integer):

- ``/img/<n>.jpg``: a distinct 64x48 JPEG per ``n``; ``/dup/<n>.jpg`` the same bytes.
- ``/redirect/<n>.jpg``: 302 to ``/img/<n>.jpg``; ``/chain/<k>``: exactly ``k`` redirects, then image 0.
- ``/loop``: 302 to itself; ``/to-link-local``: 302 to the cloud metadata address;
  ``/redirect-to?url=U``: 302 to ``U``.
- ``/missing``: 404; ``/error``: 500; ``/status/<code>``: that status.
- ``/flaky/<n>.jpg[?status=C]``: status C (default 500) on the first request for ``n``, then image ``n``.
- ``/slow``: headers at once, then the body trickles for ``slow_seconds``;
  ``/slow-headers``: header lines trickle for ``slow_seconds``.
- ``/reset``: the connection is aborted with a TCP RST.
- ``/short-body.jpg``: declares image 0's length, sends half of it and closes.
- ``/truncated.jpg``: the first half of image 0, with an honest Content-Length (decoding fails).
- ``/notimage.jpg``: text served as image/jpeg; ``/bomb.png``: a few-KB PNG declaring 20000x20000 pixels.
- ``/optout.jpg[?tag=T&tag=T2]``: image 0 with one ``X-Robots-Tag`` header per tag (default ``noai``).
"""

from __future__ import annotations

import collections
import functools
import io
import os
import socket
import ssl
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

TEXT_AS_IMAGE = b"this is not an image, whatever the Content-Type says\n"


@functools.cache
def image_bytes(n: int) -> bytes:
    """The JPEG served at ``/img/<n>.jpg``: 8x6 blocks spell n's low 48 bits over a colour from n."""
    bits = [(n >> i) & 1 for i in range(48)]
    blocks = np.array(bits, dtype=np.uint8).reshape(6, 8)
    mask = np.kron(blocks, np.ones((8, 8), dtype=np.uint8))  # 48 x 64
    base = np.array([(n * 37) % 200, (n * 91) % 200, (n * 53) % 200], dtype=np.uint8)
    pixels = base + (mask[..., None] * 55).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def bomb_png(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of ``side`` x ``side`` black pixels: kilobytes on the wire, 400 Mpixels decoded."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte, then the packed bits
    packer = zlib.compressobj(9)
    rows_per_piece = 1000
    idat = b"".join(packer.compress(row * min(rows_per_piece, side - i)) for i in range(0, side, rows_per_piece))
    idat += packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms waits between them

    def log_message(self, format, *args):
        pass  # quiet: tests read outcomes, not access logs

    def do_GET(self):
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        self.server.record(parts.path, self.headers)
        for prefix, route in self.server.routes:
            if parts.path == prefix or (prefix.endswith("/") and parts.path.startswith(prefix)):
                return route(self, parts.path[len(prefix):], query)
        self.send_status(404)

    # --- responses -------------------------------------------------------------------------

    def send_body(self, body: bytes, content_type: str = "image/jpeg", headers: dict | None = None, status=200):
        self.send_head(len(body), content_type, headers, status)
        self.wfile.write(body)

    def send_head(self, length: int, content_type: str = "image/jpeg", headers: dict | None = None, status=200):
        """Status and headers announcing a body of ``length`` bytes; the caller sends the body (or not)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        for name, values in (headers or {}).items():
            for value in values if isinstance(values, list) else [values]:
                self.send_header(name, value)
        self.end_headers()

    def send_status(self, code: int):
        self.send_body(f"status {code}\n".encode(), "text/plain", status=code)

    def send_redirect(self, location: str, code: int = 302):
        self.send_body(b"", "text/plain", {"Location": location}, status=code)

    def image(self, rest: str, query):
        n = _image_number(rest)
        return self.send_body(image_bytes(n)) if n is not None else self.send_status(404)

    def flaky(self, rest: str, query):
        n = _image_number(rest)
        if n is None:
            return self.send_status(404)
        if self.server.first_request(f"flaky/{n}"):
            return self.send_status(int(query.get("status", ["500"])[0]))
        self.send_body(image_bytes(n))

    def redirect(self, rest: str, query):
        self.send_redirect(f"/img/{rest}")

    def chain(self, rest: str, query):
        k = int(rest) if rest.isdigit() else 0
        if k == 0:
            return self.send_body(image_bytes(0))
        self.send_redirect(f"/chain/{k - 1}" if k > 1 else "/img/0.jpg")

    def redirect_to(self, rest: str, query):
        self.send_redirect(query.get("url", ["/"])[0])

    def status(self, rest: str, query):
        self.send_status(int(rest) if rest.isdigit() else 400)

    def optout(self, rest: str, query):
        self.send_body(image_bytes(0), headers={"X-Robots-Tag": query.get("tag", ["noai"])})

    def slow(self, rest: str, query):
        body = image_bytes(0)
        self.send_head(len(body))
        pieces = max(1, int(self.server.slow_seconds / 0.05))
        step = max(1, len(body) // pieces)
        self.trickle([body[i : i + step] for i in range(0, len(body), step)])

    def slow_headers(self, rest: str, query):
        self.send_response(200)
        pieces = max(1, int(self.server.slow_seconds / 0.05))
        self.trickle([f"X-Padding-{i}: {i}\r\n".encode() for i in range(pieces)] + [b"Content-Length: 0\r\n\r\n"])

    def trickle(self, pieces: list[bytes]):
        # Each piece arrives well within any per-read timeout; only a total deadline stops the client.
        self.flush_headers()
        try:
            for piece in pieces:
                if self.server.stopping.wait(0.05):
                    break
                self.wfile.write(piece)
        except OSError:
            self.close_connection = True  # the client gave up, as it should

    def reset(self, rest: str, query):
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN. The handler's
        # reader holds a reference that would delay the close, so close the descriptor itself.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        os.close(self.connection.detach())
        self.close_connection = True

    def short_body(self, rest: str, query):
        body = image_bytes(0)
        self.send_head(len(body))
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True

    def truncated(self, rest: str, query):
        body = image_bytes(0)
        self.send_body(body[: len(body) // 2])

    def not_image(self, rest: str, query):
        self.send_body(TEXT_AS_IMAGE)

    def bomb(self, rest: str, query):
        self.send_body(bomb_png(), "image/png")


def _image_number(rest: str) -> int | None:
    stem = rest.removesuffix(".jpg")
    return int(stem) if stem.isdigit() else None


ROUTES = (
    ("/img/", _Handler.image),
    ("/dup/", _Handler.image),
    ("/flaky/", _Handler.flaky),
    ("/redirect/", _Handler.redirect),
    ("/chain/", _Handler.chain),
    ("/redirect-to", _Handler.redirect_to),
    ("/loop", lambda h, rest, query: h.send_redirect("/loop")),
    ("/to-link-local", lambda h, rest, query: h.send_redirect("http://169.254.169.254/latest/meta-data/")),
    ("/missing", lambda h, rest, query: h.send_status(404)),
    ("/error", lambda h, rest, query: h.send_status(500)),
    ("/status/", _Handler.status),
    ("/optout.jpg", _Handler.optout),
    ("/slow", _Handler.slow),
    ("/slow-headers", _Handler.slow_headers),
    ("/reset", _Handler.reset),
    ("/short-body.jpg", _Handler.short_body),
    ("/truncated.jpg", _Handler.truncated),
    ("/notimage.jpg", _Handler.not_image),
    ("/bomb.png", _Handler.bomb),
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never keeps the test process alive
    request_queue_size = 1024  # benchmarks open many connections at once

    def __init__(self, tls_context: ssl.SSLContext | None, slow_seconds: float):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes = ROUTES
        self.tls_context = tls_context
        self.slow_seconds = slow_seconds
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.hits: collections.Counter[str] = collections.Counter()
        self.last_user_agent: str | None = None

    def record(self, path: str, headers) -> None:
        with self.lock:
            self.hits[path] += 1
            self.last_user_agent = headers.get("User-Agent")

    def first_request(self, key: str) -> bool:
        with self.lock:
            self.hits["first:" + key] += 1
            return self.hits["first:" + key] == 1

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, in the connection's own thread, not in the accept loop.
        if self.tls_context is not None:
            request = self.tls_context.wrap_socket(request, server_side=True)
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        pass  # resets, refused handshakes and clients that give up are part of the tests


class ImageServer:
    """``with ImageServer() as server:`` serves on ``server.base_url`` until the block ends."""

    def __init__(self, tls_context: ssl.SSLContext | None = None, slow_seconds: float = 3.0):
        self._server = _Server(tls_context, slow_seconds)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        scheme = "https" if self._server.tls_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def last_user_agent(self) -> str | None:
        return self._server.last_user_agent

    def hits(self, path: str) -> int:
        """How many requests reached ``path`` (without its query)."""
        with self._server.lock:
            return self._server.hits[path]

    @staticmethod
    def image_bytes(n: int) -> bytes:
        return image_bytes(n)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
