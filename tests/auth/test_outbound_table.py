"""A table of SSRF attempts that `portal.outbound.fetch_json` must refuse, before any connection.

Nothing leaves the machine: names are answered by a stub resolver, the one document server is on
127.0.0.1, and for the refused attempts the function that would connect (`_get`) is replaced by one
that fails the test if it is ever reached. Hosts that spell an address (in any of the forms the C
library accepts) are judged as that address without asking the resolver at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from urllib.parse import quote

import pytest
from auth_support import Running, serve_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

import portal.outbound as outbound
from portal.outbound import OutboundRefused, check_url, fetch_json, literal_address

PUBLIC = "93.184.215.14"

NAMES = {
    "public.example": [PUBLIC],
    "internal.example": ["10.0.0.5"],
    "metadata.example": ["169.254.169.254"],
    "mixed.example": [PUBLIC, "192.168.1.1"],
    "ula.example": [PUBLIC, "fd00::1"],
    "127.0.0.1.nip.io": ["127.0.0.1"],
    "mapped.example": ["::ffff:10.0.0.1"],
    "cgnat.example": ["100.100.100.100"],
    # A resolver that lies about numeric hosts must not matter: they are never asked about.
    "2130706433": [PUBLIC],
    "0x7f.1": [PUBLIC],
}


class Stub:
    """A resolver answering from `NAMES` and recording what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host not in NAMES:
            raise OSError(f"no such name {host}")
        return NAMES[host]


@pytest.fixture
def no_connection(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    async def connect(*args: object) -> None:
        raise AssertionError(f"a refused URL was about to be fetched: {args}")

    monkeypatch.setattr(outbound, "_get", connect)
    yield


# (url, whether the resolver may be asked, why it is refused)
REFUSED = [
    # Cloud metadata services.
    ("https://169.254.169.254/latest/meta-data/", False, "AWS/GCP/Azure metadata (IPv4)"),
    ("https://[fd00:ec2::254]/latest/meta-data/", False, "AWS metadata (IPv6)"),
    ("https://metadata.example/computeMetadata/v1/", True, "a name for the metadata address"),
    # Other spellings of loopback and metadata.
    ("https://2130706433/", False, "127.0.0.1 as one decimal number"),
    ("https://0x7f.1/", False, "127.0.0.1 in hex, two parts"),
    ("https://0177.0.0.1/", False, "127.0.0.1 in octal"),
    ("https://0x7f000001/", False, "127.0.0.1 as one hex number"),
    ("https://127.1/", False, "127.0.0.1, two parts"),
    ("https://0xa9.0xfe.0xa9.0xfe/", False, "169.254.169.254 in hex"),
    ("https://127.0.0.1./", False, "trailing dot"),
    ("https://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", False, "127.0.0.1 in full-width digits (IDNA maps them)"),
    ("https://[::ffff:127.0.0.1]/", False, "IPv4-mapped loopback"),
    ("https://[::ffff:169.254.169.254]/", False, "IPv4-mapped metadata"),
    ("https://[::127.0.0.1]/", False, "IPv4-compatible loopback"),
    ("https://[64:ff9b::a9fe:a9fe]/", False, "NAT64 of the metadata address"),
    ("https://[2002:a9fe:a9fe::]/", False, "6to4 of the metadata address"),
    # Unspecified, private, shared and reserved ranges.
    ("https://0.0.0.0/", False, "unspecified"),
    ("https://0/", False, "0 is 0.0.0.0"),
    ("https://[::]/", False, "IPv6 unspecified"),
    ("https://10.1.2.3/", False, "10/8"),
    ("https://172.16.0.1/", False, "172.16/12, bottom"),
    ("https://172.31.255.254/", False, "172.16/12, top"),
    ("https://192.168.0.1/", False, "192.168/16"),
    ("https://100.64.0.1/", False, "100.64/10 shared address space (CGNAT)"),
    ("https://169.254.1.1/", False, "IPv4 link-local"),
    ("https://192.0.0.8/", False, "IETF protocol assignments"),
    ("https://198.18.0.1/", False, "benchmarking"),
    ("https://224.0.0.1/", False, "multicast"),
    ("https://255.255.255.255/", False, "broadcast"),
    ("https://[fe80::1]/", False, "IPv6 link-local"),
    ("https://[fc00::1]/", False, "IPv6 ULA"),
    ("https://[fd12:3456::1]/", False, "IPv6 ULA"),
    ("https://[fec0::1]/", False, "IPv6 site-local"),
    ("https://[::1]/", False, "IPv6 loopback"),
    ("https://127.0.0.1/", False, "IPv4 loopback"),
    # Names.
    ("https://localhost/", False, "localhost is loopback whatever DNS says"),
    ("https://api.localhost/", False, "*.localhost (RFC 6761)"),
    ("https://internal.example/", True, "a name resolving to 10/8"),
    ("https://mixed.example/", True, "one of the addresses is private"),
    ("https://ula.example/", True, "one of the addresses is IPv6 ULA"),
    ("https://127.0.0.1.nip.io/", True, "a wildcard DNS name for loopback"),
    ("https://mapped.example/", True, "a name resolving to an IPv4-mapped private address"),
    ("https://cgnat.example/", True, "a name resolving to CGNAT space"),
    # Schemes.
    ("http://public.example/client.json", True, "plain http without the development allowance"),
    ("file:///etc/passwd", False, "file"),
    ("gopher://127.0.0.1:70/_GET", False, "gopher"),
    ("ftp://public.example/x", False, "ftp"),
    ("dict://127.0.0.1:11211/stats", False, "dict"),
    # User info and parser confusion.
    ("https://good@127.0.0.1/", False, "user info before a loopback host"),
    ("https://public.example@127.0.0.1/", False, "a public name as user info"),
    ("https://user:pw@public.example/", False, "credentials in the URL"),
    ("https://public.example\\@127.0.0.1/", False, "backslash in the authority"),
    ("https:///client.json", False, "no host"),
    ("https://public.example:99999/", False, "port out of range"),
]


@pytest.mark.parametrize(("url", "resolves", "why"), REFUSED, ids=[why for _, _, why in REFUSED])
async def test_refused(url: str, resolves: bool, why: str, no_connection: None) -> None:
    stub = Stub()
    with pytest.raises(OutboundRefused):
        await fetch_json(url, resolver=stub)
    if not resolves:
        assert stub.asked == [], f"{why}: the resolver was asked about {stub.asked}"


def test_the_table_is_large_enough() -> None:
    assert len(REFUSED) >= 20


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.01", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("0", "0.0.0.0"),
        ("::ffff:7f00:1", "::ffff:7f00:1"),
        ("[fd00:ec2::254]", "fd00:ec2::254"),
        ("example.com", None),
        ("08.0.0.1", None),  # not octal: a name, as inet_aton sees it
        ("256.0.0.1", None),
        ("1.2.3.4.5", None),
    ],
)
def test_literal_addresses(host: str, address: str | None) -> None:
    found = literal_address(host)
    assert (str(found) if found is not None else None) == address


