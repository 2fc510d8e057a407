"""The HTTP/2 layer's own cost per unary gRPC call, in process, without a socket or a pipeline.

A ``ServerConnectionCore`` on a ``Clock`` serves a handler that answers each call the way
gRPC's ``write_unary`` does (response headers, one message, ``grpc-status: 0`` trailers)
as soon as the request body is complete. The request bytes (HEADERS with the headers
grpcio sends, HPACK-encoded by h2's client encoder, plus one DATA frame with END_STREAM)
are built beforehand and fed ``--streams`` calls per read, one reactor turn per read, as
the 4 x 16 bench does. Everything timed is gatewayd.http2 plus h2/hpack; run it under
callgrind for a load-independent count (the harness prints the calls it made, so take the
difference of two runs with different ``--calls`` to drop the start-up, with the client's bytes
built once into a file by a first run):

    .venv/bin/python -m bench.h2_unary_micro --calls 3000 --reads /tmp/reads.pickle
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.1 .venv/bin/python -m bench.h2_unary_micro \
        --calls 1000 --reads /tmp/reads.pickle
    (and --calls 3000 to /tmp/cg.3; the "totals:" lines' difference / 2000 is the count per call)
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.settings
from twisted.internet.task import Clock

from gatewayd.http2.core import ServerConnectionCore
from gatewayd.http2.h2adapter import server_connection
from gatewayd.http2.limits import H2Limits
from gatewayd.rpc.framing import encode_frame

REQUEST_HEADERS = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/gateway.v1.Gateway/ExecuteCommand"),
    (b":authority", b"127.0.0.1:8443"),
    (b"te", b"trailers"),
    (b"content-type", b"application/grpc"),
    (b"user-agent", b"grpc-python/1.68.0 grpc-c/44.0.0 (linux; chttp2)"),
    (b"grpc-accept-encoding", b"identity, deflate, gzip"),
    (b"grpc-timeout", b"29999m"),
]
BODY = encode_frame(b"\x0a\x20" + b"x" * 32 + b"\x12\x40" + b"y" * 64)
RESPONSE = encode_frame(b"\x0a\x10" + b"r" * 16)
RESPONSE_HEADERS = [(b"content-type", b"application/grpc"), (b"grpc-accept-encoding", b"identity, deflate, gzip")]
TRAILERS = [(b"grpc-status", b"0")]


class _IO:
    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _Unary:
    def __init__(self, exchange: Any) -> None:
        self.exchange = exchange

    def body_received(self, data: bytes) -> None:
        pass

    def body_complete(self) -> None:
        exchange = self.exchange
        exchange.send_headers(200, RESPONSE_HEADERS)
        exchange.send_data(RESPONSE)
        exchange.send_trailers(TRAILERS)

    def aborted(self) -> None:
        raise AssertionError("aborted")


class _App:
    def handler_for(self, exchange: Any) -> Any:
        return _Unary(exchange)


def client_reads(calls: int, per_read: int) -> tuple[bytes, list[bytes]]:
    """The client's preface and, per read, ``per_read`` calls' HEADERS + DATA frames."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    client.increment_flow_control_window(2**31 - 1 - 65535)
    preface = client.data_to_send()
    # The server's settings (its windows) as it sends them; the WINDOW_UPDATEs it sends for the
    # bodies it reads are not fed back, so the client's connection window is kept open by hand.
    client.receive_data(server_connection(H2Limits()).data_to_send())
    client.data_to_send()
    reads = []
    sid = 1
    for start in range(0, calls, per_read):
        for _ in range(min(per_read, calls - start)):
            client.send_headers(sid, REQUEST_HEADERS)
            client.outbound_flow_control_window = 2**31 - 1
            client.send_data(sid, BODY, end_stream=True)
            sid += 2
        reads.append(client.data_to_send())
        client.streams.clear()  # answered, as far as the client's stream limit goes
    return preface, reads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=16, help="calls per read")
    parser.add_argument("--reads", type=Path, default=None,
                        help="keep the client's bytes in this file (built once): under callgrind, "
                             "only the server's work then differs between two --calls")
    args = parser.parse_args()
    if args.reads is not None and args.reads.exists():
        preface, reads = pickle.loads(args.reads.read_bytes())
    else:
        preface, reads = client_reads(args.calls, args.streams)
        if args.reads is not None:
            args.reads.write_bytes(pickle.dumps((preface, reads)))
    reads = reads[: -(-args.calls // args.streams)]
    calls = min(args.calls, len(reads) * args.streams)
    clock = Clock()
    io = _IO()
    core = ServerConnectionCore(_App(), clock, H2Limits(), lambda stream: _Unary(stream), io)  # type: ignore[arg-type]
    core.start("bench")
    core.receive(preface)
    clock.advance(0)
    # The client's SETTINGS ACK and WINDOW_UPDATEs are not read back: nothing depends on them.
    started, cpu_started = time.perf_counter(), time.process_time()
    for data in reads:
        core.receive(data)
        clock.advance(0)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    assert not core.streams, f"{len(core.streams)} calls unfinished"
    print(f"calls={calls} written={io.written} us_per_call={elapsed / calls * 1e6:.1f} "
          f"cpu_us_per_call={cpu / calls * 1e6:.1f}")


if __name__ == "__main__":
    main()
