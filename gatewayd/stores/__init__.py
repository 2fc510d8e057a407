"""gatewayd.stores."""
