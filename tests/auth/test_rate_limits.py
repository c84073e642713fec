"""Rate limits of the login form and the token-side endpoints (`portal.auth.ratelimit`, `[auth]` settings).

- The login form takes `login_attempts_per_minute` posts per user name and client IP, and
  `login_attempts_per_minute_per_ip` per client IP whatever the names; more get the form again with HTTP 429
  and `Retry-After`, and the password is not even checked.
- `/oauth/token` (and `/oauth/register`) take `token_requests_per_minute` per client IP; more get HTTP 429,
  `Retry-After` and the OAuth error `slow_down`, still with the CORS header browser clients need to read it.
- The buckets refill with time (a stub clock here), and their table stays bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from auth_support import PASSWORD, PortalUnderTest, form_fields, start_portal

from portal.auth.ratelimit import RateLimiter
from portal.auth.settings import AuthSettings, parse_auth_settings
from portal.errors import ConfigError

# --- The buckets ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_lets_a_burst_through_then_one_request_per_interval() -> None:
    clock = Clock()
    limit = RateLimiter(6, clock=clock)  # a burst of 6, then one every 10 s
    assert [limit.take("ip") for _ in range(6)] == [0.0] * 6
    wait = limit.take("ip")
    assert wait == pytest.approx(10.0)
    assert RateLimiter.retry_after(wait) == "10"
    assert limit.take("other") == 0.0  # buckets are per key
    clock.now += 9.5
    assert limit.take("ip") == pytest.approx(0.5)
    assert RateLimiter.retry_after(0.5) == "1"
    clock.now += 0.5
    assert limit.take("ip") == 0.0
    assert limit.take("ip") > 0
    clock.now += 3600  # refilled, but never above the burst
    assert [limit.take("ip") for _ in range(7)].count(0.0) == 6


def test_zero_turns_a_limit_off() -> None:
    limit = RateLimiter(0)
    assert all(limit.take("ip") == 0.0 for _ in range(1000))


def test_the_table_of_buckets_stays_bounded() -> None:
    clock = Clock()
    limit = RateLimiter(5, max_keys=100, clock=clock)
    for n in range(1000):
        limit.take(("user", n))
    assert len(limit._buckets) <= 100
    # A key that was refused recently is among the most recent, so it is kept.
    for _ in range(6):
        limit.take("attacker")
    for n in range(50):
        limit.take(("filler", n))
    assert limit.take("attacker") > 0


def test_the_settings() -> None:
    settings = parse_auth_settings({"login_attempts_per_minute": 3, "token_requests_per_minute": 0}, {})
    assert settings.login_attempts_per_minute == 3
    assert settings.token_requests_per_minute == 0
    assert settings.login_attempts_per_minute_per_ip == AuthSettings().login_attempts_per_minute_per_ip == 30
    assert parse_auth_settings({}, {"PORTAL_AUTH_TOKEN_REQUESTS_PER_MINUTE": "7"}).token_requests_per_minute == 7
    with pytest.raises(ConfigError):
        parse_auth_settings({"login_attempts_per_minute": -1}, {})


# --- Over HTTP -----------------------------------------------------------------------------------------


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[PortalUnderTest]:
    auth = AuthSettings(
        grants={"alice": ("tools:*",)},
        login_attempts_per_minute=3,
        login_attempts_per_minute_per_ip=6,
        token_requests_per_minute=4,
    )
    running = await start_portal(tmp_path, auth=auth, users=(("alice", ()), ("bob", ())))
    try:
        yield running
    finally:
        await running.stop()


async def _login(http: aiohttp.ClientSession, p: PortalUnderTest, user: str, password: str) -> tuple[int, str, str]:
    async with http.get(p.url("/login")) as page:
        fields = dict(form_fields(await page.text()))
    form = {"csrf_token": fields["csrf_token"], "next": "", "username": user, "password": password}
    async with http.post(p.url("/login"), data=form, allow_redirects=False) as response:
        return response.status, response.headers.get("Retry-After", ""), await response.text()


async def test_login_attempts_are_limited_per_user_and_ip(limited: PortalUnderTest) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        statuses = [(await _login(http, limited, "alice", "wrong"))[0] for _ in range(3)]
        assert statuses == [401, 401, 401]
        status, retry, page = await _login(http, limited, "alice", PASSWORD)  # even the right password
        assert status == 429
        assert 1 <= int(retry) <= 20
        assert "Too many login attempts" in page
        assert len(limited.kinds("login", "failure")) == 3  # the refused attempt never reached the password check
        assert not limited.kinds("login", "success")
        # Another user name from the same IP has its own bucket, until the IP's own limit (6) runs out.
        assert (await _login(http, limited, "bob", "wrong"))[0] == 401
        assert (await _login(http, limited, "bob", PASSWORD))[0] == 200
        status, retry, _ = await _login(http, limited, "carol", "wrong")
        assert status == 429 and retry


async def test_token_requests_are_limited_per_ip_with_slow_down(limited: PortalUnderTest) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(4):
            async with http.post(limited.url("/oauth/token"), data={"grant_type": "client_credentials"}) as response:
                assert response.status in (400, 401)
        async with http.post(limited.url("/oauth/token"), data={"grant_type": "client_credentials"}) as response:
            assert response.status == 429
            assert int(response.headers["Retry-After"]) >= 1
            assert response.headers["Cache-Control"] == "no-store"
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            body = await response.json()
        assert body["error"] == "slow_down"
        # Registration has a bucket of its own.
        async with http.post(limited.url("/oauth/register"), json={"redirect_uris": ["http://127.0.0.1:1/cb"]}) as r:
            assert r.status != 429
