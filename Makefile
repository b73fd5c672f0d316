# Two entry points: `make demo` (the whole job on the embedded synthetic data) and `make test`.
# Each creates .venv with the project installed if it is missing, so a fresh machine needs only Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
DEMO_DIR ?= .embedrec-demo

.PHONY: demo test lint lock venv clean bench browser

venv: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "embedrec needs Python >= 3.11 (found " + sys.version.split()[0] + "); run: make PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[test,lint,ann]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(BIN)/embedrec prepare --workdir $(DEMO_DIR)
	$(BIN)/embedrec train --workdir $(DEMO_DIR)
	$(BIN)/embedrec evaluate --workdir $(DEMO_DIR)
	$(BIN)/embedrec recommend --workdir $(DEMO_DIR) --user 42

# The page test drives headless Chromium from the Debian packages; without root/apt it skips with a reason.
browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "note: no Chromium (apt-get install chromium): the browser test will skip"

# Two pytest-xdist workers (the CI machine has 2 cores); a module's tests stay on one worker so that its trained
# fixtures are trained once. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: $(STAMP) browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=15

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[bench]'
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/prepare_speed.py --scale both
	$(BIN)/python benchmarks/recommend_speed.py
	$(BIN)/python benchmarks/serve_load.py --client aiohttp --workers 2

lint: $(STAMP)
	$(BIN)/ruff check embedrec tests benchmarks examples
	$(BIN)/ruff format --check embedrec tests benchmarks examples
	$(BIN)/mypy

# Refresh the lock (the exact versions `make demo`/`make test` install): resolve the newest versions pyproject.toml
# allows in a throw-away venv and freeze them. Commit requirements.lock after `make lock && make lint test` passes.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e '.[test,lint,bench]'
	.venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^embedrec' > $(LOCK)
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) $(DEMO_DIR) .embedrec
