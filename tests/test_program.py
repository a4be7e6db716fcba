"""Checkpoints and resume: SIGKILL at any moment, atomic saves, damaged files, changed flags."""

import asyncio
import collections
import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT, RESUMABLE, truncate_checkpoint, workers_logging_to
from tensorflow_federated.python.program import file_utils
from test_train_binary import TRAIN, run_train

from tff_gan.run import config as config_lib
from tff_gan.run import persistence as program
from tff_gan.run import rundir

TIMING = 'round_seconds'  # Wall time differs from run to run; every other column must not.


def read_rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def without_timing(rows):
  return [{k: v for k, v in row.items() if k != TIMING} for row in rows]


def saved_leaves(output_dir, round_num):
  path = os.path.join(output_dir, rundir.CHECKPOINT_DIR, f'round_{round_num}')
  return [np.asarray(x) for x in tf.nest.flatten(asyncio.run(file_utils.read_saved_model(path)))]


def kill_after_rows(output_dir, rows, temp_dir, timeout=240):
  """Starts a run, SIGKILLs it once metrics.csv holds `rows` rounds; returns how many it had."""
  # A SIGKILLed run leaves its worker's socket directory in the temp dir: here, the test's own.
  env = dict(os.environ, TMPDIR=temp_dir)
  process = subprocess.Popen([sys.executable, TRAIN, *RESUMABLE, f'--output_dir={output_dir}'],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO_ROOT,
                             env=env)
  deadline = time.monotonic() + timeout
  metrics = os.path.join(output_dir, 'metrics.csv')
  try:
    while time.monotonic() < deadline and process.poll() is None:
      if os.path.exists(metrics) and len(read_rows(metrics)) >= rows:
        break
      time.sleep(0.05)
    assert process.poll() is None, 'the run ended before it could be killed'
    process.send_signal(signal.SIGKILL)
  finally:
    process.wait()
  return len(read_rows(metrics))


@pytest.mark.parametrize('kill_at_rows', [2, 4])
def test_sigkill_then_rerun_equals_an_uninterrupted_run(uninterrupted, tmp_path, kill_at_rows,
                                                        short_tmp_dir):
  output_dir = tmp_path / 'killed'
  rows_when_killed = kill_after_rows(output_dir, kill_at_rows, short_tmp_dir)
  assert kill_at_rows <= rows_when_killed < 8
  # The killed run's worker dies with it (PR_SET_PDEATHSIG): the rerun starts its own.
  deadline = time.monotonic() + 10
  while workers_logging_to(output_dir / 'worker.log') and time.monotonic() < deadline:
    time.sleep(0.1)
  assert not workers_logging_to(output_dir / 'worker.log')
  result = run_train(*RESUMABLE, f'--output_dir={output_dir}')
  assert result.returncode == 0, result.stderr

  expected = read_rows(uninterrupted / 'metrics.csv')
  got = read_rows(output_dir / 'metrics.csv')
  assert [row['round'] for row in got] == [str(r) for r in range(1, 9)]  # None lost or twice.
  assert without_timing(got) == without_timing(expected)
  for a, b in zip(saved_leaves(output_dir, 8), saved_leaves(uninterrupted, 8), strict=True):
    np.testing.assert_array_equal(a, b)
  assert not workers_logging_to(output_dir / 'worker.log')


def test_rerunning_a_finished_run_changes_nothing(uninterrupted):
  rows = read_rows(uninterrupted / 'metrics.csv')
  result = run_train(*RESUMABLE, f'--output_dir={uninterrupted}')
  assert result.returncode == 0, result.stderr
  assert read_rows(uninterrupted / 'metrics.csv') == rows


def test_a_corrupt_checkpoint_gives_one_line_and_exit_1(uninterrupted, tmp_path):
  output_dir = tmp_path / 'corrupt'
  shutil.copytree(uninterrupted, output_dir)
  truncate_checkpoint(output_dir, 8)
  result = run_train(*RESUMABLE, '--rounds=9', f'--output_dir={output_dir}')
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert 'checkpoint' in lines[0] and 'round_8 cannot be read' in lines[0]
  assert '--overwrite' in lines[0]


