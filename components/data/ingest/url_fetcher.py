"""Fetching one URL for image-text ingestion: safely, within a deadline, with retries.

Each hop (the URL, then every redirect) is resolved once, every address is
checked by the ``AddressGuard``, and the connection goes to a checked IP
itself. http.client only speaks HTTP over that socket, so the name is never
resolved again between the check and the connect (no DNS rebinding); HTTPS
verifies the certificate against the original host name.

Failures never raise: a ``FetchResult`` carries one short ``error_category``
that stages count per category:

    invalid_url      unparseable URL, or a scheme other than http/https
    dns              the host name did not resolve
    blocked_address  every address is private, loopback, metadata, ... (see address_guard)
    timeout          no complete response within ``timeout_s``
    connection       refused, reset, closed early, incomplete body, malformed response
    tls              certificate or handshake failure
    http_<code>      an error status, e.g. http_404, http_429, http_500
    redirect         a loop, too many redirects, or a Location that is missing or not http(s)
    opted_out        the response carries an X-Robots-Tag opt-out (noai, noimageai, ...)
    too_large        the body is larger than ``max_bytes``

Only transient failures are retried: timeout, connection, http_429 and http_5xx.
"""

from __future__ import annotations

import concurrent.futures
import functools
import http.client
import io
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import quote, urljoin, urlsplit

from components.data.ingest import ingest_defaults as defaults
from components.data.ingest.address_guard import AddressGuard, BlockedAddress

# Look-ups run here so that the caller can stop waiting at its deadline (getaddrinfo has no timeout).
_DNS_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="tvp-dns")

DEFAULT_USER_AGENT = "tvp/0.1 (image-text dataset downloader; honours X-Robots-Tag noai)"
DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex"})
# Directives that carry a value after a colon, so "max-snippet: 20" names no crawler.
VALUE_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
_AGENT_PREFIX = re.compile(r"^\s*([A-Za-z0-9_.*-]+)\s*:\s*(.*)$")
_URL_SAFE = "/:@!$&'()*+,;=-._~%"  # reserved and unreserved characters, and existing %XX escapes
_READ_CHUNK = 64 * 1024

Resolver = Callable[[str, int], Sequence[str]]
Connector = Callable[[tuple[str, int], float], socket.socket]


@dataclass(frozen=True)
class FetchConfig:
    timeout_s: float = defaults.FETCH_TIMEOUT_S  # per attempt, for every hop and the whole body: a trickling server cannot stall a task
    retries: int = defaults.FETCH_RETRIES  # extra attempts after a transient failure
    backoff_s: float = 0.5  # the n-th retry waits backoff_s * 2**(n-1)
    user_agent: str = DEFAULT_USER_AGENT  # its product token ("tvp") is the name X-Robots-Tag prefixes match
    honour_opt_out: bool = True  # refuse responses whose X-Robots-Tag says noai, noimageai, noindex or noimageindex
    max_bytes: int = defaults.MAX_BYTES  # larger bodies (and local files) are refused without being kept
    max_redirects: int = 5
    allowed_addresses: tuple[str, ...] = ()  # IPs or CIDR networks contacted despite being non-public

    __pydantic_config__: ClassVar[dict] = {"extra": "forbid"}


@dataclass
class FetchResult:
    url: str
    ok: bool
    body: bytes | None = None
    status: int | None = None  # the last HTTP status seen, if any
    final_url: str | None = None  # the URL of the last hop tried (after redirects)
    error_category: str | None = None
    error: str | None = None  # one line for humans
    attempts: int = 0


class FetchError(Exception):
    def __init__(self, category: str, message: str, status: int | None = None, url: str | None = None):
        super().__init__(message)
        self.category = category
        self.message = " ".join(message.split())  # one line, whatever the server sent
        self.status = status
        self.url = url

    @property
    def transient(self) -> bool:
        return self.category in ("timeout", "connection", "http_429") or self.category.startswith("http_5")


