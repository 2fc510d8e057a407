"""Endpoint string parsers of gatewayd: ``reuseport:PORT[:interface=ADDR]`` (see gatewayd/endpoints.py)."""

from __future__ import annotations

from gatewayd.endpoints import ReusePortParser

reuseportParser = ReusePortParser()
