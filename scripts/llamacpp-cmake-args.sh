#!/usr/bin/env bash
# Prints the CMAKE_ARGS that scripts/install-llamacpp.sh builds llama-cpp-python with: the caller's own
# CMAKE_ARGS, plus -DGGML_CUDA=on only where a CUDA build can link and run. nvcc alone is not enough:
# CPU machines (CI among them) can carry a CUDA toolkit without its cuBLAS libraries or a GPU, and
# llama.cpp's CMake then fails on the missing CUDA::cublas target. So CUDA needs nvcc and a GPU that
# nvidia-smi lists; KVBENCH_LLAMACPP_CUDA=1 forces it (building on a GPU-less build host), =0 forbids it.
set -euo pipefail
cuda=${KVBENCH_LLAMACPP_CUDA:-auto}
case $cuda in
    auto)
        cuda=0
        if command -v nvcc >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
            cuda=1
        fi ;;
    0 | 1) ;;
    *) echo "KVBENCH_LLAMACPP_CUDA: '$cuda' is not one of auto, 0, 1" >&2; exit 2 ;;
esac
args=${CMAKE_ARGS:-}
if [ "$cuda" = 1 ]; then
    args="-DGGML_CUDA=on${args:+ $args}"
fi
echo "$args"
