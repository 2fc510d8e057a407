"""The Python client of gatewayd: device keys, signed requests, verified answers, ``gatewayctl``.

``GatewayClient(base_url, protocol="connect" | "grpc" | "grpc-web")`` logs in
through the public REST surface, executes commands and subscribes to events;
everything it returns was verified against the gateway's published keys.
"""

from gatewayd.client.client import DeviceSession, GatewayClient
from gatewayd.client.errors import (
    GatewayClientError,
    GatewayUnreachableError,
    NotLoggedInError,
    PublicApiError,
    RpcCallError,
    VerificationError,
)
from gatewayd.client.keys import DeviceKey, DeviceKeyError
from gatewayd.client.sign import new_request_id, sign_request, sign_subscribe
from gatewayd.client.verify import VerifiedEvent, VerifiedResponse
from gatewayd.client.wire import PROTOCOLS

__all__ = [
    "PROTOCOLS",
    "DeviceKey",
    "DeviceKeyError",
    "DeviceSession",
    "GatewayClient",
    "GatewayClientError",
    "GatewayUnreachableError",
    "NotLoggedInError",
    "PublicApiError",
    "RpcCallError",
    "VerificationError",
    "VerifiedEvent",
    "VerifiedResponse",
    "new_request_id",
    "sign_request",
    "sign_subscribe",
]
