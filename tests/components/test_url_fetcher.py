"""The URL fetcher against a real HTTP server on loopback.

Safety: nothing here may leave the machine, even with a broken guard. Every
fetcher resolves through ``resolve`` (a fixed table, no DNS) and connects
through ``LoopbackOnly``, which refuses any address but 127.0.0.1 and fails
the test by raising an AssertionError the fetcher does not catch.
"""

import datetime
import hashlib
import pickle
import socket
import ssl
import threading

import pytest

from components.data.ingest import url_fetcher
from components.data.ingest.ordered_map import ordered_map
from components.data.ingest.url_fetcher import FetchConfig, UrlFetcher, opted_out
from tests.image_server import ImageServer, image_bytes

LOOPBACK = "127.0.0.1"
HOSTS = {
    "images.test": [LOOPBACK],
    "metadata.test": ["169.254.169.254"],
    "public.example": ["10.1.2.3"],  # a public-looking name answering with a private address
    "mixed.test": ["10.0.0.5", LOOPBACK],
    "v6-loopback.test": ["::1"],
    "mapped.test": ["::ffff:127.0.0.1"],
}


def resolve(host: str, port: int) -> list[str]:
    if host not in HOSTS:
        raise socket.gaierror(socket.EAI_NONAME, f"{host} is unknown to the test resolver")
    return list(HOSTS[host])


class OffMachineConnect(AssertionError):
    pass


class LoopbackOnly:
    """A connector that records every address and refuses all but 127.0.0.1."""

    def __init__(self):
        self.seen: list[str] = []

    def __call__(self, address, timeout):
        self.seen.append(address[0])
        if address[0] != LOOPBACK:
            raise OffMachineConnect(f"the fetcher tried to connect to {address}")
        return socket.create_connection(address, timeout)


@pytest.fixture(scope="module")
def server():
    with ImageServer(slow_seconds=2.0) as srv:
        yield srv


@pytest.fixture
def connector():
    return LoopbackOnly()


@pytest.fixture
def make(connector):
    def make_fetcher(**overrides) -> UrlFetcher:
        settings = {"timeout_s": 2.0, "retries": 2, "backoff_s": 0.001, "allowed_addresses": (LOOPBACK,)}
        return UrlFetcher(FetchConfig(**{**settings, **overrides}), resolver=resolve, connector=connector)

    return make_fetcher


def url(server, path: str, host: str = "images.test") -> str:
    return f"http://{host}:{server.port}{path}"


def test_images_arrive_byte_exact_and_in_order(server, make):
    numbers = list(range(40))
    results = list(ordered_map(make().fetch, [url(server, f"/img/{n}.jpg") for n in numbers], threads=8))
    assert [r.ok for r in results] == [True] * len(numbers)
    assert [r.body for r in results] == [image_bytes(n) for n in numbers]
    assert len({hashlib.sha256(r.body).hexdigest() for r in results}) == len(numbers)
    assert all(r.status == 200 and r.attempts == 1 and r.error_category is None for r in results)


def test_duplicates_under_other_urls_have_identical_bytes(server, make):
    first, dup = list(ordered_map(make().fetch, [url(server, "/img/5.jpg"), url(server, "/dup/5.jpg")], threads=2))
    assert first.body == dup.body == image_bytes(5)


@pytest.mark.parametrize(
    "path, category, attempts",
    [
        ("/missing", "http_404", 1),
        ("/status/403", "http_403", 1),
        ("/error", "http_500", 3),
        ("/status/503", "http_503", 3),
        ("/status/429", "http_429", 3),
        ("/reset", "connection", 3),
        ("/short-body.jpg", "connection", 3),
        ("/loop", "redirect", 1),
        ("/chain/6", "redirect", 1),
        ("/redirect-to?url=ftp://images.test/x.jpg", "redirect", 1),
        ("/to-link-local", "blocked_address", 1),
        ("/optout.jpg", "opted_out", 1),
    ],
)
def test_each_fault_lands_in_its_category(server, make, connector, path, category, attempts):
    result = make().fetch(url(server, path))
    assert (result.ok, result.error_category, result.attempts) == (False, category, attempts), result.error
    assert result.body is None and result.error and "\n" not in result.error
    assert set(connector.seen) == {LOOPBACK}


