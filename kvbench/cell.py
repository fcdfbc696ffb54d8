"""One cell: (model, kv_mode, batch, prompt_len, dtype, ...) measured into one record.

Order matters: every input is validated before torch builds anything (`CellSpec.check`),
the token check and the warm-up run before any timing, every timed iteration starts
from a fresh cache, and the record is written atomically at the very end.
"""

from __future__ import annotations

import gc
import hashlib
import sys
import time

import torch

from kvbench import checkpoint, engines, memory, nvml, roofline
from kvbench.devices import DTYPES, dtype_unsupported_reason, synchronize
from kvbench.environment import collect as collect_environment
from kvbench.kv_cache import INT8_SCALE_BYTES, kv_cache_bytes
from kvbench.model import GPT, build_random, prepare_for_decoding
from kvbench.record import SCHEMA_VERSION, now_utc
from kvbench.spec import CellSpec, UsageError, make_prompt
from kvbench.timing import TokenTimer, stats


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    msg = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def token_check(
    model: GPT, run, prompt: torch.Tensor, spec: CellSpec, runs_our_model: bool
) -> tuple[dict, torch.Tensor | None]:
    """Greedy tokens of this cell vs kvbench's no-cache forward over the first check_steps tokens.

    The reference is one forward of ours without a cache over the prompt and this cell's own
    tokens (teacher-forced): up to the first mismatch the contexts are the same, so it gives the
    logits recompute ('none') would have given at each step, for the cost of one prefill instead
    of check_steps of them.
    """
    steps = min(spec.check_steps, spec.new_tokens)
    if steps == 0:
        return {
            "matches_reference": None,
            "reference_steps": 0,
            "first_mismatch_step": None,
            "max_logit_diff": None,
        }, None
    mine = run(prompt, steps, spec.kv_mode, keep_logits=True)
    if spec.kv_mode == "none" and runs_our_model:  # it is the reference
        return {
            "matches_reference": True,
            "reference_steps": steps,
            "first_mismatch_step": None,
            "max_logit_diff": 0.0,
        }, mine.tokens
    with torch.inference_mode():
        seq = torch.cat([prompt, mine.tokens[:, :-1].to(prompt.device)], dim=1)
        ref_logits = model(seq, last_only=False)[:, prompt.size(1) - 1 :].float()  # (B, steps, V)
    ref_tokens = ref_logits.argmax(dim=-1)
    differ = (mine.tokens.to(ref_tokens.device) != ref_tokens).any(dim=0).nonzero()
    first = int(differ[0]) if len(differ) else None
    upto = steps if first is None else first + 1  # after a divergence the contexts differ
    max_diff = None
    if mine.logits is not None:  # an engine that reports no logits is checked on its tokens alone
        max_diff = max(
            float((mine.logits[i].to(ref_logits.device) - ref_logits[:, i]).abs().max()) for i in range(upto)
        )
    return {
        "matches_reference": first is None,
        "reference_steps": steps,
        "first_mismatch_step": first,
        "max_logit_diff": max_diff,
    }, mine.tokens


def empty_record(spec: CellSpec, device: torch.device, env: dict) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "ok",
        "error": None,
        "created_utc": now_utc(),
        "cell": spec.as_record_cell(device),
        "model_info": None,
        "latency": None,
        "memory": None,
        "energy": None,
        "analytic": None,
        "check": None,
        "environment": env,
    }


def model_info(model: GPT) -> dict:
    c = model.config
    return {
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_kv_head": c.kv_heads,
        "n_embd": c.n_embd,
        "block_size": c.block_size,
        "vocab_size": c.vocab_size,
        "n_params": model.num_params(),
    }


