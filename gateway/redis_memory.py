"""At start-up: does each Redis's memory policy fit what it holds? Warnings in the log, never a refusal.

The durable Redis (`redis.url`: API keys, usage and spend, rate limits, batches) must never evict:
`maxmemory-policy noeviction`, or no maxmemory at all. The cache's (`redis.cache_url`) must be bounded:
a maxmemory and an evicting policy (allkeys-lru). One server cannot be both, since maxmemory and the
policy belong to the server (not to a DB), hence a second server for the cache. A managed Redis may
refuse CONFIG GET: then INFO asks instead, and when that is refused too the log says so once per server
and the gateway starts as usual.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable

import redis.exceptions

from gateway.store_errors import STORE_ERRORS

if TYPE_CHECKING:
    import redis.asyncio

log = logging.getLogger("llm_gateway.redis")

DURABLE = "the durable Redis (redis.url: API keys, usage and spend, rate limits, batches)"
CACHE = "the cache Redis (redis.cache_url)"
OWN_CACHE = "give the response cache a Redis server of its own with maxmemory and allkeys-lru (redis.cache_url)"


@dataclass(frozen=True)
class Memory:
    maxmemory: int  # bytes; 0: no limit
    policy: str
    run_id: str | None  # the server's identity: two URLs of one server have the same


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _size(n: int) -> str:
    """Bytes as Redis's config spells sizes (1mb = 1024 * 1024)."""
    for unit, scale in (("gb", 1 << 30), ("mb", 1 << 20), ("kb", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.4g}{unit}"
    return f"{n}b"


async def _refused(call: Awaitable[Any]) -> tuple[Any, str | None]:
    """(the answer, None), or (None, Redis's refusal): a renamed or ACL-denied command is a ResponseError."""
    try:
        return await call, None
    except redis.exceptions.ResponseError as exc:
        return None, str(exc).strip()


async def read_memory(client: redis.asyncio.Redis) -> Memory | str:
    """The server's maxmemory and policy, or why they could not be read."""
    try:
        found, config_refused = await _refused(client.config_get("maxmemory*"))
        settings = {_text(k): _text(v) for k, v in (found or {}).items()}
        if "maxmemory" in settings and "maxmemory-policy" in settings:
            maxmemory, policy = int(settings["maxmemory"]), settings["maxmemory-policy"]
        else:
            info, info_refused = await _refused(client.info("memory"))
            if not info or "maxmemory" not in info or "maxmemory_policy" not in info:
                return (f"CONFIG GET refused ({config_refused or 'no maxmemory in its answer'}), "
                        f"INFO memory refused ({info_refused or 'no maxmemory in its answer'})")
            maxmemory, policy = int(info["maxmemory"]), _text(info["maxmemory_policy"])
        server, _ = await _refused(client.info("server"))
    except STORE_ERRORS as exc:
        return f"unreachable ({type(exc).__name__})"
    run_id = _text(server["run_id"]) if server and "run_id" in server else None
    return Memory(maxmemory, policy, run_id)


def durable_problem(m: Memory, cache_shared: bool) -> str | None:
    """What is wrong with the durable server's policy; `cache_shared`: the response cache lives there too."""
    if m.maxmemory and m.policy != "noeviction":
        return (f"{DURABLE} has maxmemory {_size(m.maxmemory)} with maxmemory-policy {m.policy}: when it is full, "
                f"Redis evicts API keys and spend, not only cached answers (volatile-* too: spend carries a TTL). "
                f"Set maxmemory-policy noeviction there" + ("; and " + OWN_CACHE if cache_shared else ""))
    if not cache_shared:
        return None
    if m.maxmemory:
        return (f"the response cache shares {DURABLE}, which has maxmemory {_size(m.maxmemory)} with noeviction: "
                f"once cached answers fill it, Redis refuses every write, spend and new keys included; {OWN_CACHE}")
    return (f"the response cache shares {DURABLE}, which has no maxmemory: cached answers can fill the server's "
            f"memory (an entry goes only when its TTL ends); {OWN_CACHE}")


def cache_problem(m: Memory) -> str | None:
    if not m.maxmemory:
        return (f"{CACHE} has no maxmemory: cached answers can fill its memory. "
                f"Set maxmemory <size> and maxmemory-policy allkeys-lru on it")
    if m.policy == "noeviction":
        return (f"{CACHE} has maxmemory {_size(m.maxmemory)} with maxmemory-policy noeviction: once it is full it "
                f"refuses new entries (answers are then served uncached). Set maxmemory-policy allkeys-lru")
    return None


def _unread(what: str, why: str, advice: str) -> str:
    return f"cannot check the memory policy of {what}: {why}; {advice}"


async def check(durable: redis.asyncio.Redis | None, cache: redis.asyncio.Redis | None) -> list[str]:
    """Log (and return) a warning for each server whose policy does not fit; `cache`: the cache's own server,
    None when the cache shares `durable` (or there is no Redis)."""
    out: list[str] = []
    d = await read_memory(durable) if durable is not None else None
    c = await read_memory(cache) if cache is not None else None
    if isinstance(d, str):
        out.append(_unread(DURABLE, d, "make sure it runs maxmemory-policy noeviction, or keys and spend may be "
                                       "evicted"))
    elif d is not None:
        out.append(durable_problem(d, cache_shared=cache is None) or "")
    if isinstance(c, str):
        out.append(_unread(CACHE, c, "make sure it has maxmemory and maxmemory-policy allkeys-lru"))
    elif c is not None:
        out.append(cache_problem(c) or "")
        if isinstance(d, Memory) and d.run_id is not None and d.run_id == c.run_id:
            out.append("redis.cache_url and redis.url name the same Redis server (another DB of one server shares "
                       "its maxmemory and eviction policy): give the cache a server of its own")
    out = [line for line in out if line]
    for line in out:
        log.warning("%s", line)
    return out
