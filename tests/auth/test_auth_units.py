"""The small parts: `[auth]` settings, the capability lattice, resources, sessions and CSRF."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import Response

from portal.auth.capabilities import intersect, is_resource, minimal, operator_grants
from portal.auth.crypto import MasterKey
from portal.auth.sessions import Sessions
from portal.auth.settings import AuthSettings
from portal.auth.web import safe_next
from portal.errors import ConfigError
from portal.settings import load_settings

FULL = """
[portal]
public_url = "https://portal.example"

[auth]
access_token_ttl = 120
refresh_token_ttl = 3600
master_key = "env:PORTAL_MASTER"
allow_loopback_http = true

[auth.grants]
demo = ["tools:*", "codemode"]

[auth.group_grants]
eng = ["tools:github", "tools:notes:get_note"]

[[auth.providers]]
name = "corp"
issuer = "https://login.example.com/"
client_id = "portal"
client_secret = "env:CORP_SECRET"
groups_claim = "roles"

[[auth.clients]]
client_id = "nightly"
client_secret = "file:/run/secrets/nightly"
scopes = ["tools:notes"]
introspect = true
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "portal.toml"
    path.write_text(text)
    return path


def test_the_auth_section_is_read_with_its_tables(tmp_path: Path) -> None:
    auth = load_settings(write(tmp_path, FULL), env={}).auth
    assert auth.access_token_ttl == 120 and auth.refresh_token_ttl == 3600 and auth.max_minted_ttl == 86400
    assert auth.master_key == "env:PORTAL_MASTER" and auth.allow_loopback_http is True
    assert auth.grants == {"demo": ("tools:*", "codemode")}
    assert auth.group_grants["eng"] == ("tools:github", "tools:notes:get_note")
    (corp,) = auth.providers
    assert corp.issuer == "https://login.example.com/" and corp.groups_claim == "roles"
    assert corp.scopes == ("openid", "profile", "email")
    nightly = auth.client("nightly")
    assert nightly is not None and nightly.introspect and nightly.scopes == ("tools:notes",)


def test_defaults_without_an_auth_section(tmp_path: Path) -> None:
    auth = load_settings(write(tmp_path, "[portal]\n"), env={}).auth
    assert auth == AuthSettings()
    assert auth.access_token_ttl == 300 and auth.local_users and auth.registration


def test_environment_variables_override_scalar_fields(tmp_path: Path) -> None:
    env = {"PORTAL_AUTH_ACCESS_TOKEN_TTL": "60", "PORTAL_AUTH_LOCAL_USERS": "false"}
    auth = load_settings(write(tmp_path, FULL), env=env).auth
    assert auth.access_token_ttl == 60 and auth.local_users is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[auth]\ntoken_ttl = 5\n", "unknown keys token_ttl"),
        ("[auth]\nmaster_key = 'abcdef'\n", "secret reference"),
        ("[auth]\naccess_token_ttl = 0\n", "positive"),
        ("[auth]\naccess_token_ttl = 90000\n", "must not exceed max_minted_ttl"),
        ("[auth.grants]\ndemo = ['tools:*', 'root']\n", "unknown capabilities root"),
        ("[[auth.clients]]\nclient_id = 'x'\nclient_secret = 'plain'\n", "secret reference"),
        ("[[auth.providers]]\nname = 'Corp'\nissuer = 'https://x'\nclient_id = 'a'\n", "name must match"),
        ("[[auth.providers]]\nname = 'corp'\nclient_id = 'a'\n", "issuer is required"),
        (
            "[[auth.providers]]\nname='a'\nissuer='https://x'\nclient_id='c'\n"
            "[[auth.providers]]\nname='a'\nissuer='https://y'\nclient_id='c'\n",
            "duplicate names a",
        ),
    ],
)
def test_invalid_auth_settings_are_refused_with_a_message(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, text), env={})


@pytest.mark.parametrize(
    ("asked", "granted", "result"),
    [
        ({"tools:*"}, {"tools:notes"}, {"tools:notes"}),
        ({"tools:notes"}, {"tools:*"}, {"tools:notes"}),
        ({"tools:notes:get"}, {"tools:notes"}, {"tools:notes:get"}),
        ({"tools:notes"}, {"tools:notes:get", "tools:docs"}, {"tools:notes:get"}),
        ({"tools:*", "codemode"}, {"codemode"}, {"codemode"}),
        ({"admin"}, {"audit:read"}, {"audit:read"}),
        ({"audit:read"}, {"admin"}, {"audit:read"}),
        ({"codemode"}, {"tools:*"}, set()),
        ({"tools:notes-archive"}, {"tools:notes"}, set()),
    ],
)
def test_the_intersection_of_capabilities_is_their_meet_never_wider(
    asked: set[str], granted: set[str], result: set[str]
) -> None:
    assert intersect(asked, granted) == result
    assert intersect(granted, asked) == result


