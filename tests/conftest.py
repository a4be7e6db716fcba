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


def started_by_this_session(pid: int) -> bool:
  try:
    with open(f'/proc/{pid}/environ', 'rb') as f:
      return _SESSION_MARK in f.read().split(b'\0')
  except OSError:  # Gone meanwhile, or not ours to inspect.
    return False


def workers_started_since(before: set[int]) -> set[int]:
  """Live TFF workers this session started that were not in `before` (other test processes,
  such as the other pytest-xdist worker, may be running workers meanwhile)."""
  return {pid for pid in worker_pids() - before if pid_alive(pid) and started_by_this_session(pid)}


# `make test` runs the tests on two pytest-xdist workers (`--dist loadgroup`). Each test module
# stays on one worker, so its module-scoped fixtures are built once; modules that share a
# session fixture (`uninterrupted`) share a group too.
_SHARED_GROUPS = {'test_program': 'resumable', 'test_run_safety': 'resumable'}


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
