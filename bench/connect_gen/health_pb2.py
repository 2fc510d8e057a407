"""The messages ``health_connect`` imports as ``.health_pb2``: the project's own generated module."""

from gatewayd._proto.grpc.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

__all__ = ["HealthCheckRequest", "HealthCheckResponse"]
