"""The five write-ups' claims, checked against a sweep. The claims are data (data/claims.csv: the
write-up's title, the claim, how it is measured, the setting it names and the claimed range);
here is one function per kind of measurement, each returning (measured here, agrees?) or, where
the sweep did not measure it, the reason. `table` renders them all in one loop.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pandas as pd

from kvbench.analysis import frame as fr
from kvbench.analysis import report as rp
from kvbench.core.presets import kv_cache_bytes

CLAIMS = pd.read_csv(Path(__file__).parent / "data" / "claims.csv", dtype={"value": str}, keep_default_na=False)
GPT2 = {"n_layer": 12, "n_kv_head": 12, "head_dim": 64}  # GPT-2 small's shape, as write-up 002 states it
ABOUT = 0.2  # "about the same" when within ±20 %


def claimed(writeup: str, setting: str) -> dict[str, tuple[float, float]]:
    """The speedups a write-up states along a setting (figures draw them in grey)."""
    rows = CLAIMS[(CLAIMS["writeup"] == writeup) & (CLAIMS["measure"] == "speedup") & (CLAIMS["setting"] == setting)]
    return {v: (float(lo), float(hi)) for v, lo, hi in zip(rows["value"], rows["low"], rows["high"])}


def _per_mode(sp: pd.DataFrame, column: str) -> dict[str, list[float]]:
    """Speedups per cached mode, plain models only (a grouped-query variant is another model
    than the write-ups ran)."""
    sub = sp[sp[column].notna() & sp["cell.n_kv_head"].isna()]
    return {str(m): list(g[column].astype(float)) for m, g in sub.groupby("cell.kv_mode", observed=True)}


def _modes(values: dict[str, list[float]]) -> str:
    return "; ".join(f"{m} {rp.spread(v)}" for m, v in values.items())


def speedup(df, sp, dev, claim):
    at = sp[sp[f"cell.{claim.setting}"].astype(str) == claim.value]
    total, decode = _per_mode(at, "total_speedup"), _per_mode(at, "decode_speedup")
    if not total:
        return f"no pair at {claim.setting} = {claim.value}"
    lo, hi, medians = float(claim.low), float(claim.high), {m: statistics.median(v) for m, v in total.items()}
    if lo == hi:
        r = max(medians.values()) / lo
        near = "about the same" if abs(r - 1) <= ABOUT else f"{'higher' if r > 1 else 'lower'} ({r:.2f}× the claim)"
        verdict = f"best median {near}" + (f"; {claim.note}" if claim.note else "")
    else:
        verdict = "whole generation: " + "; ".join(
            f"{m} {'within' if lo <= v <= hi else 'below' if v < lo else 'above'}" for m, v in medians.items()
        )
    return (
        f"{claim.setting} {claim.value} on {dev}: whole generation {_modes(total)}; per decode token {_modes(decode)}",
        verdict,
    )


def _formula(tokens: int, elem: int) -> tuple[str, int]:
    """GPT-2 small's cache at batch 1, written out, and its bytes."""
    shape = (GPT2["n_layer"], 1, GPT2["n_kv_head"], tokens, GPT2["head_dim"], elem)
    return " × ".join(map(str, (2, *shape))), kv_cache_bytes(*shape)


def _measured_per_token(df: pd.DataFrame) -> dict[str, float]:
    """Measured cache bytes / (batch × tokens) per dtype, from the first of gpt2's plain caches."""
    plain = df[df["ok"] & (df["cell.model"] == "gpt2") & df["cell.n_kv_head"].isna()]
    sub = plain[plain["cell.kv_mode"].isin(["concat", "static"])].dropna(subset=["memory.kv_cache_bytes_measured"])
    sub = sub.drop_duplicates("cell.dtype")
    per = sub["memory.kv_cache_bytes_measured"].astype(float) / (sub["cell.batch"].astype(float) * sub["tokens"])
    return dict(zip(sub["cell.dtype"].astype(str), per))


def cache_per_token(df, sp, dev, claim):
    text, n = _formula(1, 4)
    per = _measured_per_token(df).get("fp32")
    measured = f"the cache's bytes at gpt2 fp32 are {rp.NOT_MEASURED}"
    if per is not None:
        measured = f"measured here (gpt2, fp32): {rp.nbytes(per)} per token per sequence"
    return (
        f"formula, fp32: `{text}` = {rp.nbytes(n)} = {rp.mb(n)} per token per sequence; {measured}",
        "yes" if abs(n / rp.MB / float(claim.low) - 1) <= ABOUT else "no",
    )


