"""Who can reach a listening endpoint: is it loopback only?

Dev mode logs anyone in as anyone (the fixed email code), so it must not be
reachable from the network by accident (PROTOCOL.md section 7).
``remote_reach(listen)`` reads a Twisted server endpoint string and says why
it may be reachable from other machines, or ``None`` when it is loopback only:

- ``tcp:``, ``tcp6:``, ``ssl:``, ``reuseport:`` with an interface in
  127.0.0.0/8 or ``::1`` (or ``localhost``) are loopback only; without an
  interface they listen on every interface;
- ``unix:`` sockets are not reachable over the network;
- anything else (``systemd:`` sockets, other plugins, host names) cannot be
  told from the string and counts as reachable.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.endpoints import _parse  # Twisted's own endpoint-string splitter (escapes included)

# Where each kind takes its interface positionally (``tcp:8080:127.0.0.1``) and its default.
_INTERFACE = {"tcp": (2, "0.0.0.0"), "tcp6": (2, "::"), "ssl": (5, "0.0.0.0"), "reuseport": (None, "0.0.0.0")}
_LOCAL_KINDS = {"unix"}


def remote_reach(listen: str) -> str | None:
    """Why ``listen`` may accept connections from other machines; ``None`` if only from this one."""
    try:
        args, kwargs = _parse(listen)
    except Exception:  # e.g. a trailing backslash; Twisted refuses the string later with its own message
        return f"{listen!r} is not an endpoint string this check understands"
    kind = str(args[0]).lower() if args else ""
    if kind in _LOCAL_KINDS:
        return None
    if kind not in _INTERFACE:
        return f"{listen!r} may listen on any address (only tcp, tcp6, ssl, reuseport and unix can be checked)"
    position, default = _INTERFACE[kind]
    interface = kwargs.get("interface")
    if interface is None and position is not None and len(args) > position:
        interface = args[position]
    if not interface:
        return f"{listen!r} listens on every interface ({default})"
    if str(interface).lower() == "localhost":
        return None
    try:
        address = ipaddress.ip_address(str(interface))
    except ValueError:
        return f"{listen!r} names the host {interface!r}; give a loopback address such as 127.0.0.1"
    mapped = getattr(address, "ipv4_mapped", None)
    if address.is_loopback or (mapped is not None and mapped.is_loopback):
        return None
    if address.is_unspecified:
        return f"{listen!r} listens on every interface ({interface})"
    return f"{listen!r} listens on {interface}, which other machines can reach"
