"""Instructions the gateway executes per ExecuteCommand call, counted by callgrind.

CPU time per call follows whatever else runs on the machine (caches, the
other hyperthread, frequency); an instruction count does not. The gateway runs
under valgrind (``twist_callgrind.py``, ~30-50x slower, so the load generator
keeps it saturated), instrumentation is switched on after a warm-up, the
counters are zeroed after a second warm-up and dumped after ``--requests``
calls (memory stores, ``user.profile.get``; ``--protocol`` picks the client, in
bench_execute's shape for it: gRPC 4 x 16 in flight by default, ``connect-h1``
16 HTTP/1.1 connections with one call each, ``connect-h2``). Prints one
JSON line: total instructions per call, and the part spent in libsodium's
``crypto_sign_open`` / ``crypto_sign`` (the Ed25519 verify and sign, the same in
every version). Instructions are not time: the crypto runs at a higher rate of
instructions per cycle than the interpreter. Needs valgrind
(``apt-get install valgrind``); a run takes ~2 minutes.

    .venv/bin/python -m bench.bench_instructions --requests 1000
    .venv/bin/python -m bench.bench_instructions --requests 1000 --protocol connect-h1
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from pathlib import Path

import bench._stack as stack_module
from bench._common import emit, exit_on_sigterm
from bench.bench_execute import PROTOCOLS, loadgen

_STARTUP_S = 300.0  # valgrind starts the gateway in tens of seconds, not the usual one or two


def _inclusive(annotated: str, function: str) -> int:
    """``function``'s inclusive count in ``callgrind_annotate --inclusive=yes`` output (lines such as
    ``666,152,284 (34.49%)  .../crypto_sign.c:crypto_sign_open [.../_sodium.abi3.so]``)."""
    for line in annotated.splitlines():
        if f":{function} [" in line:
            return int(line.split("(")[0].replace(",", "").strip())
    return 0


def read_dump(work: Path) -> tuple[Path, int, str]:
    """The callgrind dump in ``work``: its path, its total instructions and ``callgrind_annotate``'s
    inclusive listing (for ``_inclusive``)."""
    dump = next(work.glob("callgrind.out.*"))
    annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(dump)],
                               check=True, capture_output=True, text=True).stdout
    summary = re.search(r"^summary: (\d+)", dump.read_text(errors="replace"), re.M)
    assert summary is not None, f"no summary in {dump}"
    return dump, int(summary.group(1)), annotated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="grpc",
                        help="the client, in bench_execute's connections x streams for it")
    parser.add_argument("--shape", default="", help="CONNSxSTREAMS instead of the protocol's (64x1: bench_reference's "
                        "connect-h1-64)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    exit_on_sigterm()
    shape: tuple[int, int] | None = None
    if args.shape:
        conns, streams = args.shape.lower().split("x")
        shape = (int(conns), int(streams))
    work = Path(tempfile.mkdtemp(prefix="bench-instr-"))
    out = work / "callgrind.out"
    # Under valgrind the gateway needs minutes, not seconds, to listen and to answer /readyz.
    wait_port, wait_ready = stack_module.wait_port, stack_module.wait_ready
    stack_module.wait_port = lambda port, timeout_s=0.0, proc=None: wait_port(port, _STARTUP_S, proc)
    stack_module.wait_ready = lambda port, timeout_s=0.0: wait_ready(port, _STARTUP_S)
    stack = stack_module.start_stack(work, "memory", wrapper="twist_callgrind.py",
                                     env={"GATEWAYD_CALLGRIND_OUT": str(out)})
    try:
        sessions = work / "sessions.json"
        sessions.write_text(json.dumps(stack_module.login(stack.port, 8)))
        assert stack.gateway is not None
        pid = str(stack.gateway.pid)
        loadgen(stack.port, sessions, args.protocol, 200, "user.profile.get", "", shape)  # warm-up, not instrumented
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        loadgen(stack.port, sessions, args.protocol, 200, "user.profile.get", "", shape)  # warm-up, instrumented
        subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
        result = loadgen(stack.port, sessions, args.protocol, args.requests, "user.profile.get", "", shape)
        subprocess.run(["callgrind_control", "-d", "measured", pid], check=True, capture_output=True)
    finally:
        stack.stop()
    dump, total, annotated = read_dump(work)
    calls = max(1, result["answered"])
    crypto = _inclusive(annotated, "crypto_sign_open") + _inclusive(annotated, "crypto_sign")
    conns, streams = shape or PROTOCOLS[args.protocol]
    emit({"bench": "instructions", "protocol": args.protocol, "shape": f"{conns}x{streams}",
          "requests": args.requests, "outcomes": result["outcomes"],
          "instructions_per_call": round(total / calls),
          "crypto_instructions_per_call": round(crypto / calls),
          "other_instructions_per_call": round((total - crypto) / calls), "dump": str(dump)}, args.out)


if __name__ == "__main__":
    main()
