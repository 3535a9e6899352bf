"""Usage and spend per key, route and day, kept in Redis so every replica counts into the same totals.

Spend is also kept per budget period (day, month, or all time) so a budget
check is one GET, whichever replica asks.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from gateway.store_errors import guard

RETENTION_S = 400 * 86400
ANONYMOUS = "-"


def period_id(period: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    if period == "daily":
        return now.strftime("%Y-%m-%d")
    if period == "monthly":
        return now.strftime("%Y-%m")
    return "total"


class UsageStore:
    def __init__(self, redis: Any | None, prefix: str = "gw:") -> None:
        self.redis = redis
        self.prefix = prefix
        self._rows: dict[tuple[str, str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._dep_rows: dict[tuple[str, str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._spend: dict[str, float] = defaultdict(float)

    def _spend_key(self, key_id: str, period: str) -> str:
        return f"{self.prefix}spend:{key_id}:{period_id(period)}"

    async def record(self, *, key_id: str | None, route: str, prompt_tokens: int, completion_tokens: int,
                     cost_usd: float, budget_period: str | None = None, deployment: str | None = None) -> None:
        """Count one answer under (day, key, route) and, for the cost report, (day, route, deployment)."""
        day = period_id("daily")
        who = key_id or ANONYMOUS
        dep = deployment or "cache"
        if self.redis is None:
            for row in (self._rows[(day, who, route)], self._dep_rows[(day, route, dep)]):
                row["requests"] += 1
                row["prompt_tokens"] += prompt_tokens
                row["completion_tokens"] += completion_tokens
                row["cost_usd"] += cost_usd
            if key_id and budget_period:
                self._spend[self._spend_key(key_id, budget_period)] += cost_usd
            return
        row_key = f"{self.prefix}usage:{day}:{who}:{route}"
        dep_key = f"{self.prefix}usage-dep:{day}:{route}:{dep}"
        index = f"{self.prefix}usage:index:{day}"
        dep_index = f"{self.prefix}usage-dep:index:{day}"
        async with self.redis.pipeline(transaction=False) as pipe:
            for k in (row_key, dep_key):
                pipe.hincrby(k, "requests", 1)
                pipe.hincrby(k, "prompt_tokens", prompt_tokens)
                pipe.hincrby(k, "completion_tokens", completion_tokens)
                pipe.hincrbyfloat(k, "cost_usd", cost_usd)
                pipe.expire(k, RETENTION_S)
            pipe.sadd(index, f"{who}|{route}")
            pipe.expire(index, RETENTION_S)
            pipe.sadd(dep_index, f"{route}|{dep}")
            pipe.expire(dep_index, RETENTION_S)
            if key_id and budget_period:
                spend_key = self._spend_key(key_id, budget_period)
                pipe.incrbyfloat(spend_key, cost_usd)
                pipe.expire(spend_key, RETENTION_S)
            await guard(pipe.execute())

    async def spend(self, key_id: str, period: str) -> float:
        if self.redis is None:
            return self._spend.get(self._spend_key(key_id, period), 0.0)
        raw = await guard(self.redis.get(self._spend_key(key_id, period)))
        return float(raw) if raw else 0.0

    async def report(self, days: list[str], key_id: str | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for day in days:
            if self.redis is None:
                found = [(who, route, dict(v)) for (d, who, route), v in self._rows.items() if d == day]
            else:
                members = await guard(self.redis.smembers(f"{self.prefix}usage:index:{day}"))
                pairs = [m.decode().split("|", 1) for m in members]
                found = []
                for who, route in sorted(pairs):
                    h = await guard(self.redis.hgetall(f"{self.prefix}usage:{day}:{who}:{route}"))
                    found.append((who, route, {k.decode(): float(v) for k, v in h.items()}))
            for who, route, v in found:
                if key_id is not None and who != key_id:
                    continue
                rows.append({"day": day, "key_id": None if who == ANONYMOUS else who, "route": route,
                             "requests": int(v.get("requests", 0)), "prompt_tokens": int(v.get("prompt_tokens", 0)),
                             "completion_tokens": int(v.get("completion_tokens", 0)),
                             "cost_usd": round(v.get("cost_usd", 0.0), 8)})
        return rows

    async def report_deployments(self, days: list[str]) -> list[dict[str, Any]]:
        """Rows per (day, route, deployment); deployment "cache" counts answers served from the cache."""
        rows: list[dict[str, Any]] = []
        for day in days:
            if self.redis is None:
                found = [(route, dep, dict(v)) for (d, route, dep), v in self._dep_rows.items() if d == day]
            else:
                members = await guard(self.redis.smembers(f"{self.prefix}usage-dep:index:{day}"))
                found = []
                for route, dep in sorted(m.decode().split("|", 1) for m in members):
                    h = await guard(self.redis.hgetall(f"{self.prefix}usage-dep:{day}:{route}:{dep}"))
                    found.append((route, dep, {k.decode(): float(v) for k, v in h.items()}))
            for route, dep, v in found:
                rows.append({"day": day, "route": route, "deployment": dep,
                             "requests": int(v.get("requests", 0)), "prompt_tokens": int(v.get("prompt_tokens", 0)),
                             "completion_tokens": int(v.get("completion_tokens", 0)),
                             "cost_usd": round(v.get("cost_usd", 0.0), 8)})
        return rows
