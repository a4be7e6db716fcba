"""The one place that creates, installs and shuts down TFF execution contexts.

TFF's own local C++ context starts `tensorflow_federated/data/worker_binary` as a gRPC
subprocess that inherits our stdout/stderr and is stopped only from a `__del__` that may never
run: the worker then outlives the Python process and holds shell pipes open. This module owns
that subprocess instead:

* its output goes to a log file, never to our stdout/stderr;
* it is stopped when the context exits, on normal interpreter exit (`atexit`), on SIGTERM and
  SIGINT (through the exceptions they raise unwinding the `with` block), and on errors;
* the kernel sends it SIGKILL if our process dies without running any Python (e.g. SIGKILL),
  through `PR_SET_PDEATHSIG`.

It runs as many clients side by side as there are cores, one TensorFlow thread each
(`WorkerThreads`), and lives in its own process group, so a terminal's Ctrl-C reaches only
us and we stop it in order.

Workers on other machines (`bin/worker.py`) are reached with `remote_context`: one worker
through a `tff.framework.RemoteExecutor`, several through TFF's mergeable-computation
context. Waits for them are bounded (`WorkerError`, `WorkerLostError`); TFF alone would retry
a vanished worker forever.

Use::

    with contexts.local_cpp_context(log_path='worker.log'):
      state = process.initialize()

    with contexts.remote_context(['10.0.0.5:8000', '10.0.0.6:8000']):
      state = process.initialize()
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import ctypes.util
import dataclasses
import os
import signal
import subprocess
import tempfile
import threading
import time

import grpc
import portpicker
import tensorflow_federated as tff
from absl import logging
from tensorflow_federated.python.common_libs import structure
from tensorflow_federated.python.core.backends.native import mergeable_comp_compiler
from tensorflow_federated.python.core.impl.context_stack import runtime_error_context
from tensorflow_federated.python.core.impl.execution_contexts import (
  mergeable_comp_execution_context,
)
from tensorflow_federated.python.core.impl.types import type_conversions

from tff_gan.config import parse_address

WORKER_BINARY = os.path.join(os.path.dirname(tff.__file__), 'data', 'worker_binary')

_GRPC_MAX_MESSAGE_BYTES = 2 * 1000 * 1000 * 1000
_GRPC_CHANNEL_OPTIONS = [
    ('grpc.max_message_length', _GRPC_MAX_MESSAGE_BYTES),
    ('grpc.max_receive_message_length', _GRPC_MAX_MESSAGE_BYTES),
    ('grpc.max_send_message_length', _GRPC_MAX_MESSAGE_BYTES),
]
_PR_SET_PDEATHSIG = 1

_live_workers: set[LocalWorker] = set()
_live_workers_lock = threading.Lock()


class WorkerError(RuntimeError):
  """The TFF worker could not be started or stopped working."""


def _libc_prctl():
  libc_name = ctypes.util.find_library('c')
  if libc_name is None:
    return None
  try:
    return ctypes.CDLL(libc_name, use_errno=True).prctl
  except (OSError, AttributeError):
    return None


_PRCTL = _libc_prctl()


def _die_with_parent():  # Runs in the child between fork and exec.
  if _PRCTL is not None:
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
  # Its own process group: a terminal's Ctrl-C reaches only us, and we stop it in order.
  os.setpgrp()


def available_cores() -> int:
  """The CPU cores this process may run on."""
  return len(os.sched_getaffinity(0))


@dataclasses.dataclass(frozen=True)
class WorkerThreads:
  """How a worker spreads its computations over the cores.

  Attributes:
    concurrent_calls: Computations (e.g. clients' local work) the worker runs at once.
    intra_op_threads: Threads one TensorFlow op may use.
  """

  concurrent_calls: int
  intra_op_threads: int

  @classmethod
  def for_parallel_clients(cls, clients: int, cores: int | None = None) -> WorkerThreads:
    """One core per client while there are at least as many clients as cores.

    A client's ops are small (a batch of 64 through a few layers), so splitting each op over
    several threads costs more in synchronization than it gains; running clients side by
    side on one thread each keeps every core on arithmetic. Measured on 2 cores
    (`bench/throughput.py`): a FedGAN round of 10 clients ran 1.4–1.6x faster than with TF's
    default of every op on all cores and no limit on concurrent clients. With fewer clients
    than cores, each gets an equal share of the cores.
    """
    cores = cores or available_cores()
    concurrent = max(1, min(clients, cores))
    return cls(concurrent_calls=concurrent, intra_op_threads=max(1, cores // concurrent))


class LocalWorker:
  """A `worker_binary` subprocess serving TFF's executor on a loopback port.

  Args:
    log_path: File that receives the worker's stdout and stderr (appended). Defaults to a
      fresh file in the temp dir.
    threads: The worker's `WorkerThreads`; defaults to one client per core.
    port: Port to listen on; a free one is picked by default.
    start_timeout_seconds: How long to wait for the worker to accept connections.
  """

  def __init__(
      self,
      *,
      log_path: str | None = None,
      threads: WorkerThreads | None = None,
      port: int | None = None,
      start_timeout_seconds: float = 60.0,
  ):
    self._owns_log = log_path is None  # A temporary log, deleted when the worker is stopped.
    if log_path is None:
      handle, log_path = tempfile.mkstemp(prefix='tff_gan_worker_', suffix='.log')
      os.close(handle)
    self.log_path = log_path
    self.port = port or portpicker.pick_unused_port()
    self.threads = threads or WorkerThreads.for_parallel_clients(available_cores())
    self._start_timeout_seconds = start_timeout_seconds
    self._process: subprocess.Popen | None = None
    self._channel: grpc.Channel | None = None
    self.stub = None

  @property
  def pid(self) -> int | None:
    return None if self._process is None else self._process.pid

  @property
  def running(self) -> bool:
    return self._process is not None and self._process.poll() is None

  def start(self) -> LocalWorker:
    """Starts the worker and blocks until it accepts gRPC connections."""
    if not os.path.isfile(WORKER_BINARY):
      raise WorkerError(f'TFF worker binary not found at {WORKER_BINARY}; reinstall with '
                        '`uv sync --frozen`.')
    with open(self.log_path, 'ab') as log_file:
      self._process = subprocess.Popen(
          [
              WORKER_BINARY,
              f'--port={self.port}',
              f'--max_concurrent_computation_calls={self.threads.concurrent_calls}',
          ],
          # TensorFlow's runtime in the worker sizes its per-op thread pool from this.
          env={**os.environ, 'TF_NUM_INTRAOP_THREADS': str(self.threads.intra_op_threads)},
          stdin=subprocess.DEVNULL,
          stdout=log_file,
          stderr=subprocess.STDOUT,
          close_fds=True,
          preexec_fn=_die_with_parent,
      )
    with _live_workers_lock:
      _live_workers.add(self)
    logging.info('Started TFF worker pid=%d on port %d (%d concurrent calls, %d threads per op; '
                 'log: %s)', self.pid, self.port, self.threads.concurrent_calls,
                 self.threads.intra_op_threads, self.log_path)
    self._channel = grpc.insecure_channel(f'localhost:{self.port}', _GRPC_CHANNEL_OPTIONS)
    self.stub = tff.framework.RemoteExecutorGrpcStub(self._channel)
    deadline = time.monotonic() + self._start_timeout_seconds
    while not self.stub.is_ready:
      if self._process.poll() is not None:
        self.stop()
        raise WorkerError(f'TFF worker exited with status {self._process.returncode} at start; '
                          f'see {self.log_path}.')
      if time.monotonic() > deadline:
        self.stop()
        raise WorkerError(f'TFF worker did not accept connections within '
                          f'{self._start_timeout_seconds:.0f} s; see {self.log_path}.')
      time.sleep(0.05)
    return self

  def stop(self, timeout_seconds: float = 5.0) -> None:
    """Stops the worker (SIGTERM, then SIGKILL after `timeout_seconds`). Idempotent."""
    if self._channel is not None:
      _close_channel(self._channel)
      self._channel = None
    process = self._process
    if process is not None and process.poll() is None:
      process.terminate()
      try:
        process.wait(timeout_seconds)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
      logging.info('Stopped TFF worker pid=%d', process.pid)
      if self._owns_log:  # It ran until we stopped it: its temporary log says nothing new.
        with contextlib.suppress(OSError):
          os.remove(self.log_path)
    with _live_workers_lock:
      _live_workers.discard(self)

  def executor_factory(self, default_num_clients: int = 0):
    """A `tff.framework.ExecutorFactory` whose executors run on this worker."""

    def check_alive():
      if not self.running:
        raise WorkerError(f'TFF worker on port {self.port} is not running; see {self.log_path}.')

    return _executor_factory(self.stub, check_alive, default_num_clients)


def _close_channel(channel: grpc.Channel, wait_seconds: float = 1.0) -> None:
  """Closes `channel` after its connectivity poller has stopped.

  TFF's stub subscribes to the channel's connectivity, which runs a poller thread that wakes
  every 0.2 s. `grpc.Channel.close` drops the subscriptions and closes at once, and a poller
  caught between two looks then fails on the closed channel with a printed traceback. So the
  subscriptions are dropped first and the poller given time to notice (grpc internals,
  pinned by uv.lock).
  """
  state = getattr(channel, '_connectivity_state', None)
  if state is not None:
    with state.lock:
      del state.callbacks_and_connectivities[:]
    deadline = time.monotonic() + wait_seconds
    while state.polling and time.monotonic() < deadline:
      time.sleep(0.02)
  channel.close()


def _executor_factory(stub, check_alive, default_num_clients: int, served=None):
  """Executors on the worker behind `stub`; `served` (a list) collects their client counts."""

  def stack_fn(cardinalities):
    if cardinalities.get(tff.CLIENTS) is None:
      cardinalities[tff.CLIENTS] = default_num_clients
    check_alive()
    if served is not None:
      served.append(cardinalities[tff.CLIENTS])
    executor = tff.framework.RemoteExecutor(stub)
    executor.set_cardinalities(cardinalities)
    return executor

  return tff.framework.ResourceManagingExecutorFactory(executor_stack_fn=stack_fn)


def stop_all_workers() -> None:
  """Stops every worker this process started and has not stopped yet."""
  with _live_workers_lock:
    workers = list(_live_workers)
  for worker in workers:
    worker.stop()


atexit.register(stop_all_workers)


class _NoExecutionContext(tff.framework.SyncContext):
  """Default context while none of ours is installed: says what to do instead of running.

  Importing TFF installs a local C++ context whose worker nobody would stop; replacing it
  here also drops that context before interpreter shutdown, when its `__del__` would fail.
  """

  def invoke(self, comp, arg):
    del comp, arg
    raise RuntimeError('no TFF execution context is installed; run TFF computations inside '
                       '`with tff_gan.contexts.local_cpp_context():`.')


tff.framework.set_default_context(_NoExecutionContext())


def execution_context_installed() -> bool:
  """Whether a TFF execution context (ours, or one a caller installed) is current.

  While none is, the current context is this module's placeholder (or TFF's own
  `RuntimeErrorContext` in a thread whose context stack was never set).
  """
  current = tff.framework.get_context_stack().current
  return not isinstance(current, (_NoExecutionContext,
                                  runtime_error_context.RuntimeErrorContext))


def _raise_system_exit_on_sigterm(signum, frame):
  del frame
  stop_all_workers()
  raise SystemExit(128 + signum)


@contextlib.contextmanager
def _sigterm_unwinds():
  """Within the block, SIGTERM stops the workers and raises SystemExit (main thread only)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = signal.signal(signal.SIGTERM, _raise_system_exit_on_sigterm)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def _compile_for_simulation(computation):
  """Compiles for the C++ worker, which runs secure sums as plain sums.

  The worker implements no secure-aggregation protocol, so TFF's own test compiler replaces
  `federated_secure_sum_bitwidth` and its kin with equivalent plain sums. Everything before
  them (clipping, quantization to the bit width, overflow handling) runs as written; the
  cryptography is simulated.
  """
  computation = tff.backends.test.replace_secure_intrinsics_with_bodies(computation)
  return tff.backends.native.desugar_and_transform_to_native(computation)


