"""Every environment variable kvbench reads, in one place, each checked before anything is built.

A cell reads its settings at different moments (the probe's reuse window only at the very end),
so `check()` parses all of them first, from `CellSpec.check`: a bad value is one line naming the
variable and what it may be, and never throws a finished measurement away. An empty value counts
as unset. Stdlib only: engines and the workflow import it without torch.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

# Where kvbench keeps what it reuses: the bandwidth probe, inductor's kernels, CTranslate2 conversions.
CACHE_DIR = "KVBENCH_CACHE_DIR"
# Set by the workflow to the time a Snakemake run started (epoch seconds): a probe cached on this
# host since then is reused, so a sweep measures each host and device once. Unset (a cell run by
# hand), every cell measures afresh.
PROBE_SINCE = "KVBENCH_PROBE_SINCE"
# The commit the kvbench source came from, where the source has no .git (a container image).
GIT_COMMIT = "KVBENCH_GIT_COMMIT"
# The image a cell ran in: ours if set, else what Apptainer/Singularity export inside a container.
CONTAINER_IMAGE = ("KVBENCH_CONTAINER_IMAGE", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER")
SLURM_JOB_ID = "SLURM_JOB_ID"
# Set (to anything): kvbench's own C++ kernels are neither built nor used; the libraries' GEMMs run instead.
NO_KERNELS = "KVBENCH_NO_KERNELS"


class SettingError(ValueError):
    """A bad environment setting: one line naming the variable and the values it may take."""


def get(name: str) -> str | None:
    return os.environ.get(name) or None


def cache_dir() -> Path:
    """Where kvbench keeps what it reuses: $KVBENCH_CACHE_DIR, default ~/.cache/kvbench."""
    value = get(CACHE_DIR)
    return Path(value) if value else Path.home() / ".cache" / "kvbench"


def probe_since() -> float | None:
    """The epoch time since which a cached probe is reused, or None (measure afresh)."""
    value = get(PROBE_SINCE)
    if value is None:
        return None
    try:
        since = float(value)
    except ValueError:
        since = math.nan
    if not math.isfinite(since) or since < 0:
        raise SettingError(
            f"{PROBE_SINCE}: {value!r} is not a time in epoch seconds (a number >= 0, as `date +%s` prints), nor unset"
        )
    return since


def container_image() -> str | None:
    return next((value for name in CONTAINER_IMAGE if (value := get(name))), None)


def check_cache_dir(path: Path) -> None:
    """Prove a file can be created in `path` (made if missing): `os.access` says yes to /proc as root."""
    if path.exists() and not path.is_dir():
        raise SettingError(
            f"{CACHE_DIR}: {str(path)!r} is not a directory; set it to one, or unset it for ~/.cache/kvbench"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SettingError(
            f"{CACHE_DIR}: {str(path)!r} is not a writable directory ({e.strerror or e}); "
            f"set it to one, or unset it for ~/.cache/kvbench"
        ) from None


def check() -> None:
    """Parse every setting kvbench reads; raise SettingError for the first bad one.

    The cache folder is proven writable only when it is set: the default one in a read-only home
    costs a cell no more than measuring its probe again.
    """
    probe_since()
    if get(CACHE_DIR) is not None:
        check_cache_dir(cache_dir())
