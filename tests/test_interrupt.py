"""core/interrupt: a Ctrl-C that a finalizer swallowed is raised again at the next check."""

import gc
import signal
import weakref

import pytest

from kvbench.core import interrupt


def test_an_interrupt_lost_in_a_finalizer_is_raised_at_the_next_check(monkeypatch):
    monkeypatch.setattr(interrupt, "_seen", False)
    previous = signal.getsignal(signal.SIGINT)
    interrupt.install()
    try:

        class Held:
            pass

        obj = Held()
        weakref.finalize(obj, lambda: signal.raise_signal(signal.SIGINT))  # lands inside a finalizer
        del obj
        gc.collect()  # the KeyboardInterrupt is printed as ignored there, not raised here
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
    finally:
        signal.signal(signal.SIGINT, previous)
