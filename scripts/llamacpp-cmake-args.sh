#!/usr/bin/env bash
# Prints the CMAKE_ARGS that scripts/install-llamacpp.sh builds llama-cpp-python with: the caller's own
# CMAKE_ARGS, plus -DGGML_CUDA=on only where a CUDA build can link and run. nvcc alone is not enough:
# CPU machines (CI among them) can carry a CUDA toolkit without its cuBLAS libraries or a GPU, and
# llama.cpp's CMake then fails on the missing CUDA::cublas target. So CUDA needs nvcc and a GPU that
# nvidia-smi lists; KVBENCH_LLAMACPP_CUDA=1 forces it (building on a GPU-less build host), =0 forbids it.
# Only what the engine loads is built: the text model's library (llama-cpp-python's wrapper builds no
# server, tools, tests or examples of llama.cpp as a subproject), without the multimodal library
# (LLAVA_BUILD, loaded by llama_cpp only for image chats) or an HTTPS library (LLAMA_OPENSSL: the common
# library's model download, which kvbench never uses). The caller's CMAKE_ARGS come last, so they win.
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
args="-DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF"
if [ "$cuda" = 1 ]; then
    args="$args -DGGML_CUDA=on"
fi
echo "$args${CMAKE_ARGS:+ $CMAKE_ARGS}"
