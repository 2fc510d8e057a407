"""Testing clients and protocol-level harnesses against a real gatewayd (docs/testing.md).

For teams that write clients of gatewayd and for gatewayd's own tests:

- ``dev``: ``DevGateway``, the gateway and its reference backend in the test's process
  (``publish`` an event, ``revoke`` a session, ``login`` clients); ``InMemoryGateway``, the
  same on a ``MemoryNetwork``;
- ``devprocess``: ``start_dev_process``, ``twist gatewayd --dev`` as a child process on a free
  port, for tests of the whole daemon (signals, reload, its command line);
- ``memory``: ``MemoryNetwork``, a reactor whose TCP stays in memory and whose time moves
  when told, to join any client and server without sockets;
- ``plugin``: the pytest plugin (``gatewayd_dev``, ``gatewayd_client``, ``gatewayd_memory``,
  ``gatewayd_config``), loaded through the ``pytest11`` entry point;
- ``client``: request builders where any field can be broken (``signed_execute_request``,
  ``signed_subscribe_request``), ``login``, ``start_gateway`` / ``running_gateway``,
  ``new_email``, ``Closer``;
- ``raw_h2`` / ``raw_http1``: clients that send exact HTTP/2 frames / HTTP/1.1 bytes and
  record everything the server sends (``raw_h2.FrameReader`` parses a peer's frames alone);
- ``public``: the public REST surface (``PublicHarness``) and one-request helpers over both
  HTTP versions;
- ``harness`` / ``server``: a server with scripted methods (``Harness``), or any method
  table, on a loopback port;
- ``events``: signed events and responses, and SubscribeEvents streams, checked against the
  wire contract;
- ``wait``: bounded waiting without sleeps (``until``, ``bounded``, ``Waitable``);
- ``redis``: a private ``redis-server``; ``redis_ha``: a primary, a replica and sentinels
  (``SentinelCluster``); ``certs``: a private CA issuing server and client certificates
  (``TestCA``); ``netns``: hosts in network namespaces on a private LAN (``NetnsLab``);
  ``tcp_proxy``: ``FaultProxy``, a loopback TCP proxy that cuts, restores and adds latency
  on command; ``procs``: child processes with a bound; ``loopback``: ``url`` / ``target`` of a
  loopback port.

Nothing here imports pytest except ``plugin``. The names in ``__all__`` are importable from
this package and load their module on first use: pytest imports the plugin (and so this
package) in every run where gatewayd is installed, and must not pay for the gateway then.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gatewayd.testing.client import DEV_CODE, new_email, signed_execute_request, signed_subscribe_request
    from gatewayd.testing.dev import DevGateway, InMemoryGateway, UnknownSession
    from gatewayd.testing.memory import MemoryNetwork, NotFired
    from gatewayd.testing.raw_h2 import RawH2Client
    from gatewayd.testing.raw_http1 import RawHttp1, http1_request, parse_http1_response

_HOMES = {
    "DEV_CODE": "client",
    "new_email": "client",
    "signed_execute_request": "client",
    "signed_subscribe_request": "client",
    "DevGateway": "dev",
    "InMemoryGateway": "dev",
    "UnknownSession": "dev",
    "MemoryNetwork": "memory",
    "NotFired": "memory",
    "RawH2Client": "raw_h2",
    "RawHttp1": "raw_http1",
    "http1_request": "raw_http1",
    "parse_http1_response": "raw_http1",
}

__all__ = [
    "DEV_CODE",
    "DevGateway",
    "InMemoryGateway",
    "MemoryNetwork",
    "NotFired",
    "RawH2Client",
    "RawHttp1",
    "UnknownSession",
    "http1_request",
    "new_email",
    "parse_http1_response",
    "signed_execute_request",
    "signed_subscribe_request",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
