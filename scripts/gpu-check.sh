#!/usr/bin/env bash
# `make gpu-check`: prove a GPU node in one command and pack what it showed into one archive.
#
#   1. the GPU tests (pytest -m gpu): CUDA graphs replayed without recompiles, CUDA events vs the
#      wall clock, NVML fields, OOM as a status, fp16/bf16, gpt2-xl build time;
#   2. the vs-peers sweep with the gpu profile (kvbench vs transformers (and the other peers) on the
#      same weights, gpt2 and gpt2-xl bf16);
#   3. the peers benchmark for gpt2-xl bf16 on cuda;
# then records, tables, figures, logs and the benchmark output -> results/gpu-check-<device>.tar.gz.
#
# Each step has its own time limit (GPU allocations are short; the whole stays within 8 minutes
# plus start-up), and a step that fails or runs out of time does not stop the packing: the archive
# says which steps passed (steps.txt). Run again to finish a sweep: Snakemake runs only the missing
# cells. Exit 2 with one line on a machine without CUDA; 1 if any step failed; 0 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

if ! device=$("$PY" -c 'import torch, sys
if not torch.cuda.is_available():
    sys.exit(1)
print(torch.cuda.get_device_name(0))' 2>/dev/null); then
    echo "gpu-check: error: device: torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo '(not importable)') sees no CUDA device; run it on a GPU node (after make setup there)" >&2
    exit 2
fi
slug=$(echo "$device" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-|-$//g')
work=results/gpu-check-$slug
archive=results/gpu-check-$slug.tar.gz
mkdir -p "$work"
: > "$work/steps.txt"
failed=0

step() {  # step <name> <seconds> <command...>: run it with a limit, log it, note how it ended
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "== gpu-check: $name (limit ${limit}s)"
    timeout --signal=INT --kill-after=20 "$limit" "$@" > >(tee "$work/$name.log") 2>&1
    local rc=$?
    local how=ok
    [ $rc -eq 124 ] && how="timed out"
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && how="failed (exit $rc)"
    [ $rc -ne 0 ] && failed=1
    echo "$name: $how after $((SECONDS - t0)) s" | tee -a "$work/steps.txt"
}

{
    echo "device: $device"
    date -u +"date: %Y-%m-%dT%H:%M:%SZ"
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null
} > "$work/environment.txt"
"$PY" -m pip freeze > "$work/pip-freeze.txt" 2>/dev/null

bench=benchmarks/decode_vs_peers.py
step gpu-tests 150 "$PY" -m pytest -m gpu -q -rA -p no:cacheprovider tests
step vs-peers-sweep 240 snakemake --profile workflow/profiles/gpu --config 'run=[vs-peers]'
step benchmark 90 "$PY" "$bench" --model gpt2-xl --dtype bf16 --device cuda

for part in cells tables figures logs explanation.md bundle.zip; do
    [ -e "results/vs-peers/$part" ] && cp -r "results/vs-peers/$part" "$work/vs-peers-$part"
done
tar -czf "$archive" -C results "$(basename "$work")"
echo "gpu-check: $(cat "$work/steps.txt" | tr '\n' ';') archive: $archive"
exit $failed
