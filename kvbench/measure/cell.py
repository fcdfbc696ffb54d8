"""One cell: (model, kv_mode, batch, prompt_len, dtype, ...) measured into one record.

Order matters: every input is validated before torch builds anything (`CellSpec.check`),
the token check and the warm-up run before any timing, every timed iteration starts
from a fresh cache, and the record is assembled from what each phase returned (kvbench/measure/phases.py)
at the very end; the CLI writes it atomically.
"""

from __future__ import annotations

import functools
import gc
import sys
import time
from dataclasses import dataclass, replace

import torch

from kvbench.caches.ragged import Layout, layout_prompt
from kvbench.caches.scaled import fp8_unsupported_reason
from kvbench.core.presets import kv_bytes_per_token, kv_cache_bytes
from kvbench.core.record import SCHEMA_VERSION, now_utc
from kvbench.engines import registry as engines
from kvbench.engines.base import Runner
from kvbench.engines.generate import GenerationPlan
from kvbench.measure import alloc as kv_alloc
from kvbench.measure import memory, roofline
from kvbench.measure.devices import DTYPES, dtype_unsupported_reason, threads_unsupported_reason
from kvbench.measure.environment import collect as collect_environment
from kvbench.measure.phases import compiled_runner, cuda_decode_peak, phase, timed_iterations, warm_up
from kvbench.measure.spec import CellSpec, UsageError, make_prompt
from kvbench.measure.timing import latency
from kvbench.measure.token_check import check_record, token_check
from kvbench.models import checkpoint, decode_linear
from kvbench.models.family import Config, Model, build_random, prepare_for_decoding


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    msg = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def build_model(spec: CellSpec, cfg: Config, device: torch.device) -> Model:
    """The cell's weights on `device` in its dtype: a checkpoint's, or random from the seed."""
    dtype = DTYPES[spec.dtype]
    if spec.checkpoint is not None:
        try:  # weights that do not load are bad input, as a bad config is: exit 2, no record
            model = checkpoint.load(spec.checkpoint, device, dtype)
        except checkpoint.CheckpointError as e:
            raise UsageError(str(e)) from None
    else:
        model = build_random(cfg, device, dtype, spec.seed, for_decoding=True)
    model.set_attention(spec.attention)
    return model


@dataclass
class Built:
    """What the build phase made: the weights on the device, the prompt, and what the record keeps of them."""

    model: Model
    prompt: torch.Tensor
    model_info: dict
    weights_bytes: int  # every parameter held, counted before an engine with its own weights frees ours
    layout: Layout | None = None  # a ragged batch or a shared prefix (kvbench/caches/ragged.py)


def build(spec: CellSpec, cfg: Config, device: torch.device) -> Built:
    """The build phase: the weights (laid out for decoding) and the prompt, on the device."""
    model = build_model(spec, cfg, device)
    # Packed for oneDNN only where our eager decode runs: compiled cells pack in inductor, peers export.
    # kvbench's small-batch kernel, in eager and compiled kvbench cells, where it measured faster at this batch.
    ours = spec.engine == "kvbench"
    layout = prepare_for_decoding(model, pack=ours and not spec.compile, kernel_rows=spec.batch if ours else None)
    info = model_info(model, layout)
    print(
        f"kvbench cell: built {spec.model} ({info['n_params']:,} parameters) on {device}; "
        f"measuring {spec.kv_mode} b{spec.batch} p{spec.prompt_len} n{spec.new_tokens}",
        file=sys.stderr,
        flush=True,
    )
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    prompt = make_prompt(spec, cfg.vocab_size)
    layout = layout_prompt(prompt, spec.prompt_spread, spec.shared_prefix, spec.seed)
    if layout is not None:
        layout = replace(layout, lengths=layout.lengths.to(device))
    return Built(model, prompt.to(device), info, weights_bytes, layout)