def test_the_url_checked_is_the_url_the_client_reads() -> None:
    parsed, host, port = check_url("https://PUBLIC.example:8443/a?b", allow_loopback=False)
    assert (host, port) == ("public.example", 8443)
    assert parsed.raw_host == host
    _, host, port = check_url("https://b\u00fccher.example/", allow_loopback=False)
    assert (host, port) == ("xn--bcher-kva.example", 443)


async def test_a_public_name_is_fetched_from_exactly_the_addresses_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str, list[str]]] = []

    async def connect(url: object, host: str, addresses: list[str], max_bytes: int) -> tuple[int, None, bytes]:
        calls.append((str(url), host, addresses))
        return 200, None, b'{"ok": true}'

    monkeypatch.setattr(outbound, "_get", connect)
    stub = Stub()
    assert await fetch_json("https://public.example/client.json", resolver=stub) == {"ok": True}
    assert calls == [("https://public.example/client.json", "public.example", [PUBLIC])]
    assert stub.asked == ["public.example"]


async def test_the_pinned_resolver_answers_for_its_host_only() -> None:
    resolver = outbound._PinnedResolver("public.example", [PUBLIC])
    assert [r["host"] for r in await resolver.resolve("public.example", 443)] == [PUBLIC]
    with pytest.raises(OSError):
        await resolver.resolve("elsewhere.example", 443)


# --- Redirects, from a document server on 127.0.0.1 (reached with the development allowance) -----------


@pytest.fixture
async def redirector() -> AsyncIterator[Running]:
    def build(base: str) -> Starlette:
        async def chain(request: Request) -> Response:
            n = int(request.path_params["n"])
            target = request.query_params["to"]
            return RedirectResponse(target if n == 0 else f"/chain/{n - 1}?to={target}", status_code=307)

        async def doc(request: Request) -> Response:
            return JSONResponse({"ok": True})

        return Starlette(routes=[Route("/chain/{n}", chain), Route("/doc.json", doc)])

    running = await serve_app(build)
    try:
        yield running
    finally:
        await running.stop()


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "https://169.254.169.254/latest/meta-data/",
        "https://0xa9.0xfe.0xa9.0xfe/",
        "https://internal.example/",
        "https://[::ffff:10.0.0.1]/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/",
        "https://user@public.example/",
        "http://public.example/",
    ],
)
async def test_a_redirect_chain_ending_at_a_refused_url_is_refused(redirector: Running, target: str) -> None:
    port = redirector.base.rsplit(":", 1)[1]
    NAMES["docs.test"] = ["127.0.0.1"]
    try:
        stub = Stub()
        with pytest.raises(OutboundRefused):
            url = f"http://docs.test:{port}/chain/2?to={quote(target, safe='')}"
            await fetch_json(url, allow_loopback=True, resolver=stub)
        # Every hop was checked: the document server's name three times (the pinned client never asks DNS).
        assert stub.asked[:3] == ["docs.test"] * 3
    finally:
        del NAMES["docs.test"]


async def test_without_the_allowance_even_the_first_loopback_hop_is_refused(
    redirector: Running, no_connection: None
) -> None:
    with pytest.raises(OutboundRefused):
        await fetch_json(f"{redirector.base}/doc.json")


async def test_a_redirect_chain_within_the_allowance_is_followed(redirector: Running) -> None:
    assert await fetch_json(f"{redirector.base}/chain/2?to=/doc.json", allow_loopback=True) == {"ok": True}
