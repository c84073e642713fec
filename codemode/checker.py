"""Fast type checks against the SDK stubs, in warm Monty sessions.

Monty's bundled checker (ty) costs about 10 ms per fresh session, mostly to load typeshed and the stubs, but well
under a millisecond per snippet once warm. A warm session cannot check without running, though: each fed snippet is
checked and then executed. So the program is fed wrapped in `async def` and never called: the checker sees every
line, the worker only defines a function. The checker session has no tool functions either, so even a wrapper
bypass could reach nothing.

Only a snippet that runs to completion joins the session's checking context, which would make every later check
slower; the wrapped snippet ends by raising, so the session stays as it was primed and checks stay constant-time.

The warm check is only a fast path to "clean". When it reports anything, or the program has characters that could
make the wrapping change its meaning (form feeds, lone carriage returns), the run instead type-checks the unwrapped
program in its own session before executing it, and that verdict is the one reported. So every reported diagnostic
is about the program exactly as written, with its own line numbers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pydantic_monty import (
    CollectString,
    ExternalModule,
    Monty,
    MontyError,
    MontyRuntimeError,
    MontySession,
    MontyTypingError,
)

from codemode.sdk import PACKAGE

__all__ = ["BUILTIN_STUBS", "TypeChecker"]

log = logging.getLogger(__name__)

BUILTIN_STUBS = """from typing import Any, Callable, Iterable, Iterator, TypeVar, overload

_T = TypeVar("_T")
_S = TypeVar("_S")

@overload
def map(func: Callable[[_T], _S], iterable: Iterable[_T], /) -> Iterator[_S]: ...
@overload
def map(func: Callable[..., _S], iterable: Iterable[Any], /, *iterables: Iterable[Any]) -> Iterator[_S]: ...
def filter(function: Callable[[_T], object] | None, iterable: Iterable[_T], /) -> Iterator[_T]: ...
def getattr(o: object, name: str, default: Any = ..., /) -> Any: ...
def hasattr(o: object, name: str, /) -> bool: ...
def setattr(o: object, name: str, value: Any, /) -> None: ...
def format(value: object, format_spec: str = "", /) -> str: ...
"""
"""Builtins the sandbox runtime has but its trimmed typeshed leaves out; declared so programs using them check."""

_WRAPPER = "async def __codemode_check__() -> None:\n"
_END_MESSAGE = "codemode: checked, not run"
_END = f"raise RuntimeError({_END_MESSAGE!r})\n"
_UNSAFE_FOR_WRAPPING = ("\f", "\r", "\v")


class TypeChecker:
    """A warm checking session for one SDK; `check` is blocking and thread-safe (one check at a time)."""

    def __init__(self, pool: Callable[[], Monty], package: ExternalModule, modules: list[str]) -> None:
        self._pool = pool
        self._package = package
        self._modules = modules
        self._lock = threading.Lock()
        self._session: MontySession | None = None

    def check(self, code: str) -> bool:
        """True when `code` is known to type-check clean; False when the caller must check it the slow way."""
        if any(char in code for char in _UNSAFE_FOR_WRAPPING):
            return False
        wrapped = _WRAPPER + "".join(f"    {line}\n" for line in code.split("\n")) + "    pass\n" + _END
        with self._lock:
            try:
                session = self._ensure_session()
                session.feed_run(wrapped, print_callback=CollectString(max_bytes=1024))
            except MontyTypingError:
                return False
            except MontyRuntimeError as error:
                if _END_MESSAGE in str(error):
                    return True  # checked clean; defined the wrapper, then stopped short of the checking context
                log.debug("warm type checker failed; recycling it", exc_info=True)
                self._discard()
                return False
            except MontyError:
                # A crashed or confused checker is replaced; this program just takes the slow path.
                log.debug("warm type checker failed; recycling it", exc_info=True)
                self._discard()
                return False
            # Unreachable unless the final raise did not run; the session's state is then not what it should be.
            self._discard()
            return False

    def close(self) -> None:
        with self._lock:
            self._discard()

    def _ensure_session(self) -> MontySession:
        if self._session is None:
            session = self._pool().checkout(
                script_name="main.py",
                type_check=True,
                type_check_stubs=BUILTIN_STUBS,
                type_check_format="concise",
                limits={"max_feed_duration_secs": 5.0, "max_memory": 256 * 1024 * 1024},
                external_modules={PACKAGE: self._package},
            )
            session.__enter__()
            try:
                # The checker fetches a module's stub when a feed imports it at top level; imports inside the
                # wrapper function would otherwise stay unresolved. Aliased so no program can use them by accident.
                prime = [f"import {PACKAGE} as __codemode_prime__"]
                prime += [f"import {PACKAGE}.{name} as __codemode_prime_{i}__" for i, name in enumerate(self._modules)]
                session.feed_run("\n".join(prime) + "\n", print_callback=CollectString(max_bytes=1024))
            except BaseException:
                session.__exit__(None, None, None)
                raise
            self._session = session
        return self._session

    def _discard(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                session.__exit__(None, None, None)
            except MontyError:
                log.debug("closing a checker session failed", exc_info=True)
