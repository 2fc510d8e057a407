"""gatewayd.pipeline."""
