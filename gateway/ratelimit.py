"""Exact RPM + TPM limits shared by every gateway replica (GCRA in one Lua script).

Each (subject, dimension) is one key holding its TAT (theoretical arrival time,
ms of Redis server time). A limit of N/min allows a burst of N, then refills at
N per 60 s. One script checks both dimensions and updates both only if both
allow, so a refusal on tokens never burns a request slot and vice versa, and
replicas agree because the clock is Redis's (`TIME`), not theirs.
"""

from __future__ import annotations

import abc
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.store_errors import guard

if TYPE_CHECKING:
    import redis.asyncio

WINDOW_MS = 60_000.0
_TTL_MARGIN_MS = 1_000
_MEMORY_SWEEP_AT = 100_000
_REASONS = (None, "requests", "tokens")

# Both scripts share this clock and the slack: admission tolerates the float
# rounding of absolute ms TATs (at most 1 ms, or half an interval if smaller).
_LUA_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local function fmt(x) return string.format('%.17g', x) end
local function store(key, tat)
  if tat <= now then redis.call('DEL', key) return end
  redis.call('SET', key, fmt(tat), 'PX', math.ceil(tat - now) + MARGIN)
end
-- a token bucket corrected by delta tokens: never refuses, never moves TAT before now
local function correct(key, limit, delta)
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  store(key, tat + delta * 60000 / limit)
end
""".replace("MARGIN", str(_TTL_MARGIN_MS))

# KEYS: requests key, tokens key. ARGV: rpm, tpm (0 = unlimited), tokens, pending correction
# (tokens earlier requests of this replica used beyond, or below, what they reserved).
# Returns {reason (0 ok, 1 requests, 2 tokens), retry ms (-1 never), d_req, d_tok}
# where d_x = TAT after the call - now, in ms ('' when unlimited).
_ACQUIRE_LUA = _LUA_NOW + """
local limits = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local costs = {1, tonumber(ARGV[3])}
local pending = tonumber(ARGV[4])
if pending ~= 0 and limits[2] > 0 then correct(KEYS[2], limits[2], pending) end
local tats, news = {}, {}
local reason, retry = 0, 0
for i = 1, 2 do
  local n = limits[i]
  if n > 0 then
    local interval = 60000 / n
    local tat = tonumber(redis.call('GET', KEYS[i])) or now
    if tat < now then tat = now end
    tats[i] = tat - now  -- from here on: offsets from now, small and exact
    news[i] = tats[i] + costs[i] * interval
    local over = news[i] - 60000
    if costs[i] > n then over = math.huge end
    if over > math.min(interval / 2, 1) and over > retry then reason, retry = i, over end
  end
end
if retry == math.huge then retry = -1 end
local out = {'', ''}
for i = 1, 2 do
  if limits[i] > 0 then
    if reason == 0 then tats[i] = news[i]; store(KEYS[i], now + news[i]) end
    out[i] = fmt(tats[i])
  end
end
return {reason, fmt(retry), out[1], out[2]}
"""

# KEYS: tokens key. ARGV: tpm, delta tokens. Never refuses; never moves TAT before now.
_ADJUST_LUA = _LUA_NOW + """
correct(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
return 1
"""


@dataclass(frozen=True)
class LimitSpec:
    rpm: int | None = None  # requests per minute; None (or 0, like callers' truthiness) = unlimited
    tpm: int | None = None  # tokens per minute; None (or 0) = unlimited

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")
            if value == 0:
                object.__setattr__(self, name, None)


def format_duration(seconds: float) -> str:
    """OpenAI/Go-style duration ("20ms", "1.5s", "6m0s"), rounded up to the ms."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-3))  # ignore sub-µs float noise
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".") + "s"
    return f"{hours}h{minutes}m{secs}" if hours else (f"{minutes}m{secs}" if minutes else secs)


