"""Assemble the listener for a method table: RPC application, twisted.web site, factory."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from twisted.internet.interfaces import IReactorTime
from twisted.web.pages import notFound
from twisted.web.resource import IResource

from gatewayd.config import ServerConfig
from gatewayd.http2.limits import H2Limits
from gatewayd.rpc.methods import MethodTable
from gatewayd.rpc.server import RpcApplication
from gatewayd.transport.cors import CorsPolicy
from gatewayd.transport.exchange import Exchange
from gatewayd.transport.http1 import GatewaySite, rpc_body_limit
from gatewayd.transport.listener import GatewayFactory

# Non-RPC bodies (the public REST surface) are small; the app enforces its own, lower limit.
MAX_WEB_BODY_BYTES = 64 * 1024


def h2_limits(config: ServerConfig) -> H2Limits:
    return H2Limits(
        max_concurrent_streams=config.max_concurrent_streams,
        max_header_list_bytes=config.max_header_list_bytes,
        idle_timeout_s=config.idle_timeout_s,
        keepalive_interval_s=config.keepalive_interval_s,
        keepalive_timeout_s=config.keepalive_timeout_s,
        send_timeout_s=config.send_timeout_s,
        rapid_reset_window=config.rapid_reset_window,
        control_frame_burst=config.control_frame_burst,
        control_frame_rate=config.control_frame_rate,
    )


def peer_resolver(trusted_proxies: Iterable[str]) -> Callable[[Exchange], str]:
    """The client address: the socket peer, or the last untrusted ``X-Forwarded-For`` hop
    when the socket peer is a configured trusted proxy (none by default)."""
    networks = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]
    if not networks:
        return lambda exchange: exchange.peer

    def trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in networks)

    def resolve(exchange: Exchange) -> str:
        peer = exchange.peer
        if not trusted(peer):
            return peer
        hops = [h.strip() for h in exchange.headers.get("x-forwarded-for", "").split(",") if h.strip()]
        for hop in reversed(hops):
            if not trusted(hop):
                return hop
            peer = hop
        return peer

    return resolve


def build_factory(
    methods: MethodTable,
    clock: IReactorTime,
    config: ServerConfig,
    web_resource: IResource | None = None,
    cors: CorsPolicy | None = None,
) -> tuple[GatewayFactory, RpcApplication]:
    """A listening factory serving ``methods`` (and ``web_resource`` for everything else)."""
    app = RpcApplication(
        methods,
        clock,
        cors or CorsPolicy(config.cors_origins),
        max_message_bytes=config.max_message_bytes,
        stream_buffer_bytes=config.stream_buffer_bytes,
        resolve_peer=peer_resolver(config.trusted_proxies),
    )
    site = GatewaySite(
        web_resource or notFound(),
        app,
        max_body_bytes=MAX_WEB_BODY_BYTES,
        max_header_bytes=config.max_header_list_bytes,
        timeout=config.idle_timeout_s or None,  # type: ignore[arg-type]
        max_rpc_body_bytes=rpc_body_limit(config.max_message_bytes),
        header_timeout_s=config.request_header_timeout_s or None,
        body_timeout_s=config.request_body_timeout_s or None,
        send_timeout_s=config.send_timeout_s or None,
    )
    return GatewayFactory(app, site, clock, h2_limits(config)), app
