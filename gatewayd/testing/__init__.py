"""Fixtures and helpers for protocol-level test harnesses (usable outside this repository's tests)."""
