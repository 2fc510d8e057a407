"""Benchmark 2b: mean microseconds per pipeline stage, in-process, with ``Pipeline(on_stage=...)``.

One reactor holds the reference backend (on loopback ports, reached over HTTP
like a remote one) and a ``Pipeline`` wired like ``gatewayd.service.Gateway``
but with a recorder. Requests are pre-signed (unique request_id each) and fed
straight to ``Pipeline.execute_command``: no transport, no framing. Run
pinned: ``taskset -c 0``. Stores: memory, or Redis with ``--redis-url``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey
from twisted.internet import defer, task

from bench._common import CLIENT_CORE, emit, exit_on_sigterm, free_port, start, wait_port
from bench.loadgen import sign_requests
from gatewayd._proto.gateway.v1.gateway_pb2 import ExecuteCommandRequest
from gatewayd.config import Budget, Config, LimitsConfig
from gatewayd.pipeline.pipeline import Pipeline
from gatewayd.rpc.call import Call

BIG = Budget(rate=1e6, burst=1_000_000)


class Recorder:
    """Collects ``on_stage`` reports: seconds per stage, outcomes."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.outcomes: dict[str, int] = defaultdict(int)
        self.enabled = False

    def __call__(self, stage: str, seconds: float, outcome: str) -> None:
        if self.enabled:
            self.seconds[stage].append(seconds)
            self.outcomes[f"{stage}:{outcome}"] += 1


async def run(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    from gatewayd.devbackend.listeners import DevBackendService
    from gatewayd.devbackend.service import DevBackend
    from gatewayd.service import Gateway

    backend = DevBackend(reactor, fixed_code="000000", debug=False)
    service = DevBackendService(reactor, backend, "tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1")
    await service.startService()
    http = service.http_port.getHost().port
    stores: dict[str, Any] = {"kind": "memory"}
    if args.redis_url:
        stores = {"kind": "redis", "redis_url": args.redis_url}
    config = Config().replace(
        dev={"enabled": True, "state_dir": args.state_dir}, stores=stores,
        backend={"base_url": f"http://127.0.0.1:{http}"},
        limits=LimitsConfig(ip=BIG, session=BIG, user=BIG, message_type=BIG),
    )
    gateway = Gateway(config, reactor)  # not listening: we only borrow its parts
    recorder = Recorder()
    pipeline = Pipeline(clock=reactor, sessions=gateway.sessions, stores=gateway.stores, backend=gateway.backend_calls,
                        routes=config.routes, signer=gateway.response_signer,
                        freshness_window_s=config.security.freshness_window_s, limits=config.limits,
                        on_stage=recorder)
    sessions = []
    for i in range(4):
        key = SigningKey.generate()
        import base64
        challenge = backend.send_email_code("stages@example.com")
        s = backend.confirm_email_code(challenge, "000000", base64.b64encode(bytes(key.verify_key)).decode())
        sessions.append({"device_session_id": s.device_session_id, "seed_hex": bytes(key).hex()})
        del i
    bodies = sign_requests(sessions, args.warmup + args.requests, args.message_type, args.payload.encode())
    requests = [ExecuteCommandRequest.FromString(b) for b in bodies]
    call = Call(method="/gateway.v1.Gateway/ExecuteCommand", protocol="grpc", metadata={}, peer="127.0.0.1:1")
    codes: dict[str, int] = defaultdict(int)

    async def one(req: ExecuteCommandRequest) -> None:
        resp = await pipeline.execute_command(call, req)
        codes[resp.envelope.result_code] += 1

    # Sequential in batches of --concurrency: stage times then include no queueing behind other requests
    # except within a batch (backend round trips overlap).
    for phase, reqs in (("warmup", requests[: args.warmup]), ("measure", requests[args.warmup:])):
        recorder.enabled = phase == "measure"
        t0 = time.perf_counter()
        for i in range(0, len(reqs), args.concurrency):
            await defer.gatherResults([defer.Deferred.fromCoroutine(one(r))
                                       for r in reqs[i:i + args.concurrency]], consumeErrors=True)
        elapsed = time.perf_counter() - t0
    await gateway.backend.close()
    await gateway.stores.close()
    await service.stopService()
    per_stage = {k: 1e6 * sum(v) / len(v) for k, v in recorder.seconds.items()}
    return {"bench": "stages", "stores": stores["kind"], "requests": args.requests, "concurrency": args.concurrency,
            "message_type": args.message_type, "mean_us": per_stage,
            "total_mean_us": sum(per_stage.values()), "wall_rps": args.requests / elapsed,
            "result_codes": dict(codes), "outcomes": dict(recorder.outcomes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--message-type", default="user.profile.get")
    parser.add_argument("--payload", default="")
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--redis", action="store_true", help="start a private redis-server (core 1) and use it")
    parser.add_argument("--state-dir", default="/tmp/bench-stages")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    exit_on_sigterm()
    signal.signal(signal.SIGALRM, lambda signum, frame: sys.exit(128 + signum))
    signal.alarm(900)  # bounded in time even if the backend hangs

    redis = None
    if args.redis and not args.redis_url:
        port = free_port()
        redis = start("redis-stages", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no"], CLIENT_CORE, Path(args.state_dir))
        wait_port(port, proc=redis.popen)
        args.redis_url = f"redis://127.0.0.1:{port}/0"

    def go(reactor: Any) -> Any:
        async def body() -> None:
            emit(await run(reactor, args), args.out)
        return defer.Deferred.fromCoroutine(body())

    try:
        task.react(go)
    finally:
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    main()
