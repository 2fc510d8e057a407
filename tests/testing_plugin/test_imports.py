"""gatewayd.testing imports without pytest, and its plugin costs a pytest run nothing until a fixture is used."""

from __future__ import annotations

import json
import subprocess
import sys

# Run in a fresh interpreter where importing pytest (or pytest-twisted) fails, as where it is not installed.
BLOCK_PYTEST = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pytest", "_pytest", "pytest_twisted"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
sys.meta_path.insert(0, Block())
"""

IMPORT_EVERY_MODULE = BLOCK_PYTEST + """
import json, pkgutil, importlib
import gatewayd.testing as package
names = sorted(m.name for m in pkgutil.iter_modules(package.__path__, package.__name__ + "."))
imported, failed = [], {}
for name in names:
    try:
        importlib.import_module(name)
        imported.append(name)
    except ImportError as e:
        failed[name] = str(e)
exported = {name: type(getattr(package, name)).__name__ for name in package.__all__}
print(json.dumps({"imported": imported, "failed": failed, "exported": exported,
                  "pytest": any(m.split(".")[0] in ("pytest", "_pytest") for m in sys.modules)}))
"""

IMPORT_PLUGIN = """
import json, sys
import gatewayd.testing.plugin
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("gatewayd", "twisted.internet.reactor")))))
"""


def run(code: str) -> object:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_every_module_but_the_plugin_imports_without_pytest() -> None:
    result = run(IMPORT_EVERY_MODULE)
    assert isinstance(result, dict)
    assert list(result["failed"]) == ["gatewayd.testing.plugin"]
    assert "pytest" in result["failed"]["gatewayd.testing.plugin"]
    assert {"gatewayd.testing.dev", "gatewayd.testing.memory", "gatewayd.testing.client",
            "gatewayd.testing.raw_h2", "gatewayd.testing.raw_http1", "gatewayd.testing.redis",
            "gatewayd.testing.public"} <= set(result["imported"])
    assert result["exported"]["InMemoryGateway"] == "type"
    assert result["exported"]["signed_execute_request"] == "function"
    assert result["pytest"] is False


def test_loading_the_plugin_imports_nothing_of_the_gateway() -> None:
    assert run(IMPORT_PLUGIN) == ["gatewayd", "gatewayd.testing", "gatewayd.testing.plugin"]
