"""Which client a per-IP budget belongs to (PROTOCOL.md section 3 and 4; docs/protocol.md).

``budget_address`` is the one rule the RPC pipeline's IP budget and the public login
budgets share: an IPv4 address is itself; an IPv6 address counts as its /64 network,
the block one host or one customer line usually owns, so hopping addresses inside it
buys nothing; an IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, a dual-stack socket's
view of an IPv4 client) is the IPv4 address. A port is never part of it.
"""

from __future__ import annotations

import hashlib
import ipaddress
from functools import lru_cache

_V6_PREFIX_MASK = ((1 << 64) - 1) << 64


def peer_host(peer: str) -> str:
    """The address part of ``peer``: ``1.2.3.4:5678`` -> ``1.2.3.4``, ``[::1]:80`` -> ``::1``.

    A bare address (IPv4 or IPv6) is returned as it is.
    """
    if peer.startswith("["):
        end = peer.find("]")
        return peer[1:end] if end > 0 else peer
    if peer.count(":") == 1:
        return peer.partition(":")[0]
    return peer


@lru_cache(maxsize=4096)  # the same few peers come back on every call; a miss costs a few microseconds
def budget_address(peer: str) -> str:
    """The budget owner of ``peer`` (an address, with or without a port): ``203.0.113.5``,
    ``2001:db8:1:2::/64``; a peer that is no IP address (a unix socket, say) is ``?`` and a
    digest of it, stable and bounded in length."""
    try:
        address = ipaddress.ip_address(peer_host(peer))
    except ValueError:
        return "?" + hashlib.sha256(peer.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return f"{ipaddress.IPv6Address(int(address) & _V6_PREFIX_MASK)}/64"
    return str(address)


__all__ = ["budget_address", "peer_host"]
