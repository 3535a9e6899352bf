"""Usage and spend per key, route and day, kept in Redis so every replica counts into the same totals.

Counters are batched per replica and flushed every second; other replicas see
them after that flush.

Each row is also split by tier (the request's class: interactive, batch). A row
keeps its totals as it always did, and each tier other than interactive counts
again in fields of its own (`batch:requests`, ...); interactive is the rest. So
the key layout is unchanged, a row written before tiers existed reads as all
interactive, and a reader that knows nothing of tiers still sees the totals.

Spend is also kept per budget period (day, month, or all time) so a budget
check is one GET, whichever replica asks: one spend per key, whatever the tier.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from gateway.store_errors import guard

if TYPE_CHECKING:
    import redis.asyncio

RETENTION_S = 400 * 86400
# The one default window of every usage and cost report (GET /admin/usage and /admin/cost, `llm-gateway
# usage` and `cost`): a week, long enough to hold a weekday and a weekend.
DEFAULT_WINDOW_DAYS = 7
ANONYMOUS = "-"
INTERACTIVE = "interactive"  # the tier of what a row does not count under another (all usage kept before tiers)
FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cost_usd")


def period_id(period: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    if period == "daily":
        return now.strftime("%Y-%m-%d")
    if period == "monthly":
        return now.strftime("%Y-%m")
    return "total"


Counters = dict[tuple[str, str, str], dict[str, float]]


def _counters() -> Counters:
    return defaultdict(lambda: defaultdict(float))


def _tally(rows: Counters, dep_rows: Counters, key_id: str | None, route: str, deployment: str | None,
           prompt_tokens: int, completion_tokens: int, cost_usd: float, requests: int = 1,
           tier: str = INTERACTIVE) -> None:
    """Count one answer (or one more leg of it: `requests` 0) under (day, key, route) and (day, route,
    deployment): in the totals, and again in the tier's own fields unless it is interactive."""
    day = period_id("daily")
    prefixes = ("",) if tier == INTERACTIVE else ("", f"{tier}:")
    for row in (rows[(day, key_id or ANONYMOUS, route)], dep_rows[(day, route, deployment or "cache")]):
        for prefix in prefixes:
            row[prefix + "requests"] += requests
            row[prefix + "prompt_tokens"] += prompt_tokens
            row[prefix + "completion_tokens"] += completion_tokens
            row[prefix + "cost_usd"] += cost_usd


def split_tiers(v: dict[str, float]) -> dict[str, dict[str, float]]:
    """A row's counters per tier: each tier's own fields, interactive what the others leave of the totals
    (all of them, for a row written before tiers). Interactive comes first, and only when it counted
    something or is all there is."""
    tiers: dict[str, dict[str, float]] = {}
    for name, n in v.items():
        tier, sep, field_name = name.partition(":")
        if sep:
            tiers.setdefault(tier, {})[field_name] = n
    rest = {f: max(0.0, v.get(f, 0.0) - sum(t.get(f, 0.0) for t in tiers.values())) for f in FIELDS}
    if tiers and not any(round(n, 8) for n in rest.values()):
        return tiers
    return {INTERACTIVE: rest, **tiers}