def test_other_flags_on_the_same_output_dir_are_refused_naming_them(tmp_path):
  config = config_lib.TrainConfig(output_dir=str(tmp_path), seed=0, batch_size=16)
  (tmp_path / rundir.CONFIG_FILE).write_text(config.to_json())
  result = run_train(f'--output_dir={tmp_path}', '--seed=1', '--batch_size=32', '--rounds=5')
  assert result.returncode == 2
  line, = result.stderr.strip().splitlines()
  assert '--batch_size=16 there, 32 now' in line and '--seed=0 there, 1 now' in line
  assert 'rounds' not in line  # --rounds may change: it extends or shortens the run.


def test_overwrite_starts_over(tmp_path):
  (tmp_path / 'metrics.csv').write_text('round,d_loss\n1,9\n2,9\n3,9\n')
  (tmp_path / rundir.CONFIG_FILE).write_text(
      config_lib.TrainConfig(output_dir=str(tmp_path), seed=5).to_json())
  (tmp_path / 'unrelated.txt').write_text('kept')
  result = run_train('--rounds=1', '--model_width=0.03125', '--num_clients=2',
                     '--clients_per_round=2', '--local_steps=1', '--num_eval_samples=100',
                     '--noprogress', '--overwrite', f'--output_dir={tmp_path}')
  assert result.returncode == 0, result.stderr
  assert [row['round'] for row in read_rows(tmp_path / 'metrics.csv')] == ['1']
  assert (tmp_path / 'unrelated.txt').read_text() == 'kept'


State = collections.namedtuple('State', ['weights', 'round_num'])


def small_state(value):
  return State(weights=[np.full((3, 2), value, np.float32), np.arange(4, dtype=np.float32)],
               round_num=np.int64(value))


def test_a_failure_mid_write_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
  checkpoints = program.Checkpoints(str(tmp_path))
  checkpoints.save(small_state(1), 1)
  real_save = tf.saved_model.save

  def save_then_crash(module, path, **kwargs):
    real_save(module, path, **kwargs)
    variables = os.path.join(path, 'variables')
    for name in os.listdir(variables):  # A half-written variables file, then the crash.
      with open(os.path.join(variables, name), 'r+b') as f:
        f.truncate(8)
    raise OSError('disk full')

  monkeypatch.setattr(tf.saved_model, 'save', save_then_crash)
  with pytest.raises(program.StorageError,
                     match='disk full.*the checkpoint of round 1 is kept: free space'):
    checkpoints.save(small_state(2), 2)
  monkeypatch.undo()

  reopened = program.Checkpoints(str(tmp_path))  # As the next run would.
  assert reopened.rounds() == [1]
  assert not [e for e in os.listdir(reopened.root) if '_temp' in e]  # Leftovers cleaned.
  loaded = reopened.load(1, small_state(0))
  np.testing.assert_array_equal(loaded.weights[0], small_state(1).weights[0])
  assert int(loaded.round_num) == 1


def test_loading_into_another_model_shape_is_a_checkpoint_error(tmp_path):
  checkpoints = program.Checkpoints(str(tmp_path))
  checkpoints.save(small_state(1), 1)
  other = State(weights=[np.zeros((5, 2), np.float32), np.zeros(4, np.float32)],
                round_num=np.int64(0))
  with pytest.raises(program.CheckpointError, match=r'round_1 cannot be read .*float32\[3, 2\]'):
    checkpoints.load(1, other)


def test_keeps_only_the_latest_checkpoints(tmp_path):
  checkpoints = program.Checkpoints(str(tmp_path), keep=2)
  for round_num in (3, 6, 9):
    checkpoints.save(small_state(round_num), round_num)
  assert checkpoints.rounds() == [6, 9] and checkpoints.latest_round() == 9


def test_metrics_release_keeps_our_column_order_and_drops_rows_of_an_earlier_attempt(tmp_path):
  columns = ('round', 'zeta', 'alpha', 'loss')
  release = program.MetricsRelease(str(tmp_path), columns)
  for round_num in (1, 2, 3):
    release.release({'round': round_num, 'zeta': round_num, 'loss': 0.5}, round_num)
  again = program.MetricsRelease(str(tmp_path), columns)  # A resumed run, from round 1.
  again.release({'round': 2, 'zeta': 20, 'alpha': 1.25, 'loss': float('nan')}, 2)
  with open(tmp_path / 'metrics.csv', newline='') as f:
    lines = f.read().splitlines()
  assert lines == ['round,zeta,alpha,loss', '1,1,,0.5', '2,20,1.25,nan']
  assert os.listdir(tmp_path / rundir.TENSORBOARD_DIR)  # TensorBoard events were written.
