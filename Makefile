# The two set-up-and-go commands: `make run` and `make test`. Each installs what
# it needs on a fresh machine first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint proto setup clean fuzz

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	@# The browser app at /app/ needs node; the gateway runs without it.
	@if command -v node >/dev/null; then \
	  [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error; \
	  node web/build.mjs; \
	else echo "node not found: the web app at /app/ is skipped"; fi
	$(BIN)/twist --log-format=text gatewayd --dev

test: $(STAMP)
	./scripts/test-setup.sh
	$(BIN)/ruff check gatewayd tests twisted scripts bench
	$(BIN)/mypy
	$(BIN)/pytest -q -ra

# Coverage-guided fuzzing (atheris) of every decoder, FUZZ_SECONDS per target (FUZZ_TARGET for one).
# Crashing inputs land in tests/fuzz/corpus/TARGET/crash-*: check them in, fix, and `make test` replays them.
FUZZ_SECONDS ?= 60
FUZZ_TARGET ?= --all
fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzz.fuzz $(FUZZ_TARGET) --seconds $(FUZZ_SECONDS)

proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) node_modules
