# Two commands for a fresh machine:
#   make run    set up .venv, run the default (CPU) sweep, print where the figures are
#   make test   set up .venv, run the test suite
# A GPU node without internet: make gpu-wheels where there is internet, then make gpu-check WHEELS=.gpu-wheels
# on the node (README, "On a GPU").
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SWEEP  ?=
SNAKE_ARGS ?=
# A folder of wheels to install from with no index (filled by `pip download`, see README).
WHEELS ?=
PIP_FROM := $(if $(WHEELS),--no-index --find-links $(abspath $(WHEELS)))

.PHONY: setup gpu-wheels run gpu gpu-check test test-fast test-twin lint format clean-results llamacpp

setup: $(VENV)/.installed

# A Python that already holds a CUDA torch (a GPU image; NODE=1 forces it) keeps its packages that
# are in pyproject.toml's ranges and installs only the rest (scripts/setup_node.py); elsewhere the
# venv is built from the pins (torch, a CPU build, among them).
$(VENV)/.installed: requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "kvbench needs Python >= 3.11 (Snakemake does)"'
	@if [ -n "$(NODE)" ] || $(PYTHON) -c 'import torch, sys; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then \
	    $(PYTHON) scripts/setup_node.py --venv $(VENV) $(if $(WHEELS),--wheels $(WHEELS)); \
	else \
	    $(PYTHON) -m venv $(VENV) && \
	    $(BIN)/python -m pip install -q $(PIP_FROM) -r requirements.txt && \
	    $(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .; \
	fi
	$(BIN)/python -m kvbench.kernels.build  # kvbench's C++ kernels for this CPU (one line and the library's GEMM where none builds)
	$(BIN)/python -m kvbench.engines.hf_cache  # optimum-quanto's extension, built now rather than in a cell (where installed)
	@touch $@

# Engine llamacpp's extra (not part of setup: building llama.cpp takes minutes): llama-cpp-python built from
# source for this CPU (with CUDA where nvcc is present) and llama.cpp's converter, into the venv.
llamacpp: setup
	scripts/install-llamacpp.sh $(VENV)

# The wheels a GPU node lacks (Snakemake, jsonschema and their dependencies; CTranslate2 if it fits
# or CT2=1), for its Python (PY) on manylinux x86-64, into GPU_WHEELS: run where there is internet.
PY ?= 3.12
GPU_WHEELS ?= .gpu-wheels
gpu-wheels:
	$(PYTHON) scripts/gpu_wheels.py --python-version $(PY) --dest $(GPU_WHEELS) $(if $(CT2),--with-ct2)

run: setup
	@$(BIN)/python -c 'import fcntl, os; os.makedirs(".snakemake", exist_ok=True); fcntl.flock(open(".snakemake/kvbench-run.lock", "a"), fcntl.LOCK_EX | fcntl.LOCK_NB)' 2>/dev/null \
	  || { echo "make run: refused: another snakemake is running a sweep in $(CURDIR); wait for it (or stop it) and run again" >&2; exit 1; }
	$(BIN)/snakemake --profile workflow/profiles/default $(if $(SWEEP),--config run='[$(SWEEP)]') $(if $(VERBOSE),--quiet host --printshellcmds) $(SNAKE_ARGS)
	@echo; for d in results/*/figures; do [ -d "$$d" ] && echo "figures: $$d/  tables: $${d%figures}tables/  bundle: $${d%figures}bundle.zip"; done

gpu: setup  # the GPU sweeps: write-up 001's grid, model sizes, the peers side by side
	$(BIN)/snakemake --profile workflow/profiles/gpu --config run='[$(or $(SWEEP),seed-grid,model-size,vs-peers)]' $(SNAKE_ARGS)

# One command proves a GPU node within a short slot: setup, the peers benchmark, the GPU tests, the
# vs-peers sweep, each under a time limit (9 minutes in all) -> one archive; run again to finish.
gpu-check:
	PYTHON=$(PYTHON) VENV=$(VENV) WHEELS=$(WHEELS) scripts/gpu-check.sh

# Two workers, each taking whole files (--dist loadfile), so the tests of a file run in order on one;
# the SLURM and container files share the one local cluster through lock files (tests/test_slurm.py).
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The GPU node's twin on this CPU (tests/test_twin.py): its versions in a venv of their own, the
# offline setup from `make gpu-wheels`, then the tests that need no GPU, SLURM or container on it.
test-twin: setup
	KVBENCH_TWIN=1 $(BIN)/python -m pytest -q -rA -p no:cacheprovider tests/test_twin.py

test-fast: setup  # for developing: everything but the slow tests
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow"

lint: setup
	$(BIN)/ruff check kvbench tests benchmarks
	$(BIN)/lint-imports  # the layers (pyproject.toml [tool.importlinter], ARCHITECTURE.md)
	$(BIN)/ruff format --check kvbench tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

format: setup
	$(BIN)/ruff format kvbench tests benchmarks
	$(BIN)/snakefmt Snakefile workflow/rules
