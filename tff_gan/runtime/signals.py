"""Stopping on Ctrl-C or SIGTERM: between TFF calls, as exceptions a program reports in a line.

Python turns a signal into an exception at the next bytecode of the main thread. When that
lands while a TFF computation runs, the exception unwinds while the C++ runtime's threads are
mid-call, and the process can abort (`FATAL: exception not rethrown`, SIGABRT). `deferred`
holds SIGINT and SIGTERM for the duration of such a call and raises once it has returned; a
second signal during the call raises at once (the user insists).

SIGINT raises `Interrupted` (a `KeyboardInterrupt`), SIGTERM `Terminated` (a `SystemExit`
with status 143); both carry the signal number, so a program can exit with 128 + signum.
"""

from __future__ import annotations

import contextlib
import signal
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


def raise_on_signal(signum, frame):
  """A handler raising `exception_for(signum)` at once."""
  del frame
  raise exception_for(signum)


@contextlib.contextmanager
def deferred():
  """Within the block, SIGINT and SIGTERM are held and raised when it ends (main thread)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received: list[int] = []

  def hold(signum, frame):
    del frame
    if received:  # A second signal: stop now.
      raise exception_for(signum)
    received.append(signum)

  previous = {signum: signal.signal(signum, hold) for signum in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
  if received:
    raise exception_for(received[0])


class RunStopped(Exception):
  """A signal stopped a run; the message is the one line to print (where, and how to resume).

  Attributes:
    exit_code: 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM).
  """

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum
