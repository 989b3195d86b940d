"""Rate limits (a token bucket per principal and service) and the usage counters operators read.

Pure bookkeeping with an injectable clock; the pack decides what a refusal
looks like (`ResourceExhausted`, so callers get RESOURCE_EXHAUSTED / -32032
with `retryAfterSeconds` in the error data).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RateLimiter", "TokenBucket", "Usage", "UsageCounters"]


@dataclass(slots=True)
class TokenBucket:
    """`capacity` tokens at most, refilled at `rate` per second; a call takes one."""

    rate: float
    capacity: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """0 when a token was taken; otherwise the seconds until one will be there."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """Buckets by (principal, service), each made full on first use."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def take(self, principal: str, service: str, per_minute: float, burst: int) -> float:
        key = (principal, service)
        now = self._clock()
        bucket = self._buckets.get(key)
        rate = per_minute / 60.0
        if bucket is None or bucket.rate != rate or bucket.capacity != burst:
            bucket = TokenBucket(rate, float(burst), float(burst), now)
            self._buckets[key] = bucket
        return bucket.take(now)


@dataclass(slots=True)
class Usage:
    calls: int = 0
    ok: int = 0
    client_errors: int = 0
    server_errors: int = 0
    failed: int = 0
    """No response: refused by the guard, a network error, a timeout, or the call cancelled (or
    abandoned at the caller's deadline) before the response came."""
    rate_limited: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    last_call: float | None = None
    last_status: int | None = None
    by_risk: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "ok": self.ok,
            "client_errors": self.client_errors,
            "server_errors": self.server_errors,
            "failed": self.failed,
            "rate_limited": self.rate_limited,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "last_call": self.last_call,
            "last_status": self.last_status,
            "by_risk": dict(sorted(self.by_risk.items())),
        }


class UsageCounters:
    """Counters per (principal, service), per hub process; `dirty` tells the flusher to write them."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._usage: dict[tuple[str, str], Usage] = {}
        self.dirty = False

    def _get(self, principal: str, service: str) -> Usage:
        key = (principal, service)
        usage = self._usage.get(key)
        if usage is None:
            usage = self._usage[key] = Usage()
        self.dirty = True
        return usage

    def rate_limited(self, principal: str, service: str) -> None:
        self._get(principal, service).rate_limited += 1

    def started(self, principal: str, service: str, risk: str, bytes_sent: int) -> None:
        usage = self._get(principal, service)
        usage.calls += 1
        usage.bytes_sent += bytes_sent
        usage.last_call = self._clock()
        usage.by_risk[risk] = usage.by_risk.get(risk, 0) + 1

    def finished(self, principal: str, service: str, status: int | None, bytes_received: int) -> None:
        usage = self._get(principal, service)
        usage.last_status = status
        usage.bytes_received += bytes_received
        if status is None:
            usage.failed += 1
        elif status < 400:
            usage.ok += 1
        elif status < 500:
            usage.client_errors += 1
        else:
            usage.server_errors += 1

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"principal": p, "service": s, **u.as_dict()} for (p, s), u in sorted(self._usage.items())]
