"""The aggregator of `--aggregator=he` in its own OS process (see `he` for the threat model).

Simulated: every role runs on this machine; the aggregator runs in a separate process so that
it provably holds no secret key: it is only ever sent the public context and ciphertexts.
Requests go to its stdin and replies come from its stdout as lists of byte strings (uint32
count, then uint64 length and bytes of each): no pickle, so neither side can make the other
run code. `python -m tff_gan.secure.he_process` is the child's side.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import weakref
from collections.abc import Sequence

from tff_gan.runtime import confine
from tff_gan.secure.he import Aggregator, EncryptedUpdate


def _send(stream, parts: Sequence[bytes]) -> None:
  stream.write(struct.pack('>I', len(parts)))
  for part in parts:
    stream.write(struct.pack('>Q', len(part)))
    stream.write(part)
  stream.flush()


def _read(stream, size: int) -> bytes:
  data = stream.read(size)
  if len(data) != size:
    raise EOFError
  return data


def _receive(stream) -> list[bytes]:
  (count,) = struct.unpack('>I', _read(stream, 4))
  return [_read(stream, struct.unpack('>Q', _read(stream, 8))[0]) for _ in range(count)]


def _handle(aggregator: Aggregator | None, command: bytes, args: list[bytes]):
  """The child's reply to one request, and its aggregator afterwards."""
  if command == b'start':
    aggregator = Aggregator(args[0])
    return aggregator, [aggregator.key_id.encode()]
  if aggregator is None:
    raise ValueError('the aggregator process has no public context yet.')
  if command == b'add':
    key, length, multiplier, *ciphertexts = args
    aggregator.add(EncryptedUpdate(key.decode(), tuple(ciphertexts), int(length)),
                   int(multiplier))
    return aggregator, []
  if command == b'result':
    result = aggregator.result()
    return aggregator, [result.key_id.encode(), str(result.length).encode(), *result.ciphertexts]
  if command == b'reset':
    aggregator.reset()
    return aggregator, []
  if command == b'holds_secret_key':
    return aggregator, [b'1' if aggregator.holds_secret_key() else b'0']
  raise ValueError(f'unknown request {command!r}.')


def _serve() -> None:
  """The aggregator process's loop: one reply per request, until EOF on stdin."""
  replies = os.fdopen(os.dup(1), 'wb')
  os.dup2(2, 1)  # Anything a library prints goes to stderr, never into the replies.
  requests, aggregator = sys.stdin.buffer, None
  while True:
    try:
      command, *args = _receive(requests)
    except EOFError:
      return
    try:
      aggregator, reply = _handle(aggregator, command, args)
      reply = [b'ok', *reply]
    except Exception as error:  # Any: the parent raises it.
      reply = [b'error', ' '.join(str(error).split()).encode()]
    try:
      _send(replies, reply)
    except BrokenPipeError:  # The parent is gone.
      return


def _die_with_parent() -> None:  # Runs in the child between fork and exec.
  confine.die_with_parent()
  os.setpgrp()  # A terminal's Ctrl-C reaches only the parent, which stops us in order.


def _stop(process: subprocess.Popen, timeout_seconds: float = 5.0) -> None:
  """Closes the child's stdin (it exits on EOF), then kills it if it lingers; reaps it."""
  for stream in (process.stdin, process.stdout):
    try:
      stream.close()
    except OSError:  # Broken pipe: the child is gone already.
      pass
  try:
    process.wait(timeout_seconds)
  except subprocess.TimeoutExpired:
    process.kill()
    process.wait()


class AggregatorProcess:
  """An `Aggregator` in its own OS process, fed the public context and ciphertexts by pipe.

  Simulated: every role runs on this machine; the aggregator runs in a separate process so
  that it provably holds no secret key (it is only ever sent the public context). The child
  exits when `close` (or the `with` block's end, or garbage collection, or interpreter exit)
  closes its pipe, and the kernel kills it if this process dies first.
  """

  def __init__(self, public_context: bytes):
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    python_path = os.pathsep.join(filter(None, [package_root, os.environ.get('PYTHONPATH')]))
    self._process = subprocess.Popen(
        [sys.executable, '-m', 'tff_gan.secure.he_process'], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, env={**os.environ, 'PYTHONPATH': python_path}, close_fds=True,
        preexec_fn=_die_with_parent)
    self._finalizer = weakref.finalize(self, _stop, self._process)
    try:
      self.key_id = self._call(b'start', public_context)[0].decode()
    except BaseException:
      self.close()
      raise

  @property
  def pid(self) -> int:
    return self._process.pid

  def _call(self, command: bytes, *args: bytes) -> list[bytes]:
    if not self._finalizer.alive:
      raise ValueError('the aggregator process is closed.')
    try:
      _send(self._process.stdin, [command, *args])
      status, *reply = _receive(self._process.stdout)
    except (EOFError, OSError) as error:
      self.close()
      raise RuntimeError(f'the aggregator process {self.pid} exited (status '
                         f'{self._process.returncode}).') from error
    except BaseException:  # E.g. KeyboardInterrupt mid-message: the pipe is out of step.
      self.close()
      raise
    if status != b'ok':
      raise ValueError(reply[0].decode())
    return reply

  def add(self, update: EncryptedUpdate, multiplier: int = 1) -> None:
    """`Aggregator.add`, in the child (which checks `multiplier`)."""
    self._call(b'add', update.key_id.encode(), str(update.length).encode(),
               str(multiplier).encode(), *update.ciphertexts)

  def result(self) -> EncryptedUpdate:
    """`Aggregator.result`, from the child."""
    key, length, *ciphertexts = self._call(b'result')
    return EncryptedUpdate(key.decode(), tuple(ciphertexts), int(length))

  def reset(self) -> None:
    """`Aggregator.reset`, in the child."""
    self._call(b'reset')

  def holds_secret_key(self) -> bool:
    """`Aggregator.holds_secret_key`, asked of the child."""
    return self._call(b'holds_secret_key')[0] == b'1'

  def close(self) -> None:
    """Stops and reaps the child. Idempotent."""
    self._finalizer()

  def __enter__(self) -> AggregatorProcess:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


if __name__ == '__main__':
  _serve()
