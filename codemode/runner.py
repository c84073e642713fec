"""One `execute` run: check the program, then drive it in a worker, one suspension at a time.

The worker stops at every host interaction and hands back a snapshot. The runner answers each itself:

- a call to an SDK function becomes a pending future, started when the program first waits on it, so every call a
  program has in flight at once (`asyncio.gather`) runs concurrently on the caller's event loop, through the
  caller's `call_tool`;
- a TypedDict "constructor" (`Note(id=1, ...)`) returns the dict;
- the import of `tools` is answered from the SDK modules the program imports (`SdkModules.select`), the only ones
  the run loads and checks against; sleeps are served within the deadline;
- any other name, module or OS call is refused, exactly as if it did not exist.

Limits: the wall-clock deadline covers everything (checks, tool waits, sleeps); a worker still busy at the deadline is
killed. Memory and recursion are enforced inside the worker; tool calls are counted here; printed output is capped
by the collector and the final value when it is converted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pydantic_monty import (
    FunctionSnapshot,
    FutureSnapshot,
    MontyComplete,
    MontyCrashedError,
    MontyError,
    MontySession,
    NameLookupSnapshot,
)

from codemode.checker import BUILTIN_STUBS
from codemode.errors import Abort, classify
from codemode.outcome import CallRecord, ExecuteError, ExecuteResult, Limits
from codemode.results import describe_failure, plain_json, sandbox_value, to_json
from codemode.sandbox import Sandbox, SdkModules, SdkPackage
from codemode.sdk import PACKAGE, ToolBinding

__all__ = ["CallTool", "run_program"]

log = logging.getLogger(__name__)

CallTool = Callable[[str, str, dict[str, Any]], Awaitable[Mapping[str, Any]]]
"""`call_tool(server, tool, arguments)`: makes one MCP tool call and returns its `CallToolResult` as a dict."""

Settled = dict[str, Any]  # {"return_value": ...} or {"exception": ...}, as Monty takes them
# Module imports and the checker's requests for module stubs, both answered from the session's `tools` package.
_IMPORTS = frozenset({"import", "import_stubs"})
_SLEEPS = frozenset({"system.sleep", "system.async_sleep", "time.sleep", "asyncio.sleep"})
_ASYNC_SLEEPS = frozenset({"system.async_sleep", "asyncio.sleep"})
# After these the worker's heap is not to be trusted (or it may still be busy): it is killed rather than reused.
_WORKER_SPOILED = frozenset({"timeout", "memory_limit", "output_limit", "sandbox_error"})


@dataclass
class _Pending:
    """A future the program holds: a tool call or a sleep, started when the program first waits on it."""

    label: str
    factory: Callable[[], Awaitable[Settled]]
    is_tool: bool
    task: asyncio.Task[Settled] | None = None

    def start(self) -> asyncio.Task[Settled]:
        if self.task is None:
            self.task = asyncio.ensure_future(self.factory())
        return self.task


class _Output:
    """Collects printed output up to `limit` bytes, and calls `on_overflow` when the program prints past it.

    Monty delivers output in batches and does not stop the program when the sink refuses a batch, so the run's
    worker is stopped from here (`on_overflow` kills it), before the program can spin on.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[str] = []
        self._size = 0
        self.overflow = False
        self.on_overflow: Callable[[], None] = lambda: None

    def __call__(self, _stream: str, text: str) -> None:
        data = text.encode()
        if self.overflow or self._size + len(data) > self._limit:
            if not self.overflow:
                self._parts.append(data[: self._limit - self._size].decode(errors="ignore"))
                self._size = self._limit
                self.overflow = True
                self.on_overflow()
            raise OverflowError("output limit exceeded")
        self._parts.append(text)
        self._size += len(data)

    @property
    def text(self) -> str:
        return "".join(self._parts)