def test_minimal_drops_what_is_already_covered() -> None:
    assert minimal({"tools:*", "tools:notes", "tools:notes:get", "codemode"}) == {"tools:*", "codemode"}


def test_operator_grants_combine_user_and_groups() -> None:
    auth = AuthSettings(grants={"ann": ("codemode",)}, group_grants={"eng": ("tools:notes",), "ops": ("tools:*",)})
    assert operator_grants(auth, "ann", ["eng"]) == {"codemode", "tools:notes"}
    assert operator_grants(auth, "ann", ["eng", "ops"]) == {"codemode", "tools:*"}
    assert operator_grants(auth, "bob", []) == frozenset()


@pytest.mark.parametrize(
    ("resource", "ok"),
    [
        ("https://p.example/mcp", True),
        ("https://p.example/codemode/mcp", True),
        ("https://p.example/api", True),
        ("https://p.example/servers/notes/mcp", True),
        ("https://p.example/servers/Notes/mcp", False),
        ("https://p.example/servers/a/b/mcp", False),
        ("https://p.example/mcp/", False),
        ("https://p.example/mcp?x=1", False),
        ("https://p.example/mcp#f", False),
        ("https://p.example.evil/mcp", False),
        ("http://p.example/mcp", False),
        ("https://p.example/healthz", False),
    ],
)
def test_a_resource_must_name_one_portal_endpoint_exactly(resource: str, ok: bool) -> None:
    assert is_resource("https://p.example", resource) is ok


def request_with(cookies: dict[str, str], headers: dict[str, str] | None = None) -> Request:
    raw = [(b"cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw, "query_string": b""})


def cookies_of(response: Response) -> dict[str, str]:
    out = {}
    for key, value in response.raw_headers:
        if key == b"set-cookie":
            name, _, rest = value.decode().partition("=")
            out[name] = rest.split(";")[0]
    return out


def test_sessions_on_https_use_secure_host_only_cookies() -> None:
    sessions = Sessions(MasterKey(b"k" * 32), public_url="https://p.example", ttl=60)
    response = Response()
    sessions.login(response, "alice")
    header = dict(response.headers)["set-cookie"]
    assert header.startswith("__Host-portal_session=")
    assert "Secure" in header and "HttpOnly" in header and "SameSite=lax" in header and "Path=/" in header
    session = sessions.read(request_with(cookies_of(response)))
    assert session is not None and session.subject == "alice"


def test_a_tampered_or_foreign_session_cookie_is_ignored() -> None:
    sessions = Sessions(MasterKey(b"k" * 32), public_url="http://127.0.0.1:1", ttl=60)
    other = Sessions(MasterKey(b"o" * 32), public_url="http://127.0.0.1:1", ttl=60)
    response = Response()
    other.login(response, "alice")
    assert sessions.read(request_with(cookies_of(response))) is None
    sessions.login(response := Response(), "alice")
    value = cookies_of(response)["portal_session"]
    assert sessions.read(request_with({"portal_session": value[:-2] + "AA"})) is None


def test_csrf_tokens_belong_to_one_browser_and_one_origin() -> None:
    sessions = Sessions(MasterKey(b"k" * 32), public_url="http://127.0.0.1:1", ttl=60)
    browser, cookie = sessions.ensure_browser(request_with({}))
    assert cookie is not None
    token = sessions.csrf_token(browser)
    jar = {"portal_browser": cookie}
    assert sessions.check_csrf(request_with(jar), token)
    assert sessions.check_csrf(request_with(jar, {"Origin": "http://127.0.0.1:1"}), token)
    assert not sessions.check_csrf(request_with(jar, {"Origin": "https://evil.example"}), token)
    assert not sessions.check_csrf(request_with({}), token)
    other, _ = sessions.ensure_browser(request_with({}))
    assert not sessions.check_csrf(request_with(jar), sessions.csrf_token(other))


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("/consent?client_id=x", True),
        ("/oauth/authorize?x=1", True),
        ("https://evil.example/", False),
        ("//evil.example/consent?x", False),
        ("/consent", False),
        ("/\\evil.example", False),
        (None, False),
    ],
)
def test_after_login_the_browser_only_goes_back_into_an_authorization(value: str | None, ok: bool) -> None:
    assert (safe_next(value) is not None) is ok
