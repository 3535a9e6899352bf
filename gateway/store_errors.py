"""One error type for "the shared store (Redis) is not usable right now".

Store-backed components raise `StoreUnavailable` instead of leaking redis-py
or socket exceptions, so each caller makes one explicit choice: fail open
(serve without the limit/cache) or fail closed (503).
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

import redis.exceptions

from backends.aio import within
from backends.contract.errors import GatewayError

T = TypeVar("T")

# RedisError covers ConnectionError, TimeoutError, ResponseError, ...;
# OSError covers raw socket failures; asyncio.TimeoutError is our own deadline.
STORE_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.RedisError,
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
)


def _lost_connection(exc: BaseException) -> bool:
    """uvloop refuses to write to a transport the peer has reset with a RuntimeError ("unable to perform
    operation on <TCPTransport closed=True ...>; the handler is closed"), and redis-py passes that on as it is,
    after dropping the connection: a Redis that restarted, or a network that cut the connection, while it
    idled in the pool. It is the store's failure, like the ConnectionError the default event loop gives."""
    return isinstance(exc, RuntimeError) and "handler is closed" in str(exc)


class StoreUnavailable(Exception):
    """Redis could not be reached, timed out or failed; the original is __cause__."""


async def guard(awaitable: Awaitable[T], timeout: float | None = None) -> T:
    """Await `awaitable` and re-raise store failures as StoreUnavailable.

    `timeout` bounds the whole call: redis-py's default retry policy can take
    several seconds to give up on a dead server, too long for a request path.
    """
    try:
        if timeout is None:
            return await awaitable
        return await within(awaitable, timeout)
    except StoreUnavailable:
        raise
    except RuntimeError as exc:
        if not _lost_connection(exc):
            raise
        raise StoreUnavailable(f"store failed: connection lost: {exc}") from exc
    except STORE_ERRORS as exc:
        timeouts = (TimeoutError, asyncio.TimeoutError, redis.exceptions.TimeoutError)
        what = "timed out" if isinstance(exc, timeouts) else "failed"
        raise StoreUnavailable(f"store {what}: {type(exc).__name__}: {exc}") from exc


def unavailable(what: str, code: str = "store_unavailable") -> GatewayError:
    """The 503 of a request that cannot go on without the store ("<what> right now"): retry in a second."""
    return GatewayError(f"{what} right now; please retry shortly.", status_code=503,
                        error_type="service_unavailable_error", code=code, headers={"Retry-After": "1"})
