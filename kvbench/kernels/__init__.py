"""Hand-written CPU kernels, compiled for the machine they run on (kvbench/kernels/build.py), below the models."""
