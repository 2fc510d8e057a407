"""gatewayd.stores: replay reservations and rate budgets, in memory or in Redis."""

from gatewayd.stores.base import (
    RateDecision,
    RateLimiter,
    ReplayStore,
    Stores,
    StoreUnavailable,
    build_stores,
)

__all__ = ["RateDecision", "RateLimiter", "ReplayStore", "StoreUnavailable", "Stores", "build_stores"]
