"""What a backend HTTP call ends in: an answer (any status) or ``BackendUnavailable``."""

from __future__ import annotations

from dataclasses import dataclass


class BackendUnavailable(Exception):
    """The backend could not be reached or did not answer in time (or answered garbage)."""


@dataclass(frozen=True, slots=True)
class BackendAnswer:
    """An HTTP answer from the backend: any status, the raw body."""

    status: int
    body: bytes