def _worker_context(context_class, worker, default_num_clients: int):
  """A TFF execution context of `context_class` whose computations run on `worker`."""
  return context_class(
      executor_fn=worker.executor_factory(default_num_clients),
      compiler_fn=_compile_for_simulation,
      transform_args=tff.tensorflow.transform_args,
      transform_result=tff.tensorflow.transform_result,
  )


@contextlib.contextmanager
def local_cpp_context(
    *,
    log_path: str | None = None,
    parallel_clients: int | None = None,
    default_num_clients: int = 0,
):
  """Installs TFF's C++ runtime on a worker this module owns, for the `with` block.

  Args:
    log_path: File for the worker's output (default: a new temp file).
    parallel_clients: How many clients a round can run side by side (e.g. 1 for one
      client holding all the data); sets the worker's `WorkerThreads`. Defaults to as many
      as there are cores.
    default_num_clients: Number of clients used when a computation's arguments do not say.

  Yields:
    The `LocalWorker` (its `pid`, `port` and `log_path` are useful in logs and tests).
  """
  threads = WorkerThreads.for_parallel_clients(parallel_clients or available_cores())
  worker = LocalWorker(log_path=log_path, threads=threads)
  with _sigterm_unwinds():
    worker.start()
    try:
      context = _worker_context(tff.framework.SyncExecutionContext, worker,
                                default_num_clients)
      with tff.framework.get_context_stack().install(context):
        yield worker
    finally:
      worker.stop()


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


