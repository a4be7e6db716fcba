"""Shared fixtures: one TFF worker for the session, tiny models, and a worker-leak check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.eager import context as tf_context  # noqa: E402

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


# `make test` runs the tests on two pytest-xdist workers (`--dist loadgroup`). A test that
# shares an expensive fixture with others runs on the same worker as they do, so that the
# fixture is built once: the session fixtures that run `bin/train.py` (`tiny_runs`, whose
# rows `local_rows` reads, and `uninterrupted`) give their users one group each, and a module
# fixture keeps its module's users together (in the module's shared group, if its tests use
# one). Every other test is a group of its own, which either worker may take.
_SHARED_FIXTURES = {'tiny_runs': 'tiny', 'local_rows': 'tiny', 'uninterrupted': 'resumable'}
# The groups are handed out longest first (with --no-loadscope-reorder, set in pyproject.toml):
# a long test started last would leave the other worker idle meanwhile. A group's length is
# the sum of its tests' seconds (setup, call and teardown) as last measured: the controller
# keeps them in pytest's cache; tests/durations.json holds the slowest tests' seconds from a
# profile of `make test` on 2 loaded cores (a fixture's set-up counted in its first test),
# for a checkout without a cache.
_SECONDS_KEY = 'tff_gan/test_seconds'
_MEASURED_SECONDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'durations.json')


def _uses_module_fixture(item) -> bool:
  return any(definitions[-1].scope in ('module', 'package', 'class')
             for definitions in item._fixtureinfo.name2fixturedefs.values())  # noqa: SLF001


def _groups(items) -> dict:
  """Each item's xdist group, by the rules above."""
  shared = {item: next((_SHARED_FIXTURES[name] for name in item.fixturenames
                        if name in _SHARED_FIXTURES), None) for item in items}
  module = {item: item.module.__name__.rpartition('.')[2] for item in items}
  module_groups = {}
  for item in items:
    if shared[item] or _uses_module_fixture(item):
      module_groups[module[item]] = shared[item] or module_groups.get(module[item]) or module[item]
  groups = {}
  for item in items:
    if shared[item]:
      groups[item] = shared[item]
    elif _uses_module_fixture(item):
      groups[item] = module_groups[module[item]]
    else:
      groups[item] = item.nodeid
  return groups


@pytest.hookimpl(tryfirst=True)  # Before pytest-xdist reads the marks.
def pytest_collection_modifyitems(config, items):
  groups = _groups(items)
  with open(_MEASURED_SECONDS) as f:
    seconds = json.load(f)
  cache = getattr(config, 'cache', None)  # None under -p no:cacheprovider.
  seconds.update(cache.get(_SECONDS_KEY, {}) if cache else {})
  total = {}
  for item in items:
    total[groups[item]] = total.get(groups[item], 0.0) + seconds.get(item.nodeid, 0.0)
  # Stable: groups of equal (or unknown) length keep the collection order; a group's tests
  # stay together, in their module's order.
  first_index = {}
  for index, item in enumerate(items):
    first_index.setdefault(groups[item], index)
  items.sort(key=lambda item: (-total[groups[item]], first_index[groups[item]]))
  for item in items:
    item.add_marker(pytest.mark.xdist_group(groups[item]))


_measured: dict[str, float] = {}


def pytest_runtest_logreport(report):
  """Sums the seconds of each test's phases (on the controller, from the workers' reports)."""
  nodeid = report.nodeid.partition('@')[0]  # pytest-xdist appends '@group'.
  _measured[nodeid] = _measured.get(nodeid, 0.0) + report.duration


def pytest_sessionstart(session):
  _PIDS_BEFORE_SESSION.update(worker_pids())


def pytest_sessionfinish(session, exitstatus):
  """Fails the run if any worker started during the session is still alive at its end; the
  controller (or a run without xdist) stores the seconds each test took."""
  cache = getattr(session.config, 'cache', None)
  if _measured and cache and not hasattr(session.config, 'workerinput'):
    seconds = cache.get(_SECONDS_KEY, {})
    seconds.update((nodeid, round(value, 1)) for nodeid, value in _measured.items())
    cache.set(_SECONDS_KEY, seconds)
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


@pytest.fixture(autouse=True)
def _no_global_tf_seed_left():
  """Fails a test that leaves TF's global seed set (`tf.random.set_seed`,
  `tf.keras.utils.set_random_seed`): every later test in the same process would draw its
  random ops' seeds from it."""
  yield
  seed = tf_context.global_seed()
  if seed is not None:
    tf_context.set_global_seed(None)
    pytest.fail(f"the test left TF's global seed set ({seed}); seed what it builds instead "
                '(tff_gan.core.seeds.keras_initializers_seeded, an op seed).')


@pytest.fixture
def short_tmp_dir():
  """A new directory in the system's temp dir, removed after the test: the TMPDIR of a
  subprocess that may leave files there (a SIGKILLed run, its worker's socket directory).
  pytest's `tmp_path` is too deep for that: a Unix socket's path has at most 107 bytes."""
  path = tempfile.mkdtemp(prefix='tff_gan_test_')
  yield path
  shutil.rmtree(path, ignore_errors=True)


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
