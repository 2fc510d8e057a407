"""The committed ``gatewayd/_proto`` is what ``scripts/gen_proto.py`` makes from ``proto/`` today.

The generator runs into a temporary folder and every file must match the committed one byte
for byte, with no file missing or extra. A change to a ``.proto`` without regenerating fails
here (the second test shows that it would).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "gatewayd" / "_proto"


def gen_proto() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (bytecode caches aside), by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def differences(generated: dict[str, bytes], committed: dict[str, bytes]) -> list[str]:
    return ([f"missing from gatewayd/_proto: {n}" for n in sorted(generated.keys() - committed.keys())]
            + [f"not generated from proto/: {n}" for n in sorted(committed.keys() - generated.keys())]
            + [f"stale: {n}" for n in sorted(generated.keys() & committed.keys()) if generated[n] != committed[n]])


def test_committed_modules_match_a_fresh_generation(tmp_path: Path) -> None:
    gen_proto().generate(tmp_path / "out")
    found = differences(tree(tmp_path / "out"), tree(COMMITTED))
    assert not found, "gatewayd/_proto is out of date; run `python scripts/gen_proto.py`:\n" + "\n".join(found)


def test_a_proto_change_without_regenerating_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    protos = tmp_path / "proto"
    shutil.copytree(ROOT / "proto", protos)
    push = protos / "push" / "v1" / "push.proto"
    text = push.read_text()
    assert "  string reason = 3;\n" in text
    push.write_text(text.replace("  string reason = 3;\n", "  string reason = 3;\n  string added_later = 4;\n"))
    module = gen_proto()
    monkeypatch.setattr(module, "PROTO_DIR", protos)
    module.generate(tmp_path / "out")
    found = differences(tree(tmp_path / "out"), tree(COMMITTED))
    assert found and all(line.startswith("stale: push/v1/push_pb2") for line in found), found
