"""The model families (GPT-2, Llama), their attention, weights, checkpoints and tokenizers; family.py picks one."""
