"""Shared fixtures: one TFF worker for the session, tiny models, and a worker-leak check."""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tff_gan.core.models import GanModels  # noqa: E402
from tff_gan.runtime import contexts  # noqa: E402
from tff_gan.runtime import workers as worker_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# No computation may start a TFF worker the tests do not own (see runtime.contexts).
contexts.refuse_unowned_execution()


def worker_pids() -> set[int]:
  """Pids of every running TFF `worker_binary` on this machine (the program itself, not a
  launcher that names it among its arguments, as a confined worker's does)."""
  pids = set()
  for entry in os.listdir('/proc'):
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/cmdline', 'rb') as f:
        program = f.read().split(b'\0')[0].decode(errors='replace')
    except OSError:  # Gone meanwhile.
      continue
    if program == worker_lib.WORKER_BINARY:
      pids.add(int(entry))
  return pids


def workers_logging_to(log_path) -> set[int]:
  """Live TFF workers whose stdout is `log_path`: those of one run, whatever else is running."""
  pids = set()
  for pid in worker_pids():
    try:
      if os.readlink(f'/proc/{pid}/fd/1') == os.path.realpath(log_path) and pid_alive(pid):
        pids.add(pid)
    except OSError:  # Gone meanwhile, or not ours to inspect.
      pass
  return pids


def truncate_checkpoint(output_dir, round_num: int) -> None:
  """Cuts every variables file of a saved round in half, as a crash or a bad disk might."""
  variables = os.path.join(output_dir, 'checkpoints', f'round_{round_num}', 'variables')
  for name in os.listdir(variables):
    path = os.path.join(variables, name)
    with open(path, 'rb') as f:
      data = f.read()
    with open(path, 'wb') as f:
      f.write(data[: len(data) // 2])


def pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # A zombie still answers kill(0); it has exited all the same.
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().split(') ')[-1][0] != 'Z'
  except FileNotFoundError:
    return False


_PIDS_BEFORE_SESSION: set[int] = set()
# Every process this session starts inherits the mark (workers get a copy of os.environ), so
# the leak check below ignores workers of other programs running on the machine meanwhile.
_SESSION_MARK = f'TFF_GAN_TEST_SESSION={os.getpid()}'.encode()
os.environ['TFF_GAN_TEST_SESSION'] = str(os.getpid())


def has_environment_entry(pid: int, entry: bytes) -> bool:
  """Whether process `pid` runs with `entry` (b'NAME=value') in its environment."""
  try:
    with open(f'/proc/{pid}/environ', 'rb') as f:
      return entry in f.read().split(b'\0')
  except OSError:  # Gone meanwhile, or not ours to inspect.
    return False


def started_by_this_session(pid: int) -> bool:
  return has_environment_entry(pid, _SESSION_MARK)


def workers_started_since(before: set[int]) -> set[int]:
  """Live TFF workers this session started that were not in `before` (other test processes,
  such as the other pytest-xdist worker, may be running workers meanwhile)."""
  return {pid for pid in worker_pids() - before if pid_alive(pid) and started_by_this_session(pid)}


# `make test` runs the tests on two pytest-xdist workers (`--dist loadgroup`). Each test module
# stays on one worker, so its module-scoped fixtures are built once; modules that share a
# session fixture (`uninterrupted`, `tiny_runs`) share a group too.
_SHARED_GROUPS = {'test_program': 'resumable', 'test_run_safety': 'resumable',
                  'test_train_binary': 'tiny', 'test_remote': 'tiny', 'test_tls': 'tiny'}


@pytest.hookimpl(tryfirst=True)  # Before pytest-xdist reads the marks.
def pytest_collection_modifyitems(items):
  for item in items:
    module = item.module.__name__.rpartition('.')[2]
    item.add_marker(pytest.mark.xdist_group(_SHARED_GROUPS.get(module, module)))


def pytest_sessionstart(session):
  _PIDS_BEFORE_SESSION.update(worker_pids())


def pytest_sessionfinish(session, exitstatus):
  """Fails the run if any worker started during the session is still alive at its end."""
  worker_lib.stop_all_workers()
  leaked = workers_started_since(_PIDS_BEFORE_SESSION)
  if leaked:
    print(f'\nERROR: TFF worker processes left running after the tests: {sorted(leaked)}')
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


# A tiny `bin/train.py` run of 8 rounds, evaluated every 4 and saved every 2: what runs that
# are stopped, killed or resumed must end up equal to (tests/test_program, test_run_safety).
RESUMABLE = ['--rounds=8', '--eval_every=4', '--checkpoint_every=2', '--model_width=0.03125',
             '--num_clients=4', '--clients_per_round=3', '--local_steps=2', '--batch_size=16',
             '--num_eval_samples=200', '--noprogress']


@pytest.fixture(scope='session')
def uninterrupted(tmp_path_factory):
  """The output directory of the `RESUMABLE` run, uninterrupted."""
  output_dir = tmp_path_factory.mktemp('uninterrupted')
  result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, 'bin', 'train.py'),
                           *RESUMABLE, f'--output_dir={output_dir}'], capture_output=True,
                          text=True, timeout=300, cwd=REPO_ROOT)
  assert result.returncode == 0, result.stderr
  return output_dir


