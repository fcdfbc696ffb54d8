"""The torch-free floor: presets and KV byte formulas, records, sweeps, environment variables, the disk cache."""
