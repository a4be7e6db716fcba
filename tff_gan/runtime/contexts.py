"""The one place that creates and installs TFF execution contexts.

Contexts are installed explicitly, for a `with` block, and never at import:

* `local_cpp_context` runs computations on a `tff_gan.runtime.workers.LocalWorker` it starts
  and stops;
* `remote_context` runs them on workers elsewhere (`tff_gan.runtime.remote`): one worker
  through a `tff.framework.RemoteExecutor`, several through TFF's mergeable-computation
  context.

Importing TFF installs a default local context whose worker nobody would stop. The first
context entered here (or `refuse_unowned_execution()`, which the programs and the tests
call at start-up) replaces that default with a placeholder that refuses to run anything, so
no computation can start a worker this project does not own.

Use::

    with contexts.local_cpp_context(log_path='worker.log'):
      state = process.initialize()

    with contexts.remote_context(['10.0.0.5:8000', '10.0.0.6:8000']):
      state = process.initialize()
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import tempfile
import threading

import tensorflow_federated as tff
from absl import logging
from tensorflow_federated.python.common_libs import structure
from tensorflow_federated.python.core.backends.native import mergeable_comp_compiler
from tensorflow_federated.python.core.impl.context_stack import runtime_error_context
from tensorflow_federated.python.core.impl.execution_contexts import (
  mergeable_comp_execution_context,
)
from tensorflow_federated.python.core.impl.types import type_conversions

from tff_gan.runtime import signals
from tff_gan.runtime.remote import RemoteWorker
from tff_gan.runtime.workers import (
  LocalWorker,
  WorkerThreads,
  available_cores,
  confinement_problem,
  stop_all_workers,
)


class _NoExecutionContext(tff.framework.SyncContext):
  """Default context while none of ours is installed: says what to do instead of running.

  Importing TFF installs a local C++ context whose worker nobody would stop; replacing it
  here also drops that context before interpreter shutdown, when its `__del__` would fail.
  """

  def invoke(self, comp, arg):
    del comp, arg
    raise RuntimeError('no TFF execution context is installed; run TFF computations inside '
                       '`with tff_gan.runtime.contexts.local_cpp_context():`.')


_placeholder_installed = False
_placeholder_lock = threading.Lock()


def refuse_unowned_execution() -> None:
  """Replaces TFF's default context by one that refuses to run computations. Idempotent.

  TFF's default would start a worker this project does not own; with the placeholder, a
  computation run outside our contexts says what to do instead. Replacing it also drops
  TFF's context before interpreter shutdown, when its `__del__` would fail.
  """
  global _placeholder_installed
  with _placeholder_lock:
    if not _placeholder_installed:
      tff.framework.set_default_context(_NoExecutionContext())
      _placeholder_installed = True


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
  raise signals.exception_for(signum)


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
    confined: bool | None = None,
):
  """Installs TFF's C++ runtime on a worker this module owns, for the `with` block.

  Args:
    log_path: File for the worker's output (default: a new temp file).
    parallel_clients: How many clients a round can run side by side (e.g. 1 for one
      client holding all the data); sets the worker's `WorkerThreads`. Defaults to as many
      as there are cores.
    default_num_clients: Number of clients used when a computation's arguments do not say.
    confined: Run the worker in a network namespace of its own, reached through a Unix
      socket in a private temporary directory (`LocalWorker.confined_socket`): no other
      host or process can connect to it (TFF's worker otherwise listens, in plaintext and
      unauthenticated, on every interface while it runs). None (the default): whenever
      this machine allows it (`workers.confinement_problem`), else unconfined with a
      warning, once. It costs nothing measurable (1,499 against 1,520 ms per `ring` round).

  Yields:
    The `LocalWorker` (its `pid`, `port` and `log_path` are useful in logs and tests).
  """
  refuse_unowned_execution()
  threads = WorkerThreads.for_parallel_clients(parallel_clients or available_cores())
  if confined is None:
    confined = _can_confine()
  private_dir = tempfile.mkdtemp(prefix='tff_gan_worker_') if confined else None
  worker = LocalWorker(log_path=log_path, threads=threads, confined_socket=private_dir and
                       os.path.join(private_dir, 'executor.sock'))
  with _sigterm_unwinds():
    try:
      worker.start()
      context = _worker_context(tff.framework.SyncExecutionContext, worker,
                                default_num_clients)
      with tff.framework.get_context_stack().install(context):
        yield worker
    finally:
      worker.stop()
      if private_dir:
        shutil.rmtree(private_dir, ignore_errors=True)


@functools.cache
def _can_confine() -> bool:
  problem = confinement_problem()
  if problem:
    logging.warning('The local TFF worker will listen on every network interface while it '
                    'runs: %s', problem)
  return problem is None


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


@contextlib.contextmanager
def remote_context(addresses: list[str], *, timeout_seconds: float = 30.0,
                   default_num_clients: int = 0, tls=None):
  """Installs an execution context on TFF workers at `addresses`, for the `with` block.

  With one worker, TFF's usual context over a `tff.framework.RemoteExecutor`; with several,
  TFF's mergeable-computation context, which gives each worker an equal share of a round's
  clients, merges their partial aggregates and runs the server's part on one of them. Every
  worker must answer within `timeout_seconds` at start (else `WorkerError`, naming it), and a
  worker lost mid-run ends the run with `WorkerLostError` once it has not answered again for
  `timeout_seconds`. With `tls` (`tff_gan.runtime.tls.ClientTls`), every channel is TLS,
  with the token when one is set.

  Yields:
    The `RemoteWorker`s, in the order of `addresses`.
  """
  refuse_unowned_execution()
  workers: list[RemoteWorker] = []
  try:
    for address in addresses:
      workers.append(RemoteWorker(address, timeout_seconds, tls).connect())
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