@pytest.fixture(scope='session')
def tiny_runs(tmp_path_factory):
  """Two identical local `bin/train.py` runs of `test_train_binary.TINY` with the same seed:
  `([(output_dir, CompletedProcess)] * 2, survivors)`, `survivors()` the pids of the TFF
  workers they started that are still alive.

  test_train_binary checks their outputs and that they agree; test_remote and test_tls take
  the first as the local run that remote and TLS workers must reproduce.
  """
  from test_train_binary import TINY, run_trains  # noqa: PLC0415 (a test module, not a library)
  # The runs and the workers they start carry a mark of their own, so that what survives
  # them can be told from the workers other tests start before the check.
  mark = ('TFF_GAN_TINY_RUNS', str(os.getpid()))
  output_dirs = [tmp_path_factory.mktemp(name) for name in ('a', 'b')]
  results = run_trains(*([*TINY, f'--output_dir={output_dir}'] for output_dir in output_dirs),
                       env={**os.environ, mark[0]: mark[1]})
  for result in results:
    assert result.returncode == 0, result.stderr

  def survivors() -> set[int]:
    return {pid for pid in worker_pids()
            if pid_alive(pid) and has_environment_entry(pid, '='.join(mark).encode())}

  return list(zip(output_dirs, results, strict=True)), survivors


@pytest.fixture(scope='session')
def local_rows(tiny_runs):
  """The metrics rows of the first `tiny_runs` run: the TINY run on the local worker."""
  from test_train_binary import read_rows  # noqa: PLC0415 (a test module, not a library)
  (output_dir, _), _ = tiny_runs[0]
  return read_rows(output_dir / 'metrics.csv')


@pytest.fixture(scope='session')
def tff_context():
  """TFF's C++ runtime on one worker, shared by every test that executes computations."""
  with contexts.local_cpp_context() as worker:
    yield worker


def linear_gan_models(noise_dim: int = 3, data_dim: int = 2) -> GanModels:
  """A linear G and a linear D: gradients have closed forms, so numpy can check them."""

  def generator_fn():
    return tf.keras.Sequential([tf.keras.Input((noise_dim,)), tf.keras.layers.Dense(data_dim)])

  def discriminator_fn():
    return tf.keras.Sequential([tf.keras.Input((data_dim,)), tf.keras.layers.Dense(1)])

  return GanModels(generator_fn, discriminator_fn, noise_dim, (data_dim,))


def tiny_mlp_gan_models(noise_dim: int = 4, data_dim: int = 2) -> GanModels:
  """A small nonlinear pair for end-to-end checks."""

  def generator_fn():
    return tf.keras.Sequential([
        tf.keras.Input((noise_dim,)),
        tf.keras.layers.Dense(8, activation='relu'),
        tf.keras.layers.Dense(data_dim),
    ])

  def discriminator_fn():
    return tf.keras.Sequential([
        tf.keras.Input((data_dim,)),
        tf.keras.layers.Dense(8),
        tf.keras.layers.LeakyReLU(0.2),
        tf.keras.layers.Dense(1),
    ])

  return GanModels(generator_fn, discriminator_fn, noise_dim, (data_dim,))


def as_numpy(structure):
  return tf.nest.map_structure(np.asarray, structure)
