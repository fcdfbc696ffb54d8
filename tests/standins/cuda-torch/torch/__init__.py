"""Test stand-in for a GPU image's CUDA torch (tests/test_setup.py): only what `make setup` asks of it.

A CUDA build of torch cannot be installed on the CI machines (no GPU, multi-GB); `make setup`
only needs to see that the Python at hand already holds one, to reuse it instead of installing
the pinned CPU build. Never on a path outside that test.
"""

__version__ = "2.11.0+cu128"


class version:  # noqa: N801  (torch.version is a module; an attribute holder is enough here)
    cuda = "12.8"
