"""Diagnostic only: ``twist`` under valgrind's callgrind, instrumentation off until asked.

``bench_instructions.py`` starts the gateway through this wrapper; the
callgrind output file is ``$GATEWAYD_CALLGRIND_OUT`` (dumps add ``.1``, ``.2``...).
"""

from __future__ import annotations

import os
import sys

from bench._common import ROOT

if __name__ == "__main__":
    out = os.environ["GATEWAYD_CALLGRIND_OUT"]
    os.execvp("valgrind", ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                           str(ROOT / ".venv" / "bin" / "python"), str(ROOT / ".venv" / "bin" / "twist"),
                           *sys.argv[1:]])
