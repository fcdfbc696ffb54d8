"""The five write-ups' claims as data: one record per claim (write-up title, what it claims, how
this sweep measures it). `measure` returns (measured here, agrees?) or, where the sweep did not
measure it, the reason; explain.py renders them all in one loop.

The write-ups are the project's seed documents, cited by their titles.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from kvbench.analysis import report as rp
from kvbench.kv_cache import kv_cache_bytes

WRITEUPS = {
    "000": "nanoGPT-inference-optimization",
    "001": "nanoGPT Inference Benchmarking (KV Cache Focus)",
    "002": "KV-Cache Implementation Summary",
    "003": "nanoGPT + KV Cache",
    "004": "KV-Cache Benchmark Analysis: Is 6.7× Speedup Reasonable?",
}
# The numbers they state (figures.py draws 002's and 003's in grey beside the measurements).
SPEEDUP_000 = 2.8  # "~2.8x speed-up on CPU" (GPT-2 small)
MB_PER_TOKEN_000 = 0.07  # "the cache grows linearly (~0.07 MB per token)"
LENGTH_002 = {20: (2.0, 3.0), 50: (5.0, 7.0), 100: (10.0, 15.0), 500: (30.0, 50.0)}
MB_PER_1000_002, MB_PER_100_002 = 3.0, 0.3  # "1000 tokens: ~3 MB per sample", fp16, GPT-2
MODEL_003 = {"gpt2": 2.44, "gpt2-medium": 2.82, "gpt2-large": 4.24}  # T4 GPU, whole generation
ESTIMATED_004 = 6.7  # 100.7 tok/s measured vs ~15 tok/s estimated
GPT2 = {"n_layer": 12, "n_kv_head": 12, "head_dim": 64}  # GPT-2 small's shape, as write-up 002 states it
ABOUT = 0.2  # "about the same" when within ±20 %
MB = rp.MB


@dataclass(frozen=True)
class Claim:
    writeup: str
    text: str
    measure: Callable[[dict], tuple[str, str] | str]


def _compare(measured: float, claimed: float) -> str:
    r = measured / claimed
    return "about the same" if abs(r - 1) <= ABOUT else f"{'higher' if r > 1 else 'lower'} ({r:.2f}× the claim)"


def _at(ctx: dict, column: str, mask: Callable[[pd.DataFrame], pd.Series]) -> dict[str, list[float]]:
    """Speedups per cached mode of the pairs `mask` selects, plain models only (a grouped-query
    variant is another model than the write-ups ran)."""
    sp = ctx["speedup"]
    sub = sp[sp[column].notna() & sp["cell.n_kv_head"].isna() & mask(sp)]
    return {str(m): list(g[column].astype(float)) for m, g in sub.groupby("cell.kv_mode", observed=True)}


def _per_mode(values: dict[str, list[float]]) -> str:
    return "; ".join(f"{m} {rp.spread(v)}" for m, v in values.items())


def _best_median(values: dict[str, list[float]]) -> float:
    return max(statistics.median(v) for v in values.values())


def _gpt2(sp: pd.DataFrame) -> pd.Series:
    return sp["cell.model"].astype(str) == "gpt2"


def _formula(tokens: int, elem: int) -> tuple[str, int]:
    text = f"2 × {GPT2['n_layer']} × 1 × {GPT2['n_kv_head']} × {tokens} × {GPT2['head_dim']} × {elem}"
    return text, kv_cache_bytes(GPT2["n_layer"], 1, GPT2["n_kv_head"], tokens, GPT2["head_dim"], elem)


def _measured_per_token(ctx: dict, dtypes: tuple[str, ...]) -> dict[str, float]:
    """Measured cache bytes / (batch × tokens) per dtype, for gpt2's plain caches."""
    ok = ctx["ok"]
    sub = ok[
        (ok["cell.model"].astype(str) == "gpt2")
        & ok["cell.kv_mode"].isin(["concat", "static"])
        & ok["cell.dtype"].isin(dtypes)
        & ok["cell.n_kv_head"].isna()
        & ok["memory.kv_cache_bytes_measured"].notna()
    ]
    sub = sub.sort_values(["cell.dtype", "record"]).drop_duplicates("cell.dtype")
    return {
        str(r["cell.dtype"]): float(r["memory.kv_cache_bytes_measured"]) / (int(r["cell.batch"]) * int(r["tokens"]))
        for _, r in sub.iterrows()
    }


