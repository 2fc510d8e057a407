"""A ``FaultProxy`` in a process of its own, for ``bench/faults.py`` (Redis slowed; not CI).

``python -m bench.faults_proxy --listen PORT --target PORT --control PORT``

Forwards ``127.0.0.1:listen`` to ``127.0.0.1:target``. ``POST
http://127.0.0.1:CONTROL/`` with ``{"delay_s": x}`` sets the one-way latency
added to every chunk (both directions, in order); ``{"cut": true|false}``
cuts or restores; ``GET`` tells the state. Its own process, so a busy
neighbour (the backend) does not slow Redis by accident. Loopback only.
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import endpoints
from twisted.web.server import Site

from bench.ledger_backend import Control, run_reactor
from gatewayd.testing.tcp_proxy import FaultProxy


class ProxyControl:
    """What ``Control`` switches: the proxy's latency and cut."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy

    def apply(self, change: dict[str, Any]) -> None:
        if "delay_s" in change:
            self.proxy.delay_s = float(change["delay_s"])
        if change.get("cut") is True:
            self.proxy.cut()
        elif change.get("cut") is False:
            self.proxy.restore()

    def state(self) -> dict[str, Any]:
        return {"delay_s": self.proxy.delay_s, "cut": self.proxy.is_cut, "connections": len(self.proxy.pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--target", type=int, required=True)
    parser.add_argument("--control", type=int, required=True)
    args = parser.parse_args()
    from twisted.internet import reactor

    async def serve() -> None:
        proxy = FaultProxy(reactor, args.target)
        await proxy.listen(args.listen)
        site = Site(Control(ProxyControl(proxy)))
        await endpoints.TCP4ServerEndpoint(reactor, args.control, interface="127.0.0.1").listen(site)
        print("ready", flush=True)

    run_reactor(serve)


if __name__ == "__main__":
    main()
