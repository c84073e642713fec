"""The long-lived sandbox: a pool of Monty worker processes, the threads that talk to them, warm type checkers.

Programs run in `monty` worker subprocesses (pydantic-monty's pool), never in this process. One `Sandbox` owns the
pool for the life of the process and serves every `CodeMode` and every event loop: it uses the synchronous pool
from its own threads and drives each run step by step (see `runner`), which keeps tool calls on the caller's event
loop and works the same under any number of loops, as tests and servers create them. (pydantic-monty's asyncio pool
was seen to abort the host process at interpreter exit; the synchronous pool driven from threads was not.)

`default_sandbox()` is the shared instance; it is closed at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import signal
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic_monty import ExternalModule, Monty

from codemode.checker import TypeChecker
from codemode.imports import imported_modules
from codemode.sdk import PACKAGE, PACKAGE_STUB, Sdk

__all__ = ["Sandbox", "SdkModules", "SdkPackage", "default_sandbox"]


def _host_only(*_args: Any, **_kwargs: Any) -> Any:
    # Placeholder behind every SDK name: the runner answers each call itself and never lets the pool invoke this.
    raise RuntimeError("SDK calls are dispatched by the code mode runner")


class SdkPackage:
    """The `tools` package one run gets: the SDK's package stub with some (or all) of its server modules."""

    def __init__(self, package: ExternalModule, module_names: list[str], key: str) -> None:
        self.package = package
        self.module_names = module_names  # in SDK order
        self.key = key  # identical selections of identical SDKs share one warm checker


class SdkModules:
    """The sandbox-side `tools` package of one SDK: stubs for the checker, placeholder callables for the runtime.

    Each server module holds its tool functions and, so `from tools.notes import Note` works at run time too, its
    TypedDict names, which build plain dicts when called as constructors.

    A run gets only the server modules its program imports (`select`): loading and checking a module costs time in
    proportion to its size, and a program rarely uses more than a few of an SDK's servers.
    """

    _CACHED_SELECTIONS = 64

    def __init__(self, sdk: Sdk) -> None:
        self._submodules: dict[str, ExternalModule] = {}
        self.type_names: set[str] = {f"{PACKAGE}.ToolContent"}
        digest = hashlib.sha256(PACKAGE_STUB.encode())
        for module in sdk.modules:
            stub = module.stub()
            digest.update(f"\0{module.module}\0{stub}".encode())
            attrs: dict[str, Any] = {binding.function: _host_only for binding in module.tools}
            for definition in module.types:
                attrs[definition.name] = _host_only
                self.type_names.add(f"{PACKAGE}.{module.module}.{definition.name}")
            self._submodules[module.module] = ExternalModule(attrs, stubs=stub)
        self.module_names = [module.module for module in sdk.modules]
        self.key = digest.hexdigest()
        self.whole = self._package(None)
        self._lock = threading.Lock()
        self._selections: OrderedDict[frozenset[str], SdkPackage] = OrderedDict()

    def select(self, code: str) -> SdkPackage:
        """The package for `code`: the server modules it imports, or all of them when that cannot be told."""
        names = imported_modules(code, self._submodules)
        if names is None:
            return self.whole
        with self._lock:
            selection = self._selections.get(names)
            if selection is not None:
                self._selections.move_to_end(names)
                return selection
        selection = self._package(names)
        with self._lock:
            self._selections[names] = selection
            while len(self._selections) > self._CACHED_SELECTIONS:
                self._selections.popitem(last=False)
        return selection

    def _package(self, names: frozenset[str] | None) -> SdkPackage:
        chosen = [name for name in self.module_names if names is None or name in names]
        submodules = {name: self._submodules[name] for name in chosen}
        package = ExternalModule({**submodules, "ToolContent": _host_only}, stubs=PACKAGE_STUB)
        key = self.key if names is None else f"{self.key}:{','.join(chosen)}"
        return SdkPackage(package, chosen, key)


class Sandbox:
    """Owns the worker pool, the threads that drive it, and a few warm type checkers (most recently used kept).

    `max_workers` bounds concurrent runs (a run holds its worker while it waits on tools, too) plus the checkers.
    """

    def __init__(self, *, min_workers: int = 1, max_workers: int = 16, checkers: int = 4) -> None:
        if max_workers <= checkers:
            raise ValueError("max_workers must leave room for runs beside the warm checkers")
        self._min_workers = min_workers
        self._max_workers = max_workers
        self._checker_slots = checkers
        self._lock = threading.Lock()
        self._pool: Monty | None = None
        self._checkers: OrderedDict[str, TypeChecker] = OrderedDict()
        self._closed = False
        # Every blocking pool call happens on these threads. A run has at most one step in flight, so one thread per
        # worker never makes a step queue; calls that can block for long (checkouts waiting for a free worker,
        # checks, clean-ups) get threads of their own, so they can never hold up runs already under way.
        self.executor = ThreadPoolExecutor(max_workers=max_workers + 2, thread_name_prefix="codemode-step")
        self.waiting_executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="codemode-wait")

    def pool(self) -> Monty:
        """The worker pool, started on first use."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the sandbox is closed")
            if self._pool is None:
                pool = Monty(
                    min_processes=self._min_workers,
                    max_processes=self._max_workers,
                    checkout_timeout=60.0,
                )
                pool.__enter__()
                self._pool = pool
            return self._pool

    def checker(self, modules: SdkPackage) -> TypeChecker:
        """The warm checker for a package, created on first use; the least recently used one beyond the limit closes.

        Checkers are per selection of an SDK's modules (`SdkModules.select`): a checker primed with fewer modules
        starts and checks faster.
        """
        evicted: list[TypeChecker] = []
        with self._lock:
            checker = self._checkers.get(modules.key)
            if checker is None:
                checker = TypeChecker(self.pool, modules.package, modules.module_names)
                self._checkers[modules.key] = checker
                while len(self._checkers) > self._checker_slots:
                    evicted.append(self._checkers.popitem(last=False)[1])
            self._checkers.move_to_end(modules.key)
        for old in evicted:
            self.waiting_executor.submit(old.close)
        return checker

    @staticmethod
    def kill_worker(pid: int | None) -> None:
        """Stop a worker that overran its run; the pool sees it die, fails its pending call and replaces it."""
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop the checkers, the workers and the threads. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            checkers, self._checkers = list(self._checkers.values()), OrderedDict()
            pool, self._pool = self._pool, None
        for checker in checkers:
            checker.close()
        if pool is not None:
            pool.__exit__(None, None, None)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.waiting_executor.shutdown(wait=False, cancel_futures=True)


_default: Sandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> Sandbox:
    """The process-wide sandbox, created on first use and closed at interpreter exit."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Sandbox()
            atexit.register(_default.close)
        return _default
