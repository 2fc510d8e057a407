"""Every decoder we own, fuzzed: the checked-in inputs replay, and each target runs under atheris.

``test_corpus_replays``: every file in tests/fuzz/corpus/TARGET/ (seeds, and each
``crash-*`` a fuzzing run once found) returns or raises only the target's
documented exceptions. ``test_fuzz_target``: a short coverage-guided run per
target (``FUZZ_TEST_SECONDS``, default 3) in a subprocess that writes nothing
into the repository; ``make fuzz`` runs the same targets for longer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.fuzz import CORPUS, ROOT
from tests.fuzz.targets import TARGETS

SECONDS = float(os.environ.get("FUZZ_TEST_SECONDS", "3"))
INPUTS = sorted(CORPUS.glob("*/*"))


def test_every_target_has_a_corpus() -> None:
    assert sorted(p.name for p in CORPUS.iterdir()) == sorted(TARGETS)
    for name in TARGETS:
        assert any((CORPUS / name).glob("seed-*")), f"{name} has no seed input"


@pytest.mark.parametrize("path", INPUTS, ids=[f"{p.parent.name}/{p.name}" for p in INPUTS])
def test_corpus_replays(path: Path) -> None:
    target = TARGETS[path.parent.name]
    try:
        target.run(path.read_bytes())
    except target.allowed:
        pass


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target(name: str, tmp_path: Path) -> None:
    work, artifacts = tmp_path / "work", tmp_path / "artifacts"
    work.mkdir()
    artifacts.mkdir()
    command = [sys.executable, "-m", "tests.fuzz.fuzz", name, "--seconds", str(SECONDS), "--work", str(work),
               "--artifacts", str(artifacts)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=SECONDS * 10 + 60)
    crashes = sorted(artifacts.iterdir())
    if result.returncode != 0 or crashes:
        found = "\n".join(f"  {c.name}: {c.read_bytes()[:200]!r}" for c in crashes)
        pytest.fail(
            f"fuzzing {name} crashed (exit {result.returncode})\n{found}\n"
            f"Check the input in as tests/fuzz/corpus/{name}/crash-<sha1>, fix the decoder, and replay it with\n"
            f"  python -m tests.fuzz.fuzz --replay tests/fuzz/corpus/{name}/crash-<sha1>\n"
            f"{result.stderr[-4000:]}"
        )
    assert "Done" in result.stderr, result.stderr[-2000:]
