"""The reference backend with a ledger and switchable faults, for ``bench/faults.py`` (not CI).

``python -m bench.ledger_backend --http PORT --push PORT --control PORT --ledger FILE``

- **The ledger.** Every ``POST /api/v1/user/notes`` the backend *executed*
  (the note exists) appends one JSON line ``{"rid", "t", "answer"}`` to
  ``--ledger``: ``rid`` is the gateway's ``X-Request-Id``, ``answer`` what the
  gateway was then told (``200``, ``500``, ``reset``, ``late``). A request_id
  that appears twice was executed twice.
- **Backend faults** on every HTTP route the gateway calls (user routes and
  session lookups; public auth is spared so a run can log in):
  ``5xx`` (even requests: 503 before executing; odd: executed, then 500),
  ``slow`` (executed at once, answered after a random delay in
  ``[slow_min_s, slow_max_s]``), ``reset`` (even: connection aborted before
  executing; odd: executed, then aborted).
- **The push stream** is served behind a ``FaultProxy``: ``push: cut|restore``;
  ``burst`` (``{"user_id", "notes"}``) publishes that many notes for one user
  at once (the caller cuts the stream while the gateways fan them out).

Control: ``POST http://127.0.0.1:CONTROL/fault`` with a JSON object of any of
``backend``, ``slow_min_s``, ``slow_max_s``, ``push``, ``burst``;
``GET /state``. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from gatewayd.devbackend.http import DevBackendResource
from gatewayd.devbackend.listeners import serve_push
from gatewayd.devbackend.service import DevBackend
from gatewayd.testing.tcp_proxy import FaultProxy

NOTES = b"/api/v1/user/notes"
PUBLIC = b"/api/v1/public/"
MODES = ("none", "5xx", "slow", "reset")


class Ledger:
    """Executed note creations as JSON lines, flushed every half second and at exit."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", buffering=1 << 16)
        self.lines = 0

    def executed(self, rid: str, answer: str) -> None:
        self._file.write(json.dumps({"rid": rid, "t": round(time.time(), 4), "answer": answer}) + "\n")
        self.lines += 1

    def flush(self) -> None:
        self._file.flush()


class FaultyBackend(Resource):
    """The dev backend's resource behind the current fault mode, recording executed notes."""

    isLeaf = True

    def __init__(self, inner: DevBackendResource, ledger: Ledger, reactor: Any) -> None:
        super().__init__()
        self.inner = inner
        self.ledger = ledger
        self.reactor = reactor
        self.mode = "none"
        self.slow = (0.5, 3.0)
        self.counter = 0
        self.counts: dict[str, int] = {}

    def render(self, request: Request) -> Any:
        mode = "none" if request.path.startswith(PUBLIC) else self.mode
        self.counter += 1
        before = self.counter % 2 == 0  # half the faulty answers come before executing
        self.counts[mode] = self.counts.get(mode, 0) + 1
        if mode == "5xx" and before:
            return self._answer(request, 503, "unavailable")
        if mode == "reset" and before:
            _abort(request)
            return NOT_DONE_YET
        body = self.inner.render(request)
        executed = request.path == NOTES and request.method == b"POST" and request.code == 200
        rid = (request.getHeader(b"x-request-id") or b"").decode()
        if mode == "none":
            self._record(executed, rid, "200")
            return body
        if mode == "5xx":
            self._record(executed, rid, "500")
            return self._answer(request, 500, "internal")
        if mode == "reset":
            self._record(executed, rid, "reset")
            _abort(request)
            return NOT_DONE_YET
        self._record(executed, rid, "late")
        finished: list[object] = []
        request.notifyFinish().addBoth(lambda result: finished.append(result))

        def late() -> None:
            if not finished:  # the gateway may have given up and closed the connection
                request.write(body)
                request.finish()

        self.reactor.callLater(random.uniform(*self.slow), late)
        return NOT_DONE_YET

    def _record(self, executed: bool, rid: str, answer: str) -> None:
        if executed:
            self.ledger.executed(rid, answer)

    @staticmethod
    def _answer(request: Request, status: int, code: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"error": {"code": code, "message": "injected fault"}}).encode()


