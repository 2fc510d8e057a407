"""The committed protobuf-es modules under tests/interop/node/gen/ match proto/."""

from __future__ import annotations

import pathlib

import pytest_twisted

from tests.interop._clients import ROOT, run_tool
from tests.interop._support import require_node

pytestmark = require_node()

GEN = ROOT / "tests" / "interop" / "node" / "gen"


def _tree(root: pathlib.Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest_twisted.ensureDeferred
async def test_generated_modules_are_fresh(tmp_path: pathlib.Path) -> None:
    out, err, code = await run_tool(["bash", str(ROOT / "scripts" / "gen_es.sh"), str(tmp_path)])
    assert code == 0, (out, err)
    fresh = _tree(tmp_path)
    assert fresh, "gen_es.sh wrote nothing"
    assert fresh == _tree(GEN), "tests/interop/node/gen is stale: run scripts/gen_es.sh and commit"
