"""How every `kvbench` command ends when something stops it that the command itself did not report.

`dispatch.main` runs every command through `ending`, so a command added later gets the same
behaviour without asking: one line on stderr, never a traceback, and the documented exit code
(0 ok/oom/unsupported, 1 error, 2 bad input, 130 interrupted):

- Ctrl-C (KeyboardInterrupt): "interrupted", exit 130. A cell writes its record only once it is
  measured, and atomically (kvbench.core.record), so an interrupted cell leaves none: its line says so.
- bad input that reached past a command's own checks (a UsageError, an unreadable checkpoint or
  tokenizer, a safetensors file that is not one): exit 2.
- an OSError (named by its path), a damaged zip archive (a bad member header, inflate or CRC
  failure): exit 1.

Anything else is a bug and keeps its traceback. Error classes are matched only from modules the
command already imported: an exception cannot come from a module that was never loaded, and the
dispatcher stays light (a torch-free command never imports torch to end).
"""

from __future__ import annotations

import sys

from kvbench.core.record import os_error_line

INTERRUPTED = 130
BAD_INPUT = 2
ERROR = 1

# (module, class): bad input, by the module that raises it.
BAD_INPUT_ERRORS = (
    ("kvbench.measure.spec", "UsageError"),
    ("kvbench.models.checkpoint", "CheckpointError"),
    ("kvbench.models.tokenizer", "EncodingError"),
    ("safetensors", "SafetensorError"),  # a weights file damaged past what checkpoint.py checks
)
# (module, class): a damaged archive (a bundle, a torch checkpoint): BadZipFile for its directory
# and member headers, zlib.error for its compressed bytes (zipfile raises it as it is).
ARCHIVE_ERRORS = (("zipfile", "BadZipFile"), ("zlib", "error"))
# What a command's interrupt leaves behind, where it is worth saying.
ON_INTERRUPT = {"cell": "no record written"}


def _loaded(names: tuple[tuple[str, str], ...]) -> tuple[type[BaseException], ...]:
    """The classes of `names` whose module this process has imported."""
    found = (getattr(sys.modules.get(module), name, None) for module, name in names)
    return tuple(cls for cls in found if isinstance(cls, type))


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (a checkpoint's or zlib's may span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def ending(command: str | None, exc: BaseException) -> tuple[int, str] | None:
    """(exit code, the one line to print) for `exc`, or None: a bug, whose traceback is the report."""
    prog = f"kvbench{' ' + command if command else ''}"
    if isinstance(exc, KeyboardInterrupt):
        note = ON_INTERRUPT.get(command or "")
        return INTERRUPTED, f"{prog}: interrupted{'; ' + note if note else ''}"
    if isinstance(exc, _loaded(BAD_INPUT_ERRORS)):
        return BAD_INPUT, f"{prog}: error: {one_line(exc)}"
    if isinstance(exc, OSError):
        return ERROR, f"{prog}: error: {os_error_line(exc)}"
    if isinstance(exc, _loaded(ARCHIVE_ERRORS)):
        return ERROR, f"{prog}: error: a damaged zip archive: {one_line(exc)}"
    return None
