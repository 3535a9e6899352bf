"""Wait for a condition, not for a time: a loaded machine makes fixed sleeps too short.

`wait_until(predicate)` polls until the predicate returns something truthy and returns that value;
past the deadline it fails the test with the last value seen (or the last exception the predicate
raised), so a failure says what the state was. `await wait_until_async(...)` is the same for
coroutines and async predicates, without blocking the event loop.

The deadlines are generous on purpose: they bound a broken run, and a working one ends as soon as
the condition holds.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Callable, TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_INTERVAL_S = 0.05


class WaitTimeout(AssertionError):
    """The condition did not hold within the deadline."""


def _failure(what: str, timeout: float, last: Any, error: BaseException | None) -> WaitTimeout:
    seen = f"last exception: {error!r}" if error is not None else f"last value: {last!r}"
    return WaitTimeout(f"{what} did not happen within {timeout:g}s ({seen})")


def wait_until(predicate: Callable[[], T], timeout: float = DEFAULT_TIMEOUT_S,
               interval: float = DEFAULT_INTERVAL_S, what: str | None = None,
               ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Call `predicate` until it returns a truthy value, and return that value.

    Exceptions of the types in `ignore` count as "not yet" (e.g. a server that is not listening yet)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    error: BaseException | None = None
    while True:
        try:
            last = predicate()
            error = None
            if last:
                return last
        except ignore as exc:
            error = exc
        if time.monotonic() >= deadline:
            raise _failure(what or getattr(predicate, "__name__", "the condition"), timeout, last, error)
        time.sleep(interval)


async def wait_until_async(predicate: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT_S,
                           interval: float = DEFAULT_INTERVAL_S, what: str | None = None,
                           ignore: tuple[type[BaseException], ...] = ()) -> Any:
    """`wait_until` for async code: `predicate` may be a plain function or return an awaitable."""
    deadline = time.monotonic() + timeout
    last: Any = None
    error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            last, error = value, None
            if last:
                return last
        except ignore as exc:
            error = exc
        if time.monotonic() >= deadline:
            raise _failure(what or getattr(predicate, "__name__", "the condition"), timeout, last, error)
        await asyncio.sleep(interval)


def eventually(assertion: Callable[[], None], timeout: float = DEFAULT_TIMEOUT_S,
               interval: float = DEFAULT_INTERVAL_S) -> None:
    """Retry a block of assertions until it passes; past the deadline its last AssertionError is raised."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            assertion()
            return
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(interval)

