"""Every decoder we own, fuzzed: the checked-in inputs replay, and each target runs under atheris.

``test_corpus_replays``: every file in tests/fuzz/corpus/TARGET/ (seeds, and each
``crash-*`` a fuzzing run once found) returns or raises only the target's
documented exceptions. ``test_fuzz_target``: a short coverage-guided run per
target (``FUZZ_TEST_SECONDS``, default 3), four subprocesses at a time, none
writing into the repository; ``make fuzz`` runs the same targets for longer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fuzz.fuzz import CORPUS, ROOT
from tests.fuzz.targets import TARGETS

SECONDS = float(os.environ.get("FUZZ_TEST_SECONDS", "3"))
PARALLEL = 4
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


@dataclass
class Run:
    result: subprocess.CompletedProcess[str]
    crashes: list[Path]


@pytest.fixture(scope="module")
def fuzz_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """One bounded atheris run per selected target, a few at a time (each is mostly start-up)."""
    names = sorted({item.callspec.params["name"] for item in request.session.items
                    if item.originalname == "test_fuzz_target"})

    def run(name: str) -> Run:
        directory = tmp_path_factory.mktemp(name)
        work, artifacts = directory / "work", directory / "artifacts"
        work.mkdir()
        artifacts.mkdir()
        command = [sys.executable, "-m", "tests.fuzz.fuzz", name, "--seconds", str(SECONDS), "--work", str(work),
                   "--artifacts", str(artifacts)]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=SECONDS * 10 + 120)
        return Run(result, sorted(artifacts.iterdir()))

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        return dict(zip(names, pool.map(run, names), strict=True))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target(name: str, fuzz_runs: dict[str, Run]) -> None:
    run = fuzz_runs[name]
    if run.result.returncode != 0 or run.crashes:
        found = "\n".join(f"  {c.name}: {c.read_bytes()[:200]!r}" for c in run.crashes)
        pytest.fail(
            f"fuzzing {name} crashed (exit {run.result.returncode})\n{found}\n"
            f"Check the input in as tests/fuzz/corpus/{name}/crash-<sha1>, fix the decoder, and replay it with\n"
            f"  python -m tests.fuzz.fuzz --replay tests/fuzz/corpus/{name}/crash-<sha1>\n"
            f"{run.result.stderr[-4000:]}"
        )
    assert "Done" in run.result.stderr, run.result.stderr[-2000:]