class UsageStore(abc.ABC):
    """Usage rows per (day, key, route) and (day, route, deployment), and spend per budget period.

    `usage_store` picks the store once: Redis, where every replica counts into the same totals, or this
    process (one replica, no Redis). Both report the same rows and spend for the same answers (the
    contract tests hold them to it); only Redis can fail (StoreUnavailable) and only Redis batches the
    rows until `flush`.
    """

    @abc.abstractmethod
    async def record(self, *, key_id: str | None, route: str, prompt_tokens: int, completion_tokens: int,
                     cost_usd: float, budget_period: str | None = None, deployment: str | None = None,
                     requests: int = 1, tier: str = INTERACTIVE) -> None:
        """Count one answer under (day, key, route) and, for the cost report, (day, route, deployment),
        in its `tier`; with `key_id` and `budget_period`, also against the key's budget (one budget,
        whatever the tier). An answer rescued by another deployment is recorded once per leg, each under
        its own deployment, the later legs with `requests` 0 (one request, whatever it took)."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Write counters that wait in memory, if this store keeps any."""

    @abc.abstractmethod
    async def spend(self, key_id: str, period: str) -> float:
        """What the key spent in the current `period` (daily, monthly or total)."""

    async def report(self, days: list[str], key_id: str | None = None, by_tier: bool = False) -> list[dict[str, Any]]:
        """Rows per (day, key, route), every tier together; `by_tier`: per (day, key, route, tier), each
        with its `tier`."""
        rows = []
        for day, who, route, v in await self._collect(days, "usage"):
            if key_id is None or who == key_id:
                row = {"day": day, "key_id": None if who == ANONYMOUS else who, "route": route}
                if by_tier:
                    rows += [{**row, "tier": tier, **_counts(t)} for tier, t in split_tiers(v).items()]
                else:
                    rows.append({**row, **_counts(v)})
        return rows

    async def report_deployments(self, days: list[str]) -> list[dict[str, Any]]:
        """Rows per (day, route, deployment, tier); deployment "cache" counts answers served from the cache."""
        return [{"day": day, "route": route, "deployment": dep, "tier": tier, **_counts(t)}
                for day, route, dep, v in await self._collect(days, "usage-dep") for tier, t in split_tiers(v).items()]

    @abc.abstractmethod
    async def _collect(self, days: list[str], family: str) -> list[tuple[str, str, str, dict]]:
        """(day, a, b, counters) for one family of rows ("usage" or "usage-dep")."""


class RedisUsageStore(UsageStore):
    """Counters batched per replica and flushed every `flush_interval_s` (one pipeline for every request
    since the last flush) instead of costing a round trip per request. Spend against a budget is the
    exception: it is written at once, so every replica sees it."""

    def __init__(self, redis: redis.asyncio.Redis, prefix: str = "gw:") -> None:
        self.redis = redis
        self.prefix = prefix
        self._pending = _counters()  # what the next flush writes
        self._pending_dep = _counters()
        self._pending_spend: dict[str, float] = defaultdict(float)  # spend Redis refused, for the next flush

    def _spend_key(self, key_id: str, period: str) -> str:
        return f"{self.prefix}spend:{key_id}:{period_id(period)}"

    async def record(self, *, key_id: str | None, route: str, prompt_tokens: int, completion_tokens: int,
                     cost_usd: float, budget_period: str | None = None, deployment: str | None = None,
                     requests: int = 1, tier: str = INTERACTIVE) -> None:
        _tally(self._pending, self._pending_dep, key_id, route, deployment, prompt_tokens, completion_tokens,
               cost_usd, requests, tier)
        if not (key_id and budget_period):
            return
        spend_key = self._spend_key(key_id, budget_period)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.incrbyfloat(spend_key, cost_usd)
                pipe.expire(spend_key, RETENTION_S)
                await guard(pipe.execute())
        except BaseException:
            # Redis is down (or the write was cancelled): the spend waits for the next flush, so budgets
            # count every answer given during an outage once Redis is back.
            self._pending_spend[spend_key] += cost_usd
            raise

    async def flush(self) -> None:
        """Write the batched counters; if Redis is down they go back into the batch for the next try."""
        if not (self._pending or self._pending_dep or self._pending_spend):
            return
        rows, dep_rows, spend = self._pending, self._pending_dep, self._pending_spend
        self._pending, self._pending_dep, self._pending_spend = _counters(), _counters(), defaultdict(float)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for spend_key, cost in spend.items():
                    pipe.incrbyfloat(spend_key, cost)
                    pipe.expire(spend_key, RETENTION_S)
                for (day, who, route), v in rows.items():
                    self._write(pipe, f"{self.prefix}usage:{day}:{who}:{route}", v)
                    pipe.sadd(f"{self.prefix}usage:index:{day}", f"{who}|{route}")
                    pipe.expire(f"{self.prefix}usage:index:{day}", RETENTION_S)
                for (day, route, dep), v in dep_rows.items():
                    self._write(pipe, f"{self.prefix}usage-dep:{day}:{route}:{dep}", v)
                    pipe.sadd(f"{self.prefix}usage-dep:index:{day}", f"{route}|{dep}")
                    pipe.expire(f"{self.prefix}usage-dep:index:{day}", RETENTION_S)
                await guard(pipe.execute())
        except BaseException:  # cancelled mid-flush (shutdown) too: the final flush writes them
            for source, target in ((rows, self._pending), (dep_rows, self._pending_dep)):
                for k, v in source.items():
                    for field_name, n in v.items():
                        target[k][field_name] += n
            for spend_key, cost in spend.items():
                self._pending_spend[spend_key] += cost
            raise

    @staticmethod
    def _write(pipe: Any, key: str, v: dict[str, float]) -> None:
        """The totals and any tier's own fields (`batch:cost_usd`): counts as integers, cost as a float."""
        for field_name, n in v.items():
            if field_name.endswith("cost_usd"):
                pipe.hincrbyfloat(key, field_name, n)
            else:
                pipe.hincrby(key, field_name, int(n))
        pipe.expire(key, RETENTION_S)

    async def spend(self, key_id: str, period: str) -> float:
        raw = await guard(self.redis.get(self._spend_key(key_id, period)))
        return float(raw) if raw else 0.0

    async def _collect(self, days: list[str], family: str) -> list[tuple[str, str, str, dict]]:
        """From Redis, after a flush, so this replica's own counts are in."""
        await self.flush()
        out: list[tuple[str, str, str, dict]] = []
        for day in days:
            members = await guard(self.redis.smembers(f"{self.prefix}{family}:index:{day}"))
            for a, b in sorted(m.decode().split("|", 1) for m in members):
                h = await guard(self.redis.hgetall(f"{self.prefix}{family}:{day}:{a}:{b}"))
                out.append((day, a, b, {k.decode(): float(v) for k, v in h.items()}))
        return out


