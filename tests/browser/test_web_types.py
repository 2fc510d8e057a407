"""The browser client's TypeScript type-checks (esbuild, which builds it, does not check types)."""

from __future__ import annotations

import os
import pathlib
import shutil

import pytest
import pytest_twisted

from tests.browser._procs import LineProcess, child_env

ROOT = pathlib.Path(__file__).resolve().parents[2]
TSC = ROOT / "node_modules" / "typescript" / "bin" / "tsc"


@pytest.mark.skipif((shutil.which("node") is None or not TSC.is_file()) and not os.environ.get("CI"),
                    reason="node or node_modules missing: run scripts/test-setup.sh (npm ci)")
@pytest_twisted.ensureDeferred
async def test_web_sources_type_check() -> None:
    proc = LineProcess.start(["node", str(TSC), "-p", str(ROOT / "web" / "tsconfig.json")], str(ROOT),
                             child_env(), 120)
    assert await proc.ended == 0, "\n".join(proc.lines)


@pytest.mark.skipif(not (ROOT / "node_modules" / ".bin" / "protoc-gen-es").exists() and not os.environ.get("CI"),
                    reason="node_modules missing: run scripts/test-setup.sh (npm ci)")
@pytest_twisted.ensureDeferred
async def test_generated_code_is_fresh(tmp_path: pathlib.Path) -> None:
    proc = LineProcess.start(["bash", str(ROOT / "web" / "gen.sh"), str(tmp_path)], str(ROOT), child_env(), 60)
    assert await proc.ended == 0, "\n".join(proc.lines)
    committed = ROOT / "web" / "src" / "gen"
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert fresh, "web/gen.sh wrote nothing"
    assert fresh == {p.relative_to(committed): p.read_bytes() for p in committed.rglob("*") if p.is_file()}, (
        "web/src/gen is stale: run web/gen.sh and commit"
    )