class _GuardedStub(tff.framework.RemoteExecutorGrpcStub):
  """TFF's gRPC stub, with `_bounded_retries` on every RPC."""

  def __init__(self, channel, worker: RemoteWorker):
    super().__init__(channel)
    for name in ('get_executor', 'create_value', 'create_call', 'create_struct',
                 'create_selection', 'compute', 'dispose', 'dispose_executor'):
      method = getattr(tff.framework.RemoteExecutorGrpcStub, name)
      setattr(self, name, _bounded_retries(method, worker).__get__(self))


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

  def __init__(self, address: str, timeout_seconds: float = 30.0):
    parse_address(address)
    self.address = address.strip()
    self.timeout_seconds = timeout_seconds
    self.clients_served: list[int] = []
    self._channel: grpc.Channel | None = None
    self.stub = None

  def connect(self) -> RemoteWorker:
    """Opens the channel; raises `WorkerError` if the worker does not answer in time."""
    options = _GRPC_CHANNEL_OPTIONS + [
        # Notice a peer that vanished without closing the connection (a machine gone).
        ('grpc.keepalive_time_ms', 10_000),
        ('grpc.keepalive_timeout_ms', max(1000, int(self.timeout_seconds * 1000))),
    ]
    self._channel = grpc.insecure_channel(self.address, options)
    if not self.wait_until_ready():
      self.close()
      host, port = parse_address(self.address)
      raise WorkerError(
          f'no TFF worker answered at {self.address} within {self.timeout_seconds:g} s; start '
          f'one there (`bin/worker.py --port={port}`), check --workers, or raise '
          '--worker_timeout.')
    self.stub = _GuardedStub(self._channel, self)
    return self

  def wait_until_ready(self) -> bool:
    """Whether the worker answers within `timeout_seconds`.

    Asks with a call to a method no server has: a live server answers UNIMPLEMENTED at once,
    while the call waits for a connection until its deadline. (Unlike gRPC's
    `channel_ready_future`, this leaves no connectivity poller behind, which would fail
    loudly when the channel is closed.)
    """
    probe = self._channel.unary_unary('/tff_gan.Probe/Ping')
    try:
      probe(b'', timeout=self.timeout_seconds, wait_for_ready=True)
    except grpc.RpcError as e:
      return e.code() != grpc.StatusCode.DEADLINE_EXCEEDED
    return True

  def executor_factory(self, default_num_clients: int = 0):
    """A `tff.framework.ExecutorFactory` whose executors run on this worker."""
    return _executor_factory(self.stub, lambda: None, default_num_clients, self.clients_served)

  def close(self) -> None:
    if self._channel is not None:
      _close_channel(self._channel)
      self._channel = None