def speedup_000(ctx: dict):
    total, decode = _at(ctx, "total_speedup", _gpt2), _at(ctx, "decode_speedup", _gpt2)
    if not total:
        return "no gpt2 pair of none and a cached mode"
    return (
        f"gpt2 on {ctx['dev']}: whole generation {_per_mode(total)}; per decode token {_per_mode(decode)}",
        f"best median {_compare(_best_median(total), SPEEDUP_000)}",
    )


def growth_000(ctx: dict):
    text, n = _formula(1, 4)
    per_tok = _measured_per_token(ctx, ("fp32",))
    measured = (
        f"measured here (gpt2, fp32): {rp.nbytes(per_tok['fp32'])} per token per sequence"
        if per_tok
        else f"the cache's bytes at gpt2 fp32 are {rp.NOT_MEASURED}"
    )
    return (
        f"formula, fp32: `{text}` = {rp.nbytes(n)} = {rp.mb(n)} per token per sequence; {measured}",
        "yes" if abs(n / MB / MB_PER_TOKEN_000 - 1) <= ABOUT else "no",
    )


def prompt_growth_001(ctx: dict):
    ok = ctx["ok"]
    if ok["cell.prompt_len"].nunique() < 2:
        return "one prompt length, or no finished `none` cells at two"
    growth: dict[str, list[float]] = {}
    ends = set()
    rest = [c for c in rp.fr.CELL if c not in ("cell.kv_mode", "cell.prompt_len")]
    key = ok[rest].map(rp.lab).agg("|".join, axis=1)
    for (mode, _), g in ok.groupby([ok["cell.kv_mode"], key], observed=True, sort=True):
        if len(g) > 1:
            g = g.sort_values("cell.prompt_len")
            lo, hi = g.iloc[0], g.iloc[-1]
            growth.setdefault(str(mode), []).append(
                float(hi["latency.decode_ms_per_token.median"]) / float(lo["latency.decode_ms_per_token.median"])
            )
            ends.add((int(lo["cell.prompt_len"]), int(hi["cell.prompt_len"])))
    if not growth.get("none"):
        return "one prompt length, or no finished `none` cells at two"
    span = ", ".join(f"{a}→{b}" for a, b in sorted(ends))
    return (
        f"decode ms per token at the longest / the shortest prompt (prompt {span}): {_per_mode(growth)}",
        "yes" if statistics.median(growth["none"]) > 1 + ABOUT / 2 else "no",
    )


def prefill_peak_001(ctx: dict):
    pre = ctx["prefill_ratios"]
    if not pre:
        return "no pair of finished cells records a prefill peak"
    worst = min(min(v) for v in pre.values())
    return (
        "prefill peak allocated, cached / none: " + "; ".join(f"{m} {rp.spread(v)}" for m, v in pre.items()),
        "yes" if worst >= 0.99 else "no",
    )


def _length_002(n: int, lo: float, hi: float):
    def measure(ctx: dict):
        at = lambda sp: sp["cell.new_tokens"] == n  # noqa: E731
        total, decode = _at(ctx, "total_speedup", at), _at(ctx, "decode_speedup", at)
        if not total:
            return f"no pair at new_tokens = {n}"
        verdicts = "; ".join(
            f"{m} {'within' if lo <= v <= hi else 'below' if v < lo else 'above'}"
            for m, v in ((m, statistics.median(v)) for m, v in total.items())
        )
        return (
            f"whole generation {_per_mode(total)}; per decode token {_per_mode(decode)}",
            f"whole generation: {verdicts}",
        )

    return measure


def memory_002(ctx: dict):
    (t1000, n1000), (_, n100) = _formula(1000, 2), _formula(100, 2)
    half, full = _measured_per_token(ctx, ("bf16", "fp16")), _measured_per_token(ctx, ("fp32",))
    if half:
        dt = sorted(half)[0]
        measured = f"; measured here (gpt2, {dt}): {rp.nbytes(half[dt])} per token, × 1000 = {rp.mb(half[dt] * 1000)}"
    elif full:
        measured = (
            f"; measured here at fp32 only (gpt2): {rp.nbytes(full['fp32'])} per token, × 1000 = "
            f"{rp.mb(full['fp32'] * 1000)}, twice the fp16 formula; fp16 {rp.NOT_MEASURED}"
        )
    else:
        measured = f"; {rp.NOT_MEASURED} (no gpt2 cache)"
    off = n1000 / MB / MB_PER_1000_002
    return (
        f"formula: `{t1000}` = {rp.nbytes(n1000)} = {rp.mb(n1000)} per 1000 tokens ({rp.mb(n100)} per 100){measured}",
        f"no: the write-up is off by ~{off:.0f}× ({rp.mb(n1000)} / {MB_PER_1000_002:g} MB = "
        f"{off:.1f}); its number is one layer's worth ({rp.mb(n1000)} / {GPT2['n_layer']} layers = "
        f"{rp.mb(n1000 / GPT2['n_layer'])})",
    )


