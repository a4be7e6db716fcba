"""Connections to TFF workers on other machines (`bin/worker.py`), with bounded waits.

Waits for a remote worker are bounded (`WorkerError` at start, `WorkerLostError` mid-run);
TFF alone would retry a vanished worker forever.
"""

from __future__ import annotations

import re
import time

import grpc
import tensorflow_federated as tff

from tff_gan.runtime import tls as tls_lib
from tff_gan.runtime.addresses import parse_address
from tff_gan.runtime.workers import (
  GRPC_CHANNEL_OPTIONS,
  WorkerError,
  close_channel,
  executor_factory,
)

# A readiness probe's own deadline; the probe repeats until the worker's timeout.
_PROBE_SECONDS = 2.0
# A worker that closes this many connections in a row at once refuses the handshake.
_CLOSED_IN_A_ROW = 3
# What gRPC's UNAVAILABLE details say when the TLS handshake, not the network, failed.
_TLS_FAILURE = re.compile(r'ssl|tls|handshake|certificate|WRONG_VERSION', re.IGNORECASE)


class WorkerLostError(WorkerError):
  """A remote worker stopped answering during a run and did not come back in time."""


def _bounded_retries(method, worker: RemoteWorker):
  """Wraps a stub RPC: a worker gone for longer than its timeout ends the run.

  TFF retries calls that fail with retryable gRPC codes (e.g. UNAVAILABLE) forever, which
  would hang a run whose worker died. Here a failed call waits up to the worker's timeout for
  the worker to answer again: if it does, TFF's retry reruns the computation on it; if not,
  the run ends with a `WorkerLostError` naming the worker.
  """

  def guarded(self, request):
    try:
      return method(self, request)
    except tff.framework.RetryableError as e:
      if not worker.wait_until_ready():
        raise WorkerLostError(
            f'lost the TFF worker at {worker.address} ({_grpc_status(e)}) and it did not '
            f'answer again within {worker.timeout_seconds:g} s; restart it, then rerun the same '
            'command to resume from the last checkpoint.') from None
      raise

  return guarded


def _grpc_status(error: Exception) -> str:
  """The gRPC status code inside TFF's retryable error, e.g. `UNAVAILABLE`."""
  cause = error.args[0] if error.args else error
  code = getattr(cause, 'code', None)
  return code().name if callable(code) else type(cause).__name__


def _best_effort(method):
  """Wraps a stub RPC that frees a worker's values: a worker that is gone holds none.

  TFF frees remote values from garbage-collection finalizers, also at interpreter exit, where
  an error (or a wait for a lost worker) would print an "Exception ignored" traceback after
  the run's one-line message, or delay the exit.
  """

  def freeing(self, request):
    try:
      return method(self, request)
    except (tff.framework.RetryableError, grpc.RpcError, ValueError):  # ValueError: closed.
      return None

  return freeing


class _GuardedStub(tff.framework.RemoteExecutorGrpcStub):
  """TFF's gRPC stub, with `_bounded_retries` on every RPC that computes and `_best_effort`
  on the two that free a worker's values."""

  def __init__(self, channel, worker: RemoteWorker):
    super().__init__(channel)
    for name in ('get_executor', 'create_value', 'create_call', 'create_struct',
                 'create_selection', 'compute'):
      method = getattr(tff.framework.RemoteExecutorGrpcStub, name)
      setattr(self, name, _bounded_retries(method, worker).__get__(self))
    for name in ('dispose', 'dispose_executor'):
      method = getattr(tff.framework.RemoteExecutorGrpcStub, name)
      setattr(self, name, _best_effort(method).__get__(self))