@dataclass(frozen=True)
class LimitResult:
    allowed: bool
    reason: str | None  # "requests" | "tokens" | None
    retry_after_s: float  # 0 when allowed; -1 when the cost can never fit
    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None  # until the request bucket is full again
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None

    def headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers, only for the dimensions that are limited."""
        out: dict[str, str] = {}
        for dim in ("requests", "tokens"):
            if (limit := getattr(self, f"limit_{dim}")) is not None:
                out[f"x-ratelimit-limit-{dim}"] = str(limit)
                out[f"x-ratelimit-remaining-{dim}"] = str(getattr(self, f"remaining_{dim}"))
                out[f"x-ratelimit-reset-{dim}"] = format_duration(getattr(self, f"reset_{dim}_s"))
        return out


def _dimension(limit: int | None, d_ms: float | None) -> tuple[int | None, float | None]:
    """(remaining, reset seconds) from d = TAT - now, with the admission slack."""
    if limit is None or d_ms is None:
        return None, None
    interval = WINDOW_MS / limit
    slack = min(interval / 2, 1.0)
    remaining = math.floor((WINDOW_MS - d_ms + slack) / interval)
    return max(0, min(limit, remaining)), max(0.0, d_ms) / 1000


def _result(spec: LimitSpec, reason: int, retry_ms: float, d_req: float | None,
            d_tok: float | None) -> LimitResult:
    rem_req, reset_req = _dimension(spec.rpm, d_req)
    rem_tok, reset_tok = _dimension(spec.tpm, d_tok)
    retry = 0.0 if reason == 0 else (-1.0 if retry_ms < 0 else retry_ms / 1000)
    return LimitResult(reason == 0, _REASONS[reason], retry, spec.rpm, rem_req, reset_req,
                       spec.tpm, rem_tok, reset_tok)


def _trivial(spec: LimitSpec, tokens: int) -> LimitResult | None:
    """The answer that needs no store (no limit at all), or None; a negative cost is a caller's bug."""
    if tokens < 0:
        raise ValueError("tokens must be >= 0")
    if spec.rpm is None and spec.tpm is None:
        return LimitResult(True, None, 0.0)
    return None


class RateLimiter(abc.ABC):
    """Atomic check-and-reserve of 1 request + N tokens per subject, both or neither.

    `rate_limiter` picks the store once: Redis (the Lua scripts above, shared by every replica) or this
    process (their twin, for one replica without Redis). Both answer every call alike (the contract tests
    hold them to it); only Redis can fail, with StoreUnavailable, and only Redis defers `adjust` to
    `flush` (or the subject's next `acquire`).
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix

    def _keys(self, subject: str) -> tuple[str, str]:
        base = f"{self._prefix}rl:{subject}"
        return f"{base}:req", f"{base}:tok"

    @abc.abstractmethod
    async def acquire(self, subject: str, spec: LimitSpec, tokens: int) -> LimitResult:
        """Reserve 1 request and `tokens` tokens, both or neither."""

    @abc.abstractmethod
    async def adjust(self, subject: str, spec: LimitSpec, delta_tokens: int) -> None:
        """Correct a reservation once usage is known (delta = actual - reserved)."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Write corrections that wait in memory, if this store keeps any."""

    @abc.abstractmethod
    async def reset(self, subject: str) -> None:
        """Forget the subject's state (admin, tests): both buckets become full."""


