"""Who can reach a listening endpoint: is it loopback only?

Dev mode logs anyone in as anyone (the fixed email code), so it must not be
reachable from the network by accident (PROTOCOL.md section 7).
``remote_reach(listen)`` reads a Twisted server endpoint string and says why
it may be reachable from other machines, or ``None`` when it is loopback only:

- ``tcp:``, ``tcp6:``, ``ssl:``, ``reuseport:`` with an interface in
  127.0.0.0/8 or ``::1`` (or ``localhost``) are loopback only; without an
  interface they listen on every interface;
- ``unix:`` sockets are not reachable over the network;
- a ``systemd:`` socket is judged by the address it is bound to;
- anything else (other plugins, host names) cannot be told from the string
  and counts as reachable.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

# Twisted's own endpoint-string splitter (escapes included), and its systemd parser, which took the
# inherited descriptors from the environment when Twisted was imported (removing LISTEN_FDS).
from twisted.internet.endpoints import _parse, _SystemdParser

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
    if kind == "systemd":
        return _systemd_reach(listen, kwargs)
    if kind not in _INTERFACE:
        return f"{listen!r} may listen on any address (only tcp, tcp6, ssl, reuseport, unix and systemd can be checked)"
    position, default = _INTERFACE[kind]
    interface = kwargs.get("interface")
    if interface is None and position is not None and len(args) > position:
        interface = args[position]
    if not interface:
        return f"{listen!r} listens on every interface ({default})"
    return _address_reach(listen, str(interface))


def _address_reach(listen: str, interface: str) -> str | None:
    if interface.lower() == "localhost":
        return None
    try:
        address = ipaddress.ip_address(interface.split("%", 1)[0])
    except ValueError:
        return f"{listen!r} names the host {interface!r}; give a loopback address such as 127.0.0.1"
    mapped = getattr(address, "ipv4_mapped", None)
    if address.is_loopback or (mapped is not None and mapped.is_loopback):
        return None
    if address.is_unspecified:
        return f"{listen!r} listens on every interface ({interface})"
    return f"{listen!r} listens on {interface}, which other machines can reach"


def _systemd_reach(listen: str, kwargs: dict[str, Any]) -> str | None:
    """Judge a socket handed over by systemd by the address it is bound to."""
    inherited = _SystemdParser._sddaemon
    try:
        if "index" in kwargs:
            fd = inherited.inheritedDescriptors()[int(kwargs["index"])]
        else:
            fd = inherited.inheritedNamedDescriptors()[str(kwargs["name"])]
    except (KeyError, IndexError, ValueError):
        return f"{listen!r}: systemd passed no such socket, so where it listens cannot be checked"
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError as e:
        return f"{listen!r}: the socket from systemd cannot be inspected ({e.strerror or e})"
    try:
        family, bound = sock.family, sock.getsockname()
    finally:
        sock.close()
    if family == socket.AF_UNIX:
        return None
    return _address_reach(f"{listen} (bound to {bound[0]})", str(bound[0]))
