"""A test peer: push.v1.Push served by grpcio (grpc.aio), an implementation independent of ours.

Run: ``python tests/peers/push_server.py [--port N]`` (0, the default, picks a free port).

Reports on stdout, one line each, flushed:
  ``ready PORT``                 listening
  ``subscribed GATEWAY_ID``      a SubscribePush call started
  ``unsubscribed GATEWAY_ID``    that call ended (any cause)
  ``sent N``                     an event was queued to N subscribers
  ``ended N``                    N calls were told to end

Commands on stdin, one JSON object a line:
  ``{"cmd": "event", "client_event": {...}}`` or ``{"cmd": "event", "session_invalidation": {...}}``
      (fields as in push.proto; ``payload_bytes`` is a UTF-8 string)
  ``{"cmd": "raw", "hex": "..."}``  send these bytes as one message (a malformed PushEvent)
  ``{"cmd": "end", "code": "UNAVAILABLE", "message": "..."}``  end every call with this status
  ``{"cmd": "exit"}``  stop at once; end of stdin does the same
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from gatewayd._proto.push.v1 import push_pb2

_END = object()


def report(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class PushService:
    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[object]] = set()

    async def subscribe(self, request: push_pb2.SubscribePushRequest, context: grpc.aio.ServicerContext):
        queue: asyncio.Queue[object] = asyncio.Queue()
        self.queues.add(queue)
        report(f"subscribed {request.gateway_id}")
        try:
            while True:
                item = await queue.get()
                if isinstance(item, tuple) and item[0] is _END:
                    _, code, message = item
                    if code != grpc.StatusCode.OK:
                        context.set_code(code)
                        context.set_details(message)
                    return
                yield item
        finally:
            self.queues.discard(queue)
            report(f"unsubscribed {request.gateway_id}")

    def broadcast(self, item: object) -> int:
        for queue in self.queues:
            queue.put_nowait(item)
        return len(self.queues)


def _event(command: dict) -> object:
    event = push_pb2.PushEvent()
    if "client_event" in command:
        fields = dict(command["client_event"])
        if "payload_bytes" in fields:
            fields["payload_bytes"] = fields["payload_bytes"].encode("utf-8")
        event.client_event.CopyFrom(push_pb2.ClientEvent(**fields))
    elif "session_invalidation" in command:
        event.session_invalidation.CopyFrom(push_pb2.SessionInvalidation(**command["session_invalidation"]))
    return event


def _serialize(item: object) -> bytes:
    # Raw bytes pass as they are, so a test can send a malformed PushEvent.
    return item if isinstance(item, bytes) else item.SerializeToString()  # type: ignore[attr-defined]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    service = PushService()
    handler = grpc.method_handlers_generic_handler(
        "push.v1.Push",
        {
            "SubscribePush": grpc.unary_stream_rpc_method_handler(
                service.subscribe,
                request_deserializer=push_pb2.SubscribePushRequest.FromString,
                response_serializer=_serialize,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    report(f"ready {port}")

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        command = json.loads(line)
        cmd = command["cmd"]
        if cmd == "event":
            report(f"sent {service.broadcast(_event(command))}")
        elif cmd == "raw":
            report(f"sent {service.broadcast(bytes.fromhex(command['hex']))}")
        elif cmd == "end":
            code = grpc.StatusCode[command.get("code", "OK")]
            report(f"ended {service.broadcast((_END, code, command.get('message', '')))}")
        elif cmd == "exit":
            break
    await server.stop(None)


if __name__ == "__main__":
    asyncio.run(main())
