"""Run third-party clients as child processes without blocking the reactor.

``NodeClient`` runs ``node/client.mjs`` (connect-es) with a JSON plan and
collects the JSON lines it prints as they arrive, so a test can wait for a
stream's first message, act on the server, then wait for more. ``run_tool``
runs a short command (``buf curl``, built by ``buf_curl``) to completion.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue

from gatewayd.testing.procs import ChildProcess, child_env

ROOT = pathlib.Path(__file__).resolve().parents[2]
NODE_SCRIPT = ROOT / "tests" / "interop" / "node" / "client.mjs"
NODE_MODULES = ROOT / "node_modules" / "@connectrpc" / "connect-node"
BUF = ROOT / ".venv" / "bin" / "buf"
PROTO_DIR = ROOT / "proto"
PLAN_ARG_LIMIT = 64 * 1024
# buf curl's (protocol, HTTP/2 prior knowledge) pairs: gRPC needs HTTP/2; the others are tried on both.
BUF_VARIANTS = [("connect", False), ("connect", True), ("grpc", True), ("grpcweb", False), ("grpcweb", True)]

Event = dict[str, Any]


def buf_curl(url: str, method_path: str, protocol: str, http2: bool, body: Any, verbose: bool = False) -> list[str]:
    """The ``buf curl`` command calling ``url/method_path`` with ``body`` (protobuf JSON) over ``protocol``,
    the schema read from ``proto/``."""
    argv = [str(BUF), "curl", "--schema", str(PROTO_DIR), "--protocol", protocol, "-d", json.dumps(body)]
    if http2:
        argv.append("--http2-prior-knowledge")
    if verbose:
        argv.append("-v")
    return [*argv, f"{url}/{method_path}"]


def node_available() -> bool:
    return shutil.which("node") is not None and NODE_MODULES.is_dir()


def _remove_file(result: object, name: str) -> object:
    os.unlink(name)
    return result


class _Waiter:
    def __init__(self, predicate: Callable[[Event], bool]) -> None:
        self.predicate = predicate
        self.deferred: defer.Deferred[Event] = defer.Deferred()


class NodeClient(ChildProcess):
    """One ``node client.mjs PLAN`` process; ``events`` holds every JSON line it printed."""

    def __init__(self, plan: dict[str, Any]) -> None:
        super().__init__()
        self.plan = plan
        self.events: list[Event] = []
        self.stderr = b""
        self._partial = b""
        self._waiters: list[_Waiter] = []

    # -- starting and talking ---------------------------------------------------------

    @classmethod
    def start(cls, plan: dict[str, Any], timeout: float = 20.0) -> NodeClient:
        """Spawn the client; it is killed if still running after ``timeout`` seconds."""
        client = cls(plan)
        text = json.dumps(plan)
        if len(text) > PLAN_ARG_LIMIT:
            # One argv string may not exceed 128 KiB (MAX_ARG_STRLEN): hand over a file.
            fd, name = tempfile.mkstemp(prefix="interop-plan-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                f.write(text)
            text = "@" + name
            client.ended.addBoth(_remove_file, name)
        client.spawn(["node", str(NODE_SCRIPT), text], str(ROOT), timeout)
        return client

    def send_line(self, line: str = "go") -> None:
        """Answer a ``pause`` step."""
        assert self.transport is not None
        self.transport.write(line.encode() + b"\n")

    def wait_for(self, predicate: Callable[[Event], bool]) -> defer.Deferred[Event]:
        """Fires with the first event (already seen or later) matching ``predicate``;
        fails if the process ends without printing one."""
        for event in self.events:
            if predicate(event):
                return defer.succeed(event)
        if self.exit_code is not None:
            return defer.fail(AssertionError(self._describe("no matching event")))
        waiter = _Waiter(predicate)
        self._waiters.append(waiter)
        return waiter.deferred

    def wait_event(self, step_id: str, event: str) -> defer.Deferred[Event]:
        return self.wait_for(lambda e: e.get("id") == step_id and e.get("event") == event)

    @defer.inlineCallbacks
    def result(self):  # type: ignore[no-untyped-def]
        """Wait for the process to exit 0; fires with ``{step_id: {"messages": [...], "end": {...}}}``."""
        code = yield self.ended
        if code != 0:
            raise AssertionError(self._describe(f"node exited with {code}"))
        return self.by_step()

    def by_step(self) -> dict[str, dict[str, Any]]:
        steps: dict[str, dict[str, Any]] = {}
        for event in self.events:
            step_id = event.get("id")
            if step_id is None:
                continue
            step = steps.setdefault(step_id, {"messages": [], "headers": None, "end": None})
            if event["event"] == "message":
                step["messages"].append(event["message"])
            elif event["event"] == "headers":
                step["headers"] = event["headers"]
            elif event["event"] == "end":
                step["end"] = event
        return steps

    def _describe(self, what: str) -> str:
        return f"{what}; events={self.events!r}; stderr={self.stderr.decode(errors='replace')[-2000:]}"

    # -- ProcessProtocol ----------------------------------------------------------------

    def outReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if not line.strip():
                continue
            event = json.loads(line)
            self.events.append(event)
            for waiter in list(self._waiters):
                if waiter.predicate(event):
                    self._waiters.remove(waiter)
                    waiter.deferred.callback(event)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def process_ended(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.deferred.errback(AssertionError(self._describe("process ended before the event")))


def run_node(plan: dict[str, Any], timeout: float = 20.0) -> defer.Deferred[dict[str, dict[str, Any]]]:
    """Run a plan to completion; fires with the per-step results (see ``NodeClient.result``)."""
    return NodeClient.start(plan, timeout).result()  # type: ignore[no-any-return]


def run_tool(argv: Sequence[str]) -> defer.Deferred[tuple[bytes, bytes, int]]:
    """Run a command to completion off the reactor's back: (stdout, stderr, exit code)."""
    return getProcessOutputAndValue(argv[0], list(argv[1:]), env=child_env(), path=str(ROOT))


class ToolProcess(ChildProcess):
    """A long-running command (``buf curl`` on a stream) whose output a test waits on."""

    def __init__(self) -> None:
        super().__init__()
        self.stdout = b""
        self.stderr = b""
        self._waiters: list[tuple[bytes, int, defer.Deferred[None]]] = []

    @classmethod
    def start(cls, argv: Sequence[str], timeout: float = 20.0) -> ToolProcess:
        """Spawn ``argv``; it is killed if still running after ``timeout`` seconds."""
        tool = cls()
        tool.spawn(argv, str(ROOT), timeout)
        return tool

    def wait_output(self, needle: bytes, count: int = 1) -> defer.Deferred[None]:
        """Fires once stdout holds ``needle`` at least ``count`` times."""
        if self.stdout.count(needle) >= count:
            return defer.succeed(None)
        if self.exit_code is not None:
            return defer.fail(AssertionError(self._describe(f"ended without {needle!r}")))
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((needle, count, d))
        return d

    def _describe(self, what: str) -> str:
        return f"{what}; stdout={self.stdout!r}; stderr={self.stderr[-2000:]!r}"

    def _check(self) -> None:
        for waiter in list(self._waiters):
            needle, count, d = waiter
            if self.stdout.count(needle) >= count:
                self._waiters.remove(waiter)
                d.callback(None)

    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        self._check()

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def process_ended(self) -> None:
        waiters, self._waiters = self._waiters, []
        for needle, _count, d in waiters:
            d.errback(AssertionError(self._describe(f"ended without {needle!r}")))
