"""Several hosts, for real: two gateways, one Redis and the backend, each in a network namespace of its own.

The namespaces share a private LAN (10.251.N.0/24, never routed off the
machine); the test talks to every host from its own namespace. Each gateway
is a production ``twist gatewayd --config`` process with Redis stores; they
share the signing key, the Redis and the backend, and nothing else.

What holds across hosts:

- a request accepted by one gateway is ALREADY_EXISTS at the other (replay
  reservations are in the shared Redis), in both directions;
- a rate budget spent on one gateway is spent on the other;
- a client that moves from one gateway to the other keeps its session
  (logged in at A, calling B) and its event streams: a stream on B after one
  on A gets the same events, and revoking the session ends the streams on
  both gateways with FAILED_PRECONDITION, after which both refuse the session.

Skipped, with the reason, where namespaces cannot be made (not root, no
CAP_NET_ADMIN, no iproute2).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor

from gatewayd.client import GatewayClient, RpcCallError
from gatewayd.client.verify import VerifiedEvent
from gatewayd.rpc.codes import Code
from gatewayd.signing import GatewayKey
from gatewayd.testing.client import login, new_email, signed_execute_request
from gatewayd.testing.netns import Host, NetnsLab, unavailable
from gatewayd.testing.redis_ha import command
from gatewayd.testing.wait import until

TWIST = str(Path(sys.executable).with_name("twist"))
ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
REDIS_PORT, HTTP_PORT, PUSH_PORT, GATEWAY_PORT = 6379, 8081, 8082, 8080
#: message_type budget per user: small, and refilled too slowly to matter during the test.
BURST = 6


@dataclass
class Hosts:
    lab: NetnsLab
    redis: Host
    backend: Host
    a: Host
    b: Host

    def url(self, gateway: Host) -> str:
        return f"http://{gateway.address}:{GATEWAY_PORT}"


def _gateway_config(path: Path, hosts: Hosts, me: Host, key: Path) -> None:
    path.write_text(
        f'[server]\nlisten = "tcp:{GATEWAY_PORT}:interface={me.address}"\ndrain_timeout_s = 2.0\n'
        f'[backend]\nbase_url = "http://{hosts.backend.address}:{HTTP_PORT}"\n'
        f'push_endpoint = "tcp:host={hosts.backend.address}:port={PUSH_PORT}"\ngateway_id = "{me.name}"\n'
        f'push_backoff_initial_s = 0.1\npush_backoff_max_s = 1.0\n'
        f'[keys]\nsigning_key = "{key}"\n'
        f'[stores]\nkind = "redis"\nredis_url = "redis://{hosts.redis.address}:{REDIS_PORT}/0"\n'
        f'key_prefix = "multihost:"\n'
        f'[limits]\nmessage_type = {{ rate = 0.001, burst = {BURST} }}\n'
    )


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"several hosts need network namespaces: {reason}")
    with NetnsLab() as lab:
        hosts = Hosts(lab, lab.host("redis"), lab.host("backend"), lab.host("gwa"), lab.host("gwb"))
        lab.run(hosts.redis, [
            "redis-server", "--bind", hosts.redis.address, "--port", str(REDIS_PORT), "--protected-mode", "no",
            "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
        ], tmp_path / "redis.log")  # fmt: skip
        lab.run(hosts.backend, [
            TWIST, "--log-format=text", "gatewayd-devbackend",
            "--http", f"tcp:{HTTP_PORT}:interface={hosts.backend.address}",
            "--push", f"tcp:{PUSH_PORT}:interface={hosts.backend.address}",
        ], tmp_path / "backend.log", cwd=ROOT)  # fmt: skip
        key = tmp_path / "gateway.key"
        GatewayKey.generate().save(key)  # one logical gateway: the same key on every host
        for gateway in (hosts.a, hosts.b):
            config = tmp_path / f"{gateway.name}.toml"
            _gateway_config(config, hosts, gateway, key)
            lab.run(gateway, [TWIST, "--log-format=text", "gatewayd", "--config", str(config)],
                    tmp_path / f"{gateway.name}.log", cwd=ROOT)
        yield hosts


async def ready(hosts: Hosts, logs: Path) -> None:
    """Both gateways answer /readyz 200: backend, Redis and the push stream are up on each."""

    async def answers(gateway: Host) -> bool:
        for process in hosts.lab.processes:
            if process.poll() is not None:
                tails = "\n---\n".join(p.read_text(errors="replace")[-2000:] for p in logs.glob("*.log"))
                raise AssertionError(f"{process.args} exited {process.returncode}:\n{tails}")
        try:
            response = await treq.get(hosts.url(gateway) + "/readyz", timeout=2.0, persistent=False)
            await response.content()
        except Exception:
            return False
        return bool(response.code == 200)

    for gateway in (hosts.a, hosts.b):
        await until(lambda g=gateway: answers(g), f"{gateway.name} to be ready", timeout=START_TIMEOUT_S,
                    interval=0.1)


def client_addresses(hosts: Hosts) -> set[str]:
    """The hosts Redis has clients from."""
    clients = command(REDIS_PORT, "CLIENT", "LIST", host=hosts.redis.address)
    return {field.split("=", 1)[1].rsplit(":", 1)[0]
            for line in clients.splitlines() for field in line.split() if field.startswith("addr=")}


async def refused(d: Any) -> RpcCallError:
    with pytest.raises(RpcCallError) as info:
        await d
    return info.value


@pytest_twisted.ensureDeferred
async def test_two_gateways_on_two_hosts_are_one_gateway(hosts: Hosts, tmp_path: Path) -> None:
    await ready(hosts, tmp_path)
    # Two hosts really: Redis sees connections from each gateway's own address.
    assert {hosts.a.address, hosts.b.address} <= client_addresses(hosts)

    key, session = await login(hosts.url(hosts.a), new_email("multihost"))
    a = GatewayClient(hosts.url(hosts.a), "connect", key=key, session=session, timeout_s=10.0)
    b = GatewayClient(hosts.url(hosts.b), "grpc", key=key, session=session, timeout_s=10.0)
    try:
        # 1. Replay reservations hold across hosts, both ways.
        for first, second in ((a, b), (b, a)):
            request = signed_execute_request(key, session.device_session_id, "user.profile.get")
            assert (await first.send(request)).ok
            assert (await refused(second.send(request))).code == Code.ALREADY_EXISTS
            assert (await refused(first.send(request))).code == Code.ALREADY_EXISTS

        # 2. A budget spent on one host is spent on the other: BURST calls in all, alternating.
        for i in range(BURST):
            assert (await (a if i % 2 else b).execute("user.notes.list")).ok
        for client in (a, b):
            spent = await refused(client.execute("user.notes.list"))
            assert spent.code == Code.RESOURCE_EXHAUSTED
            assert spent.retry_after is not None and spent.retry_after > 0

        # 3. Streams: subscribe on A, then (the client moved) on B; both get what happens anywhere.
        events: dict[str, list[VerifiedEvent]] = {"a": [], "b": []}
        streams = {"a": a.subscribe(events["a"].append)}

        def types(name: str) -> list[str]:
            return [e.event_type for e in events[name]]

        await until(lambda: types("a")[:1] == ["gateway.server_time"], "A's stream to start")
        assert (await b.execute("user.notes.create", {"text": "written through B"})).ok
        await until(lambda: "user.note.created" in types("a"), "the note made on B to reach the stream on A")

        streams["b"] = b.subscribe(events["b"].append)
        await until(lambda: types("b")[:1] == ["gateway.server_time"], "B's stream to start")
        assert (await a.execute("user.notes.create", {"text": "written through A"})).ok
        for name in ("a", "b"):
            await until(lambda n=name: any((e.json() or {}).get("text") == "written through A" for e in events[n]),
                        f"the note made on A to reach the stream on {name}")

        # 4. Revoking the session (through B) ends the streams on both hosts, and both refuse it after.
        assert (await b.execute("user.sessions.revoke", {})).ok
        for name, stream in streams.items():
            ended = await refused(stream.addTimeout(10.0, reactor))
            assert ended.code == Code.FAILED_PRECONDITION, (name, ended)
        for client in (a, b):
            assert (await refused(client.execute("user.profile.get"))).code == Code.UNAUTHENTICATED
    finally:
        await a.close()
        await b.close()
    for gateway in (hosts.a, hosts.b):
        log = (tmp_path / f"{gateway.name}.log").read_text(errors="replace")
        assert "Traceback" not in log, f"{gateway.name} logged a traceback:\n{log[-4000:]}"
