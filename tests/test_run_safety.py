"""Runs that hold: signals, one writer per run directory, no data loss, no hang on bad input."""

from __future__ import annotations

import errno
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT, workers_logging_to
from test_train_binary import TINY, read_rows, run_train

from tff_gan.run import rundir
from tff_gan.run.config import ConfigError, TrainConfig
from tff_gan.runtime import signals

TRAIN = os.path.join(REPO_ROOT, 'bin', 'train.py')
FLAGS = [f for f in TINY if not f.startswith(('--rounds', '--eval_every'))] + [
    '--eval_every=4', '--checkpoint_every=2']


def rows_without_timings(output_dir):
  return [{k: v for k, v in row.items() if k != 'round_seconds'}
          for row in read_rows(os.path.join(output_dir, 'metrics.csv'))]


def stop_mid_run(output_dir, signum, rounds=12, after_rows=3):
  """Starts a run of `rounds`, sends `signum` once `after_rows` rows are written."""
  process = subprocess.Popen([sys.executable, TRAIN, *FLAGS, f'--rounds={rounds}',
                              f'--output_dir={output_dir}'], stderr=subprocess.PIPE, text=True,
                             cwd=REPO_ROOT)
  metrics = os.path.join(output_dir, 'metrics.csv')
  deadline = time.monotonic() + 240
  while time.monotonic() < deadline and process.poll() is None:
    if os.path.exists(metrics) and len(read_rows(metrics)) >= after_rows:
      break
    time.sleep(0.05)
  process.send_signal(signum)
  _, stderr = process.communicate(timeout=120)
  return process.returncode, stderr


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """The rows of an uninterrupted run of 8 rounds, for the stopped ones to match."""
  output_dir = tmp_path_factory.mktemp('whole')
  whole = run_train(*FLAGS, '--rounds=8', f'--output_dir={output_dir}')
  assert whole.returncode == 0, whole.stderr
  return rows_without_timings(output_dir)


@pytest.mark.parametrize('signum', [signal.SIGINT])  # SIGTERM: the same path (below).
def test_a_signal_mid_run_stops_in_one_line_and_the_run_resumes_exactly(signum, tmp_path,
                                                                        uninterrupted):
  stopped = tmp_path / 'stopped'
  code, stderr = stop_mid_run(stopped, signum, rounds=8)
  assert code == 128 + signum, stderr
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in stderr, stderr
  name = signal.Signals(signum).name
  assert f'stopped by {name} after round' in lines[0]
  assert 'rerun the same command to resume' in lines[0]
  assert not workers_logging_to(stopped / 'worker.log')
  resumed = run_train(*FLAGS, '--rounds=8', f'--output_dir={stopped}')
  assert resumed.returncode == 0, resumed.stderr
  assert rows_without_timings(stopped) == uninterrupted


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
  with rundir.run_lock(str(tmp_path)):
    result = run_train(*FLAGS, '--rounds=1', f'--output_dir={tmp_path}')
  assert result.returncode == 2
  assert f'another trainer (pid {os.getpid()}) is writing to' in result.stderr
  assert not os.path.exists(tmp_path / 'metrics.csv')


def test_a_killed_runs_lock_file_does_not_block(tmp_path):
  (tmp_path / rundir.LOCK_FILE).write_text('999999\n')  # Its process is gone: no flock.
  result = run_train(*FLAGS, '--rounds=1', f'--output_dir={tmp_path}')
  assert result.returncode == 0, result.stderr


def test_overwrite_with_a_late_usage_error_keeps_the_old_run(tmp_path):
  first = run_train(*FLAGS, '--rounds=1', f'--output_dir={tmp_path}')
  assert first.returncode == 0, first.stderr
  before = sorted(os.listdir(tmp_path))
  # 100 labels per client is refused only once the partition is built, after TF loads.
  late = run_train(*FLAGS, '--rounds=1', '--overwrite', '--partition=pathological',
                   '--labels_per_client=100', f'--output_dir={tmp_path}')
  assert late.returncode == 2 and len(late.stderr.strip().splitlines()) == 1, late.stderr
  assert sorted(os.listdir(tmp_path)) == before
  assert len(read_rows(tmp_path / 'metrics.csv')) == 1


