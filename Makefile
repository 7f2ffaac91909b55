# Two commands for a new user: `make demo` and `make test`. Both set up on first use:
# a virtualenv in .venv with Carrara and its dev tools, and a redis-server binary.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.carrara-installed

.PHONY: demo test lint setup clean

demo: setup
	$(BIN)/carrara demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy && $(BIN)/lint-imports

setup: $(STAMP) redis-server-present

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Carrara needs Python >= 3.11 (found: $$($(PYTHON) --version 2>&1)); set PYTHON=python3.11"; exit 1; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || $(MAKE) --no-print-directory python-venv-present
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

.PHONY: python-venv-present
python-venv-present:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing python3-venv with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; \
	else \
		echo "Python's venv module is missing: install it (Debian/Ubuntu: sudo apt-get install python3-venv)"; \
		exit 1; \
	fi

.PHONY: redis-server-present
redis-server-present:
	@command -v redis-server >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing redis-server with apt-get"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
		else \
			echo "redis-server is missing: install it (Debian/Ubuntu: sudo apt-get install redis-server) and run make again"; \
			exit 1; \
		fi; }

clean:
	rm -rf $(VENV) feature_repo/data models
