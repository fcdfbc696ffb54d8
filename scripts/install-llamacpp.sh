#!/usr/bin/env bash
# Engine llamacpp's extra: llama-cpp-python built from its sdist for the machine it runs on (llama.cpp's
# GGML_NATIVE build; with CUDA where nvcc and a GPU are present), and llama.cpp's own converter from the same
# sdist (convert_hf_to_gguf.py, its conversion package and gguf-py) kept inside the venv, where the
# engine checks it against a pinned hash before each use. Building takes minutes on 2 cores, so
# `make setup` does not do it; `make llamacpp` (and CI) does. Run again: a no-op once installed.
#   usage: scripts/install-llamacpp.sh [VENV]     (default .venv; CMAKE_ARGS are passed to the build)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PY=$VENV/bin/python
VERSION=0.3.36  # pyproject.toml's llamacpp extra and kvbench/engines/llamacpp.py's PIN
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
SENTENCEPIECE=sentencepiece==0.2.3  # the converter imports it for the Llama family (its requirements list it)
CONVERTER=$("$PY" -c 'from kvbench.engines.llamacpp import converter_dir; print(converter_dir())')

converter_ok() {
    "$PY" -c 'from kvbench.engines.llamacpp import checked_converter; checked_converter()' 2>/dev/null
}
bindings_ok() {
    "$PY" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null
}
if bindings_ok && converter_ok; then
    echo "llama-cpp-python $VERSION and llama.cpp's converter already in $VENV"
    exit 0
fi

# The sdist, kept (git-ignored) so a rebuild does not fetch it again; its sha256 checked before use.
SDIST_DIR=.cache/llamacpp
SDIST=$SDIST_DIR/llama_cpp_python-$VERSION.tar.gz
if [ ! -f "$SDIST" ] || ! echo "$SDIST_SHA256  $SDIST" | sha256sum --check --status; then
    rm -f "$SDIST"
    "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$SDIST_DIR"
fi
echo "$SDIST_SHA256  $SDIST" | sha256sum --check --status \
    || { echo "install-llamacpp: $SDIST is not the llama-cpp-python $VERSION sdist (sha256 differs)" >&2; exit 1; }

if bindings_ok; then  # only the converter to restore: no rebuild
    "$PY" -m pip install -q "$SENTENCEPIECE"
else
    CMAKE_ARGS=$(scripts/llamacpp-cmake-args.sh)  # CUDA only with nvcc and a GPU: see that script
    export CMAKE_ARGS
    echo "install-llamacpp: building llama-cpp-python $VERSION${CMAKE_ARGS:+ (CMAKE_ARGS=$CMAKE_ARGS)} (minutes)"
    # --no-cache-dir: never a wheel built on another machine's CPU
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
        "$PY" -m pip install -q --no-cache-dir "$SDIST" "$SENTENCEPIECE"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=llama_cpp_python-$VERSION/vendor/llama.cpp
tar -xzf "$SDIST" -C "$work" "$src/LICENSE" "$src/convert_hf_to_gguf.py" "$src/conversion" "$src/gguf-py/gguf"
rm -rf "$CONVERTER"
mkdir -p "$(dirname "$CONVERTER")"
mv "$work/$src" "$CONVERTER"
converter_ok || { "$PY" -c 'from kvbench.engines.llamacpp import checked_converter; checked_converter()'; exit 1; }
echo "install-llamacpp: llama-cpp-python $VERSION and llama.cpp's converter in $CONVERTER"