def measure(model: GPT, prompt: torch.Tensor, spec: CellSpec, device: torch.device, record: dict) -> None:
    """Fill latency, memory, energy, analytic and check. May raise (OOM) part-way."""
    cfg, dtype = model.config, DTYPES[spec.dtype]
    element_bytes = torch.empty((), dtype=dtype).element_size()
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    cached_tokens = spec.prompt_len + spec.new_tokens - 1
    formula = (
        None
        if spec.kv_mode == "none"
        else kv_cache_bytes(
            cfg.n_layer, spec.batch, cfg.kv_heads, cached_tokens, cfg.head_dim, element_bytes, spec.kv_mode
        )
    )
    record["memory"] = {
        "torch_peak_allocated_bytes": None,
        "torch_peak_reserved_bytes": None,
        "prefill_peak_allocated_bytes": None,
        "decode_peak_allocated_bytes": None,
        "nvml_peak_used_bytes": None,
        "rss_peak_bytes": None,
        "weights_bytes": weights_bytes,
        "kv_cache_bytes_formula": formula,
        "kv_cache_bytes_measured": None,
        "peak_method": None,
    }
    cuda = device.type == "cuda"
    handle = nvml.handle_for(device)
    env = record["environment"]

    weights_read = roofline.weights_read_per_step(model)
    engine = engines.build(spec.engine, model)  # ours, or the engine's own copy/conversion of the same weights
    compile_s = None
    if spec.compile:
        # Compiled once here, outside every timing: building the runner and one full generation
        # trace (and on a GPU capture) the prefill and decode graphs.
        t0 = time.perf_counter()
        run = engine.compiled_runner(spec.kv_mode, prompt, spec.new_tokens)
        run(prompt, spec.new_tokens, spec.kv_mode)
        synchronize(device)
        compile_s = time.perf_counter() - t0
        env["phases_s"]["compile"] = compile_s
    else:
        run = engine.generate

    phases = env["phases_s"]
    t0 = time.perf_counter()
    check, check_tokens = token_check(model, run, prompt, spec, runs_our_model=not engine.owns_weights)
    if engine.owns_weights:
        model.to("meta")  # ours was needed only as the token reference: free it so memory is the engine's alone
    phases["check"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mem = record["memory"]
    if cuda:
        mem["peak_method"] = memory.CUDA_METHOD
    elif engine.module is not None:
        # The CPU's allocator peaks: live tensor bytes tracked op by op through one eager
        # generation with the cell's shapes. It doubles as the first warm-up when the cell runs
        # eagerly; a compiled cell gets it as an extra untimed pass (the tracker would break its graph).
        tracker = memory.LiveTensorBytes(memory.resident_tensors(engine.module, prompt))
        with tracker:
            engine.generate(
                prompt, spec.new_tokens, spec.kv_mode, on_token=lambda i: tracker.end_prefill() if i == 0 else None
            )
        mem["prefill_peak_allocated_bytes"] = tracker.prefill_peak
        mem["decode_peak_allocated_bytes"] = tracker.decode_peak
        mem["torch_peak_allocated_bytes"] = max(tracker.prefill_peak, tracker.decode_peak)
        mem["peak_method"] = memory.CPU_METHOD
        warmed = 0 if spec.compile else 1
    else:
        warmed = 0
    for _ in range(spec.warmup - warmed):
        run(prompt, spec.new_tokens, spec.kv_mode)
    phases["warmup"] = time.perf_counter() - t0

    timer = TokenTimer(device)
    prefill_peaks: list[int] = []
    decode_j: list[float] = []
    energy_marks: dict[str, float | int | None] = {}

    def on_token(i: int) -> None:
        timer.mark(i)
        if i == 0:
            if cuda:
                prefill_peaks.append(torch.cuda.max_memory_allocated(device))
            if handle is not None:  # phase boundary for the energy counter: the GPU must be idle here
                synchronize(device)
                energy_marks["e0"], energy_marks["t0"] = nvml.energy_mj(handle), time.monotonic()

    env["clocks_before"] = nvml.clocks(handle)
    t0 = time.perf_counter()
    runs: list[list[float]] = []
    gen = None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with nvml.Sampler(handle) as sampler:
        for _ in range(spec.iters):
            gen = None  # drop the last iteration's cache before building a fresh one
            timer.start()
            gen = run(prompt, spec.new_tokens, spec.kv_mode, on_token=on_token)
            runs.append(timer.intervals_ms())  # synchronizes on CUDA
            if handle is not None:
                e1, t1 = nvml.energy_mj(handle), time.monotonic()
                if energy_marks.get("e0") is not None and e1 is not None:
                    decode_j.append((e1 - energy_marks["e0"]) / 1e3)
                elif (j := sampler.joules_between(energy_marks["t0"], t1)) is not None:
                    decode_j.append(j)
    env["clocks_after"] = nvml.clocks(handle)
    env["throttle_reasons"] = nvml.throttle_reasons(handle)
    phases["timed"] = time.perf_counter() - t0

    steps = spec.new_tokens - 1
    prefill = [r[0] for r in runs]
    decode_per_step = [sum(r[1:]) / steps for r in runs]
    total = [sum(r) for r in runs]
    per_step = [stats([r[s] for r in runs])["median"] for s in range(1, spec.new_tokens)]
    decode_median = stats(decode_per_step)["median"]
    record["latency"] = {
        "prefill_ms": stats(prefill),
        "decode_ms_per_token": stats(decode_per_step),
        "per_step_decode_ms": per_step,
        "decode_tokens_per_s": spec.batch * 1e3 / decode_median,
        "total_generate_ms": stats(total),
        "decode_steps": steps,
        "compile_s": compile_s,
    }
    if cuda:
        mem["torch_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        mem["torch_peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
        mem["prefill_peak_allocated_bytes"] = max(prefill_peaks) if prefill_peaks else None
    mem["nvml_peak_used_bytes"] = sampler.peak_used
    mem["rss_peak_bytes"] = memory.rss_peak_bytes()
    mem["kv_cache_bytes_measured"] = gen.cache.nbytes() if gen.cache is not None else None
    mem["kv_cache_note"] = engine.kv_cache_note
    if cuda:  # decode-only peak: one more iteration with the counter reset after the prefill

        def reset_after_prefill(i: int) -> None:
            if i == 0:
                torch.cuda.reset_peak_memory_stats(device)

        gen = None
        run(prompt, spec.new_tokens, spec.kv_mode, on_token=reset_after_prefill)
        mem["decode_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)

    tokens = gen.tokens if gen is not None else check_tokens
    check["tokens_sha256"] = hashlib.sha256(tokens.cpu().numpy().tobytes()).hexdigest() if tokens is not None else ""
    if check_tokens is not None and tokens is not None:
        # the timed generation must repeat the checked one exactly (greedy is deterministic)
        check["timed_equals_checked"] = bool(torch.equal(tokens[:, : check_tokens.size(1)], check_tokens))
    record["check"] = check

    if decode_j:
        record["energy"] = {
            "decode_joules_per_token": stats(decode_j)["median"] / steps,
            "method": "nvml_energy_counter" if energy_marks.get("e0") is not None else "nvml_power_samples",
        }
    else:
        record["energy"] = {"decode_joules_per_token": None, "method": None}

    t0 = time.perf_counter()
    limits = roofline.device_limits(device, env["device_name"] or device.type, dtype)
    phases["probe"] = time.perf_counter() - t0
    kv_element_bytes = (
        (cfg.head_dim + INT8_SCALE_BYTES) / cfg.head_dim if spec.kv_mode == "static-int8" else element_bytes
    )
    record["analytic"] = roofline.analyse(
        cfg, spec.batch, spec.prompt_len, spec.new_tokens, kv_element_bytes, weights_read, limits, decode_median
    )


def run_cell(spec: CellSpec, import_s: float | None = None) -> dict:
    """Validate, build, measure; return the record (status ok/oom/unsupported/error).

    `environment.phases_s` says where the cell's wall time went (import as measured by the
    caller, build, check, warm-up with the memory pass, timed iterations, probe), so the fixed
    cost of a cell beyond its measurement can be read off any record.
    """
    t0 = time.perf_counter()
    cfg, device = spec.check()
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    env = collect_environment(device)
    env["phases_s"] = {"import": import_s}
    record = empty_record(spec, device, env)
    reason = dtype_unsupported_reason(device, DTYPES[spec.dtype])
    if reason is not None:
        record.update(status="unsupported", error=reason)
        return record
    model = prompt = None
    try:
        dtype = DTYPES[spec.dtype]
        if spec.checkpoint is not None:
            model = checkpoint.load(spec.checkpoint, device, dtype)
        else:
            model = build_random(cfg, device, dtype, spec.seed, for_decoding=True)
        model.set_attention(spec.attention)
        layout = prepare_for_decoding(model)
        record["model_info"] = {**model_info(model), "weight_layout": layout}
        print(
            f"kvbench cell: built {spec.model} ({record['model_info']['n_params']:,} parameters) on {device}; "
            f"measuring {spec.kv_mode} b{spec.batch} p{spec.prompt_len} n{spec.new_tokens}",
            file=sys.stderr,
            flush=True,
        )
        prompt = make_prompt(spec, cfg.vocab_size).to(device)
        env["phases_s"]["build"] = time.perf_counter() - t0
        measure(model, prompt, spec, device, record)
    except UsageError:
        raise
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        oom = is_oom(e)
        first_line = (str(e).strip().splitlines() or [""])[0][:500]
        record.update(
            status="oom" if oom else "error",
            error=f"{type(e).__name__}: {first_line}",
            latency=None,
            energy=None,
            analytic=None,
            check=None,
        )
        if record["memory"] is not None:
            record["memory"]["rss_peak_bytes"] = memory.rss_peak_bytes()
            if device.type == "cuda":
                record["memory"]["torch_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
                record["memory"]["torch_peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    finally:
        model = prompt = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return record
