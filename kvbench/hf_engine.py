"""Moved to kvbench/engines/hf.py; this name stays only until cell.py dispatches through kvbench.engines."""

from kvbench.engines.hf import HF_KV_MODES, HFCacheBytes, hf_forward, hf_generate, to_hf  # noqa: F401
