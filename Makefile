# Two commands for a fresh machine:
#   make run    set up .venv, run the default (CPU) sweep, print where the figures are
#   make test   set up .venv, run the test suite
# On a GPU node without internet: make setup WHEELS=dir && make gpu-check (README, "On a GPU").
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SWEEP  ?=
SNAKE_ARGS ?=
# A folder of wheels to install from with no index (filled by `pip download`, see README).
WHEELS ?=
PIP_FROM := $(if $(WHEELS),--no-index --find-links $(abspath $(WHEELS)))

.PHONY: setup run gpu gpu-check test test-fast lint format clean-results

setup: $(VENV)/.installed

# A Python that already holds a CUDA torch (a GPU image) keeps it: the venv sees the system's
# packages and installs every other pin; elsewhere torch comes from the pins like the rest.
$(VENV)/.installed: requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "kvbench needs Python >= 3.11 (Snakemake does)"'
	@if $(PYTHON) -c 'import torch, sys; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then \
	    echo "setup: reusing $$($(PYTHON) -c 'import torch; print("torch", torch.__version__)') from $(PYTHON)"; \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	    grep -v -E '^(torch|triton|nvidia-[a-z0-9-]+)==' requirements.txt > $(VENV)/requirements.txt; \
	else \
	    $(PYTHON) -m venv $(VENV) && cp requirements.txt $(VENV)/requirements.txt; \
	fi
	$(BIN)/python -m pip install -q $(PIP_FROM) -r $(VENV)/requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

run: setup
	@$(BIN)/python -c 'import fcntl, os; os.makedirs(".snakemake", exist_ok=True); fcntl.flock(open(".snakemake/kvbench-run.lock", "a"), fcntl.LOCK_EX | fcntl.LOCK_NB)' 2>/dev/null \
	  || { echo "make run: refused: another snakemake is running a sweep in $(CURDIR); wait for it (or stop it) and run again" >&2; exit 1; }
	$(BIN)/snakemake --profile workflow/profiles/default $(if $(SWEEP),--config run='[$(SWEEP)]') $(SNAKE_ARGS)
	@echo; for d in results/*/figures; do [ -d "$$d" ] && echo "figures: $$d/  tables: $${d%figures}tables/  bundle: $${d%figures}bundle.zip"; done

gpu: setup  # the GPU sweeps: write-up 001's grid, model sizes, the peers side by side
	$(BIN)/snakemake --profile workflow/profiles/gpu --config run='[$(or $(SWEEP),seed-grid,model-size,vs-peers)]' $(SNAKE_ARGS)

gpu-check: setup  # one command proves a GPU node: GPU tests, the vs-peers sweep, the benchmark -> one archive
	PATH=$(abspath $(BIN)):$$PATH scripts/gpu-check.sh

# Two workers, each taking whole files (--dist loadfile), so the tests of a file run in order on one;
# the SLURM and container files share the one local cluster through lock files (tests/test_slurm.py).
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-fast: setup  # for developing: everything but the slow tests
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow"

lint: setup
	$(BIN)/ruff check kvbench tests benchmarks
	$(BIN)/ruff format --check kvbench tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

format: setup
	$(BIN)/ruff format kvbench tests benchmarks
	$(BIN)/snakefmt Snakefile workflow/rules
