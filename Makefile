# Two commands for a fresh machine:
#   make run    set up .venv, run the default (CPU) sweep, print where the figures are
#   make test   set up .venv, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SWEEP  ?=
SNAKE_ARGS ?=

.PHONY: setup run gpu test lint clean-results

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "kvbench needs Python >= 3.11 (Snakemake does)"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	@touch $@

run: setup
	$(BIN)/snakemake --profile workflow/profiles/default $(if $(SWEEP),--config run='[$(SWEEP)]') $(SNAKE_ARGS)
	@echo; for d in results/*/figures; do [ -d "$$d" ] && echo "figures: $$d/  tables: $${d%figures}tables/  bundle: $${d%figures}bundle.zip"; done

gpu: setup  # the GPU sweeps: write-up 001's grid, model sizes, the peer side by side
	$(BIN)/snakemake --profile workflow/profiles/gpu --config run='[$(or $(SWEEP),seed-grid,model-size,vs-hf)]' $(SNAKE_ARGS)

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/snakemake --lint
