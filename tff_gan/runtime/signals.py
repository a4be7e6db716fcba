"""Stopping on Ctrl-C or SIGTERM: between TFF calls, as exceptions a program reports in a line.

Python turns a signal into an exception at the next bytecode of the main thread. When that
lands while a TFF computation runs, the exception unwinds while the C++ runtime's threads are
mid-call, and the process can abort (`FATAL: exception not rethrown`, SIGABRT). `deferred`
holds SIGINT and SIGTERM for the duration of such a call and raises once it has returned; a
second signal during the call raises at once (the user insists). The training loops hold
them for a whole round, which then ends recorded and checkpointed: a stop loses no round.

SIGINT raises `Interrupted` (a `KeyboardInterrupt`), SIGTERM `Terminated` (a `SystemExit`
with status 143); both carry the signal number, so a program can exit with 128 + signum.

Python drops an exception raised inside a garbage-collector callback or a `__del__` (JAX
registers such a callback, and importing TensorFlow or building TFF computations runs it
often): a Ctrl-C landing there would be lost. So `raise_on_signal` also remembers the
signal until `handled()`, and `check()` and every `deferred` block raise it again.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading


class Interrupted(KeyboardInterrupt):
  """SIGINT (Ctrl-C) arrived."""

  signum = signal.SIGINT


class Terminated(SystemExit):
  """SIGTERM arrived."""

  signum = signal.SIGTERM

  def __init__(self):
    super().__init__(128 + signal.SIGTERM)


def exception_for(signum: int) -> BaseException:
  return Terminated() if signum == signal.SIGTERM else Interrupted()


_unhandled: list[int] = []  # Signals `raise_on_signal` raised that nobody handled yet.


def raise_on_signal(signum, frame):
  """A handler raising `exception_for(signum)` at once, and again from `check()` if the first
  exception is swallowed (see the module docstring)."""
  del frame
  _unhandled.append(signum)
  raise exception_for(signum)


def install() -> None:
  """From here on SIGINT and SIGTERM raise (`raise_on_signal`) in the main thread, and the
  exception of one that Python had to drop is not printed (the next `check` raises it)."""
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, raise_on_signal)
  print_unraisable = sys.unraisablehook

  def hook(unraisable):
    if not isinstance(unraisable.exc_value, Interrupted | Terminated):
      print_unraisable(unraisable)

  sys.unraisablehook = hook


def check() -> None:
  """Raises the exception of a signal `raise_on_signal` received that nobody handled."""
  if _unhandled:
    raise exception_for(_unhandled[0])


def handled() -> None:
  """Marks the signals received so far as handled (the program reported the stop)."""
  _unhandled.clear()


_held: list[int] | None = None  # While a `deferred` block is open: the signals it holds.


@contextlib.contextmanager
def deferred():
  """Within the block, SIGINT and SIGTERM are held and raised when it ends (main thread).

  Blocks nest: one opened inside another holds nothing itself, so a signal waits for the
  outermost block to end (a round loop holds the whole round, and `held` tells the code
  inside that the run is about to stop). A signal received earlier and not handled (see
  `check`) raises on entry.
  """
  global _held  # noqa: PLW0603
  if threading.current_thread() is not threading.main_thread() or _held is not None:
    yield
    return
  check()
  received: list[int] = []

  def hold(signum, frame):
    del frame
    if received:  # A second signal: stop now.
      raise exception_for(signum)
    received.append(signum)

  previous = {signum: signal.signal(signum, hold) for signum in (signal.SIGINT, signal.SIGTERM)}
  _held = received
  try:
    yield
  finally:
    _held = None
    for signum, handler in previous.items():
      signal.signal(signum, handler)
  if received:
    raise exception_for(received[0])


def held() -> bool:
  """Whether the open `deferred` block holds a signal: the program stops when it ends."""
  return bool(_held)


class RunStopped(Exception):
  """A signal stopped a run; the message is the one line to print (where, and how to resume).

  Attributes:
    exit_code: 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM).
  """

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum
