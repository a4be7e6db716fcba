"""The worker lifecycle: output kept off our streams, stopped on exit, errors and signals."""

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest
import tensorflow_federated as tff
from conftest import REPO_ROOT, pid_alive, workers_logging_to

from tff_gan.runtime import contexts
from tff_gan.runtime import workers as worker_lib

# A child process that starts a worker, prints its pid, runs one computation, then does
# what argv[1] says: exit normally, raise, or wait to be signalled.
CHILD = textwrap.dedent('''
    import os, sys, time
    os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'
    import numpy as np
    import tensorflow_federated as tff
    from tff_gan.runtime import contexts

    @tff.tensorflow.computation(tff.TensorType(np.int32))
    def double(x):
      return x * 2

    with contexts.local_cpp_context() as worker:
      print(f'WORKER {worker.pid}', flush=True)
      print(f'RESULT {double(21)}', flush=True)
      if sys.argv[1] == 'raise':
        raise RuntimeError('boom')
      if sys.argv[1] == 'wait':
        print('WAITING', flush=True)
        time.sleep(600)
''')


def _default_sigint():
  # A suite started as a background job of a non-interactive shell inherits SIGINT ignored,
  # and Python then installs no KeyboardInterrupt handler: give the child the default back.
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_child(mode, temp_dir):
  # Its own temp dir, where its worker's log and socket directory go: a run must leave
  # nothing there, unless SIGKILLed (which no process can clean up after).
  env = dict(os.environ, PYTHONPATH=REPO_ROOT, TMPDIR=str(temp_dir))
  return subprocess.Popen([sys.executable, '-c', CHILD, mode], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env,
                          preexec_fn=_default_sigint)


def read_until(child, marker):
  lines = []
  for line in child.stdout:
    lines.append(line)
    if line.startswith(marker):
      return line, lines
  raise AssertionError(f'child ended before {marker!r}: {lines}; stderr: {child.stderr.read()}')


def wait_gone(pid, seconds=10.0):
  deadline = time.monotonic() + seconds
  while pid_alive(pid) and time.monotonic() < deadline:
    time.sleep(0.05)
  return not pid_alive(pid)


def test_worker_stops_when_the_block_exits(tmp_path):
  log_path = tmp_path / 'worker.log'

  @tff.tensorflow.computation(tff.TensorType(np.float32))
  def add_one(x):
    return x + 1.0

  with contexts.local_cpp_context(log_path=str(log_path)) as worker:
    assert pid_alive(worker.pid)
    assert add_one(1.0) == 2.0
  assert wait_gone(worker.pid)
  assert log_path.exists()


def test_importing_the_runtime_installs_no_context():
  # In a fresh process: here, the tests' own placeholder is installed (conftest).
  code = textwrap.dedent('''
      import tensorflow_federated as tff
      before = type(tff.framework.get_context_stack().current)
      from tff_gan.runtime import contexts
      assert type(tff.framework.get_context_stack().current) is before, 'import changed it'
      contexts.refuse_unowned_execution()
      assert not contexts.execution_context_installed()
      print('OK')
  ''')
  env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL='3')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == 'OK'


def test_computations_outside_a_context_fail_clearly():
  # In a fresh process: here, other tests' session-wide context may be installed.
  code = textwrap.dedent('''
      import numpy as np
      import tensorflow_federated as tff
      from tff_gan.runtime import contexts

      contexts.refuse_unowned_execution()  # As every program does at start-up.

      @tff.tensorflow.computation(tff.TensorType(np.float32))
      def add_one(x):
        return x + 1.0

      add_one(1.0)
  ''')
  env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL='3')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
  assert result.returncode != 0
  assert 'RuntimeError' in result.stderr and 'local_cpp_context' in result.stderr


@pytest.mark.parametrize('mode', ['exit', 'raise'])
def test_worker_gone_after_normal_exit_and_after_an_exception(mode, short_tmp_dir):
  child = start_child(mode, short_tmp_dir)
  stdout, stderr = child.communicate(timeout=120)
  pid = int(stdout.split('WORKER ')[1].split()[0])
  assert 'RESULT 42' in stdout
  # The worker's own output never reaches the parent's streams: only our lines are there.
  assert set(line.split()[0] for line in stdout.splitlines()) == {'WORKER', 'RESULT'}
  assert (child.returncode == 0) == (mode == 'exit'), stderr
  assert wait_gone(pid)
  assert not os.listdir(short_tmp_dir)  # Neither the worker's temporary log nor its socket's dir.


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_worker_gone_after_the_parent_is_signalled(signum, short_tmp_dir):
  child = start_child('wait', short_tmp_dir)
  worker_line, _ = read_until(child, 'WORKER')
  read_until(child, 'WAITING')
  pid = int(worker_line.split()[1])
  assert pid_alive(pid)
  child.send_signal(signum)
  child.wait(timeout=60)
  assert child.returncode != 0
  assert wait_gone(pid), f'worker {pid} survived its parent after signal {signum}'
  if signum != signal.SIGKILL:
    assert not os.listdir(short_tmp_dir)
  child.stdout.close()
  child.stderr.close()


@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
  """The temp dir where a `LocalWorker` puts its default log: empty, and this test's own."""
  path = tmp_path / 'tmp'
  path.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(path))
  return path


def fake_worker_binary(tmp_path, monkeypatch, script):
  binary = tmp_path / 'worker_binary'
  binary.write_text('#!/bin/sh\n' + script + '\n')
  binary.chmod(0o755)
  monkeypatch.setattr(worker_lib, 'WORKER_BINARY', str(binary))


@pytest.mark.parametrize('output', ['', 'bind failed: port taken'])
def test_a_worker_dead_at_start_keeps_its_log_only_if_the_log_says_something(
    output, tmp_path, temp_dir, monkeypatch):
  fake_worker_binary(tmp_path, monkeypatch, f'printf %s "{output}"; exit 3')
  worker = worker_lib.LocalWorker()
  with pytest.raises(worker_lib.WorkerError, match='exited with status 3 at start') as error:
    worker.start()
  if output:
    assert f'see {worker.log_path}' in str(error.value)
    with open(worker.log_path) as f:
      assert f.read() == output
  else:
    assert 'its log is empty' in str(error.value)
    assert not os.listdir(temp_dir)


def test_a_socket_path_too_long_for_unix_is_one_clear_error_and_leaves_nothing(
    temp_dir, monkeypatch):
  long_dir = temp_dir / ('d' * 100)  # With the private dir and the socket's name: > 107 bytes.
  long_dir.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(long_dir))
  with pytest.raises(worker_lib.WorkerError, match='longer than the 107 bytes.*set TMPDIR'):
    with contexts.local_cpp_context(confined=True):
      pass
  assert not os.listdir(long_dir)  # Neither its private dir nor its temporary log.


def test_a_worker_hung_at_start_keeps_its_log(tmp_path, temp_dir, monkeypatch):
  fake_worker_binary(tmp_path, monkeypatch, 'echo "waiting for a lock"; exec sleep 60')
  worker = worker_lib.LocalWorker(start_timeout_seconds=0.5)
  with pytest.raises(worker_lib.WorkerError, match='did not accept connections') as error:
    worker.start()
  assert f'see {worker.log_path}' in str(error.value)
  assert wait_gone(worker.pid)
  with open(worker.log_path) as f:
    assert f.read() == 'waiting for a lock\n'


@pytest.mark.parametrize('killed', [False, True])
def test_a_stopped_or_killed_worker_leaves_no_log(killed, temp_dir):
  worker = worker_lib.LocalWorker().start()
  assert os.listdir(temp_dir) == [os.path.basename(worker.log_path)]
  if killed:  # As when its parent is SIGKILLed: it writes nothing, and stop finds it dead.
    os.kill(worker.pid, signal.SIGKILL)
    assert wait_gone(worker.pid)
  worker.stop()
  assert not os.listdir(temp_dir)


def test_threads_give_each_parallel_client_a_share_of_the_cores():
  plan = worker_lib.WorkerThreads.for_parallel_clients
  assert plan(10, cores=2) == worker_lib.WorkerThreads(concurrent_calls=2, intra_op_threads=1)
  assert plan(1, cores=2) == worker_lib.WorkerThreads(concurrent_calls=1, intra_op_threads=2)
  assert plan(3, cores=8) == worker_lib.WorkerThreads(concurrent_calls=3, intra_op_threads=2)


def test_the_worker_runs_with_its_thread_settings(tff_context):
  """The settings reach the worker process: its command line and its environment."""
  threads = tff_context.threads
  with open(f'/proc/{tff_context.pid}/cmdline', 'rb') as f:
    arguments = f.read().split(b'\0')
  with open(f'/proc/{tff_context.pid}/environ', 'rb') as f:
    environment = f.read().split(b'\0')
  assert f'--max_concurrent_computation_calls={threads.concurrent_calls}'.encode() in arguments
  assert f'TF_NUM_INTRAOP_THREADS={threads.intra_op_threads}'.encode() in environment
  assert threads == worker_lib.WorkerThreads.for_parallel_clients(worker_lib.available_cores())


class _FakeExecutor:
  def __init__(self, cardinalities):
    self.cardinalities = dict(cardinalities)
    self.closed = False

  def close(self):
    self.closed = True


def test_the_factory_keeps_one_executor_per_cohort_size_and_closes_it_after_an_error():
  made = []

  def stack_fn(cardinalities):
    made.append(_FakeExecutor(cardinalities))
    return made[-1]

  factory = worker_lib.ExecutorPerCohortSize(stack_fn)
  for n in (1, 2, 3, 1, 2, 3):
    factory.create_executor({tff.CLIENTS: n})
  assert [e.cardinalities[tff.CLIENTS] for e in made] == [1, 2, 3]  # Reused, never dropped.
  assert not any(e.closed for e in made)
  factory.clean_up_executor({tff.CLIENTS: 2})  # What TFF's context calls after an error.
  assert [e.closed for e in made] == [False, True, False]
  assert factory.create_executor({tff.CLIENTS: 2}) is made[3]  # A fresh one.


def _worker_rss_mb(worker) -> float:
  """Resident memory of `worker`'s `worker_binary` (not its confinement launcher)."""
  (pid,) = workers_logging_to(worker.log_path)
  with open(f'/proc/{pid}/status') as f:
    return int(f.read().split('VmRSS:')[1].split()[0]) / 1e3


def _worker_growth_mb(calls: int) -> tuple[float, float]:
  """The worker's memory growth over the first and the second half of `calls` calls, each
  with a 4 MB server state and a cohort size that changes every call (as under Poisson
  sampling); also checks the results."""
  size = 1_000_000

  @tff.tensorflow.computation(tff.TensorType(np.float32, [size]), np.float32)
  def add(state, total):
    return state + total

  @tff.federated_computation(tff.FederatedType(tff.TensorType(np.float32, [size]), tff.SERVER),
                             tff.FederatedType(np.float32, tff.CLIENTS))
  def round_fn(state, values):
    return tff.federated_map(add, (state, tff.federated_sum(values)))

  with contexts.local_cpp_context() as worker:
    state, expected, marks = np.zeros(size, np.float32), 0, []
    for i in range(calls):
      cohort = 1 + (i * 7) % 40
      state, expected = round_fn(state, [1.0] * cohort), expected + cohort
      if i in (0, calls // 2, calls - 1):
        marks.append(_worker_rss_mb(worker))
    assert state[0] == expected
  return marks[1] - marks[0], marks[2] - marks[1]


def test_changing_cohort_sizes_do_not_grow_the_workers_memory(monkeypatch):
  """TFF's own factory drops the executors it evicts without telling the worker, which keeps
  their values: the reference grows by about 12 MB a call here; ours by far less."""
  ours = _worker_growth_mb(120)
  monkeypatch.setattr(worker_lib, 'ExecutorPerCohortSize', lambda stack_fn: (
      tff.framework.ResourceManagingExecutorFactory(executor_stack_fn=stack_fn)))
  remote_executor = tff.framework.RemoteExecutor
  monkeypatch.setattr(tff.framework, 'RemoteExecutor',  # With TFF's default batch of 20.
                      lambda stub, dispose_batch_size=None: remote_executor(stub))
  theirs = _worker_growth_mb(120)
  assert theirs[1] > 300, theirs  # The leak the factory exists for.
  assert ours[1] < theirs[1] / 4, (ours, theirs)