class _OwnThreadContext(tff.framework.AsyncContext):
  """Runs another async context's calls in a thread of their own.

  TFF's `RemoteExecutor` makes blocking gRPC calls inside its coroutines, so under the
  mergeable context, which awaits all workers on one event loop, the workers would run one
  after another. Here each call runs on its own event loop in its own thread, and the
  workers compute at the same time.
  """

  def __init__(self, context):
    self._context = context

  async def invoke(self, comp, arg):
    return await asyncio.to_thread(asyncio.run, self._context.invoke(comp, arg))


class _MergeableContext(
    mergeable_comp_execution_context.MergeableCompExecutionContext):
  """TFF's mergeable-computation context, returning results in their Python containers.

  Secure sums are replaced by plain ones before TFF splits the computation (as
  `_compile_for_simulation` does for one worker); that rewrite drops the result's Python
  container types, so `invoke` puts them back from the computation's own signature.
  """

  def __init__(self, async_contexts):
    super().__init__(
        async_contexts,
        compiler_fn=lambda computation: mergeable_comp_compiler.compile_to_mergeable_comp_form(
            tff.backends.test.replace_secure_intrinsics_with_bodies(computation)),
        transform_args=tff.tensorflow.transform_args,
        transform_result=tff.tensorflow.transform_result,
    )

  def invoke(self, comp, arg=None):
    result = super().invoke(comp, arg)
    return type_conversions.type_to_py_container(
        structure.from_container(result, recursive=True), comp.type_signature.result)