def model_info(model: Model, weight_layout: str) -> dict:
    c = model.config
    return {
        "family": c.family,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_kv_head": c.kv_heads,
        "n_embd": c.n_embd,
        "block_size": c.block_size,
        "vocab_size": c.vocab_size,
        "n_params": model.num_params(),
        "weight_layout": weight_layout,
        "linear_kernels": decode_linear.kernel_choices_of(model),
    }


def cache_bytes(cfg: Config, spec: CellSpec, batch: int, tokens: int) -> int:
    """The cell's KV cache for `batch` sequences of `tokens` positions, by its formula (presets.kv_cache_bytes)."""
    element = DTYPES[spec.dtype].itemsize
    if spec.kv_mode == "paged":  # the blocks its pool holds at the last step (kvbench/measure/alloc.py)
        return None
    return kv_cache_bytes(
        cfg.n_layer, batch, cfg.kv_heads, tokens, cfg.head_dim, element, spec.kv_mode, **spec.kv_options()
    )


def memory_record(
    built: Built, spec: CellSpec, peaks: memory.Peaks, nvml_peak: int | None = None, kv_measured: int | None = None
) -> dict:
    """The record's `memory`: the allocator's peaks, the process's RSS peak so far, the weights and the
    cache by formula, and what NVML and the cache's own tensors said where the cell got that far."""
    cached_tokens = spec.prompt_len + spec.new_tokens - 1  # the last token is chosen, never cached
    formula = None if spec.kv_mode == "none" else cache_bytes(built.model.config, spec, spec.batch, cached_tokens)
    return {
        "torch_peak_allocated_bytes": peaks.allocated,
        "torch_peak_reserved_bytes": peaks.reserved,
        "prefill_peak_allocated_bytes": peaks.prefill,
        "decode_peak_allocated_bytes": peaks.decode,
        "nvml_peak_used_bytes": nvml_peak,
        "rss_peak_bytes": memory.rss_peak_bytes(),
        "weights_bytes": built.weights_bytes,
        "kv_cache_bytes_formula": formula,
        "kv_cache_bytes_measured": kv_measured,
        "peak_method": peaks.method,
    }


def measure(built: Built, spec: CellSpec, device: torch.device, device_name: str, phases_s: dict) -> dict:
    """The measured parts of the record (latency, memory, energy, analytic, check, gpu_state), phase by phase."""
    model, prompt = built.model, built.prompt
    read_bytes = roofline.step_read_bytes(model)
    engine = engines.build(spec.engine, model)  # ours, or the engine's own copy/conversion of the same weights
    # Every phase's generation gets the cell's cache settings and ragged batch; the peers keep their own caches
    # and run rectangular batches only (peer_ragged_reason). Named, not imported: a peer's cell reads no kvbench.py.
    if spec.engine == "kvbench":
        engine.plan = GenerationPlan(spec.kv_options(), built.layout)
    run: Runner = engine.generate
    if spec.compile:
        with phase(phases_s, "compile"):
            run = compiled_runner(engine, prompt, spec, device)
    with phase(phases_s, "check"):
        steps = min(spec.check_steps, spec.new_tokens)
        checked = token_check(
            model, run, prompt, spec.kv_mode, steps, runs_our_model=not engine.owns_weights, layout=built.layout
        )
        if engine.owns_weights:
            model.to("meta")  # ours was needed only as the token reference: the memory measured is the engine's
    with phase(phases_s, "warmup"):
        peaks = warm_up(engine, run, prompt, spec, device)
    with phase(phases_s, "timed"):
        timed = timed_iterations(run, prompt, spec, device)
    last = timed.iterations[-1]
    if device.type == "cuda":  # the whole run's peaks, read before the decode-only pass resets the counter
        peaks = memory.cuda_peaks(device, prefill=max(it.prefill_peak for it in timed.iterations))
        peaks = replace(peaks, decode=cuda_decode_peak(run, prompt, spec, device))
    mem = memory_record(built, spec, peaks, timed.nvml_peak_used_bytes, last.kv_cache_bytes)
    lat = latency([it.intervals_ms for it in timed.iterations], spec.batch, phases_s.get("compile"))
    with phase(phases_s, "probe"):
        limits = roofline.device_limits(device, device_name, DTYPES[spec.dtype])
    cfg, decode_ms = model.config, lat["decode_ms_per_token"]["median"]
    element = DTYPES[spec.dtype].itemsize
    kv_per_token = kv_bytes_per_token(
        cfg.n_layer, cfg.kv_heads, cfg.head_dim, element, spec.kv_mode, spec.kv_group_size
    )
    return {
        "latency": {
            **lat,
            **kv_alloc.prefill_fields(built, spec, run, device),
            "kv_attention_path": last.kv_attention_path,
        },
        "memory": {**mem, "kv_cache_note": engine.kv_cache_note, **kv_alloc.record_fields(built, spec, run)},
        "energy": timed.energy_record(lat["decode_steps"]),
        "analytic": roofline.analyse(
            cfg,
            spec.batch,
            spec.prompt_len,
            spec.new_tokens,
            kv_per_token,
            read_bytes,
            limits,
            decode_ms,
            held=spec.sinks + spec.window if spec.kv_mode == "sliding" else None,
        ),  # fmt: skip
        "check": check_record(checked, last.tokens),
        "gpu_state": timed.gpu_state,
    }