def test_faults_for_the_decoder_download_fine(server, make):
    """Truncated, non-image and bomb bodies are the decoder's business: the download succeeds."""
    paths = ("/truncated.jpg", "/notimage.jpg", "/bomb.png")
    truncated, text, bomb = list(ordered_map(make().fetch, [url(server, p) for p in paths], threads=3))
    assert truncated.ok and truncated.body == image_bytes(0)[: len(image_bytes(0)) // 2]
    assert text.ok and not text.body.startswith(b"\xff\xd8")
    assert bomb.ok and bomb.body.startswith(b"\x89PNG") and len(bomb.body) < 200_000


@pytest.mark.parametrize("path", ["/slow", "/slow-headers"])
def test_a_trickling_server_hits_the_total_deadline(server, make, path):
    """A piece arrives every 50 ms for 2 s, so no per-read timeout of 0.5 s fires: only a total deadline
    ends the attempt, and without one the fetch would succeed. The outcome says which; the clock is not
    asked (a loaded machine only makes the trickle slower)."""
    result = make(timeout_s=0.5, retries=1).fetch(url(server, path))
    assert (result.ok, result.error_category, result.attempts, result.body) == (False, "timeout", 2, None)
    assert "0.5 s" in result.error
    assert server.hits(path) == 2  # a timeout is transient: retried once, as configured


def test_retries_recover_a_flaky_url(server, make):
    result = make().fetch(url(server, "/flaky/7.jpg"))
    assert (result.ok, result.attempts, result.body) == (True, 2, image_bytes(7))
    busy = make().fetch(url(server, "/flaky/8.jpg?status=429"))
    assert (busy.ok, busy.attempts) == (True, 2)
    assert server.hits("/flaky/7.jpg") == 2


def test_no_retries_when_none_are_configured(server, make):
    result = make(retries=0).fetch(url(server, "/flaky/9.jpg"))
    assert (result.ok, result.error_category, result.status, result.attempts) == (False, "http_500", 500, 1)


def test_backoff_doubles(server, make, monkeypatch):
    waits = []
    monkeypatch.setattr(url_fetcher.time, "sleep", waits.append)
    result = make(retries=3, backoff_s=0.25).fetch(url(server, "/error"))
    assert result.attempts == 4 and waits == [0.25, 0.5, 1.0]


def test_redirects_are_followed(server, make):
    result = make().fetch(url(server, "/redirect/4.jpg"))
    assert result.ok and result.body == image_bytes(4)
    assert result.final_url == url(server, "/img/4.jpg")
    assert make().fetch(url(server, "/chain/5")).ok  # exactly max_redirects hops


def test_a_redirect_to_the_metadata_service_never_connects(server, make, connector):
    result = make().fetch(url(server, "/to-link-local"))
    assert result.error_category == "blocked_address" and "169.254.169.254" in result.error
    assert result.final_url == "http://169.254.169.254/latest/meta-data/"
    assert connector.seen == [LOOPBACK]


def test_loopback_needs_the_allow_list(server, make, connector):
    for target in (url(server, "/img/1.jpg"), url(server, "/img/1.jpg", host=LOOPBACK)):
        refused = make(allowed_addresses=()).fetch(target)
        assert (refused.error_category, refused.attempts) == ("blocked_address", 1)
        assert "loopback" in refused.error
        allowed = make(allowed_addresses=(LOOPBACK,)).fetch(target)
        assert allowed.ok and allowed.body == image_bytes(1)
    assert connector.seen == [LOOPBACK, LOOPBACK]  # only the allowed fetches connected


@pytest.mark.parametrize(
    "target",
    [
        "http://public.example/img.jpg",  # DNS answers a private address for a public-looking name
        "http://metadata.test/latest/meta-data/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "http://168.63.129.16/machine/",
        "http://[::1]:8080/",
        "http://[::ffff:127.0.0.1]:8080/",
        "http://v6-loopback.test/",
        "http://mapped.test/",
        "http://10.0.0.1/",
    ],
)
def test_non_public_destinations_are_blocked_before_connecting(make, connector, target):
    result = make().fetch(target)  # 127.0.0.1 is allow-listed: only that exact address may pass
    assert (result.error_category, result.attempts) == ("blocked_address", 1), result.error
    assert connector.seen == []


def test_only_checked_addresses_are_contacted(server, make, connector):
    result = make().fetch(url(server, "/img/2.jpg", host="mixed.test"))
    assert result.ok and result.body == image_bytes(2)
    assert connector.seen == [LOOPBACK]


@pytest.mark.parametrize(
    "target, category",
    [
        ("not a url", "invalid_url"),
        ("ftp://images.test/a.jpg", "invalid_url"),
        ("http:///a.jpg", "invalid_url"),
        ("http://images.test:99999/a.jpg", "invalid_url"),
        (None, "invalid_url"),
        ("http://nowhere.test/a.jpg", "dns"),
    ],
)
def test_bad_urls_and_names_fail_without_retries(make, connector, target, category):
    result = make().fetch(target)
    assert (result.ok, result.error_category, result.attempts) == (False, category, 1)
    assert connector.seen == []


def test_a_refused_connection_is_retried(make):
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]  # closed again before the fetch: nothing listens there
    result = make().fetch(f"http://images.test:{port}/a.jpg")
    assert (result.error_category, result.attempts) == ("connection", 3)


