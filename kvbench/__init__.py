"""kvbench: what a KV cache really does to GPT-2 inference, measured one cell at a time."""

__version__ = "0.1.0"