@dataclass
class _Run:
    """The state of one run, and the answers to each of its worker's suspensions."""

    sandbox: Sandbox
    modules: SdkModules
    bindings: Mapping[str, ToolBinding]
    call_tool: CallTool
    limits: Limits
    deadline: float
    output: _Output
    pending: dict[int, _Pending] = field(default_factory=dict)
    calls: list[CallRecord] = field(default_factory=list)
    started_calls: int = 0
    in_flight: int = 0
    busy_since: float = 0.0
    tool_seconds: float = 0.0
    last_step: concurrent.futures.Future[Any] | None = None
    worker: int | None = None  # the worker's pid, once the session is entered
    worker_gone: bool = False  # killed by us, or found dead: its pid must never be signalled again

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    def timeout(self) -> Abort:
        return Abort(ExecuteError("timeout", f"the run exceeded its {self.limits.timeout:g} s time limit"))

    def kill_worker(self) -> None:
        """Stop this run's worker, once; the pool fails its pending call and replaces it."""
        if self.worker is not None and not self.worker_gone:
            self.worker_gone = True
            self.sandbox.kill_worker(self.worker)

    async def blocking(self, function: Callable[..., Any], *args: Any, waits: bool = False) -> Any:
        """Run a blocking pool call on the sandbox's threads, within the deadline.

        `waits` marks a call that may block for long on something other than this run (a checkout waiting for a
        free worker, a check waiting for the checker): it goes to threads of its own, so it can never hold up the
        steps of runs already under way.
        """
        executor = self.sandbox.waiting_executor if waits else self.sandbox.executor
        step = executor.submit(partial(function, *args))
        self.last_step = step
        waiter = asyncio.wrap_future(step)
        try:
            done, _ = await asyncio.wait({waiter}, timeout=self.remaining())
        finally:
            if not waiter.done():
                # Abandoned (deadline or cancellation): `_abandon` deals with the step; its outcome is not news.
                waiter.add_done_callback(lambda future: future.cancelled() or future.exception())
        if not done:
            raise self.timeout()
        return waiter.result()

    async def drive(self, session: MontySession, code: str) -> Any:
        snapshot = await self.blocking(partial(session.feed_start, code, print_callback=self.output))
        while not isinstance(snapshot, MontyComplete):
            if self.output.overflow:
                raise _output_abort(self.limits)
            if isinstance(snapshot, FunctionSnapshot):
                snapshot = await self._function(snapshot)
            elif isinstance(snapshot, FutureSnapshot):
                snapshot = await self._future(snapshot)
            elif isinstance(snapshot, NameLookupSnapshot):
                snapshot = await self.blocking(snapshot.resume)  # no value: the name stays undefined
            else:  # pragma: no cover - every snapshot kind is handled above
                raise Abort(ExecuteError("sandbox_error", "the sandbox paused in an unknown state"))
        if self.output.overflow:
            raise _output_abort(self.limits)
        return snapshot.output

    async def _function(self, snapshot: FunctionSnapshot) -> Any:
        name = str(snapshot.function_name)
        if snapshot.is_os_function:
            if name in _IMPORTS:
                return await self.blocking(snapshot.resume_auto)  # only `tools` resolves; others do not exist
            if name in _SLEEPS:
                return await self._sleep(snapshot, name)
            return await self.blocking(snapshot.resume_not_handled)
        binding = self.bindings.get(name)
        if binding is not None:
            return await self._tool_call(snapshot, binding)
        if name in self.modules.type_names:
            return await self.blocking(snapshot.resume, _construct(name, snapshot.args, snapshot.kwargs))
        # Not an SDK name: the program called something that does not exist (a forged or hidden tool included).
        short = name.rsplit(".", 1)[-1]
        return await self.blocking(snapshot.resume, {"exception": NameError(f"name {short!r} is not defined")})

    async def _tool_call(self, snapshot: FunctionSnapshot, binding: ToolBinding) -> Any:
        try:
            arguments = _arguments(binding, snapshot.args, snapshot.kwargs)
        except TypeError as error:
            return await self.blocking(snapshot.resume, {"exception": error})
        self.started_calls += 1
        if self.started_calls > self.limits.tool_calls:
            message = f"the run tried to make more than {self.limits.tool_calls} tool calls"
            raise Abort(ExecuteError("tool_call_limit", message))
        self.pending[snapshot.call_id] = _Pending(binding.qualified, partial(self._invoke, binding, arguments), True)
        return await self.blocking(snapshot.resume, {"future": ...})

    async def _invoke(self, binding: ToolBinding, arguments: dict[str, Any]) -> Settled:
        started = time.monotonic()
        if self.in_flight == 0:
            self.busy_since = started
        self.in_flight += 1
        ok = False
        try:
            result = await self.call_tool(binding.server, binding.tool, arguments)
            settled: Settled = {"return_value": sandbox_value(binding, result)}
            ok = True
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.debug("tool call %s failed", binding.qualified, exc_info=True)
            settled = {"exception": RuntimeError(describe_failure(binding, error))}
        finally:
            now = time.monotonic()
            self.in_flight -= 1
            if self.in_flight == 0:
                self.tool_seconds += now - self.busy_since
            self.calls.append(CallRecord(binding.server, binding.tool, ok, round((now - started) * 1000, 3)))
        return settled

    async def _sleep(self, snapshot: FunctionSnapshot, name: str) -> Any:
        seconds = snapshot.args[0] if snapshot.args else snapshot.kwargs.get("secs", 0)
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not math.isfinite(seconds):
            return await self.blocking(snapshot.resume, {"exception": TypeError("sleep length must be a number")})
        if seconds < 0:
            return await self.blocking(snapshot.resume, {"exception": ValueError("sleep length must be non-negative")})
        if name in _ASYNC_SLEEPS:
            self.pending[snapshot.call_id] = _Pending("sleep", partial(_sleep_for, float(seconds)), False)
            return await self.blocking(snapshot.resume, {"future": ...})
        if seconds > self.remaining():
            raise self.timeout()
        await asyncio.sleep(seconds)
        return await self.blocking(snapshot.resume, {"return_value": None})

    async def _future(self, snapshot: FutureSnapshot) -> Any:
        waiting: dict[asyncio.Task[Settled], int] = {}
        unknown: dict[int, Settled] = {}
        for call_id in snapshot.pending_call_ids:
            entry = self.pending.get(call_id)
            if entry is None:
                unknown[call_id] = {"exception": RuntimeError("unknown pending call")}
            else:
                waiting[entry.start()] = call_id
        if unknown:
            return await self.blocking(snapshot.resume, unknown)
        done, _ = await asyncio.wait(waiting, timeout=self.remaining(), return_when=asyncio.FIRST_COMPLETED)
        if not done:
            raise self.timeout()
        results = {waiting[task]: task.result() for task in done}
        for call_id in results:
            del self.pending[call_id]
        return await self.blocking(snapshot.resume, results)

    def never_awaited(self) -> list[str]:
        return [entry.label for entry in self.pending.values() if entry.is_tool and entry.task is None]

    async def cancel_pending(self) -> None:
        tasks = [entry.task for entry in self.pending.values() if entry.task is not None and not entry.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def run_program(
    sandbox: Sandbox,
    modules: SdkModules,
    bindings: Mapping[str, ToolBinding],
    code: str,
    call_tool: CallTool,
    limits: Limits,
) -> ExecuteResult:
    """Check and run `code` against the SDK in `modules`; every tool call goes through `call_tool`."""
    started = time.monotonic()
    code = code.replace("\r\n", "\n")
    run = _Run(sandbox, modules, bindings, call_tool, limits, started + limits.timeout, _Output(limits.output))
    if len(code) > limits.code:
        too_long = ExecuteError("code_limit", f"the program is longer than {limits.code} characters")
        return _result(run, started, None, too_long, [])
    session: MontySession | None = None
    value: Any = None
    error: ExecuteError | None = None
    try:
        package, warm = await run.blocking(_check, sandbox, modules, code, waits=True)
        session = _checkout(sandbox, package, limits, type_check=not warm)
        await run.blocking(session.__enter__, waits=True)
        run.worker = session.worker_pid
        run.output.on_overflow = run.kill_worker
        raw = await run.drive(session, code)
        value = to_json(raw, limits.output)[0]
    except Abort as abort:
        error = abort.error
    except OverflowError:
        error = _output_abort(limits).error
    except MontyError as failure:
        run.worker_gone = run.worker_gone or isinstance(failure, MontyCrashedError)
        error = classify(failure, output_overflow=run.output.overflow, limits=limits)
    except asyncio.CancelledError:
        if session is not None:
            _abandon(sandbox, run, session)
        await run.cancel_pending()
        raise
    except Exception:
        log.exception("code mode run failed")
        error = ExecuteError("sandbox_error", "internal error in the sandbox host")
    warnings = run.never_awaited()
    await run.cancel_pending()
    if session is not None:
        busy = run.last_step is not None and not run.last_step.done()
        if busy or (error is not None and error.kind in _WORKER_SPOILED):
            _abandon(sandbox, run, session)
        elif run.worker is not None:  # entered, so there is a worker to give back
            await asyncio.wrap_future(sandbox.executor.submit(session.__exit__, None, None, None))
    return _result(run, started, value, error, warnings)


def _check(sandbox: Sandbox, modules: SdkModules, code: str) -> tuple[SdkPackage, bool]:
    """The package the program gets (the modules it imports), and whether the warm check found it clean."""
    package = modules.select(code)
    return package, sandbox.checker(package).check(code)


def _checkout(sandbox: Sandbox, package: SdkPackage, limits: Limits, *, type_check: bool) -> MontySession:
    return sandbox.pool().checkout(
        script_name="main.py",
        type_check=type_check,
        type_check_stubs=BUILTIN_STUBS if type_check else None,
        type_check_format="concise",
        limits={
            "max_memory": limits.memory,
            "max_recursion_depth": limits.recursion,
            # Execution time never exceeds wall time, so the worker's own clock is a backstop for the deadline.
            "max_feed_duration_secs": limits.timeout,
            "max_suspensions": limits.tool_calls * 4 + 200,
        },
        os_policy={"sleep": "system", "sleep_system_max": limits.timeout},
        external_modules={PACKAGE: package.package},
    )


def _abandon(sandbox: Sandbox, run: _Run, session: MontySession) -> None:
    """Kill the run's worker and give its session back once the pool has noticed, without waiting here."""
    run.kill_worker()
    step = run.last_step

    def close() -> None:
        if step is not None:
            concurrent.futures.wait([step])  # a checkout still waiting for a worker completes (or fails) first
        try:
            session.__exit__(None, None, None)
        except Exception:  # a checkout that never completed has nothing to give back
            log.debug("closing an abandoned session failed", exc_info=True)

    sandbox.waiting_executor.submit(close)


def _arguments(binding: ToolBinding, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The real arguments of a call, mapped back from the SDK's names; TypeError for a call Python would refuse."""
    if args:
        raise TypeError(f"{binding.qualified}() takes keyword arguments only")
    params = {param.name: param for param in binding.params}
    arguments: dict[str, Any] = {}
    for name, value in kwargs.items():
        param = params.get(name)
        if param is None:
            if binding.extra is None:
                raise TypeError(f"{binding.qualified}() got an unexpected keyword argument {name!r}")
            arguments[name] = plain_json(value)
        elif value is not None or param.nullable:
            arguments[param.real_name] = plain_json(value)
    missing = [param.name for param in binding.params if param.required and param.real_name not in arguments]
    if missing:
        raise TypeError(f"{binding.qualified}() missing required keyword arguments: {', '.join(missing)}")
    return arguments


def _construct(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Settled:
    if len(args) > 1 or (args and not isinstance(args[0], Mapping)):
        return {"exception": TypeError(f"{name.rsplit('.', 1)[-1]}() takes a mapping or keyword arguments")}
    return {"return_value": {**(dict(args[0]) if args else {}), **kwargs}}


async def _sleep_for(seconds: float) -> Settled:
    await asyncio.sleep(seconds)
    return {"return_value": None}


def _output_abort(limits: Limits) -> Abort:
    return Abort(ExecuteError("output_limit", f"the run produced more than {limits.output} bytes of output"))


def _result(run: _Run, started: float, value: Any, error: ExecuteError | None, warnings: list[str]) -> ExecuteResult:
    if warnings:
        names = ", ".join(sorted(set(warnings)))
        warning = f"{len(warnings)} tool call(s) never awaited, so never made: {names}"
    else:
        warning = None
    return ExecuteResult(
        output=run.output.text,
        value=value if error is None else None,
        error=error,
        calls=tuple(run.calls),
        duration_ms=(time.monotonic() - started) * 1000,
        tool_ms=run.tool_seconds * 1000,
        warning=warning,
    )
