"""The built wheel, installed in a fresh virtualenv, carries the plugin: a third-party project's tests pass.

The fresh virtualenv gets gatewayd only from the wheel. Its dependencies come from this
virtualenv's site-packages through a view that leaves gatewayd's own editable install out
(a symlink per entry, found through a .pth line), so nothing of the source tree, and no
entry point but the wheel's, is visible there; ``pip check`` proves the wheel's declared
dependencies are met by that view. No package index is used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = Path(__file__).resolve().parent / "sample_project"
STEP_TIMEOUT_S = 120


def run(*args: str | Path, cwd: Path) -> str:
    """Run a command in ``cwd`` (never the source tree: Python puts the working directory on sys.path)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=STEP_TIMEOUT_S, check=False)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def build_wheel(tmp: Path) -> Path:
    """Build from a clean copy: setuptools reuses ./build, which would ship modules deleted since."""
    source = tmp / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache")
    for name in ("gatewayd", "twisted"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
        "--wheel-dir", tmp / "dist", source, cwd=tmp)
    [wheel] = (tmp / "dist").glob("gatewayd-*.whl")
    return wheel


def dependency_view(tmp: Path) -> Path:
    """This virtualenv's site-packages without gatewayd (its editable install and metadata)."""
    view = tmp / "deps"
    view.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if entry.name.startswith(("gatewayd", "__editable__")) or entry.suffix == ".pth":
            continue
        (view / entry.name).symlink_to(entry)
    return view


def test_the_wheel_carries_the_plugin_and_a_third_party_projects_tests_pass_with_it(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read("gatewayd-0.1.0.dist-info/entry_points.txt").decode()
    assert {"gatewayd/testing/plugin.py", "gatewayd/testing/dev.py", "gatewayd/testing/memory.py",
            "twisted/plugins/gatewayd_plugin.py"} <= names
    assert "twisted/plugins/__init__.py" not in names  # it would replace Twisted's own
    assert "[pytest11]\ngatewayd = gatewayd.testing.plugin" in entry_points

    env = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", env, cwd=tmp_path)
    python = env / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip())
    (site / "deps.pth").write_text(f"{dependency_view(tmp_path)}\n")
    pip = (sys.executable, "-m", "pip", "--python", python)
    run(*pip, "install", "--quiet", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    run(*pip, "check", cwd=tmp_path)
    where = run(python, "-c", "import gatewayd.testing.plugin as p, importlib.metadata as m; "
                "print(p.__file__); print(m.distribution('gatewayd').locate_file('gatewayd'))", cwd=tmp_path)
    assert [line.startswith(str(site)) for line in where.split()] == [True, True], where
    assert "--dev" in run(python, "-m", "twisted", "gatewayd", "--help", cwd=tmp_path)

    project = tmp_path / "notes-app"
    shutil.copytree(SAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    output = run(python, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", "-q", "-rN", cwd=project)
    assert "5 passed" in output, output
