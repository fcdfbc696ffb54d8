"""Moved: the compiled paths live with their engine (kvbench/engines/kvbench.py, kvbench/engines/hf.py).
This name stays only until cell.py dispatches through kvbench.engines."""

from kvbench.engines.kvbench import CompiledStaticDecoder  # noqa: F401


def compiled_runner(model, engine: str, kv_mode: str, prompt, new_tokens: int):
    from kvbench.engines.hf import HFEngine
    from kvbench.engines.kvbench import KvbenchEngine
    if engine == "hf":
        wrapped = HFEngine.__new__(HFEngine)
        wrapped.hf = model
    else:
        wrapped = KvbenchEngine(model)
    return wrapped.compiled_runner(kv_mode, prompt, new_tokens)
