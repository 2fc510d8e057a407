"""Listen backlogs: every listener gatewayd opens gets a production-sized accept queue.

Twisted's ``tcp:``, ``ssl:``, ``unix:`` (and our ``reuseport:``) endpoints
default to a backlog of 50. Under a burst of new connections the kernel drops
the SYNs that overflow it and the client retries after a second: a 1 s stall
per dropped connection. ``with_backlog`` adds ``backlog=N`` to an endpoint
string of those kinds unless it names one; other kinds (``systemd:``, whose
socket unit sets ``Backlog=``) are returned unchanged. The kernel caps the
value at ``net.core.somaxconn``.
"""

from __future__ import annotations

DEFAULT_BACKLOG = 1024

_TAKES_BACKLOG = frozenset({"tcp", "tcp6", "ssl", "unix", "reuseport"})


def with_backlog(description: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """``description`` with ``:backlog=N`` added when its endpoint kind takes one and it has none."""
    kind = description.split(":", 1)[0].strip().lower()
    if kind not in _TAKES_BACKLOG or ":backlog=" in description:
        return description
    return f"{description}:backlog={backlog}"
