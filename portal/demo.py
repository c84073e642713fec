"""`portal demo`: the example portal in a data folder of its own, with its companion server.

The demo runs `examples/portal.toml` without writing next to it: the configuration
is copied into a data folder (a fresh temporary one unless the user names one),
with every relative path made absolute, the database moved into the folder and the
public URL matching the address served. The example's remote server, `clock`, is
"somewhere on the network"; the demo starts it as a companion process on loopback.

People log in as the local user `demo`, whom `[auth.grants]` of the example lets use
every tool. Their password is generated once per data folder and kept in it
(`demo-password`, readable by its owner only), so a demo run again on the same folder
keeps its login.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urlsplit

from portal.auth.crypto import KEY_FILE_NAME
from portal.errors import ConfigError, PortalError
from portal.settings import Settings
from portal.toml_writer import dumps

__all__ = [
    "COMPANIONS",
    "DEMO_USER",
    "EXAMPLE_CONFIG",
    "PASSWORD_FILE",
    "REPO_ROOT",
    "Companion",
    "DemoLogin",
    "companions_for",
    "ensure_demo_user",
    "prepare_demo",
    "public_url_for",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = REPO_ROOT / "examples" / "portal.toml"

COMPANIONS = {"clock": "servers.clock"}
"""Remote servers of the example that the demo runs itself: server name -> module (`python -m`)."""

START_TIMEOUT = 30.0
"""Seconds a companion may take to accept connections (importing the MCP SDK is slow on a cold disk)."""

DEMO_USER = "demo"
"""The local user people log in as; `[auth.grants]` of the example grants it every tool."""
PASSWORD_FILE = "demo-password"
"""The file of the data folder that keeps the demo user's password."""


def public_url_for(host: str, port: int) -> str:
    """The URL a local client uses to reach a portal listening on `host`:`port`."""
    if host in ("", "0.0.0.0", "::"):
        # Listening everywhere; loopback is the address that surely reaches it from this machine.
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def prepare_demo(data_dir: Path, *, host: str, port: int, example: Path | None = None) -> Path:
    """Write `data_dir/portal.toml` from the example; returns its path."""
    example = EXAMPLE_CONFIG if example is None else example
    if not example.is_file():
        raise ConfigError(f"the demo needs {example}, which is missing (is this a full checkout of the portal?)")
    base = example.resolve().parent
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    raw = tomllib.loads(example.read_text())

    portal = dict(raw.get("portal", {}))
    portal["public_url"] = public_url_for(host, port)
    portal["database_url"] = f"sqlite:///{data_dir / 'portal.db'}"
    if "policies_dir" in portal:
        portal["policies_dir"] = _absolute(base, portal["policies_dir"])
    if "session_secret" in portal:
        portal["session_secret"] = _absolute_reference(base, portal["session_secret"])
    raw["portal"] = portal
    auth = dict(raw.get("auth", {}))
    if "master_key" in auth:
        auth["master_key"] = _absolute_reference(base, auth["master_key"])
    else:
        # The key that encrypts the demo's signing keys, made once per data folder and kept in it.
        auth["master_key"] = f"file:{_master_key_file(data_dir)}"
    raw["auth"] = auth
    raw["servers"] = [_absolute_server(base, server) for server in raw.get("servers", [])]

    config = data_dir / "portal.toml"
    config.write_text(dumps(raw, header=f"Written by `portal demo` from {example.resolve()}; rewritten on every run."))
    return config


@dataclass(frozen=True)
class DemoLogin:
    """How a person logs in to the demo, and how a script gets a token."""

    user: str
    password: str | None
    """None when the user exists but its password file is gone (the password is then unknown)."""
    password_file: Path

    def mint_command(self, data_dir: Path, public_url: str) -> str:
        return f"portal tokens mint --data {data_dir} --user {self.user} --resource {public_url}/mcp"


def ensure_demo_user(settings: Settings, data_dir: Path) -> DemoLogin:
    """The local user `demo` of the demo's database, created with a password generated for this data folder.

    The password is kept in `data_dir/demo-password` (mode 0600); a later run on the same folder reads it
    back instead of making a new one.
    """
    # Imported here: `portal demo` is the only command that needs the authorization server's tables.
    from portal.auth.users import Users
    from portal.db import create_engine, init_db

    password_file = data_dir / PASSWORD_FILE
    engine = create_engine(settings)
    try:
        init_db(engine)
        users = Users(engine)
        if users.get(DEMO_USER) is not None:
            known = password_file.read_text().strip() if password_file.is_file() else None
            return DemoLogin(DEMO_USER, known or None, password_file)
        password = secrets.token_urlsafe(12)
        descriptor = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(password + "\n")
        users.add(DEMO_USER, password, [])
        return DemoLogin(DEMO_USER, password, password_file)
    finally:
        engine.dispose()


def _master_key_file(data_dir: Path) -> Path:
    path = data_dir / KEY_FILE_NAME
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
    return path


def _absolute(base: Path, value: str) -> str:
    return str((base / value).resolve())


def _absolute_reference(base: Path, reference: str) -> str:
    # `file:` references are relative to the directory of portal.toml, which the copy leaves.
    kind, _, target = reference.partition(":")
    return f"file:{_absolute(base, target)}" if kind == "file" and target else reference


def _absolute_server(base: Path, server: dict[str, Any]) -> dict[str, Any]:
    server = dict(server)
    if "command" in server:
        # A stdio server's working directory defaults to the directory of portal.toml: pin the example's.
        server["cwd"] = _absolute(base, server.get("cwd", "."))
    if "env" in server:
        server["env"] = {key: _absolute_reference(base, value) for key, value in server["env"].items()}
    return server


def companions_for(settings: Settings, log_dir: Path) -> list[Companion]:
    """The companion processes the demo's configuration needs (not started)."""
    out = []
    for server in settings.servers:
        module = COMPANIONS.get(server.name)
        if module is None or server.url is None or not server.enabled:
            continue
        url = urlsplit(server.url)
        if url.port is None:
            raise ConfigError(f"server '{server.name}': the demo needs an explicit port in {server.url}")
        out.append(Companion(server.name, module, url.port, url.path or "/mcp", log_dir / f"{server.name}.log"))
    return out


class Companion:
    """One `python -m MODULE --http` subprocess on loopback, stopped on exit."""

    def __init__(self, name: str, module: str, port: int, path: str, log_path: Path) -> None:
        self.name = name
        self.module = module
        self.port = port
        self.path = path
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def __enter__(self) -> Companion:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the process and wait until it accepts TCP connections."""
        if _accepts(self.port):
            raise PortalError(
                f"port {self.port} is already in use, and the demo's '{self.name}' server needs it "
                "(is another demo running?)"
            )
        command = [sys.executable, "-m", self.module, "--http", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--path", self.path]
        self._log = self.log_path.open("ab")
        # The repository root as working directory makes `servers` importable without installing.
        self._process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while not _accepts(self.port):
            if self._process.poll() is not None:
                self.stop()
                raise PortalError(f"the demo's '{self.name}' server exited at start; see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise PortalError(f"the demo's '{self.name}' server did not start in {timeout:g}s; see {self.log_path}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the process (politely, then firmly); safe to call twice."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