def test_a_late_usage_error_leaves_no_empty_directory(tmp_path):
  output_dir = tmp_path / 'new' / 'run'
  late = run_train(*FLAGS, '--rounds=1', '--partition=pathological', '--labels_per_client=100',
                   f'--output_dir={output_dir}')
  assert late.returncode == 2, late.stderr
  assert not output_dir.exists()


@pytest.mark.parametrize('name', ['dp_noise_multiplier', 'client_learning_rate', 'dp_clip',
                                  'dirichlet_alpha', 'generator_ema', 'dropout_rate'])
@pytest.mark.parametrize('value', [math.inf, -math.inf, math.nan])
def test_every_non_finite_setting_is_refused(name, value):
  with pytest.raises(ConfigError, match=f'--{name} must be a finite number'):
    TrainConfig(**{name: value}).validate()


@pytest.mark.parametrize('alpha', [1e-4, 1e-9, 1e-12, 0.0])
def test_dirichlet_concentrations_that_would_hang_are_refused_at_once(alpha):
  start = time.monotonic()
  with pytest.raises(ConfigError, match='--dirichlet_alpha must be a finite number >= 0.001'):
    TrainConfig(partition='dirichlet', dirichlet_alpha=alpha).validate()
  assert time.monotonic() - start < 1


def test_a_full_disk_at_checkpoint_time_is_one_line_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch):
  import tensorflow_federated as tff  # noqa: PLC0415

  import tasks  # noqa: PLC0415 (TensorFlow)
  from tff_gan.run import persistence, training  # noqa: PLC0415

  real_save = tff.program.FileProgramStateManager.save

  async def fill_the_disk_at_round_4(self, state, version):
    if version < 4:
      return await real_save(self, state, version)
    partial = os.path.join(self._root_dir, f'round_{version}_temp_0')  # noqa: SLF001
    os.makedirs(partial)
    with open(os.path.join(partial, 'saved_model.pb'), 'wb') as f:
      f.write(b'half of it')
    raise OSError(errno.ENOSPC, 'No space left on device', partial)

  monkeypatch.setattr(tff.program.FileProgramStateManager, 'save', fill_the_disk_at_round_4)
  config = TrainConfig(rounds=6, eval_every=6, checkpoint_every=2, num_clients=4,
                       clients_per_round=2, local_steps=1, batch_size=16, model_width=0.03125,
                       num_eval_samples=100, output_dir=str(tmp_path))
  with pytest.raises(persistence.StorageError) as raised:
    training.train(config, tasks.task_from_config(config), show_progress=False)
  message = str(raised.value)
  assert '\n' not in message and 'No space left on device' in message
  assert 'the checkpoint of round 2 is kept' in message
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['round_2']  # The partial one gone.
  assert not workers_logging_to(tmp_path / 'worker.log')


def test_ctrl_c_at_start_up_is_one_line_and_leaves_nothing(tmp_path):
  output_dir = tmp_path / 'run'
  process = subprocess.Popen([sys.executable, TRAIN, *FLAGS, '--rounds=5',
                              f'--output_dir={output_dir}'], stderr=subprocess.PIPE, text=True,
                             cwd=REPO_ROOT)
  time.sleep(1.5)  # Loading TensorFlow.
  process.send_signal(signal.SIGINT)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 130, stderr
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in stderr and 'stopped by SIGINT' in lines[0]
  assert not output_dir.exists() or not os.listdir(output_dir)


@pytest.mark.parametrize('signum, raised', [(signal.SIGTERM, signals.Terminated),
                                            (signal.SIGINT, signals.Interrupted)])
def test_a_signal_during_a_computation_is_held_until_it_returns(signum, raised):
  finished = []
  with pytest.raises(raised):
    with signals.deferred():
      os.kill(os.getpid(), signum)
      time.sleep(0.2)  # The call goes on: the signal waits.
      finished.append(True)
  assert finished == [True]
  if raised is signals.Terminated:
    assert raised().code == 128 + signal.SIGTERM
