"""Ctrl-C that nothing swallows: Python runs a SIGINT's KeyboardInterrupt wherever the interpreter is, and
where that is a weakref finalizer (the CPU memory pass frees its counted storages in them,
kvbench/measure/memory.py) the interrupt is printed as "ignored" and lost, and the cell runs on. The cell's
handler also remembers the interrupt, and the measuring loops call `check()` at every op and token, which
raises it again where it cannot be lost."""

from __future__ import annotations

import signal
import threading

_seen = False


def _handler(signum, frame) -> None:
    global _seen
    _seen = True
    raise KeyboardInterrupt


def install() -> None:
    """The remembering handler, where signals can be set (the main thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handler)


def check() -> None:
    """Raise the interrupt again if one arrived (and may have been swallowed)."""
    if _seen:
        raise KeyboardInterrupt
