"""gatewayd.devbackend."""
