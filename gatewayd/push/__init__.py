"""gatewayd.push."""