class MemoryUsageStore(UsageStore):
    """The counters themselves, in this process (one replica, no Redis): nothing to batch or flush."""

    def __init__(self) -> None:
        self._rows = _counters()
        self._dep_rows = _counters()
        self._spend: dict[tuple[str, str], float] = defaultdict(float)  # (key id, period id) -> USD

    async def record(self, *, key_id: str | None, route: str, prompt_tokens: int, completion_tokens: int,
                     cost_usd: float, budget_period: str | None = None, deployment: str | None = None,
                     requests: int = 1, tier: str = INTERACTIVE) -> None:
        _tally(self._rows, self._dep_rows, key_id, route, deployment, prompt_tokens, completion_tokens, cost_usd,
               requests, tier)
        if key_id and budget_period:
            self._spend[(key_id, period_id(budget_period))] += cost_usd

    async def flush(self) -> None:
        return  # counted in place: nothing waits

    async def spend(self, key_id: str, period: str) -> float:
        return self._spend.get((key_id, period_id(period)), 0.0)

    async def _collect(self, days: list[str], family: str) -> list[tuple[str, str, str, dict]]:
        table = self._rows if family == "usage" else self._dep_rows
        out: list[tuple[str, str, str, dict]] = []
        for day in days:
            out += [(day, a, b, dict(v)) for (d, a, b), v in table.items() if d == day]
        return out


def usage_store(redis: redis.asyncio.Redis | None, prefix: str = "gw:") -> UsageStore:
    """The Redis store when there is a client, else the in-process one."""
    return MemoryUsageStore() if redis is None else RedisUsageStore(redis, prefix)


def without_tiers(rows: list[dict[str, Any]],
                  by: tuple[str, ...] = ("day", "key_id", "route")) -> list[dict[str, Any]]:
    """Rows of `report(by_tier=True)` (or `report_deployments`, `by` day, route and deployment) added up per
    `by`, as `report` gives them without tiers."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        row = out.setdefault(tuple(r[k] for k in by), {**{k: r[k] for k in by}, **dict.fromkeys(FIELDS, 0)})
        for f in FIELDS:
            row[f] += r[f]
    for row in out.values():
        row["cost_usd"] = round(row["cost_usd"], 8)
    return list(out.values())


def _counts(v: dict[str, float]) -> dict[str, Any]:
    return {"requests": int(v.get("requests", 0)), "prompt_tokens": int(v.get("prompt_tokens", 0)),
            "completion_tokens": int(v.get("completion_tokens", 0)), "cost_usd": round(v.get("cost_usd", 0.0), 8)}
