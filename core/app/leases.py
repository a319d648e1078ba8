"""Tenants shared between instances: which ones this instance polls and delivers, and its part
of the app-wide Graph budget.

On a PostgreSQL state several instances with the same configuration split the tenants through
leases (core/state/postgresql.py `claim_leases`): a lease per (tenant, source), all of a
tenant's together, claimed every `lease_ttl / 3`, expiring after `lease_ttl`. An instance polls
only the tenants it holds, and delivers only their outbox rows; a page's commit carries the
lease's epoch from its poll's start, so an instance that lost a tenant while paused cannot
commit for it. A SQLite state has one process: no leases, every tenant is its own.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Iterable

from aiolimiter import AsyncLimiter

from core.state import ORPHANS, StateStore

log = logging.getLogger("defender_forwarder.leases")

# Graph counts an app's requests across all tenants over 10 s windows (130,000 by default).
APP_BUDGET_PERIOD = 10.0


def instance_name() -> str:
    """This instance as a holder of leases: host:pid, what `tenants` shows and an operator finds."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class TenantLeases:
    """This instance's leases: claimed and renewed by `claim()`, asked by the polls and workers."""

    store: StateStore
    holder: str
    ttl: float
    wanted: list[tuple[str, str]]  # (tenant id, source) of every tenant this instance may poll
    held: dict[tuple[str, str], int] = field(default_factory=dict)  # -> epoch
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # set (and replaced) when tenants came
    # The tenant ids of `held`, kept with it: every tenant's poll loop asks `holds` each turn.
    _tenant_ids: frozenset[str] = field(default=frozenset(), init=False, repr=False)

    @property
    def tenants(self) -> int:
        """How many tenants the instance is configured for (the orphans' lease is not one)."""
        return len(_tenants_of(self.wanted))

    def holds(self, tenant_id: str) -> bool:
        return tenant_id in self._tenant_ids

    def held_tenants(self) -> frozenset[str]:
        return self._tenant_ids

    def _hold(self, held: dict[tuple[str, str], int]) -> None:
        self.held, self._tenant_ids = held, _tenants_of(held)

    def epoch(self, tenant_id: str, source: str) -> int | None:
        return self.held.get((tenant_id, source))

    def claim(self) -> None:
        """Renew, shed and take leases (one transaction); log what changed."""
        before = self.held_tenants()
        self._hold(self.store.claim_leases(self.holder, self.wanted, self.ttl))
        now = self.held_tenants()
        if now != before:
            log.info("leases: %s holds %d of %d tenants (took %d, gave up or lost %d)", self.holder, len(now),
                     self.tenants, len(now - before), len(before - now),
                     extra={"instance": self.holder, "tenants_held": len(now)})
        if now - before:
            came, self.changed = self.changed, asyncio.Event()
            came.set()

    def release(self) -> None:
        """A clean stop: give every lease back, for the others to take at their next claim."""
        self.store.release_leases(self.holder)
        self._hold({})

    def share(self) -> float:
        """The part of the configured tenants this instance holds (1.0 before the first claim
        finds out, the whole budget being the safe side for one instance alone)."""
        return len(self.held_tenants()) / self.tenants if self.tenants else 1.0


def _tenants_of(leases: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The tenant ids of (tenant id, source) leases, the orphans' lease (no tenant) left out."""
    return frozenset(tenant for tenant, source in leases if (tenant, source) != ORPHANS)


class AppBudget:
    """Graph's app-wide request budget (`app_requests_per_10s`), this instance's part of it:
    instances holding disjoint tenants, each keeping budget x (its tenants / all), stay
    within the budget together. Resized as leases move."""

    def __init__(self, per_period: int) -> None:
        self.per_period = per_period
        self.fraction = 1.0
        self.limiter = _window_limiter(per_period)

    def resize(self, fraction: float) -> None:
        if fraction != self.fraction:
            self.fraction = fraction
            self.limiter = _window_limiter(self.per_period * fraction)

    async def acquire(self) -> None:
        await self.limiter.acquire()


def _window_limiter(budget: float) -> AsyncLimiter:
    """A limiter letting at most `budget` requests through in ANY window of APP_BUDGET_PERIOD:
    its capacity (what goes at once after a pause) plus its refill over the period stays within
    it. A limiter of `budget` per period would let twice that through: a full bucket, then the
    period's refill. The capacity is a hundredth of the budget (one request at least)."""
    capacity = max(1.0, budget / 101)
    rate = max(budget - capacity, capacity) / APP_BUDGET_PERIOD  # per second; a budget below 2 a window: 1
    return AsyncLimiter(capacity, capacity / rate)


@dataclass(frozen=True)
class RequestBudget:
    """A tenant's pace (`tenant_requests_per_minute`) and the app's budget, taken in turn for
    each request: what a live reader's context calls its limiter."""

    tenant: AsyncLimiter
    app: AppBudget

    async def acquire(self) -> None:
        await self.tenant.acquire()
        await self.app.acquire()
