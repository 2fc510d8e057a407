"""What a reload applies, in process: CORS origins, routes, budgets, access log (its target too),
heartbeats, log level and the TLS certificate (new connections get the new one); a refused file
changes nothing."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest_twisted
from twisted.internet import endpoints, reactor, threads
from twisted.protocols.tls import TLSMemoryBIOFactory

from gatewayd.config import Config
from gatewayd.observability.level import LevelGate
from gatewayd.pipeline.route import RouteStage
from gatewayd.reload import Reloader, ServerTLS, tls_options
from gatewayd.testing.client import start_gateway
from tests.integration.test_tls_alpn import _self_signed


def _peer_certificate(port: int, cafile: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        return tls.getpeercert(binary_form=True) or b""


@pytest_twisted.ensureDeferred
async def test_reload_applies_the_reloadable_keys_and_refuses_a_bad_file(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    cert1, key1 = _self_signed(tmp_path / "one")
    cert2, key2 = _self_signed(tmp_path / "two")
    gw = await start_gateway(str(tmp_path / "state"), server={"tls_certificate": str(cert1),
                                                              "tls_private_key": str(key1)})
    port: Any = None
    try:
        running: Config = gw.gateway.config
        service = SimpleNamespace(gateway=gw.gateway, config=running, tls=ServerTLS(tls_options(running)),
                                  level_gate=LevelGate("info"))
        port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            TLSMemoryBIOFactory(service.tls, False, gw.gateway.factory))
        number = port.getHost().port
        assert await threads.deferToThread(_peer_certificate, number, cert1)

        path = tmp_path / "gatewayd.toml"
        path.write_text(f"""
[server]
tls_certificate = "{cert2}"
tls_private_key = "{key2}"
cors_origins = ["https://app.example"]
heartbeat_interval_s = 25.0
max_message_bytes = 2048
[limits]
ip = {{ rate = 3.0, burst = 4 }}
[routes]
"user.only.this" = {{ method = "GET", path = "profile" }}
[access_log]
sample_rate = 0.25
target = "{tmp_path}/access.log"
[log]
level = "warn"
""")
        keep = {name: getattr(running, name) for name in ("dev", "backend", "stores")}
        reloader = Reloader(service, path, lambda c: c.replace(**keep))  # type: ignore[arg-type]
        assert reloader.reload()
        gateway = gw.gateway
        assert gateway.cors.allows("https://app.example")
        route = next(s for s in gateway.pipeline.stages if isinstance(s, RouteStage))
        assert list(route._routes) == ["user.only.this"]
        assert service.config.limits.ip.rate == 3.0
        assert gateway.access_log.config.sample_rate == 0.25
        sink = gateway.access_log.sink
        assert sink is not None and sink.target.path == tmp_path / "access.log"
        assert gateway.heartbeats.interval_s == 25.0
        assert service.config.server.max_message_bytes == running.server.max_message_bytes  # needs a restart
        assert service.level_gate.predicate.logLevelForNamespace("gatewayd").name == "warn"
        assert await threads.deferToThread(_peer_certificate, number, cert2)  # new connections: new cert

        path.write_text(f'[server]\ntls_certificate = "{tmp_path}/missing.pem"\ntls_private_key = "{key2}"\n'
                        '[routes]\n"x.y" = { method = "GET", path = "x" }\n')
        assert not reloader.reload()
        route = next(s for s in gateway.pipeline.stages if isinstance(s, RouteStage))
        assert list(route._routes) == ["user.only.this"]
        assert gateway.cors.allows("https://app.example")

        # An access log file that cannot be opened refuses the reload, before anything is applied.
        path.write_text(f'[access_log]\ntarget = "{tmp_path}/no/such/dir/access.log"\n'
                        '[routes]\n"x.y" = { method = "GET", path = "x" }\n')
        assert not reloader.reload()
        assert gateway.access_log.sink is sink and list(route._routes) == ["user.only.this"]
    finally:
        if port is not None:
            await port.stopListening()
        await gw.stop()