def resolve_host(host: str, port: int) -> list[str]:
    """The system resolver's addresses for ``host``, in its order, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


@functools.cache
def _default_tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()  # system CAs, hostname checking on


class _Deadline:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self._at = time.monotonic() + seconds

    def left(self) -> float:
        left = self._at - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete response within {self.seconds} s")
        return left


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: socket.socket, deadline: _Deadline):
        self._sock, self._deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._sock.settimeout(self._deadline.left())
        return self._sock.recv_into(buffer)


class _DeadlineSocket:
    """What http.client sees as its socket: each send and receive gets only the time left.

    A per-operation socket timeout alone lets a server that sends a byte a second
    hold a request forever; re-arming with the remaining time bounds the total.
    Closing is left to the fetcher, which owns the real socket.
    """

    def __init__(self, sock: socket.socket, deadline: _Deadline):
        self._sock, self._deadline = sock, deadline

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(self._deadline.left())
        self._sock.sendall(data)

    def makefile(self, mode: str = "rb", *args, **kwargs) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline), buffer_size=_READ_CHUNK)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class _Target:
    url: str
    scheme: str
    host: str  # ASCII (IDNA) name or IP literal, without brackets
    port: int
    path: str  # path and query, percent-encoded

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def _parse_target(url: str) -> _Target:
    if not isinstance(url, str):
        raise FetchError("invalid_url", f"not a URL: {url!r}")
    try:
        parts = urlsplit(url.strip())
        port, host = parts.port, parts.hostname
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError(f"unsupported scheme {scheme!r}")
        if not host:
            raise ValueError("no host")
        ascii_host = host if _ip_literal(host) else host.encode("idna").decode("ascii")
    except (ValueError, UnicodeError) as exc:
        raise FetchError("invalid_url", f"invalid URL {url!r}: {exc}") from exc
    path = quote(parts.path or "/", safe=_URL_SAFE) + (f"?{quote(parts.query, safe=_URL_SAFE)}" if parts.query else "")
    return _Target(url, scheme, ascii_host, port or DEFAULT_PORTS[scheme], path)


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def opted_out(header_values: Iterable[str], agent_token: str) -> bool:
    """Whether X-Robots-Tag values opt out of use by the crawler named ``agent_token``.

    A ``name:`` prefix restricts the directives after it (in the same header
    value) to that crawler; only ``*`` and our own token apply to us.
    """
    for value in header_values:
        agent = None  # unprefixed directives apply to every crawler
        for piece in value.split(","):
            match = _AGENT_PREFIX.match(piece)
            if match and match.group(1).lower() not in VALUE_DIRECTIVES:
                agent, piece = match.group(1).lower(), match.group(2)
            if agent in (None, "*", agent_token) and OPT_OUT_DIRECTIVES & set(piece.lower().split()):
                return True
    return False


def _network_error(exc: Exception, url: str, timeout_s: float) -> FetchError:
    if isinstance(exc, TimeoutError):
        return FetchError("timeout", f"no complete response within {timeout_s} s", url=url)
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
        return FetchError("tls", f"TLS failure: {exc}", url=url)
    return FetchError("connection", f"{type(exc).__name__}: {exc}", url=url)


def _declared_length(resp: http.client.HTTPResponse) -> int | None:
    value = resp.getheader("Content-Length")
    return int(value) if value and value.strip().isdigit() else None


def _read_body(resp: http.client.HTTPResponse, max_bytes: int) -> bytes:
    declared = _declared_length(resp)
    if declared is not None and declared > max_bytes:
        raise FetchError("too_large", f"Content-Length {declared} exceeds {max_bytes} bytes", resp.status)
    chunks, total = [], 0
    while chunk := resp.read(min(_READ_CHUNK, max_bytes + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise FetchError("too_large", f"body exceeds {max_bytes} bytes", resp.status)
    if declared is not None and total < declared:
        # http.client's read(amt) returns b"" on an early close instead of raising.
        raise http.client.IncompleteRead(b"".join(chunks), declared - total)
    return b"".join(chunks)


class UrlFetcher:
    """Fetches URLs under a ``FetchConfig``; safe to share between threads.

    ``resolver(host, port) -> [ip, ...]`` and ``connector((ip, port), timeout) -> socket``
    default to the system resolver and ``socket.create_connection``; tests
    inject their own so that nothing leaves the machine.
    """

    def __init__(
        self,
        config: FetchConfig = FetchConfig(),
        resolver: Resolver | None = None,
        connector: Connector | None = None,
        tls_context: ssl.SSLContext | None = None,
    ):
        self.config = config
        self.guard = AddressGuard(tuple(config.allowed_addresses))
        self._resolver = resolver or resolve_host
        self._connector = connector or socket.create_connection
        self._tls_context = tls_context
        self._agent_token = (config.user_agent.split() or [""])[0].split("/")[0].lower()

    def fetch(self, url: str) -> FetchResult:
        """Fetch ``url``, retrying transient failures with exponential backoff."""
        attempts = 0
        while True:
            attempts += 1
            try:
                status, body, final_url = self._follow(url, _Deadline(self.config.timeout_s))
                return FetchResult(url, True, body, status, final_url, attempts=attempts)
            except FetchError as exc:
                if not exc.transient or attempts > self.config.retries:
                    return FetchResult(url, False, None, exc.status, exc.url, exc.category, exc.message, attempts)
            time.sleep(self.config.backoff_s * 2 ** (attempts - 1))

    def _follow(self, url: str, deadline: _Deadline) -> tuple[int, bytes, str]:
        """One attempt: the URL and its redirects, all within ``deadline``."""
        target, seen = _parse_target(url), {url}
        for _ in range(self.config.max_redirects + 1):
            status, location, body = self._hop(target, deadline)
            if location is None:
                return status, body, target.url
            target = self._redirect_target(target, location, seen)
        raise FetchError("redirect", f"more than {self.config.max_redirects} redirects", url=target.url)

    def _redirect_target(self, current: _Target, location: str, seen: set[str]) -> _Target:
        url = urljoin(current.url, location.strip())
        try:
            target = _parse_target(url)
        except FetchError as exc:
            raise FetchError("redirect", f"redirect to an unusable URL: {exc.message}", url=current.url) from exc
        if url in seen:
            raise FetchError("redirect", f"redirect loop at {url}", url=url)
        seen.add(url)
        return target

    def _hop(self, target: _Target, deadline: _Deadline) -> tuple[int, str | None, bytes | None]:
        try:
            return self._exchange(target, deadline)
        except FetchError as exc:
            exc.url = exc.url or target.url
            raise
        except (OSError, http.client.HTTPException) as exc:
            raise _network_error(exc, target.url, self.config.timeout_s) from exc

    def _exchange(self, target: _Target, deadline: _Deadline) -> tuple[int, str | None, bytes | None]:
        """One request and response: (status, redirect location or None, body or None)."""
        sock = self._open(target, deadline)
        try:
            conn = http.client.HTTPConnection(target.host, target.port)
            conn.sock = _DeadlineSocket(sock, deadline)  # set before request(): http.client never connects itself
            conn.request("GET", target.path, headers=self._headers(target))
            resp = conn.getresponse()
            if resp.status in REDIRECT_STATUSES:
                location = resp.getheader("Location")
                if not location:
                    raise FetchError("redirect", f"HTTP {resp.status} without a Location", resp.status)
                return resp.status, location, None
            if not 200 <= resp.status < 300:
                raise FetchError(f"http_{resp.status}", f"HTTP {resp.status} {resp.reason}", resp.status)
            if self.config.honour_opt_out and opted_out(resp.msg.get_all("X-Robots-Tag") or [], self._agent_token):
                tags = "; ".join(resp.msg.get_all("X-Robots-Tag"))
                raise FetchError("opted_out", f"X-Robots-Tag opts out: {tags}", resp.status)
            return resp.status, None, _read_body(resp, self.config.max_bytes)
        finally:
            sock.close()

    def _headers(self, target: _Target) -> dict[str, str]:
        # http.client adds "Accept-Encoding: identity": bodies arrive uncompressed, so max_bytes is what we hold.
        return {
            "Host": target.host_header,
            "User-Agent": self.config.user_agent,
            "Accept": "*/*",
            "Connection": "close",
        }

    def _open(self, target: _Target, deadline: _Deadline) -> socket.socket:
        """A connected socket to a checked address of ``target`` (TLS-wrapped for https)."""
        error: OSError | None = None
        for ip in self._checked_addresses(target, deadline):
            try:
                sock = self._connector((ip, target.port), deadline.left())
                break
            except OSError as exc:
                error = exc  # try the next checked address, as create_connection would
        else:
            raise error
        if target.scheme == "https":
            sock = self._wrap_tls(sock, target.host, deadline)
        return sock

    def _checked_addresses(self, target: _Target, deadline: _Deadline) -> list[str]:
        """The resolved addresses the guard allows, in resolver order; refuses when none is.

        The look-up counts against the request's deadline: a resolver that does not answer in time is a
        ``timeout`` (its thread finishes in the background; look-ups cannot be cancelled).
        """
        if _ip_literal(target.host):
            candidates = [target.host]
        else:
            lookup = _DNS_POOL.submit(self._resolver, target.host, target.port)
            try:
                candidates = list(lookup.result(timeout=max(deadline.left(), 0.001)))
            except concurrent.futures.TimeoutError as exc:
                lookup.cancel()
                raise FetchError("timeout", f"resolving {target.host} took longer than the deadline") from exc
            except (OSError, UnicodeError) as exc:
                raise FetchError("dns", f"cannot resolve {target.host}: {exc}") from exc
        if not candidates:
            raise FetchError("dns", f"{target.host} has no addresses")
        allowed, refusals = [], []
        for ip in candidates:
            try:
                self.guard.check(ip)
                allowed.append(ip)
            except BlockedAddress as exc:
                refusals.append(str(exc))
        if not allowed:
            raise FetchError("blocked_address", f"{target.host} refused: {refusals[0]}")
        return allowed

    def _wrap_tls(self, sock: socket.socket, host: str, deadline: _Deadline) -> ssl.SSLSocket:
        try:
            sock.settimeout(deadline.left())
            return (self._tls_context or _default_tls_context()).wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
