"""Moved to gatewayd.http2.limits; these names stay importable from here."""

from gatewayd.http2.limits import H2Limits, TokenBucket, TurnBudget

__all__ = ["H2Limits", "TokenBucket", "TurnBudget"]
