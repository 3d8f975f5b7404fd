# Two entry points for a fresh machine: `make demo` (set up + quick start) and `make test` (set up + tests + docs).
# Each creates .venv and installs the pinned CPU torch before anything else, so pip never pulls CUDA wheels.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH  ?= torch==2.13.0
SHARED_DATA := $(abspath ../shared/data)

.PHONY: setup demo test docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test,docs]"
	touch $@

# Quick start: train the `quickstart` preset on the bundled MNIST subset, then sample a grid.
demo: setup
	@if [ -d runs/quickstart/checkpoints ]; then \
	  echo "runs/quickstart already trained (rm -rf runs/quickstart to train again)"; \
	else \
	  $(BIN)/genforge train quickstart --out runs/quickstart --seed 0; \
	fi
	$(BIN)/genforge sample runs/quickstart --n 64 --seed 1 --out runs/quickstart/demo.png
	@echo "open runs/quickstart/demo.png (samples), runs/quickstart/loss.png (losses)"

test: setup
	GENFORGE_SHARED_DATA=$(SHARED_DATA) $(BIN)/python -m pytest -q
	$(MAKE) docs

# The documentation site (mkdocs.yml; docs/hooks.py generates the reference pages from the code) into site/.
# --strict: a broken link, a missing page or a stale API name is an error.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs site .pytest_cache
