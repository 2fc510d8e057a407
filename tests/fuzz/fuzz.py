"""Coverage-guided fuzzing of gatewayd's decoders with atheris (libFuzzer for Python).

    python -m tests.fuzz.fuzz TARGET [--seconds N] [--work DIR] [--artifacts DIR]
    python -m tests.fuzz.fuzz --all --seconds N        # every target, one process each
    python -m tests.fuzz.fuzz --replay FILE...         # run inputs (crash files) once, no atheris
    python -m tests.fuzz.fuzz --list

Each target (tests/fuzz/targets.py) starts from its checked-in corpus
(tests/fuzz/corpus/TARGET/), keeps what it learns in ``--work`` (by default
``.fuzz/TARGET``, not checked in) and writes a crashing input to ``--artifacts``
(by default the checked-in corpus directory, as ``crash-<sha1>``), where
tests/fuzz/test_fuzz.py replays it from then on. Only gatewayd's own modules
are instrumented: coverage means coverage of our code.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "fuzz" / "corpus"
WORK = ROOT / ".fuzz"
MAX_LEN = 8192
UNIT_TIMEOUT_S = 10


def corpus_dir(name: str) -> Path:
    return CORPUS / name


def libfuzzer_args(seconds: float, work: Path, seeds: Path, artifacts: Path, seed: int | None = None) -> list[str]:
    """Flags and directories for one bounded run: new inputs go to ``work``, crashes to ``artifacts``."""
    args = [
        f"-max_total_time={max(1, round(seconds))}",
        f"-max_len={MAX_LEN}",
        f"-timeout={UNIT_TIMEOUT_S}",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
    ]
    if seed is not None:
        args.append(f"-seed={seed}")
    return [*args, str(work), str(seeds)]


def fuzz_one(name: str, flags: list[str]) -> None:
    """Run atheris on ``name`` in this process (never returns: libFuzzer exits)."""
    import atheris

    with atheris.instrument_imports(include=["gatewayd", "tests.fuzz"]):
        from tests.fuzz.targets import TARGETS

    target = TARGETS[name]

    def one_input(data: bytes) -> None:
        try:
            target.run(data)
        except target.allowed:
            pass

    atheris.Setup([sys.argv[0], *flags], one_input)
    atheris.Fuzz()


def replay(paths: list[Path]) -> int:
    """Run each input through the target its directory names; 1 if any crashed."""
    import traceback

    from tests.fuzz.targets import TARGETS

    failed = 0
    for path in paths:
        target = TARGETS[path.parent.name]
        try:
            target.run(path.read_bytes())
            outcome = "ok"
        except target.allowed as e:
            outcome = f"allowed {type(e).__name__}"
        except BaseException:
            failed = 1
            outcome = "CRASH\n" + traceback.format_exc()
        print(f"{path}: {outcome}")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", nargs="?")
    parser.add_argument("--all", action="store_true", help="fuzz every target, one after the other")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--replay", nargs="+", type=Path, metavar="FILE")
    parser.add_argument("--seconds", type=float, default=60.0, help="per target")
    parser.add_argument("--work", type=Path, help="where new corpus inputs go (default .fuzz/TARGET)")
    parser.add_argument("--artifacts", type=Path, help="where crashes go (default the checked-in corpus)")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    if args.list or args.all:
        # Importing the targets here is fine: these runs fuzz nothing in this process.
        from tests.fuzz.targets import TARGETS

        if args.list:
            print("\n".join(TARGETS))
            return 0
        failed = []
        for name in TARGETS:
            print(f"=== {name} ({args.seconds:g} s)", flush=True)
            command = [sys.executable, "-m", "tests.fuzz.fuzz", name, "--seconds", str(args.seconds)]
            if subprocess.run(command, cwd=ROOT).returncode != 0:
                failed.append(name)
        if failed:
            print(f"crashes in: {', '.join(failed)} (inputs saved as tests/fuzz/corpus/TARGET/crash-*)")
        return 1 if failed else 0
    if not args.target or not corpus_dir(args.target).is_dir():
        parser.error(f"unknown target {args.target!r} (see --list)")
    work = args.work or WORK / args.target
    artifacts = args.artifacts or corpus_dir(args.target)
    for d in (work, artifacts):
        d.mkdir(parents=True, exist_ok=True)
    # Not before this point: the targets (and gatewayd) must first be imported under instrumentation.
    fuzz_one(args.target, libfuzzer_args(args.seconds, work, corpus_dir(args.target), artifacts, args.seed))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