def test_bodies_over_max_bytes_are_refused(server, make):
    result = make(max_bytes=100).fetch(url(server, "/img/1.jpg"))
    assert (result.error_category, result.attempts, result.body) == ("too_large", 1, None)


def test_the_user_agent_is_sent(server, make):
    assert make(user_agent="tvp-test/9.9 (+https://example.invalid)").fetch(url(server, "/img/3.jpg")).ok
    assert server.last_user_agent == "tvp-test/9.9 (+https://example.invalid)"


def test_opt_out_is_honoured_unless_disabled(server, make):
    assert make().fetch(url(server, "/optout.jpg")).error_category == "opted_out"
    assert make(honour_opt_out=False).fetch(url(server, "/optout.jpg")).body == image_bytes(0)
    assert make().fetch(url(server, "/optout.jpg?tag=otherbot:%20noai")).ok
    assert make().fetch(url(server, "/optout.jpg?tag=tvp:%20noimageai")).error_category == "opted_out"
    two_headers = url(server, "/optout.jpg?tag=max-image-preview:large&tag=NoImageIndex")
    assert make().fetch(two_headers).error_category == "opted_out"


@pytest.mark.parametrize(
    "values, out",
    [
        (["noai"], True),
        (["NOIMAGEAI"], True),
        (["nofollow, noindex"], True),
        (["nofollow noimageindex"], True),
        (["nofollow", "noai"], True),
        (["*: noai"], True),
        (["tvp: noai"], True),
        (["otherbot: noai"], False),
        (["otherbot: nofollow, noai"], False),  # the prefix covers the rest of that header
        (["otherbot: nofollow", "noai"], True),
        (["max-snippet: 20, noindex"], True),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], False),
        (["nofollow", "max-image-preview:large"], False),
        ([], False),
    ],
)
def test_x_robots_tag_parsing(values, out):
    assert opted_out(values, "tvp") is out


def test_config_and_fetcher_pickle():
    config = FetchConfig(allowed_addresses=("10.0.0.0/8",), backoff_s=0.1)
    assert pickle.loads(pickle.dumps(config)) == config
    fetcher = pickle.loads(pickle.dumps(UrlFetcher(config)))
    assert fetcher.config == config and fetcher.guard.allowed == ("10.0.0.0/8",)


# --- HTTPS: the socket goes to the checked IP, the certificate is checked against the host name ---


def _self_signed(tmp_path, name: str):
    from cryptography import x509  # installed with moto, a test dependency
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_file), str(key_file)


def test_https_verifies_the_original_host_name(tmp_path, connector):
    cert, key = _self_signed(tmp_path, "images.test")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    config = FetchConfig(timeout_s=2.0, retries=0, allowed_addresses=(LOOPBACK,))
    trusting = UrlFetcher(config, resolve, connector, tls_context=ssl.create_default_context(cafile=cert))
    with ImageServer(tls_context=server_tls) as srv:
        good = trusting.fetch(f"https://images.test:{srv.port}/img/6.jpg")
        assert good.ok and good.body == image_bytes(6)
        wrong_name = trusting.fetch(f"https://mixed.test:{srv.port}/img/6.jpg")
        untrusted = UrlFetcher(config, resolve, connector).fetch(f"https://images.test:{srv.port}/img/6.jpg")
    assert wrong_name.error_category == "tls" and untrusted.error_category == "tls"
    assert set(connector.seen) == {LOOPBACK}


def test_a_slow_name_lookup_counts_against_the_deadline(connector):
    """A resolver that does not answer is the request's timeout, not a task stuck in getaddrinfo."""
    answered = threading.Event()

    def stuck(host: str, port: int):
        answered.wait(timeout=30)  # released when the test ends
        return [LOOPBACK]

    fetcher = UrlFetcher(FetchConfig(timeout_s=0.3, retries=1, backoff_s=0.001), resolver=stuck, connector=connector)
    try:
        result = fetcher.fetch("http://slow-dns.test/a.jpg")
    finally:
        answered.set()
    assert (result.ok, result.error_category, result.attempts) == (False, "timeout", 2)
    assert connector.seen == []