class RemoteWorker:
  """A connection to a TFF worker (`bin/worker.py`) at `host:port`.

  Args:
    address: `host:port` of the worker.
    timeout_seconds: How long to wait for the worker to answer, at start and after a lost
      connection.

  Attributes:
    clients_served: The number of clients of each executor this worker was asked to run
      (tests use it to see how a round was split).
  """

  def __init__(self, address: str, timeout_seconds: float = 30.0,
               tls: tls_lib.ClientTls | None = None):
    parse_address(address)
    self.address = address.strip()
    self.timeout_seconds = timeout_seconds
    self.tls = tls
    self.last_failure = ''  # Why the last readiness probe failed, for error messages.
    self.clients_served: list[int] = []
    self._channel: grpc.Channel | None = None
    self.stub = None

  def connect(self) -> RemoteWorker:
    """Opens the channel; raises `WorkerError` if the worker does not answer in time."""
    options = GRPC_CHANNEL_OPTIONS + [
        # Notice a peer that vanished without closing the connection (a machine gone).
        ('grpc.keepalive_time_ms', 10_000),
        ('grpc.keepalive_timeout_ms', max(1000, int(self.timeout_seconds * 1000))),
    ]
    if self.tls is None:
      self._channel = grpc.insecure_channel(self.address, options)
    else:
      self._channel = grpc.secure_channel(self.address, tls_lib.channel_credentials(self.tls),
                                          options)
    if not self.wait_until_ready():
      self.close()
      host, port = parse_address(self.address)
      last = f' (last: {self.last_failure})' if self.last_failure else ''
      raise WorkerError(
          f'no TFF worker answered at {self.address} within {self.timeout_seconds:g} s{last}; '
          f'start one there (`bin/worker.py --port={port}` with TLS, or --insecure on this '
          'machine), check --workers and, for a TLS '
          'worker, --tls_ca and the client certificate, or raise --worker_timeout.')
    self.stub = _GuardedStub(self._channel, self)
    return self

  def wait_until_ready(self) -> bool:
    """Whether the worker answers within `timeout_seconds`.

    Asks, again and again until then, with a call to a method no server has: a live server
    answers UNIMPLEMENTED. (Unlike gRPC's `channel_ready_future`, this leaves no connectivity
    poller behind, which would fail loudly when the channel is closed.)

    Raises:
      WorkerError: At once, if the worker refuses the token, or the TLS handshake fails (a
        certificate its CA did not sign, a plaintext peer), naming the cause.
    """
    probe = self._channel.unary_unary('/tff_gan.Probe/Ping')
    deadline = time.monotonic() + self.timeout_seconds
    self.last_failure = ''
    closed = 0  # Connections the worker closed at once, in a row.
    while True:
      remaining = deadline - time.monotonic()
      if remaining <= 0:
        return False
      try:
        probe(b'', timeout=min(remaining, _PROBE_SECONDS))
        return True
      except grpc.RpcError as e:
        code, details = e.code(), e.details() or ''
        if code == grpc.StatusCode.UNAUTHENTICATED:
          raise WorkerError(f'the TFF worker at {self.address} refused this trainer\'s token '
                            '(--auth_token_file): give both sides the same token file.') from None
        if code == grpc.StatusCode.UNAVAILABLE and _TLS_FAILURE.search(details):
          raise WorkerError(f'no TLS connection to the TFF worker at {self.address} '
                            f'({_first_reason(details)}): check --tls_ca (the CA that signed '
                            'its certificate), the client certificate, and that both sides '
                            'use TLS.') from None
        if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
          return True  # It answered (UNIMPLEMENTED, as it should).
        self.last_failure = _first_reason(details)
        closed = closed + 1 if 'Socket closed' in details else 0
        if closed >= _CLOSED_IN_A_ROW:
          raise WorkerError(
              f'the TFF worker at {self.address} closed every connection at once: it serves '
              'TLS and needs '
              + ('a client certificate (--tls_client_cert, --tls_client_key)'
                 if self.tls else 'TLS from this trainer (--tls_ca)')
              + ', or it is not a TFF worker.') from None
      time.sleep(0.1)

  def executor_factory(self, default_num_clients: int = 0):
    """A `tff.framework.ExecutorFactory` whose executors run on this worker."""
    return executor_factory(self.stub, lambda: None, default_num_clients, self.clients_served)

  def close(self) -> None:
    if self._channel is not None:
      close_channel(self._channel)
      self._channel = None


def check_workers_answer(addresses: list[str], timeout_seconds: float,
                         tls: tls_lib.ClientTls | None = None) -> None:
  """Raises `WorkerError`, naming the first worker that does not answer in time."""
  for address in addresses:
    RemoteWorker(address, timeout_seconds, tls).connect().close()


def _first_reason(details: str) -> str:
  """The most telling part of gRPC's connection-failure details, shortened."""
  reason = details.split('last error:')[-1].strip()
  return reason[:160]
