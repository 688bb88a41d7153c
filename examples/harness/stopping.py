"""Stopping a training run cleanly on SIGINT (Ctrl-C) or SIGTERM.

The first signal only sets a flag: the training loop finishes its current step, saves, and
raises `TrainingInterrupted`. The handlers then return to the defaults, so a second signal
ends the process at once (the operating system's action: no save, no traceback).
"""

from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
  """Training stopped on a signal after saving its latest checkpoint.

  Attributes:
    signum: the signal received.
    epoch: the epoch in progress, counted from 1.
    step: the steps of that epoch done (the position saved).
    exit_code: the shell's convention for death by that signal, 128 + signum.
  """

  def __init__(self, signum: int, epoch: int, step: int, steps_per_epoch: int):
    self.signum, self.epoch, self.step = signum, epoch, step
    self.exit_code = 128 + signum
    name = signal.Signals(signum).name
    super().__init__(
      f"{name}: interrupted at epoch {epoch}, step {step} of {steps_per_epoch}; rerun with --resume"
    )


class StopFlag:
  """Set by the first SIGINT or SIGTERM while `handle_signals` is active."""

  def __init__(self):
    self.signum: int | None = None

  def __bool__(self) -> bool:
    return self.signum is not None


@contextlib.contextmanager
def handle_signals():
  """Yields a `StopFlag`; restores the previous handlers on exit.

  Signal handlers can only be installed from the main thread; elsewhere the flag is never set
  and signals keep their previous behaviour.
  """
  flag = StopFlag()
  if threading.current_thread() is not threading.main_thread():
    yield flag
    return

  def on_signal(signum, _frame):
    flag.signum = signum
    for sig in SIGNALS:  # a second signal is not caught: it ends the process now
      signal.signal(sig, signal.SIG_DFL)

  previous = {sig: signal.signal(sig, on_signal) for sig in SIGNALS}
  try:
    yield flag
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
