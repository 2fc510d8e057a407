"""Fixtures and helpers for protocol-level test harnesses (usable outside this repository's tests).

- ``wait``: ``until`` (bounded polling on the reactor), ``bounded`` (a Deferred with a
  timeout), ``Waitable`` (waiters fired when recorded state changes);
- ``raw_h2`` / ``raw_http1``: clients that send exact HTTP/2 frames / HTTP/1.1 bytes and
  record everything the server sends;
- ``harness``: ``Harness``, a server with scripted methods and raw clients against it;
- ``server``: ``serve`` a method table on a loopback port;
- ``client``: signed requests with any field overridden, ``login``, ``start_gateway``
  (a whole gateway in-process), ``new_email``, ``Closer``;
- ``events``: SubscribeEvents streams checked against the wire contract;
- ``redis``: a private ``redis-server`` and the gateway's stores on it;
- ``procs``: child processes with a bound (``ChildProcess``, ``child_env``).
"""
