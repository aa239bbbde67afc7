"""Ctrl-C (SIGINT) and SIGTERM ask a run to stop where its state can be saved exactly.

Why not stop at once: an exception raised in the middle of a batch (Python's default for
Ctrl-C) leaves the optimizer step, the loop counters and the data position out of step with
each other, and a checkpoint taken then cannot be resumed exactly. Instead the first signal
only records the request; the run stops at the next safe point (the end of the batch in
flight, the end of the epoch's validation, a stage boundary) and says what it saved. A second
Ctrl-C stops at once: nothing is saved and a resume starts from ``last.ckpt`` (an epoch end).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["RunInterrupted", "agreed", "handle_stop_signals", "requested", "stop", "take_over"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    requested: int | None = None  # the signal that asked to stop
    depth = 0  # nesting of handle_stop_signals blocks


_state = _State()


class RunInterrupted(Exception):
    """The run stopped at a safe point after SIGINT or SIGTERM; its state is saved."""

    def __init__(self, signum: int, saved: str, run_dir: str | None = None) -> None:
        super().__init__(signum, saved)
        self.signum, self.saved, self.run_dir = signum, saved, run_dir

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        hint = f" Continue with: python train.py --resume {self.run_dir}" if self.run_dir else ""
        return f"interrupted ({name}); {self.saved}.{hint}"

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


def _record(signum: int, frame: FrameType | None) -> None:
    if _state.requested is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
    _state.requested = signum


def requested() -> int | None:
    """The signal that asked the run to stop, or None."""
    return _state.requested


def take_over() -> None:
    """(Re)install the recording handlers, e.g. after Lightning installed its own for a fit
    (its SIGTERM handler raises in the middle of validation). No-op outside
    :func:`handle_stop_signals` or off the main thread."""
    if _state.depth and threading.current_thread() is threading.main_thread():
        for signum in _SIGNALS:
            signal.signal(signum, _record)


@contextmanager
def handle_stop_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM only record a stop request (see the module's
    docstring); the previous handlers come back afterwards."""
    main = threading.current_thread() is threading.main_thread()
    previous = {signum: signal.getsignal(signum) for signum in _SIGNALS} if main else {}
    if _state.depth == 0:
        _state.requested = None
    _state.depth += 1
    take_over()
    try:
        yield
    finally:
        _state.depth -= 1
        for signum, handler in previous.items():
            if handler is not None:  # None: installed outside Python, cannot be restored
                signal.signal(signum, handler)
        if _state.depth == 0:
            _state.requested = None


def agreed(trainer: Any) -> bool:
    """Whether any process of the run was asked to stop (every process gets the same answer,
    so that all of them stop after the same batch)."""
    return bool(trainer.strategy.reduce_boolean_decision(requested() is not None, all=False))


def stop(saved: str) -> RunInterrupted:
    """The exception that ends the run here, saying what was saved (``raise stop(...)``)."""
    return RunInterrupted(requested() or signal.SIGTERM, saved)
