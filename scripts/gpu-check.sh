#!/usr/bin/env bash
# `make gpu-check`: prove a GPU node within one short slot and pack what it showed into one archive.
#
# Steps, the most valuable evidence first, each under its own time limit (STEPS below; with their
# grace periods they add up to 9 minutes, so a 15-minute slot holds the node's start-up too):
#   setup       make setup (WHEELS=dir: offline, keeping the image's packages; see README);
#   benchmark   benchmarks/decode_vs_peers.py, gpt2-xl bf16 on cuda (kvbench vs its peers);
#   gpu-tests   pytest -m gpu: CUDA graphs replayed without recompiles, CUDA events vs the wall
#               clock, NVML fields, OOM as a status, fp16/bf16, gpt2-xl build time;
#   sweep       the vs-peers sweep with the gpu profile.
# Then records, tables, figures, logs, the benchmark output and the versions used (setup's report,
# pip freeze) -> results/gpu-check-<device>.tar.gz (under 16 MiB).
#
# A step that fails or runs out of time does not stop the others or the packing: steps.txt says how
# each ended. Run it again after a partial run: the steps that ended ok are not run again (setup is
# make's, a no-op once done; the sweep measures only its missing cells) and the archive is re-packed.
# Exit 2 with one line on a machine without CUDA; 1 if any step failed; 0 otherwise.
#
# For tests only: GPU_CHECK_DEVICE names the device instead of asking torch, and GPU_CHECK_STUB is a
# command run as `$GPU_CHECK_STUB <step>` in place of each step (tests/standins/gpu-check-step).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
WHEELS=${WHEELS:-}
GRACE=10  # seconds between a step's SIGINT (its limit) and SIGKILL
STEPS=(   # name:limit in seconds, in the order they run
    setup:60
    benchmark:150
    gpu-tests:140
    sweep:150
)
ARCHIVE_MAX=$((16 * 1024 * 1024))

if [ -n "${GPU_CHECK_DEVICE:-}" ]; then
    device=$GPU_CHECK_DEVICE
elif ! device=$("$PYTHON" -c 'import torch, sys
if not torch.cuda.is_available():
    sys.exit(1)
print(torch.cuda.get_device_name(0))' 2>/dev/null); then
    echo "gpu-check: error: device: torch $("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo '(not importable)') sees no CUDA device; run it on a GPU node" >&2
    exit 2
fi
slug=$(echo "$device" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-|-$//g')
work=results/gpu-check-$slug
archive=results/gpu-check-$slug.tar.gz
mkdir -p "$work"
touch "$work/steps.txt"
case $VENV in /*) vbin=$VENV/bin ;; *) vbin=$PWD/$VENV/bin ;; esac
PY=$vbin/python
export PATH=$vbin:$PATH

plan="" total=0
for s in "${STEPS[@]}"; do
    plan+="${s%%:*} ${s##*:} s, " total=$((total + ${s##*:} + GRACE))
done
echo "gpu-check: $device; plan: ${plan%, } (+${GRACE} s grace each) = ${total} s at most"

set_cmd() {  # cmd=(the command line of step $1)
    case $1 in
        setup) cmd=(make -s setup "PYTHON=$PYTHON" "VENV=$VENV" ${WHEELS:+"WHEELS=$WHEELS"}) ;;
        benchmark) cmd=("$PY" benchmarks/decode_vs_peers.py --model gpt2-xl --dtype bf16 --device cuda
                        --records "$work/benchmark-records") ;;
        gpu-tests) cmd=("$PY" -m pytest -m gpu -q -rA -p no:cacheprovider tests) ;;
        sweep) cmd=(snakemake --profile workflow/profiles/gpu --config 'run=[vs-peers]')
               # Without CTranslate2 (its wheel is over the budget: README) the sweep's ct2 cells
               # could only fail, and with them its tables: the peers are kvbench and hf then.
               if ! "$PY" -c 'import ctranslate2' 2>/dev/null; then
                   cmd+=('sweeps={vs-peers: {grid: {engine: [kvbench, hf]}}}')
               fi ;;
    esac
    if [ -n "${GPU_CHECK_STUB:-}" ]; then cmd=("$GPU_CHECK_STUB" "$1"); fi
}

failed=0
for s in "${STEPS[@]}"; do
    name=${s%%:*} limit=${s##*:}
    if [ "$name" != setup ] && grep -q "^$name: ok " "$work/steps.txt"; then
        echo "== gpu-check: $name: ok in an earlier run, not run again"
        continue
    fi
    set_cmd "$name"
    echo "== gpu-check: $name (limit ${limit} s): ${cmd[*]}"
    t0=$SECONDS
    timeout --signal=INT --kill-after=$GRACE "$limit" "${cmd[@]}" > >(tee "$work/$name.log") 2>&1
    rc=$?
    how=ok
    [ $rc -eq 124 ] && how="timed out"
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && how="failed (exit $rc)"
    [ $rc -ne 0 ] && failed=1
    grep -v "^$name: " "$work/steps.txt" > "$work/steps.tmp"
    echo "$name: $how after $((SECONDS - t0)) s (limit $limit s)" >> "$work/steps.tmp"
    mv "$work/steps.tmp" "$work/steps.txt"
    if [ "$name" = setup ] && [ $rc -ne 0 ]; then
        echo "gpu-check: setup did not finish; the other steps need it" >&2
        break
    fi
done
grep -q -v ": ok " "$work/steps.txt" && failed=1

{
    echo "device: $device"
    date -u +"date: %Y-%m-%dT%H:%M:%SZ"
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null
} > "$work/environment.txt"
"$PY" -m pip freeze > "$work/pip-freeze.txt" 2>/dev/null
cp "$VENV/setup-versions.txt" "$work/" 2>/dev/null
for part in cells tables figures logs explanation.md; do
    [ -e "results/vs-peers/$part" ] && rm -rf "$work/vs-peers-$part" && cp -r "results/vs-peers/$part" "$work/vs-peers-$part"
done
tar -czf "$archive" -C results "$(basename "$work")"
size=$(stat -c %s "$archive")
if [ "$size" -gt $ARCHIVE_MAX ]; then
    tar -czf "$archive" -C results --exclude='*/vs-peers-figures' "$(basename "$work")"
    echo "gpu-check: the archive was over 16 MiB; packed again without the figures (tables and records remain)"
    size=$(stat -c %s "$archive")
fi
echo "gpu-check: $(tr '\n' ';' < "$work/steps.txt") archive: $archive ($((size / 1024)) KiB)"
exit $failed
