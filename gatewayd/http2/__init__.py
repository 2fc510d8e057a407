"""gatewayd's HTTP/2 server.

- ``core``: the connection as a sans-I/O state machine: bytes and the clock in;
  calls started, resets, GOAWAYs, reading paused or resumed and bytes to write out.
- ``stream``: one request stream, the ``Exchange`` an RPC handler answers through.
- ``h2adapter``: every use of h2's internals, each pinned to h2's own bytes by tests.
- ``server``: the Twisted protocol, which only moves bytes and pauses or resumes its transport.
- ``web``: twisted.web resources served over an HTTP/2 stream (a real ``IConsumer``/``ITransport``).
- ``limits``, ``request_headers``: the limits and budgets, and the one-pass request-header parser.
"""
