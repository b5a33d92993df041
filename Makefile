PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-fast lint bench clean

# look and what it needs to run; made again whenever pyproject.toml changes.
$(BIN)/.look: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# and the tools the tests, the linters and the benchmark use.
$(BIN)/.test: $(BIN)/.look
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/.look
	$(BIN)/look serve

# Two test processes (pytest-xdist); each starts the servers it needs.
TEST_PROCESSES ?= 2

test: $(BIN)/.test
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) $(PYTEST_ARGS)

# No real servers (gunicorn, redis-server, PostgreSQL, SeaweedFS, nginx, a browser).
test-fast: $(BIN)/.test
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) -m 'not servers' $(PYTEST_ARGS)

lint: $(BIN)/.test
	$(BIN)/ruff check look tests bench gunicorn.conf.py
	$(BIN)/ruff format --check look tests bench gunicorn.conf.py
	$(BIN)/lint-imports --no-cache

bench: $(BIN)/.test
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .import_linter_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