class RedisRateLimiter(RateLimiter):
    """The limits in Redis, so every replica counts against the same buckets.

    `timeout_s` bounds every call. TPM corrections (`adjust`) cost no round trip of their own: they wait
    in memory and ride along with the subject's next `acquire`, or go out with `flush()`, which the
    gateway calls every `usage.flush_interval_s`.
    """

    def __init__(self, redis: redis.asyncio.Redis, prefix: str = "gw:", timeout_s: float | None = 0.5) -> None:
        super().__init__(prefix)
        self._redis = redis
        self._timeout = timeout_s
        self._pending: dict[str, tuple[LimitSpec, int]] = {}  # subject -> (spec, token correction)
        self._acquire_script = redis.register_script(_ACQUIRE_LUA)

    async def acquire(self, subject: str, spec: LimitSpec, tokens: int) -> LimitResult:
        if (free := _trivial(spec, tokens)) is not None:
            return free
        keys = self._keys(subject)
        limits = (spec.rpm or 0, spec.tpm or 0)
        pending = self._take_pending(subject, spec)
        try:
            raw = await guard(self._acquire_script(keys=list(keys), args=[*limits, tokens, pending]),
                              self._timeout)
        except BaseException:
            if pending:
                self._add_pending(subject, spec, pending)
            raise
        d_req, d_tok = (float(v) if v not in (b"", "") else None for v in raw[2:4])
        return _result(spec, int(raw[0]), float(raw[1]), d_req, d_tok)

    async def adjust(self, subject: str, spec: LimitSpec, delta_tokens: int) -> None:
        if spec.tpm is None or delta_tokens == 0:
            return
        self._add_pending(subject, spec, delta_tokens)

    def _add_pending(self, subject: str, spec: LimitSpec, delta: int) -> None:
        _, before = self._pending.get(subject, (spec, 0))
        self._pending[subject] = (spec, before + delta)

    def _take_pending(self, subject: str, spec: LimitSpec) -> int:
        held = self._pending.pop(subject, None)
        if held is None:
            return 0
        if held[0].tpm != spec.tpm:  # the limit changed (reload): apply the old correction on its own scale
            self._pending[subject] = held
            return 0
        return held[1]

    async def flush(self) -> None:
        """Write every pending correction (one pipeline); kept for the next flush if Redis is down."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for subject, (spec, delta) in batch.items():
                    if delta and spec.tpm:
                        pipe.eval(_ADJUST_LUA, 1, self._keys(subject)[1], spec.tpm, delta)  # rare: text is fine
                await guard(pipe.execute(), self._timeout)
        except BaseException:
            for subject, (spec, delta) in batch.items():
                self._add_pending(subject, spec, delta)
            raise

    async def reset(self, subject: str) -> None:
        self._pending.pop(subject, None)
        await guard(self._redis.delete(*self._keys(subject)), self._timeout)


class MemoryRateLimiter(RateLimiter):
    """Single-process twin of the Lua scripts (embedded, one replica); no awaits inside, so each call is
    atomic, and corrections apply at once."""

    def __init__(self, prefix: str = "gw:") -> None:
        super().__init__(prefix)
        self._tats: dict[str, float] = {}  # key -> TAT, ms of the monotonic clock

    @staticmethod
    def _now() -> float:
        return time.monotonic() * 1000

    def _store(self, key: str, tat: float, now: float) -> None:
        if tat <= now:
            self._tats.pop(key, None)
            return
        self._tats[key] = tat
        if len(self._tats) > _MEMORY_SWEEP_AT:  # bounded memory: drop idle (full) buckets
            self._tats = {k: v for k, v in self._tats.items() if v > now}

    async def acquire(self, subject: str, spec: LimitSpec, tokens: int) -> LimitResult:
        if (free := _trivial(spec, tokens)) is not None:
            return free
        keys = self._keys(subject)
        limits = (spec.rpm or 0, spec.tpm or 0)
        now = self._now()
        tats: list[float | None] = [None, None]
        news = [0.0, 0.0]
        reason, retry = 0, 0.0
        for i, (key, n, cost) in enumerate(zip(keys, limits, (1, tokens))):
            if n > 0:
                interval = WINDOW_MS / n
                tats[i] = max(self._tats.get(key, now), now) - now  # offsets from now
                news[i] = tats[i] + cost * interval
                over = math.inf if cost > n else news[i] - WINDOW_MS
                if over > min(interval / 2, 1.0) and over > retry:
                    reason, retry = i + 1, over
        if reason == 0:
            for i, key in enumerate(keys):
                if limits[i] > 0:
                    tats[i] = news[i]
                    self._store(key, now + news[i], now)
        return _result(spec, reason, -1.0 if retry == math.inf else retry, tats[0], tats[1])

    async def adjust(self, subject: str, spec: LimitSpec, delta_tokens: int) -> None:
        if spec.tpm is None or delta_tokens == 0:
            return
        key = self._keys(subject)[1]
        now = self._now()
        tat = max(self._tats.get(key, now), now)
        self._store(key, tat + delta_tokens * WINDOW_MS / spec.tpm, now)

    async def flush(self) -> None:
        return  # corrections applied at once: nothing waits

    async def reset(self, subject: str) -> None:
        for key in self._keys(subject):
            self._tats.pop(key, None)


def rate_limiter(redis: redis.asyncio.Redis | None, prefix: str = "gw:",
                 timeout_s: float | None = 0.5) -> RateLimiter:
    """The Redis limiter when there is a client (Redis failures raise StoreUnavailable; `timeout_s`
    bounds every call), else the in-process one."""
    return MemoryRateLimiter(prefix) if redis is None else RedisRateLimiter(redis, prefix, timeout_s)
