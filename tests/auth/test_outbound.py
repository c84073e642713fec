"""`portal.outbound.fetch_json`, the SSRF-safe fetcher of client metadata documents.

Nothing here leaves the machine: documents are served on 127.0.0.1, and names are
resolved by stub resolvers; refused addresses are refused before any connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from auth_support import Running, serve_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from portal.outbound import OutboundFailed, OutboundRefused, Resolver, check_address, fetch_json


@pytest.fixture
async def documents() -> AsyncIterator[Running]:
    def build(base: str) -> Starlette:
        async def doc(request: Request) -> Response:
            return JSONResponse({"client_id": f"{base}/doc.json", "ok": True})

        async def hop(request: Request) -> Response:
            n = int(request.path_params["n"])
            return RedirectResponse("/doc.json" if n == 0 else f"/hop/{n - 1}", status_code=302)

        async def away(request: Request) -> Response:
            return RedirectResponse("https://private.example/doc.json", status_code=302)

        async def big(request: Request) -> Response:
            return JSONResponse({"pad": "x" * 200_000})

        async def html(request: Request) -> Response:
            return Response("<html>", media_type="text/html")

        return Starlette(
            routes=[
                Route("/doc.json", doc),
                Route("/hop/{n}", hop),
                Route("/away", away),
                Route("/big", big),
                Route("/html", html),
            ]
        )

    running = await serve_app(build)
    try:
        yield running
    finally:
        await running.stop()


def stub(mapping: dict[str, list[str]]) -> tuple[Resolver, list[str]]:
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        if host not in mapping:
            raise OSError("unknown")
        return mapping[host]

    return resolve, asked


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # shared address space (CGNAT)
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "127.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:10.0.0.1",  # IPv4-mapped
        "::ffff:127.0.0.1",
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "2002:a00:1::",  # 6to4 of 10.0.0.1
    ],
)
def test_a_private_reserved_or_loopback_address_is_refused(address: str) -> None:
    with pytest.raises(OutboundRefused):
        check_address(address, allow_loopback=False)


def test_a_public_address_is_allowed() -> None:
    assert str(check_address("93.184.215.14", allow_loopback=False)) == "93.184.215.14"
    assert str(check_address("2606:4700::1111", allow_loopback=False)) == "2606:4700::1111"


async def test_a_name_that_resolves_to_a_private_address_is_refused_before_connecting() -> None:
    resolver, asked = stub({"cimd.example": ["93.184.215.14", "10.1.2.3"]})
    with pytest.raises(OutboundRefused, match="private"):
        await fetch_json("https://cimd.example/client.json", resolver=resolver)
    assert asked == ["cimd.example"]


async def test_a_decimal_spelling_of_loopback_is_judged_by_what_it_resolves_to() -> None:
    # 2130706433 is 127.0.0.1; the system resolver turns it into that without any network.
    with pytest.raises(OutboundRefused, match="loopback"):
        await fetch_json("https://2130706433/client.json")


async def test_plain_http_and_odd_urls_are_refused() -> None:
    resolver, _ = stub({"cimd.example": ["93.184.215.14"]})
    for url in (
        "http://cimd.example/client.json",
        "ftp://cimd.example/client.json",
        "https://user:pw@cimd.example/client.json",
    ):
        with pytest.raises(OutboundRefused):
            await fetch_json(url, resolver=resolver)


async def test_loopback_is_fetched_only_when_allowed(documents: Running) -> None:
    assert (await fetch_json(f"{documents.base}/doc.json", allow_loopback=True))["ok"] is True
    with pytest.raises(OutboundRefused):
        await fetch_json(f"{documents.base}/doc.json")


async def test_the_connection_goes_to_the_checked_address_even_if_dns_changes(documents: Running) -> None:
    # DNS rebinding: the first answer passes the check, a second one would not. There is no second.
    port = documents.base.rsplit(":", 1)[1]
    answers = [["127.0.0.1"], ["10.0.0.1"]]
    asked: list[str] = []

    async def rebinding(host: str, _port: int) -> list[str]:
        asked.append(host)
        return answers.pop(0)

    body = await fetch_json(f"http://rebind.test:{port}/doc.json", allow_loopback=True, resolver=rebinding)
    assert body["ok"] is True
    assert asked == ["rebind.test"]


async def test_redirects_are_followed_hop_by_hop_and_at_most_three(documents: Running) -> None:
    assert (await fetch_json(f"{documents.base}/hop/2", allow_loopback=True))["ok"] is True
    with pytest.raises(OutboundRefused, match="redirects"):
        await fetch_json(f"{documents.base}/hop/3", allow_loopback=True)


async def test_a_redirect_to_a_private_address_is_refused(documents: Running) -> None:
    port = documents.base.rsplit(":", 1)[1]
    resolver, asked = stub({"docs.test": ["127.0.0.1"], "private.example": ["10.9.8.7"]})
    with pytest.raises(OutboundRefused, match="private"):
        await fetch_json(f"http://docs.test:{port}/away", allow_loopback=True, resolver=resolver)
    assert asked == ["docs.test", "private.example"]


async def test_a_large_or_non_json_document_is_refused(documents: Running) -> None:
    with pytest.raises(OutboundRefused, match="larger"):
        await fetch_json(f"{documents.base}/big", allow_loopback=True, max_bytes=10_000)
    with pytest.raises(OutboundFailed, match="JSON"):
        await fetch_json(f"{documents.base}/html", allow_loopback=True)
