"""The TFF worker processes this project starts and owns, and the executors on them.

TFF's own local C++ context starts `tensorflow_federated/data/worker_binary` as a gRPC
subprocess that inherits our stdout/stderr and is stopped only from a `__del__` that may never
run: the worker then outlives the Python process and holds shell pipes open. `LocalWorker`
owns that subprocess instead:

* its output goes to a log file, never to our stdout/stderr;
* it is stopped when its context exits (`tff_gan.runtime.contexts`), on normal interpreter
  exit (`atexit`), on SIGTERM and SIGINT (through the exceptions they raise unwinding the
  `with` block), and on errors;
* the kernel sends it SIGKILL if our process dies without running any Python (e.g. SIGKILL),
  through `PR_SET_PDEATHSIG`.

It runs as many clients side by side as there are cores, one TensorFlow thread each
(`WorkerThreads`), and lives in its own process group, so a terminal's Ctrl-C reaches only
us and we stop it in order.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import portpicker
import tensorflow_federated as tff
from absl import logging

from tff_gan.runtime import confine

WORKER_BINARY = os.path.join(os.path.dirname(tff.__file__), 'data', 'worker_binary')

# How `unshare` gives a confined worker a user and a network namespace of its own.
_UNSHARE_FLAGS = ('--user', '--map-root-user', '--net')
_MAX_SOCKET_PATH_BYTES = 107  # A Unix socket's path: 108 bytes with the final NUL (Linux).
_GRPC_MAX_MESSAGE_BYTES = 2 * 1000 * 1000 * 1000
GRPC_CHANNEL_OPTIONS = [
    ('grpc.max_message_length', _GRPC_MAX_MESSAGE_BYTES),
    ('grpc.max_receive_message_length', _GRPC_MAX_MESSAGE_BYTES),
    ('grpc.max_send_message_length', _GRPC_MAX_MESSAGE_BYTES),
]

_live_workers: set[LocalWorker] = set()
_live_workers_lock = threading.Lock()


class WorkerError(RuntimeError):
  """The TFF worker could not be started or stopped working."""


def _die_with_parent():  # Runs in the child between fork and exec.
  confine.die_with_parent()
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


@functools.cache
def confinement_problem() -> str | None:
  """Why this machine cannot confine a worker (no `unshare`, no user namespaces), or None."""
  unshare = shutil.which('unshare')
  if unshare is None:
    return 'confining the worker needs `unshare` (util-linux); install it.'
  probe = subprocess.run([unshare, *_UNSHARE_FLAGS, 'true'], capture_output=True, text=True,
                         check=False)
  if probe.returncode:
    return ('this machine refuses private network namespaces to this user ('
            f'{probe.stderr.strip()[:120]}); allow unprivileged user namespaces (sysctl '
            'kernel.unprivileged_userns_clone=1, or on Ubuntu '
            'kernel.apparmor_restrict_unprivileged_userns=0).')
  return None


def confinement_prefix(socket_path: str, port: int) -> list[str]:
  """The command prefix that runs a server on `port` confined, reached at `socket_path`.

  Raises:
    WorkerError: If this machine cannot make a private network namespace (no `unshare`, or
      user namespaces disabled), in one line naming the fix.
  """
  problem = confinement_problem()
  if problem:
    raise WorkerError(problem)
  prefix = [shutil.which('unshare'), *_UNSHARE_FLAGS, '--']
  return [*prefix, sys.executable, confine.__file__, socket_path, str(port), '--']


class LocalWorker:
  """A `worker_binary` subprocess serving TFF's executor on a loopback port.

  Args:
    log_path: File that receives the worker's stdout and stderr (appended). Defaults to a
      fresh file in the temp dir, deleted by `stop` unless the worker died on its own or hung
      at start and wrote something there.
    threads: The worker's `WorkerThreads`; defaults to one client per core.
    port: Port to listen on; a free one is picked by default.
    start_timeout_seconds: How long to wait for the worker to accept connections.
    confined_socket: If set, the worker runs in a network namespace of its own, which no other
      host (and no other process's TCP connection) can reach, and is spoken to through this
      Unix socket (`tff_gan.runtime.confine`; needs `unshare` and user namespaces). The
      port is then the worker's inside that namespace.
  """

  def __init__(
      self,
      *,
      log_path: str | None = None,
      threads: WorkerThreads | None = None,
      port: int | None = None,
      start_timeout_seconds: float = 60.0,
      confined_socket: str | None = None,
  ):
    # A temporary log is deleted when the worker stops, unless it may say why the worker
    # died or hung (`stop`).
    self._owns_log = log_path is None
    self._log_may_explain = False
    if log_path is None:
      handle, log_path = tempfile.mkstemp(prefix='tff_gan_worker_', suffix='.log')
      os.close(handle)
    self.log_path = log_path
    self.port = port or portpicker.pick_unused_port()
    self.threads = threads or WorkerThreads.for_parallel_clients(available_cores())
    self._start_timeout_seconds = start_timeout_seconds
    self.confined_socket = confined_socket
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
    if self.confined_socket and len(os.fsencode(self.confined_socket)) > _MAX_SOCKET_PATH_BYTES:
      raise WorkerError(f"The worker's socket {self.confined_socket} is longer than the "
                        f'{_MAX_SOCKET_PATH_BYTES} bytes a Unix socket may have: set TMPDIR to '
                        'a shorter directory.')
    command = [WORKER_BINARY, f'--port={self.port}',
               f'--max_concurrent_computation_calls={self.threads.concurrent_calls}']
    target = f'localhost:{self.port}'
    if self.confined_socket:
      command = confinement_prefix(self.confined_socket, self.port) + command
      target = f'unix:{self.confined_socket}'
    with open(self.log_path, 'ab') as log_file:
      self._process = subprocess.Popen(
          command,
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
    self._channel = grpc.insecure_channel(target, GRPC_CHANNEL_OPTIONS)
    self.stub = tff.framework.RemoteExecutorGrpcStub(self._channel)
    deadline = time.monotonic() + self._start_timeout_seconds
    while not self.stub.is_ready:
      if self._process.poll() is not None:
        self.stop()
        raise WorkerError(f'TFF worker exited with status {self._process.returncode} at start; '
                          f'{self.see_log()}.')
      if time.monotonic() > deadline:
        self._log_may_explain = True
        self.stop()
        raise WorkerError(f'TFF worker did not accept connections within '
                          f'{self._start_timeout_seconds:.0f} s; {self.see_log()}.')
      time.sleep(0.05)
    return self

  def stop(self, timeout_seconds: float = 5.0) -> None:
    """Stops the worker (SIGTERM, then SIGKILL after `timeout_seconds`). Idempotent."""
    if self._channel is not None:
      close_channel(self._channel)
      self._channel = None
    process = self._process
    stopped_it = process is not None and process.poll() is None
    if stopped_it:
      process.terminate()
      try:
        process.wait(timeout_seconds)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
      logging.info('Stopped TFF worker pid=%d', process.pid)
    # A worker that ran until stopped here says nothing new in its log; an empty log says
    # nothing at all (a worker SIGKILLed, or dying with its parent, writes none).
    if self._owns_log and (self._log_is_empty() or (stopped_it and not self._log_may_explain)):
      with contextlib.suppress(OSError):
        os.remove(self.log_path)
    with _live_workers_lock:
      _live_workers.discard(self)

  def see_log(self) -> str:
    """Where an error about this worker should send the reader: its log, unless it is empty."""
    return 'its log is empty' if self._log_is_empty() else f'see {self.log_path}'

  def _log_is_empty(self) -> bool:
    try:
      return os.path.getsize(self.log_path) == 0
    except OSError:  # Gone: nothing to see either.
      return True

  def executor_factory(self, default_num_clients: int = 0):
    """A `tff.framework.ExecutorFactory` whose executors run on this worker."""

    def check_alive():
      if not self.running:
        raise WorkerError(f'TFF worker on port {self.port} is not running; {self.see_log()}.')

    return executor_factory(self.stub, check_alive, default_num_clients)


def close_channel(channel: grpc.Channel, wait_seconds: float = 1.0) -> None:
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


class ExecutorPerCohortSize(tff.framework.ExecutorFactory):
  """One executor per cohort size, kept for the worker's life, whose values are disposed one
  by one as soon as Python drops them.

  TFF's `ResourceManagingExecutorFactory` keeps the ten most recently used executors and
  drops the others without telling the worker, and each `RemoteExecutor` batches the disposal
  of its values by 20: a dropped executor's values, and up to 19 whose disposal it was
  holding back, stay on the worker until it exits. Under Poisson client sampling the cohort
  size changes nearly every round, so a long DP run's worker grew by about 15 MB a round
  (6.4 GB by round 340 of `bench/dp_quality.py`, on course to exhaust 24 GB). Here no
  executor is dropped (cohort sizes are few: a Poisson sample of m expected clients stays
  within m ± 5·sqrt(m)), and values are disposed at once (`dispose_batch_size=1`, one small
  RPC each). Closing evicted executors instead (DisposeExecutor) kept memory flatter, but
  coincided with a worker crash (a segfault in a gRPC server thread) in one of three runs,
  after about 900 rounds between them; executors are closed only where TFF closes them, after
  an error.
  """

  def __init__(self, stack_fn):
    self._stack_fn = stack_fn
    self._executors = {}
    self._lock = threading.Lock()

  @staticmethod
  def _key(cardinalities):
    return tuple(sorted((str(placement), n) for placement, n in cardinalities.items()))

  def create_executor(self, cardinalities):
    key = self._key(cardinalities)
    with self._lock:
      if key not in self._executors:
        self._executors[key] = self._stack_fn(cardinalities)
      return self._executors[key]

  def clean_up_executor(self, cardinalities):
    with self._lock:
      executor = self._executors.pop(self._key(cardinalities), None)
    if executor is not None:
      executor.close()


def executor_factory(stub, check_alive, default_num_clients: int, served=None):
  """Executors on the worker behind `stub`; `served` (a list) collects their client counts."""

  def stack_fn(cardinalities):
    if cardinalities.get(tff.CLIENTS) is None:
      cardinalities[tff.CLIENTS] = default_num_clients
    check_alive()
    if served is not None:
      served.append(cardinalities[tff.CLIENTS])
    executor = tff.framework.RemoteExecutor(stub, dispose_batch_size=1)
    executor.set_cardinalities(cardinalities)
    return executor

  return ExecutorPerCohortSize(stack_fn)


def stop_all_workers() -> None:
  """Stops every worker this process started and has not stopped yet."""
  with _live_workers_lock:
    workers = list(_live_workers)
  for worker in workers:
    worker.stop()


atexit.register(stop_all_workers)