def _model_003(model: str, claimed: float):
    def measure(ctx: dict):
        at = lambda sp: sp["cell.model"].astype(str) == model  # noqa: E731
        total, decode = _at(ctx, "total_speedup", at), _at(ctx, "decode_speedup", at)
        if not total:
            return f"no {model} pair"
        return (
            f"on {ctx['dev']}: whole generation {_per_mode(total)}; per decode token {_per_mode(decode)}",
            f"best median {_compare(_best_median(total), claimed)}; other hardware",
        )

    return measure


def trend_003(ctx: dict):
    bm = ctx["by_model"]
    if bm is None or not bm["total_speedup"].notna().any():
        return "one model"
    trends = []
    for mode, g in bm[bm["total_speedup"].notna() & bm["n_kv_head"].isna()].groupby("kv_mode", observed=True):
        meds = list(g.groupby("model", observed=True)["total_speedup"].median())
        if len(meds) > 1:
            trends.append((mode, meds, rp.trend(meds)))
    text = "; ".join(f"{m}: " + " → ".join(rp.x(v) for v in meds) + f" ({tr})" for m, meds, tr in trends)
    verdict = (
        "yes"
        if trends and all(t == "grows" for *_, t in trends)
        else "no"
        if trends and all(t == "falls" for *_, t in trends)
        else "partly"
        if trends
        else "–"
    )
    return (f"median whole-generation speedup by model, smallest to largest: {text}" if text else "–", verdict)


def baseline_004(ctx: dict):
    sp = ctx["speedup"]
    dec, tot = sp["decode_speedup"].dropna(), sp["total_speedup"].dropna()
    if not len(dec):
        return "no finished none/cached pair"
    return (
        f"every baseline here measured: {len(dec)} none/cached pairs on {ctx['dev']}; decode speedup "
        f"{rp.spread(dec)}; whole generation {rp.spread(tot)}",
        "an estimated baseline is not a measurement: the numbers here replace it",
    )


CLAIMS = (
    Claim("000", f"~{SPEEDUP_000}× faster generation with the cache, GPT-2 small on a CPU", speedup_000),
    Claim("000", f"the cache grows ~{MB_PER_TOKEN_000} MB per token (GPT-2 small)", growth_000),
    Claim("001", "decode latency grows with prompt length without a cache (and much less with one)", prompt_growth_001),
    Claim("001", "the cache does not reduce peak memory during the prefill", prefill_peak_001),
    *(
        Claim("002", f"{n} new tokens: {lo:g}–{hi:g}× speedup", _length_002(n, lo, hi))
        for n, (lo, hi) in LENGTH_002.items()
    ),
    Claim(
        "002",
        f"KV cache of GPT-2 in fp16: ~{MB_PER_1000_002:g} MB per 1000 tokens per sample "
        f"(~{MB_PER_100_002:g} MB per 100)",
        memory_002,
    ),
    *(Claim("003", f"{m}: {v}× (whole generation, T4 GPU)", _model_003(m, v)) for m, v in MODEL_003.items()),
    Claim("003", "the speedup grows with model size (more layers to cache)", trend_003),
    Claim(
        "004", f"{ESTIMATED_004}× from a cached run measured against a baseline estimated at ~15 tokens/s", baseline_004
    ),
)


def table(ctx: dict) -> pd.DataFrame:
    """One row per claim; what the sweep did not measure says so, with the reason."""
    rows = []
    for c in CLAIMS:
        result = c.measure(ctx)
        measured, verdict = (f"{rp.NOT_MEASURED} ({result})", rp.NOT_MEASURED) if isinstance(result, str) else result
        rows.append([WRITEUPS[c.writeup], c.text, measured, verdict])
    return pd.DataFrame(rows, columns=["write-up", "claim", "measured here", "agrees?"])
