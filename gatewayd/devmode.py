"""``--dev``: the reference backend in-process, reached over loopback like a remote one."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from gatewayd.config import Budget, Config

log = Logger()

DEV_LISTEN = "tcp:8080:interface=127.0.0.1"

#: The least IP budget of authenticated calls in dev mode (PROTOCOL.md section 7): every
#: local client shares 127.0.0.1, so the production default would throttle a developer's load test.
DEV_MIN_IP_BUDGET = Budget(rate=2000.0, burst=4000)


def dev_config(config: Config, state_dir: str | None) -> Config:
    """Dev defaults on top of ``config``: memory stores, loopback listener, dev CORS, fixed email code,
    and an IP budget of at least ``DEV_MIN_IP_BUDGET``."""
    listen = config.server.listen if config.server.listen != "tcp:8080" else DEV_LISTEN
    ip = config.limits.ip
    return config.replace(
        dev={"enabled": True, **({"state_dir": state_dir} if state_dir else {})},
        stores={"kind": "memory"},
        server={"listen": listen},
        limits={"ip": Budget(max(ip.rate, DEV_MIN_IP_BUDGET.rate), max(ip.burst, DEV_MIN_IP_BUDGET.burst))},
    )


@defer.inlineCallbacks
def start_dev_backend(config: Config) -> Any:
    """Start the reference backend on free loopback ports; fire with the config pointing at it."""
    from twisted.internet import reactor

    from gatewayd.devbackend.listeners import DevBackendService
    from gatewayd.devbackend.service import DevBackend

    backend = DevBackend(reactor, fixed_code=config.dev.email_code, debug=True)
    service = DevBackendService(reactor, backend, "tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1",
                                backlog=config.server.listen_backlog)
    yield service.startService()
    # Stopped after the gateway: the gateway's own shutdown still reaches it.
    reactor.addSystemEventTrigger("after", "shutdown", service.stopService)
    http_port = service.http_port.getHost().port
    push_port = service.push_server.port_number  # type: ignore[union-attr]
    log.info(
        "dev mode: reference backend on 127.0.0.1:{http} (REST) and 127.0.0.1:{push} (push); "
        "email code {code} is accepted for any address",
        http=http_port, push=push_port, code=config.dev.email_code,
    )
    reactor.callWhenRunning(_print_next_steps, config)
    return config.replace(
        backend={
            "base_url": f"http://127.0.0.1:{http_port}",
            "push_endpoint": f"tcp:host=127.0.0.1:port={push_port}",
        }
    )


def _print_next_steps(config: Config) -> None:
    listen = config.server.listen
    port = next((p for p in listen.split(":") if p.isdigit()), "8080")
    url = f"http://127.0.0.1:{port}"
    log.info(
        "\n  gatewayd dev mode is up on {url} (gRPC h2c, gRPC-Web, Connect; key in {state}).\n"
        "  Try:\n"
        "    gatewayctl --gateway {url} login --email you@example.com --code {code}\n"
        "    gatewayctl --gateway {url} exec user.profile.get\n"
        "    gatewayctl --gateway {url} exec user.notes.create '{{\"text\": \"hello\"}}' --protocol grpc\n"
        "    gatewayctl --gateway {url} subscribe\n"
        "    curl {url}/readyz",
        url=url, state=config.dev.state_dir, code=config.dev.email_code,
    )
