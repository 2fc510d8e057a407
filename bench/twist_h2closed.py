"""Diagnostic only: ``twist`` with h2 remembering at most N closed streams per connection.

``python bench/twist_h2closed.py N gatewayd --config FILE``. h2 keeps the id of
every closed stream of a connection (up to ``H2Connection.MAX_CLOSED_STREAMS``,
65,536: about 7.9 MB per connection once full) to answer late frames for them.
``bench/faults.py soak --h2-closed-streams N`` runs the gateways through this
wrapper to show how much of their RSS growth that memory is. It patches h2 in
this process only.
"""

from __future__ import annotations

import sys

import h2.connection

if __name__ == "__main__":
    h2.connection.H2Connection.MAX_CLOSED_STREAMS = int(sys.argv.pop(1))
    from twisted.application.twist._twist import Twist

    sys.argv[0] = "twist"
    Twist.main()
