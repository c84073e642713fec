"""Local MCP servers run as subprocesses, spoken to over stdio.

MCP basic/transports#stdio: newline-delimited JSON-RPC messages on the child's
stdin and stdout; stderr is the server's log. The SDK's stdio server serves both
eras on one pipe, the first request deciding which, so the usual era negotiation
applies. In the 2026 era the envelope rides every request and cancellation is
still `notifications/cancelled` (a pipe has no per-request stream to close).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson
from mcp.client.stdio import get_default_environment

from portal.errors import UpstreamError, UpstreamProtocolError, UpstreamUnavailable
from portal.upstream._rpc import Call, Protocol, RpcConnector, result_of
from portal.upstream.base import UpstreamInfo

__all__ = ["StdioConnector"]

logger = logging.getLogger("portal.upstream.stdio")

_READ_CHUNK: Final = 1 << 16
_MAX_LINE: Final = 64 * 1024 * 1024
_MAX_STDERR_LINE: Final = 4096
_listen_ids = itertools.count(1)


class StdioConnector(RpcConnector):
    """One MCP server the portal runs as a child process.

    `StdioConnector(name, command, args=(), *, env=None, cwd=None, protocol="auto",
    connect_timeout=10.0, grace=2.0, stderr_lines=200)`:

    - The child starts in a process group of its own, with only the safe part of the
      portal's environment (`HOME`, `PATH`, ... as the MCP SDK chooses) plus `env`, so
      the portal's own secrets never reach it.
    - stderr goes to a ring buffer of the last `stderr_lines` lines (`stderr_tail`) and
      to the `portal.upstream.stdio` logger at debug level.
    - `connect_timeout` bounds each negotiation step; `grace` is how long `close()`
      waits after closing stdin, then after SIGTERM, before escalating.

    Attributes: `name`, `command`, `args`, `protocol`, `info` (after `start`),
    `on_notification`, `pid`, `returncode`, `stderr_tail`, `listening` (an
    `asyncio.Event`, set while server notifications can arrive), `closed`.

    Methods: `start()`, `request(...)`, `close()` and `wait_closed()`. The process
    exiting for any reason fails every request in flight with `UpstreamUnavailable`
    ("... exited with status N"), sets `closed` and wakes `wait_closed()`; restarting
    it is the supervisor's job, by calling `start()` again (a new process) or by
    building a new connector.

    The pipe carries nothing that ties a notification to a request except progress
    tokens, so `notifications/progress` reaches the request's own handler and every
    other notification goes to `on_notification`.
    """

    def __init__(
        self,
        name: str,
        command: str,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        protocol: Protocol = "auto",
        connect_timeout: float = 10.0,
        grace: float = 2.0,
        stderr_lines: int = 200,
    ) -> None:
        super().__init__(name, protocol=protocol, connect_timeout=connect_timeout)
        self.command = command
        self.args = tuple(args)
        self._env = dict(env or {})
        self._cwd = cwd
        self._grace = grace
        self._stderr: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self._proc: asyncio.subprocess.Process | None = None
        self._stdin: asyncio.StreamWriter | None = None
        self._junk = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    @property
    def stderr_tail(self) -> list[str]:
        """The last lines the server wrote to stderr, oldest first."""
        return list(self._stderr)

    async def start(self) -> UpstreamInfo:
        """Start the process and negotiate the era with it."""
        if self._proc is not None and not self.closed:
            raise RuntimeError(f"connector {self.name!r} is already started")
        self._reset()
        self._junk = False
        self._stderr.clear()
        env = {**get_default_environment(), **self._env}
        try:
            proc = await asyncio.create_subprocess_exec(
                self.command,
                *self.args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=self._cwd,
                start_new_session=True,  # its own process group: signals reach its children too
            )
        except OSError as exc:
            self._mark_closed("could not be started")
            reason = "command not found" if isinstance(exc, FileNotFoundError) else exc.strerror or type(exc).__name__
            raise UpstreamUnavailable(self.name, f"could not be started: {reason}") from None
        self._proc, self._stdin = proc, proc.stdin
        assert proc.stdout is not None and proc.stderr is not None
        self._spawn(self._read_stdout(proc, proc.stdout))
        self._spawn(self._read_stderr(proc.stderr))
        self._spawn(self._pump_events())
        try:
            info = await self._negotiate()
        except UpstreamUnavailable:
            # Alive but silent, having written junk: it speaks something other than MCP.
            speaks_junk = self._junk and proc.returncode is None
            await self.close()
            if speaks_junk:
                raise UpstreamProtocolError(self.name, "writes something that is not JSON-RPC to stdout") from None
            raise
        except BaseException:
            await self.close()
            raise
        self.info = info
        if info.modern:
            self._spawn(self._listen())
        else:
            self.listening.set()  # stdout is the notification stream from the first byte
        return info

    async def close(self) -> None:
        """Stop the process (MCP basic/lifecycle#shutdown for stdio); idempotent."""
        self._mark_closed("is shut down")
        proc, stdin = self._proc, self._stdin
        if proc is not None:
            if proc.returncode is None:
                # The spec's order: close stdin and let it exit, then SIGTERM, then SIGKILL.
                if stdin is not None and not stdin.is_closing():
                    stdin.close()
                for sig in (None, signal.SIGTERM, signal.SIGKILL):
                    if sig is not None:
                        _signal_group(proc.pid, sig)
                    try:
                        async with asyncio.timeout(self._grace):
                            await proc.wait()
                        break
                    except TimeoutError:
                        continue
            _signal_group(proc.pid, signal.SIGTERM)  # what it started and left behind
        await self._cancel_tasks()

    # -- wire ----------------------------------------------------------------------------

    async def _roundtrip(self, call: Call) -> dict[str, Any]:
        call.future = asyncio.get_running_loop().create_future()
        await self._send(call.message)
        return result_of(self.name, await call.future)

    async def _bootstrap(self, call: Call, version: str | None) -> dict[str, Any]:
        return await self._roundtrip(call)

    async def _reply(self, message: dict[str, Any]) -> None:
        await self._send(message)

    def _cancel_upstream(self, call: Call, reason: str) -> None:
        # basic/utilities/cancellation, in both eras on a pipe.
        params = {"requestId": call.id, "reason": reason}
        self._write({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params})

    def _write(self, message: Mapping[str, Any]) -> None:
        stdin = self._stdin
        if stdin is None or stdin.is_closing() or self.closed:
            raise UpstreamUnavailable(self.name, self._closed_cause)
        # orjson never emits a raw newline, so one message is one line, as the transport requires.
        stdin.write(orjson.dumps(message) + b"\n")

    async def _send(self, message: Mapping[str, Any]) -> None:
        self._write(message)
        assert self._stdin is not None
        try:
            await self._stdin.drain()
        except (ConnectionError, RuntimeError):
            raise UpstreamUnavailable(self.name, self._closed_cause if self.closed else "stopped reading") from None

    async def _listen(self) -> None:
        """Hold `subscriptions/listen` open (2026-07-28 basic/utilities/subscriptions); re-open if it ends."""
        wanted = self._listen_filter()
        delay = 0.1
        while wanted and not self.closed:
            call_id = f"listen-{next(_listen_ids)}"
            params = {"notifications": wanted, "_meta": self._envelope}
            message = {"jsonrpc": "2.0", "id": call_id, "method": "subscriptions/listen", "params": params}
            call = Call(id=call_id, method="subscriptions/listen", message=message)
            call.future = asyncio.get_running_loop().create_future()
            self._pending[call_id] = call
            try:
                await self._send(message)
                result_of(self.name, await call.future)  # a result is the graceful end of the stream
            except UpstreamUnavailable:
                return
            except UpstreamError as exc:
                logger.warning("%s refused subscriptions/listen: %s", self.name, exc.cause)
                return
            finally:
                self._pending.pop(call_id, None)
                self.listening.clear()
            self._announce_on_ack = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    # -- the child's output --------------------------------------------------------------------

    async def _read_stdout(self, proc: asyncio.subprocess.Process, stdout: asyncio.StreamReader) -> None:
        buffer = bytearray()
        try:
            while chunk := await stdout.read(_READ_CHUNK):
                scanned = len(buffer)
                buffer += chunk
                start = 0
                while (end := buffer.find(b"\n", max(start, scanned))) >= 0:
                    await self._line(bytes(buffer[start:end]))
                    start = end + 1
                del buffer[:start]
                if len(buffer) > _MAX_LINE:
                    logger.error("%s wrote a line longer than %d bytes; stopping it", self.name, _MAX_LINE)
                    break
        finally:
            await self._exited(proc)

    async def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            self._junk = True
            logger.warning("%s wrote a line that is not JSON-RPC to stdout; ignored", self.name)
            return
        try:
            await self.deliver(message, None)
        except UpstreamProtocolError as exc:
            logger.warning("%s: %s", self.name, exc.cause)

    async def _exited(self, proc: asyncio.subprocess.Process) -> None:
        """stdout ended: the process is gone (or beyond use); close the session with the reason."""
        if self.closed:
            return
        try:
            # wait() also waits for stderr to close, which a child of the server may hold open.
            async with asyncio.timeout(self._grace):
                await proc.wait()
        except TimeoutError:
            pass
        code = proc.returncode
        if code is None:
            cause = "closed its stdout"
        elif code < 0:
            try:
                cause = f"was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                cause = f"was killed by signal {-code}"
        else:
            cause = f"exited with status {code}"
        logger.info("%s %s", self.name, cause)
        self._mark_closed(cause)
        _signal_group(proc.pid, signal.SIGKILL if code is None else signal.SIGTERM)

    async def _read_stderr(self, stderr: asyncio.StreamReader) -> None:
        buffer = bytearray()
        while chunk := await stderr.read(_READ_CHUNK):
            buffer += chunk
            *lines, rest = buffer.split(b"\n")
            buffer = bytearray(rest[-_MAX_STDERR_LINE:])
            for raw in lines:
                text = raw[:_MAX_STDERR_LINE].decode("utf-8", "replace").rstrip()
                self._stderr.append(text)
                logger.debug("%s stderr: %s", self.name, text)
        if buffer:
            text = buffer.decode("utf-8", "replace").rstrip()
            self._stderr.append(text)
            logger.debug("%s stderr: %s", self.name, text)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group the server leads (it was started as a session of its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(pid, sig)
