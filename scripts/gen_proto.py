"""Generate the Python protobuf modules in ``gatewayd/_proto`` from ``proto/``.

Usage: ``python scripts/gen_proto.py [OUT_DIR]``. The output is deterministic, so
``tests/unit/test_proto_fresh.py`` regenerates into a temporary folder and fails
when the committed modules differ.
"""

from __future__ import annotations

import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
DEFAULT_OUT = ROOT / "gatewayd" / "_proto"


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Write ``*_pb2.py`` and ``*_pb2.pyi`` for every proto file; return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(p.relative_to(PROTO_DIR).as_posix() for p in PROTO_DIR.rglob("*.proto"))
    args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={out_dir}", f"--pyi_out={out_dir}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for proto in protos:
        package = out_dir
        for part in pathlib.PurePosixPath(proto).parent.parts:
            package = package / part
            (package / "__init__.py").touch()
    (out_dir / "__init__.py").write_text('"""Generated protobuf modules: do not edit; run scripts/gen_proto.py."""\n')
    return sorted(p for p in out_dir.rglob("*") if p.is_file())


if __name__ == "__main__":
    generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