def _abort(request: Request) -> None:
    transport: Any = request.transport
    transport.abortConnection()


class Control(Resource):
    """``POST`` switches faults (``world.apply``); ``GET`` tells them (``world.state``)."""

    isLeaf = True

    def __init__(self, world: Any) -> None:
        super().__init__()
        self.world = world

    def render_GET(self, request: Request) -> bytes:
        return json.dumps(self.world.state()).encode()

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        try:
            self.world.apply(json.loads(request.content.read()))
        except (ValueError, KeyError, TypeError) as e:
            request.setResponseCode(400)
            return json.dumps({"error": str(e)}).encode()
        return json.dumps(self.world.state()).encode()


class World:
    """The backend and its push proxy."""

    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        self.reactor = reactor
        self.args = args
        self.backend = DevBackend(reactor, fixed_code="000000", debug=False)
        self.ledger = Ledger(Path(args.ledger))
        self.http = FaultyBackend(DevBackendResource(self.backend), self.ledger, reactor)
        self.push_proxy = FaultProxy(reactor)
        self.bursts = 0

    async def start(self) -> None:
        from twisted.internet import endpoints

        push = await serve_push(self.reactor, "tcp:0:interface=127.0.0.1", self.backend)
        self.push_proxy.restore(push.port_number)
        await self.push_proxy.listen(self.args.push)
        site = Site(self.http)
        site.log = lambda request: None  # type: ignore[method-assign]
        await endpoints.TCP4ServerEndpoint(self.reactor, self.args.http, interface="127.0.0.1").listen(site)
        control = Site(Control(self))
        await endpoints.TCP4ServerEndpoint(self.reactor, self.args.control, interface="127.0.0.1").listen(control)
        task.LoopingCall(self.ledger.flush).start(0.5)
        print("ready", flush=True)

    def apply(self, change: dict[str, Any]) -> None:
        if "backend" in change:
            if change["backend"] not in MODES:
                raise ValueError(f"backend: one of {MODES}")
            self.http.mode = change["backend"]
        if "slow_min_s" in change or "slow_max_s" in change:
            self.http.slow = (float(change.get("slow_min_s", self.http.slow[0])),
                              float(change.get("slow_max_s", self.http.slow[1])))
        if change.get("push") == "cut":
            self.push_proxy.cut()
        elif change.get("push") == "restore":
            self.push_proxy.restore()
        if "burst" in change:
            spec = change["burst"]
            self.bursts += 1
            for i in range(int(spec["notes"])):
                self.backend.create_note(str(spec["user_id"]), f"burst-{self.bursts}-{i}")

    def state(self) -> dict[str, Any]:
        return {
            "backend": self.http.mode, "slow": self.http.slow, "requests": self.http.counts,
            "push_cut": self.push_proxy.is_cut, "push_subscribers": self.backend.bus.subscriber_count,
            "ledger_lines": self.ledger.lines, "bursts": self.bursts,
        }

    def stop(self) -> None:
        self.ledger.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--http", type=int, required=True)
    parser.add_argument("--push", type=int, required=True)
    parser.add_argument("--control", type=int, required=True)
    parser.add_argument("--ledger", required=True)
    args = parser.parse_args()
    from twisted.internet import reactor

    world = World(reactor, args)
    run_reactor(world.start, world.stop)


def run_reactor(start: Callable[[], Coroutine[Any, Any, None]], stop: Callable[[], None] = lambda: None) -> None:
    """Run the reactor with ``start()`` under way (a failure stops it) and ``stop`` at shutdown (SIGTERM)."""
    from twisted.internet import reactor

    run: Any = reactor

    def failed(failure: Any) -> None:
        failure.printTraceback()
        run.stop()

    run.addSystemEventTrigger("before", "shutdown", stop)
    defer.ensureDeferred(start()).addErrback(failed)
    run.run()


if __name__ == "__main__":
    main()