def assemble(
    cell: dict,
    created_utc: str,
    environment: dict,
    phases_s: dict,
    *,
    status: str = "ok",
    error: str | None = None,
    model_info: dict | None = None,
    latency: dict | None = None,
    memory: dict | None = None,
    energy: dict | None = None,
    analytic: dict | None = None,
    check: dict | None = None,
    gpu_state: dict | None = None,
) -> dict:
    """The record, from what the cell got to: None for every part it did not reach."""
    return {
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "error": error,
        "created_utc": created_utc,
        "cell": cell,
        "model_info": model_info,
        "latency": latency,
        "memory": memory,
        "energy": energy,
        "analytic": analytic,
        "check": check,
        "environment": {**environment, **(gpu_state or {}), "phases_s": phases_s},
    }


def failure(exc: BaseException, built: Built | None, spec: CellSpec, device: torch.device) -> dict:
    """What a failed cell records: status oom or error, the first line of the error, and the memory
    the process had reached (the RSS peak; on CUDA the allocator's peaks)."""
    first_line = (str(exc).strip().splitlines() or [""])[0][:500]
    peaks = memory.cuda_peaks(device) if device.type == "cuda" else memory.Peaks()
    return {
        "status": "oom" if is_oom(exc) else "error",
        "error": f"{type(exc).__name__}: {first_line}",
        "memory": None if built is None else memory_record(built, spec, peaks),
    }


def run_cell(spec: CellSpec, import_s: float | None = None) -> dict:
    """Validate, build, measure; return the record (status ok/oom/unsupported/error).

    `environment.phases_s` says where the cell's wall time went (import as measured by the
    caller; build counts validation and the environment too), so the fixed cost of a cell beyond
    its measurement can be read off any record.
    """
    started, phases_s = time.perf_counter(), {"import": import_s}
    created = now_utc()
    cfg, device = spec.check()
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    env = collect_environment(device, spec.engine)
    record = functools.partial(assemble, spec.as_record_cell(device), created, env, phases_s)
    reason = dtype_unsupported_reason(device, DTYPES[spec.dtype]) or threads_unsupported_reason(spec.threads)
    if reason is None and spec.kv_mode == "static-fp8":
        reason = fp8_unsupported_reason(device)
    reason = reason or kv_alloc.peer_ragged_reason(spec)
    if reason is not None:
        return record(status="unsupported", error=reason)
    built = None
    try:
        with phase(phases_s, "build", since=started):
            built = build(spec, cfg, device)
        return record(model_info=built.model_info, **measure(built, spec, device, env["device_name"], phases_s))
    except (UsageError, KeyboardInterrupt):
        raise
    except BaseException as e:  # OOM is a result; any other failure is recorded as an error
        return record(model_info=built and built.model_info, **failure(e, built, spec, device))
    finally:
        built = None  # the weights, the prompt and every cache go before the next cell in this process
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
