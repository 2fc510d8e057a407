"""HTTP request bodies written on a given reactor (for treq and Agent clients)."""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.task import Cooperator
from twisted.web.client import FileBodyProducer


def request_body(reactor: Any, body: bytes) -> FileBodyProducer:
    """``body`` as an HTTP request body written by a cooperator on ``reactor``.

    ``FileBodyProducer``'s default cooperator runs on the global reactor: a client
    given another reactor (a ``Clock``-driven in-memory network) would never send.
    """
    return FileBodyProducer(io.BytesIO(body), cooperator=Cooperator(scheduler=lambda work: reactor.callLater(0, work)))
