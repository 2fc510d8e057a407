"""The fan-out shares one framed event between streams whose framing agrees, gzip included."""

from __future__ import annotations

import gzip

from gatewayd.rpc import compression
from gatewayd.rpc.framing import FLAG_COMPRESSED, decode_single_frame
from gatewayd.rpc.protocols.connect import ConnectStreaming
from gatewayd.rpc.protocols.grpc import Grpc
from gatewayd.rpc.protocols.grpcweb import GrpcWeb

GZIP = {"grpc-accept-encoding": "identity,deflate,gzip"}
PAYLOAD = b"event " * (compression.COMPRESS_MIN_BYTES // 6 + 10)


def test_streams_that_frame_alike_share_a_key_and_others_do_not() -> None:
    a, b = Grpc(GZIP, "application/grpc"), Grpc(dict(GZIP), "application/grpc+proto")
    plain = Grpc({}, "application/grpc")
    assert a.frame_cache_key is not None and a.frame_cache_key == b.frame_cache_key
    assert len({a.frame_cache_key, plain.frame_cache_key,
                GrpcWeb({}, "application/grpc-web").frame_cache_key,
                ConnectStreaming({}, "application/connect+json").frame_cache_key}) == 4


def test_a_shared_gzip_frame_is_what_each_stream_would_have_framed() -> None:
    a, b = Grpc(GZIP, "application/grpc"), Grpc(dict(GZIP), "application/grpc")
    for proto in (a, b):
        flags, body = decode_single_frame(proto.frame_message(PAYLOAD), 1 << 20)
        assert flags & FLAG_COMPRESSED and gzip.decompress(body) == PAYLOAD
    flags, body = decode_single_frame(Grpc({}, "application/grpc").frame_message(PAYLOAD), 1 << 20)
    assert not flags & FLAG_COMPRESSED and body == PAYLOAD