def check_workers_answer(addresses: list[str], timeout_seconds: float) -> None:
  """Raises `WorkerError`, naming the first worker that does not answer in time."""
  for address in addresses:
    RemoteWorker(address, timeout_seconds).connect().close()


@contextlib.contextmanager
def remote_context(addresses: list[str], *, timeout_seconds: float = 30.0,
                   default_num_clients: int = 0):
  """Installs an execution context on TFF workers at `addresses`, for the `with` block.

  With one worker, TFF's usual context over a `tff.framework.RemoteExecutor`; with several,
  TFF's mergeable-computation context, which gives each worker an equal share of a round's
  clients, merges their partial aggregates and runs the server's part on one of them. Every
  worker must answer within `timeout_seconds` at start (else `WorkerError`, naming it), and a
  worker lost mid-run ends the run with `WorkerLostError` once it has not answered again for
  `timeout_seconds`.

  Yields:
    The `RemoteWorker`s, in the order of `addresses`.
  """
  workers: list[RemoteWorker] = []
  try:
    for address in addresses:
      workers.append(RemoteWorker(address, timeout_seconds).connect())
    if len(workers) == 1:
      context = _worker_context(tff.framework.SyncExecutionContext, workers[0],
                                default_num_clients)
    else:
      context = _MergeableContext([
          _OwnThreadContext(_worker_context(tff.framework.AsyncExecutionContext, worker,
                                            default_num_clients))
          for worker in workers
      ])
    with tff.framework.get_context_stack().install(context):
      yield workers
  finally:
    for worker in workers:
      worker.close()
