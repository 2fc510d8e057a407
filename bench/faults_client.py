"""The fault bench's client: a steady rate of ExecuteCommand and open SubscribeEvents streams, recorded.

``python -m bench.faults_client --port P --sessions FILE --rate R --duration S --out DIR [--light]``

- **Calls**: ``user.notes.create`` at ``--rate`` calls a second (open loop: a
  slow gateway does not slow the offer), each with a fresh request_id that is
  also the note's text, over ``--call-connections`` gRPC h2c connections. No
  retries. Each call's outcome is one of: ``ok``; ``result:<code>`` (the
  backend's answer, signed); ``grpc:<CODE>`` (the gateway's status);
  ``rst:<h2 error>``, ``lost:<why>`` (the connection or stream went away, or
  none could be opened: a gRPC client reports UNAVAILABLE); ``client:shed``
  (not sent: every connection already had 90 calls in flight, the gateway is
  behind the offered rate); or ``unclear:<why>`` (undecodable, a bad
  signature, a wrong request_id, no status, UNKNOWN or INTERNAL): the check
  wants none of those.
- **Streams**: ``slots`` SubscribeEvents streams, each reopened (fresh
  request) 0.1-0.3 s after it ends. Every event's signature is checked; in one
  stream, note events must come in strictly increasing backend event order
  (the backend numbers its events), which rules out duplicates and
  reordering; across a slot's reopened streams the same order is counted
  apart (``reorder_across_streams``: not a contract, the two gateways read
  the push stream independently).

Records in ``--out``: ``calls.jsonl`` (``[rid, t0, t1, outcome]``, unless
``--light``), ``ok_rids.txt``, ``event_rids.txt``, ``streams.jsonl``
(``[slot, t, "open"|"end", code]``), ``timeline.jsonl`` (per second), and
``summary.json``. Prints ``ready`` once every slot has been open once. Stops
after ``--duration`` seconds or at SIGTERM/SIGINT, waits (bounded) for the
calls in flight, then writes the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import struct
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from gatewayd._proto.gateway.v1.gateway_pb2 import (
    ExecuteCommandRequest,
    ExecuteCommandResponse,
    GatewayEvent,
    RequestEnvelope,
    SubscribeEventsRequest,
)
from gatewayd.rpc.codes import Code
from gatewayd.signing import EMPTY_SHA256, event_signing_input, request_signing_input, response_signing_input, sha256

EXECUTE = b"/gateway.v1.Gateway/ExecuteCommand"
SUBSCRIBE = b"/gateway.v1.Gateway/SubscribeEvents"
STREAMS_PER_CONNECTION = 90  # below the gateway's 100
MAX_IN_FLIGHT = 4000


def now() -> float:
    return time.time()


class Session:
    def __init__(self, spec: dict[str, str]) -> None:
        self.id = spec["device_session_id"]
        self.user_id = spec["user_id"]
        self.key = SigningKey(bytes.fromhex(spec["seed_hex"]))

    def envelope(self, rid: str, message_type: str, digest: bytes) -> tuple[RequestEnvelope, bytes]:
        ts = int(now() * 1000)
        env = RequestEnvelope(protocol_version=1, device_session_id=self.id, request_id=rid, timestamp_ms=ts,
                              message_type=message_type, payload_hash=digest)
        sig = self.key.sign(request_signing_input(1, self.id, rid, ts, message_type, digest)).signature
        return env, sig


def frame(message: bytes) -> bytes:
    return struct.pack(">BI", 0, len(message)) + message


class Conn(asyncio.Protocol):
    """One h2c connection carrying calls or streams; handlers get headers, data, end, reset, lost."""

    def __init__(self, client: Client, port: int) -> None:
        self.client = client
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            validate_inbound_headers=False))
        self.base = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", f"127.0.0.1:{port}".encode()),
                     (b"content-type", b"application/grpc"), (b"te", b"trailers")]
        # h2 refuses every frame after a GOAWAY (its state machine closes); a gRPC client finishes the
        # streams the GOAWAY still covers, and so must we, or a graceful shutdown reads as lost calls.
        goaway = self.h2._frame_dispatch_table[GoAwayFrame]

        def receive_goaway(frame: Any) -> Any:
            result = goaway(frame)
            self.h2.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
            return result

        self.h2._frame_dispatch_table[GoAwayFrame] = receive_goaway
        self.handlers: dict[int, Any] = {}
        self.transport: Any = None
        self.draining = False
        self.closed = False

    def usable(self, limit: int) -> bool:
        return self.transport is not None and not self.draining and not self.closed and len(self.handlers) < limit

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
        self.h2.increment_flow_control_window(1 << 28)
        transport.write(self.h2.data_to_send())

    def start(self, path: bytes, message: bytes, handler: Any) -> None:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [self.base[0], self.base[1], (b":path", path), *self.base[2:]])
        self.h2.send_data(sid, frame(message), end_stream=True)
        self.handlers[sid] = handler
        self.transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.client.examples.setdefault("h2-protocol-error", str(e)[:200])
            self._fail_all(f"lost:h2-protocol-error {type(e).__name__}")
            self.transport.abort()
            return
        ev: Any
        for ev in events:
            kind = type(ev)
            if kind is h2.events.DataReceived:
                if ev.flow_controlled_length:
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                handler = self.handlers.get(ev.stream_id)
                if handler is not None:
                    handler.data(ev.data)
            elif kind is h2.events.ResponseReceived or kind is h2.events.TrailersReceived:
                handler = self.handlers.get(ev.stream_id)
                if handler is not None:
                    handler.headers(ev.headers)
            elif kind is h2.events.StreamEnded:
                handler = self.handlers.pop(ev.stream_id, None)
                if handler is not None:
                    handler.end()
            elif kind is h2.events.StreamReset:
                handler = self.handlers.pop(ev.stream_id, None)
                if handler is not None:
                    handler.reset(ev.error_code)
            elif kind is h2.events.ConnectionTerminated:
                self.draining = True
                for sid in [s for s in self.handlers if s > ev.last_stream_id]:
                    self.handlers.pop(sid).lost("lost:goaway-unprocessed")
        out = self.h2.data_to_send()
        if out:
            self.transport.write(out)
        if self.draining and not self.handlers:
            self.transport.close()

    def _fail_all(self, why: str) -> None:
        handlers, self.handlers = self.handlers, {}
        for handler in handlers.values():
            handler.lost(why)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_all("lost:connection-lost")


def _status(fields: dict[bytes, bytes]) -> tuple[int | None, str]:
    raw = fields.get(b"grpc-status")
    return (int(raw) if raw is not None and raw.isdigit() else None,
            urllib.parse.unquote(fields.get(b"grpc-message", b"").decode("utf-8", "replace")))


class Call:
    __slots__ = ("body", "client", "fields", "rid", "session", "t0")

    def __init__(self, client: Client, rid: str, session: Session) -> None:
        self.client, self.rid, self.session, self.t0 = client, rid, session, now()
        self.fields: dict[bytes, bytes] = {}
        self.body = b""

    def headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.fields.update(headers)

    def data(self, data: bytes) -> None:
        self.body += data

    def end(self) -> None:
        self.client.call_done(self, self._outcome())

    def reset(self, error_code: int) -> None:
        try:
            name = ErrorCodes(error_code).name
        except ValueError:
            name = str(error_code)
        self.client.call_done(self, f"rst:{name}")

    def lost(self, why: str) -> None:
        self.client.call_done(self, why)

    def _outcome(self) -> str:
        code, message = _status(self.fields)
        if code is None:
            return f"unclear:no grpc-status (http {self.fields.get(b':status', b'?').decode()})"
        if code != 0:
            name = Code(code).name if code in Code._value2member_map_ else str(code)
            if code in (Code.UNKNOWN, Code.INTERNAL):
                return f"unclear:grpc {name} {message[:60]}"
            return f"grpc:{name}"
        if len(self.body) < 5:
            return "unclear:no response message"
        try:
            response = ExecuteCommandResponse.FromString(self.body[5:])
        except Exception:
            return "unclear:undecodable response"
        env = response.envelope
        if env.request_id != self.rid:
            return "unclear:request_id mismatch"
        if env.payload_hash != sha256(response.payload_bytes):
            return "unclear:payload hash"
        key = self.client.keys.get(env.key_id)
        signed = response_signing_input(env.protocol_version, self.session.id, env.request_id, env.timestamp_ms,
                                        env.result_code, env.payload_hash, env.key_id)
        if key is None or not _verifies(key, signed, response.signature):
            return "unclear:bad signature"
        return "ok" if env.result_code == "ok" else f"result:{env.result_code}"


def _verifies(key: VerifyKey, message: bytes, signature: bytes) -> bool:
    try:
        key.verify(message, signature)
    except (BadSignatureError, ValueError):
        return False
    return True


class Slot:
    """One logical subscriber: a SubscribeEvents stream reopened whenever it ends."""

    def __init__(self, index: int, session: Session, regular: bool) -> None:
        self.index = index
        self.regular = regular
        self.session = session
        self.state = "idle"  # idle | opening | open
        self.retry_at = 0.0
        self.buf = b""
        self.stream_last = -1  # newest backend event number in the current stream
        self.slot_last = -1  # ... over every stream of this slot
        self.messages = 0
        self.notes = 0
        self.streams = 0


class StreamHandler:
    __slots__ = ("client", "fields", "slot")

    def __init__(self, client: Client, slot: Slot) -> None:
        self.client, self.slot = client, slot
        self.fields: dict[bytes, bytes] = {}

    def headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.fields.update(headers)

    def data(self, data: bytes) -> None:
        slot = self.slot
        buf = slot.buf + data
        while len(buf) >= 5:
            (length,) = struct.unpack_from(">I", buf, 1)
            if len(buf) < 5 + length:
                break
            self.client.event(slot, buf[5:5 + length])
            buf = buf[5 + length:]
        slot.buf = buf

    def end(self) -> None:
        code, _ = _status(self.fields)
        name = Code(code).name if code is not None and code in Code._value2member_map_ else f"unclear:{code}"
        self.client.stream_ended(self.slot, name)

    def reset(self, error_code: int) -> None:
        self.client.stream_ended(self.slot, f"rst:{error_code}")

    def lost(self, why: str) -> None:
        self.client.stream_ended(self.slot, why)


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        spec = json.loads(Path(args.sessions).read_text())
        self.call_sessions = [Session(s) for s in spec["calls"]]
        self.slots: list[Slot] = []
        kinds = set(args.kinds.split(","))
        for group in spec["streams"]:
            if group.get("kind", "regular") not in kinds:
                continue
            session = Session(group["session"])
            for _ in range(group["count"]):
                self.slots.append(Slot(len(self.slots), session, group.get("kind") == "regular"))
        self.keys = {k: VerifyKey(base64.b64decode(v)) for k, v in json.loads(Path(args.keys).read_text()).items()}
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.calls_file = None if args.light else (self.out / "calls.jsonl").open("w")
        self.ok_rids = (self.out / "ok_rids.txt").open("w")
        self.event_rids_file = (self.out / "event_rids.txt").open("w")
        self.streams_file = (self.out / "streams.jsonl").open("w")
        self.timeline_file = (self.out / "timeline.jsonl").open("w")
        # Note events on regular streams: [t received, backend timestamp_ms] (when events resume after a fault).
        self.events_file = None if args.light else (self.out / "events.jsonl").open("w")
        self.prefix = os.urandom(4).hex()
        self.sent = 0
        self.in_flight = 0
        self.outcomes: Counter[str] = Counter()
        self.stream_ends: Counter[str] = Counter()
        self.violations: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.second: dict[str, Any] = self._new_second(int(now()))
        self.event_rids: set[str] = set()
        self.verified: dict[tuple[str, bytes], bool] = {}
        self.call_conns: list[Conn] = []
        self.stream_conns: list[Conn] = []
        self.connect_failures = 0
        self.events = 0
        self.ready = False
        self.stopping = False
        self._rr = 0

    # --- calls -----------------------------------------------------------------------------

    def send_call(self) -> None:
        self.sent += 1
        self.second["sent"] += 1
        session = self.call_sessions[self.sent % len(self.call_sessions)]
        rid = f"f{self.prefix}-{self.sent}"
        payload = b'{"text":"' + rid.encode() + b'"}'
        env, sig = session.envelope(rid, "user.notes.create", sha256(payload))
        call = Call(self, rid, session)
        self.in_flight += 1
        if self.in_flight > MAX_IN_FLIGHT:
            self.call_done(call, "client:shed")  # our bound, not a gateway outcome (counted apart)
            return
        conns = [c for c in self.call_conns if c.usable(STREAMS_PER_CONNECTION)]
        if not conns:
            # Every open connection full (the gateway is behind): not sent, our own bound; none open: lost.
            full = any(c.usable(1 << 30) for c in self.call_conns)
            self.call_done(call, "client:shed" if full else "lost:no-connection")
            return
        self._rr += 1
        conn = conns[self._rr % len(conns)]
        conn.start(EXECUTE, ExecuteCommandRequest(envelope=env, payload_bytes=payload, signature=sig)
                   .SerializeToString(), call)

    def call_done(self, call: Call, outcome: str) -> None:
        self.in_flight -= 1
        t1 = now()
        self.outcomes[outcome] += 1
        self.second["outcomes"][outcome] = self.second["outcomes"].get(outcome, 0) + 1
        if outcome == "ok":
            self.ok_rids.write(call.rid + "\n")
        if outcome.startswith("unclear"):
            self.examples.setdefault(outcome, call.rid)
        if self.calls_file is not None:
            self.calls_file.write(json.dumps([call.rid, round(call.t0, 4), round(t1, 4), outcome]) + "\n")

    # --- streams ---------------------------------------------------------------------------

    def open_slot(self, slot: Slot, conn: Conn) -> None:
        slot.state = "opening"
        slot.buf = b""
        slot.stream_last = -1
        slot.messages = 0
        slot.streams += 1
        rid = f"s{self.prefix}-{slot.index}-{slot.streams}"
        env, sig = slot.session.envelope(rid, "gateway.subscribe", EMPTY_SHA256)
        conn.start(SUBSCRIBE, SubscribeEventsRequest(envelope=env, signature=sig).SerializeToString(),
                   StreamHandler(self, slot))

    def event(self, slot: Slot, raw: bytes) -> None:
        self.events += 1
        self.second["events"] += 1
        try:
            event = GatewayEvent.FromString(raw)
        except Exception:
            self._violation("undecodable_event", str(slot.index))
            return
        cache_key = (event.event_id, event.signature)
        ok = self.verified.get(cache_key)
        if ok is None:
            key = self.keys.get(event.key_id)
            signed = event_signing_input(event.event_type, event.event_id, event.timestamp_ms, event.payload_hash,
                                         event.key_id)
            ok = key is not None and event.payload_hash == sha256(event.payload_bytes) and \
                _verifies(key, signed, event.signature)
            if len(self.verified) > 50_000:
                self.verified.clear()
            self.verified[cache_key] = ok
        if not ok:
            self._violation("bad_event_signature", event.event_id)
        first = slot.messages == 0
        slot.messages += 1
        if first:
            if event.event_type != "gateway.server_time":
                self._violation("first_event_not_server_time", event.event_type)
            slot.state = "open"
            self._stream_record(slot, "open", "")
            if not self.ready and all(s.state == "open" for s in self.slots):
                self.ready = True
                print("ready", flush=True)
            return
        if event.event_type != "user.note.created":
            return  # heartbeats, if configured
        slot.notes += 1
        number = int(event.event_id.rsplit("_", 1)[1])
        if number <= slot.stream_last:
            self._violation("duplicate_or_out_of_order_in_stream", f"slot {slot.index} {event.event_id}")
        elif number <= slot.slot_last:
            self.violations["reorder_across_streams"] += 1  # counted, not a contract violation
        slot.stream_last = max(slot.stream_last, number)
        slot.slot_last = max(slot.slot_last, number)
        if not slot.regular:
            return  # the fan-out streams' notes (bursts) need no ledger check: spare the JSON
        if self.events_file is not None:
            self.events_file.write(f"[{now():.4f},{event.timestamp_ms}]\n")
        text = json.loads(event.payload_bytes)["text"]
        if text not in self.event_rids:
            self.event_rids.add(text)
            self.event_rids_file.write(text + "\n")

    def stream_ended(self, slot: Slot, code: str) -> None:
        self.stream_ends[code] += 1
        slot.state = "idle"
        slot.retry_at = time.monotonic() + random.uniform(0.1, 0.3)
        self._stream_record(slot, "end", code)

    def _stream_record(self, slot: Slot, what: str, code: str) -> None:
        self.streams_file.write(json.dumps([slot.index, round(now(), 4), what, code]) + "\n")

    def _violation(self, kind: str, example: str) -> None:
        self.violations[kind] += 1
        self.examples.setdefault(kind, example)

    # --- loops -----------------------------------------------------------------------------

    async def keep_connections(self, pool: list[Conn], target: int) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping:
            pool[:] = [c for c in pool if not c.closed]
            if sum(1 for c in pool if not c.draining) < target:
                try:
                    _, conn = await asyncio.wait_for(
                        loop.create_connection(lambda: Conn(self, self.args.port), "127.0.0.1", self.args.port), 2)
                    pool.append(conn)
                    continue
                except (TimeoutError, OSError):
                    self.connect_failures += 1
            await asyncio.sleep(0.05)

    async def keep_streams(self) -> None:
        while not self.stopping:
            t = time.monotonic()
            for slot in self.slots:
                if slot.state != "idle" or slot.retry_at > t:
                    continue
                conn = next((c for c in self.stream_conns if c.usable(STREAMS_PER_CONNECTION)), None)
                if conn is None:
                    break
                self.open_slot(slot, conn)
            await asyncio.sleep(0.02)

    async def offer_calls(self, deadline: float) -> None:
        start = time.monotonic()
        while not self.stopping and time.monotonic() < deadline:
            due = int((time.monotonic() - start) * self.args.rate) - self.sent
            for _ in range(due):
                self.send_call()
            await asyncio.sleep(0.005)

    async def tick_seconds(self) -> None:
        while True:
            await asyncio.sleep(1.0 - (now() % 1.0))
            self.flush_second()

    def _new_second(self, t: int) -> dict[str, Any]:
        return {"t": t, "sent": 0, "events": 0, "outcomes": {}}

    def flush_second(self) -> None:
        second = self.second
        second["open_streams"] = sum(1 for s in self.slots if s.state == "open")
        second["in_flight"] = self.in_flight
        self.timeline_file.write(json.dumps(second) + "\n")
        self.second = self._new_second(int(now()))
        for f in (self.timeline_file, self.streams_file, self.ok_rids, self.event_rids_file):
            f.flush()
        for optional in (self.calls_file, self.events_file):
            if optional is not None:
                optional.flush()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        streams_needed = -(-len(self.slots) // STREAMS_PER_CONNECTION) + 1
        tasks = [
            asyncio.ensure_future(self.keep_connections(self.call_conns, self.args.call_connections)),
            asyncio.ensure_future(self.keep_connections(self.stream_conns, streams_needed)),
            asyncio.ensure_future(self.keep_streams()),
            asyncio.ensure_future(self.tick_seconds()),
        ]
        # Streams first: the calls start once every slot is open (or after 60 s).
        ready_deadline = time.monotonic() + 60
        while not self.ready and time.monotonic() < ready_deadline and not stop.is_set():
            await asyncio.sleep(0.05)
        offer = asyncio.ensure_future(self.offer_calls(time.monotonic() + self.args.duration))
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait([offer, stopper], return_when=asyncio.FIRST_COMPLETED)
        self.stopping = True
        drain_deadline = time.monotonic() + 15
        while self.in_flight > 0 and time.monotonic() < drain_deadline:
            await asyncio.sleep(0.05)
        for task in [*tasks, offer, stopper]:
            task.cancel()
        for conn in self.call_conns + self.stream_conns:
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0.2)  # connection_lost callbacks: the streams' ends are recorded
        self.flush_second()
        self.write_summary()

    def write_summary(self) -> None:
        summary = {
            "sent": self.sent, "unfinished": self.in_flight, "outcomes": dict(self.outcomes),
            "unclear": sum(n for o, n in self.outcomes.items() if o.startswith("unclear")),
            "stream_ends": dict(self.stream_ends), "violations": dict(self.violations),
            "examples": self.examples, "events": self.events, "slots": len(self.slots),
            "streams_opened": sum(s.streams for s in self.slots),
            "notes_per_slot": [s.notes for s in self.slots], "connect_failures": self.connect_failures,
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        for f in (self.timeline_file, self.streams_file, self.ok_rids, self.event_rids_file):
            f.close()
        for optional in (self.calls_file, self.events_file):
            if optional is not None:
                optional.close()


def fetch_keys(port: int, path: Path) -> None:
    """The gateway's published keys as ``{key_id: base64}`` in ``path``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/public/gateway-keys", timeout=10) as r:
        keys = json.loads(r.read())["keys"]
    path.write_text(json.dumps({k["key_id"]: k["public_key"] for k in keys}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sessions", required=True)
    parser.add_argument("--keys", required=True, help="{key_id: base64 public key} JSON file")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--call-connections", type=int, default=6)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--light", action="store_true", help="no per-call records (long soaks)")
    parser.add_argument("--kinds", default="regular,fanout", help="which stream groups of --sessions to open")
    args = parser.parse_args()
    asyncio.run(Client(args).run())


if __name__ == "__main__":
    main()