def cache_fp16(df, sp, dev, claim):
    (t1000, n1000), (_, n100) = _formula(1000, 2), _formula(100, 2)
    per = _measured_per_token(df)
    dt = next((d for d in ("bf16", "fp16", "fp32") if d in per), None)
    measured = f"; {rp.NOT_MEASURED} (no gpt2 cache)"
    if dt:
        at = "at fp32 only (gpt2)" if dt == "fp32" else f"(gpt2, {dt})"
        measured = f"; measured here {at}: {rp.nbytes(per[dt])} per token, × 1000 = {rp.mb(per[dt] * 1000)}"
        measured += f", twice the fp16 formula; fp16 {rp.NOT_MEASURED}" if dt == "fp32" else ""
    off, layers = n1000 / rp.MB / float(claim.low), GPT2["n_layer"]
    return (
        f"formula: `{t1000}` = {rp.nbytes(n1000)} = {rp.mb(n1000)} per 1000 tokens ({rp.mb(n100)} per 100){measured}",
        f"no: the write-up is off by ~{off:.0f}× ({rp.mb(n1000)} / {float(claim.low):g} MB = {off:.1f}); its number "
        f"is one layer's worth ({rp.mb(n1000)} / {layers} layers = {rp.mb(n1000 / layers)})",
    )


def prompt_growth(df, sp, dev, claim):
    ok = df[df["ok"]]
    dec = ok["latency.decode_ms_per_token.median"].astype(float)
    # cells equal in every setting but the prompt: decode ms at the longest prompt / at the shortest
    same = ["cell.kv_mode", *(c for c in fr.SAME if c != "cell.prompt_len")]
    growth: dict[str, list[float]] = {}
    ends = set()
    for (mode, *_), g in ok.groupby(same, observed=True, dropna=False):
        if len(g) > 1:
            lo, hi = g["cell.prompt_len"].idxmin(), g["cell.prompt_len"].idxmax()
            growth.setdefault(str(mode), []).append(dec[hi] / dec[lo])
            ends.add((int(ok.at[lo, "cell.prompt_len"]), int(ok.at[hi, "cell.prompt_len"])))
    if not growth.get("none"):
        return "one prompt length, or no finished `none` cells at two"
    span = ", ".join(f"{a}→{b}" for a, b in sorted(ends))
    return (
        f"decode ms per token at the longest / the shortest prompt (prompt {span}): {_modes(growth)}",
        "yes" if statistics.median(growth["none"]) > 1 + ABOUT / 2 else "no",
    )


def prefill_ratios(df: pd.DataFrame) -> dict[str, list[float]]:
    """The allocator's peak up to the first token, cached / none, per cached mode."""
    p = fr.pairs(df)
    p = p[p["ok"] & p["ok_none"].astype(bool) & (p["prefill_peak"] > 0) & (p["prefill_peak_none"] > 0)]
    ratio = (p["prefill_peak"] / p["prefill_peak_none"]).groupby(p["cell.kv_mode"], observed=True)
    return {str(m): list(r) for m, r in ratio}


def prefill_peak(df, sp, dev, claim):
    pre = prefill_ratios(df)
    if not pre:
        return "no pair of finished cells records a prefill peak"
    worst = min(min(v) for v in pre.values())
    return "prefill peak allocated, cached / none: " + _modes(pre), "yes" if worst >= 0.99 else "no"


def model_trend(df, sp, dev, claim):
    plain = sp[sp["total_speedup"].notna() & sp["cell.n_kv_head"].isna()]
    if plain["cell.model"].nunique() < 2:
        return "one model"
    medians = plain.groupby(["cell.kv_mode", "cell.model"], observed=True)["total_speedup"].median()
    meds = {mode: list(m) for mode, m in medians.groupby(level=0, observed=True) if len(m) > 1}
    verdicts = {rp.trend(m) for m in meds.values()}
    verdict = "yes" if verdicts == {"grows"} else "no" if verdicts == {"falls"} else "partly" if meds else "–"
    trends = [f"{mode}: " + " → ".join(rp.x(v) for v in m) + f" ({rp.trend(m)})" for mode, m in meds.items()]
    return "median whole-generation speedup by model, smallest to largest: " + "; ".join(trends), verdict


def baseline(df, sp, dev, claim):
    dec, tot = sp["decode_speedup"].dropna(), sp["total_speedup"].dropna()
    if not len(dec):
        return "no finished none/cached pair"
    return (
        f"every baseline here measured: {len(dec)} none/cached pairs on {dev}; decode speedup "
        f"{rp.spread(dec)}; whole generation {rp.spread(tot)}",
        "an estimated baseline is not a measurement: the numbers here replace it",
    )


MEASURES = {m.__name__: m for m in (speedup, cache_per_token, cache_fp16, prompt_growth, prefill_peak, model_trend)}
MEASURES["baseline"] = baseline


def table(df: pd.DataFrame, dev: str) -> pd.DataFrame:
    """One row per claim; what the sweep did not measure says so, with the reason."""
    sp, rows = fr.pairs(df), []
    for claim in CLAIMS.itertuples():
        result = MEASURES[claim.measure](df, sp, dev, claim)
        measured, verdict = (f"{rp.NOT_MEASURED} ({result})", rp.NOT_MEASURED) if isinstance(result, str) else result
        rows.append([claim.writeup, claim.claim, measured, verdict])
    return pd.DataFrame(rows, columns=["write-up", "claim", "measured here", "agrees?"])
