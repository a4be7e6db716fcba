"""Runs that hold: signals, one writer per run directory, no data loss, no hang on bad input."""

from __future__ import annotations

import errno
import fcntl
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest
from conftest import REPO_ROOT, RESUMABLE, workers_logging_to
from test_train_binary import read_rows, run_train

from tff_gan.run import rundir
from tff_gan.run.config import ConfigError, TrainConfig
from tff_gan.runtime import signals

TRAIN = os.path.join(REPO_ROOT, 'bin', 'train.py')
FLAGS = [f for f in RESUMABLE if not f.startswith('--rounds')]


def rows_without_timings(output_dir):
  return [{k: v for k, v in row.items() if k != 'round_seconds'}
          for row in read_rows(os.path.join(output_dir, 'metrics.csv'))]


class Terminal:
  """A program run with a pseudo-terminal as its controlling terminal, as from a shell.

  `ctrl_c()` types Ctrl-C there: the kernel then sends SIGINT to the terminal's foreground
  process group, the program and every child that did not leave the group.
  """

  def __init__(self, args, env=None):
    master, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 100, 0, 0))
    self.process = subprocess.Popen(
        args, stdin=terminal, stdout=terminal, stderr=terminal, cwd=REPO_ROOT, env=env,
        start_new_session=True,  # A session of its own, which the terminal then controls.
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(terminal)
    self._master, self._output = master, []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    while True:
      try:
        data = os.read(self._master, 4096)
      except OSError:  # EIO: the program and its children closed the terminal.
        return
      if not data:
        return
      self._output.append(data)

  def ctrl_c(self):
    os.write(self._master, b'\x03')

  def wait(self, timeout=120):
    """`(exit status, what the terminal showed, as lines)`."""
    code = self.process.wait(timeout)
    self._reader.join(10)
    os.close(self._master)
    return code, b''.join(self._output).decode(errors='replace').replace('\r\n', '\n')


def what_was_said(shown):
  """The lines a terminal showed, but the progress bar's and the echoed ^C."""
  return [line for line in shown.replace('^C', '').split('\n')
          if line.strip() and 'rounds:' not in line]


def wait_until(done, process, what):
  """Returns once `done()` holds; fails with `what` if `process` ends or 240 s pass first."""
  deadline = time.monotonic() + 240
  while True:
    assert process.poll() is None and time.monotonic() < deadline, what
    if done():
      return
    time.sleep(0.05)


def wait_for_rows(output_dir, process, rows):
  metrics = os.path.join(output_dir, 'metrics.csv')
  wait_until(lambda: os.path.exists(metrics) and len(read_rows(metrics)) >= rows, process,
             f'{metrics} did not reach {rows} rows')


# bin/train.py, with hooks that announce a moment by creating a file and, for a round or a
# checkpoint save, hold it for 3 s, so a test's Ctrl-C lands there whatever the machine's
# speed: `LOADING` is created when module `MODULE` starts to load, `ROUND` when the call of
# round `SLOW_ROUND` starts, `SAVING` when the checkpoint save of round `SLOW_SAVE` starts.
ANNOUNCED = """
import importlib.abc, os, runpy, sys, time
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))

class Announce(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name == os.environ['MODULE']:
      sys.meta_path.remove(self)
      open(os.environ['LOADING'], 'w').close()
    return None

if 'MODULE' in os.environ:
  sys.meta_path.insert(0, Announce())
else:
  import _cli
  import tensorflow_federated as tff
  from tff_gan.algorithms import composition
  slow_round, slow_save = int(os.environ.get('SLOW_ROUND', 0)), int(os.environ.get('SLOW_SAVE', 0))
  real_save = tff.program.FileProgramStateManager.save
  async def save(self, state, version):
    if version == slow_save:
      open(os.environ['SAVING'], 'w').close()
      time.sleep(3)
    return await real_save(self, state, version)
  tff.program.FileProgramStateManager.save = save
  real_keyed = composition.GanProcess.with_client_data
  def with_client_data(self, *args):
    keyed, calls = real_keyed(self, *args), []
    class Slow(type(keyed)):
      @property
      def next(self):
        def next(*args):
          calls.append(1)
          if len(calls) == slow_round:
            open(os.environ['ROUND'], 'w').close()
            time.sleep(3)
          return super(Slow, self).next(*args)
        return next
    keyed.__class__ = Slow
    return keyed
  composition.GanProcess.with_client_data = with_client_data
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def announced(args, tmp_path, **hooks):
  """`bin/train.py args` on a terminal under `ANNOUNCED`'s `hooks` (its environment
  variables); each of `LOADING`, `ROUND`, `SAVING` given is a file in `tmp_path`."""
  env = {**os.environ, **{k: str(v) for k, v in hooks.items()}}
  env.update({k: str(tmp_path / k.lower()) for k in ('LOADING', 'ROUND', 'SAVING')})
  return Terminal([sys.executable, '-c', ANNOUNCED, TRAIN, *args], env=env)


def wait_for_file(path, process):
  wait_until(path.exists, process, f'{path} never appeared')


def test_ctrl_c_mid_round_and_while_checkpointing_stops_in_one_line_and_resumes_exactly(
    tmp_path, uninterrupted):
  run = tmp_path / 'run'
  flags = [f for f in FLAGS if f != '--noprogress'] + ['--rounds=8', f'--output_dir={run}']
  # Ctrl-C in round 3's call (2 rows written, the checkpoint of round 2 saved, and round 3
  # not one --checkpoint_every=2 saves): the call ends, round 3 is recorded and checkpointed,
  # and the run stops.
  terminal = announced(flags, tmp_path, SLOW_ROUND=3)
  wait_for_file(tmp_path / 'round', terminal.process)
  terminal.ctrl_c()
  code, shown = terminal.wait()
  assert code == 130 and 'Traceback' not in shown, shown
  assert what_was_said(shown) == [
      f'train.py: stopped by SIGINT after round 3 of 8; the checkpoint of round 3 in {run} is '
      'kept: rerun the same command to resume.'], shown
  assert len(read_rows(run / 'metrics.csv')) == 3
  assert sorted(os.listdir(run / 'checkpoints')) == ['round_2', 'round_3']
  assert not workers_logging_to(run / 'worker.log')

  # The same command resumes from round 3; Ctrl-C while it saves round 6 lets the save finish.
  terminal = announced(flags, tmp_path, SLOW_SAVE=6)
  wait_for_file(tmp_path / 'saving', terminal.process)
  terminal.ctrl_c()
  code, shown = terminal.wait()
  assert code == 130 and 'Traceback' not in shown, shown
  assert what_was_said(shown) == [
      f'train.py: stopped by SIGINT after round 6 of 8; the checkpoint of round 6 in {run} is '
      'kept: rerun the same command to resume.'], shown
  assert sorted(os.listdir(run / 'checkpoints'))[-1] == 'round_6'
  assert not workers_logging_to(run / 'worker.log')

  resumed = run_train(*FLAGS, '--rounds=8', f'--output_dir={run}')
  assert resumed.returncode == 0, resumed.stderr
  assert rows_without_timings(run) == rows_without_timings(uninterrupted)


# While the flags' modules load, then while TensorFlow does (seconds).
@pytest.mark.parametrize('module', ['absl', 'tensorflow'])
def test_ctrl_c_at_start_up_is_one_line_and_leaves_nothing(tmp_path, module):
  output_dir = tmp_path / 'run'
  terminal = announced([*FLAGS, '--rounds=5', f'--output_dir={output_dir}'], tmp_path,
                       MODULE=module)
  wait_for_file(tmp_path / 'loading', terminal.process)
  terminal.ctrl_c()
  code, shown = terminal.wait()
  assert code == 130 and 'Traceback' not in shown, shown
  assert what_was_said(shown) == ['train.py: stopped by SIGINT.'], shown
  assert not output_dir.exists() or not os.listdir(output_dir)


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


def test_overwrite_with_a_late_usage_error_keeps_the_old_run(tmp_path, uninterrupted):
  run = tmp_path / 'run'
  shutil.copytree(uninterrupted, run)
  before = sorted(os.listdir(run))
  # 100 labels per client is refused only once the partition is built, after TF loads.
  late = run_train(*FLAGS, '--rounds=1', '--overwrite', '--partition=pathological',
                   '--labels_per_client=100', f'--output_dir={run}')
  assert late.returncode == 2 and len(late.stderr.strip().splitlines()) == 1, late.stderr
  assert sorted(os.listdir(run)) == before
  assert rows_without_timings(run) == rows_without_timings(uninterrupted)


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


def test_a_signal_in_a_nested_block_waits_for_the_outermost_and_is_seen_as_held():
  seen = []
  with pytest.raises(signals.Interrupted):
    with signals.deferred():
      with signals.deferred():
        assert not signals.held()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        seen.append(signals.held())
      seen.append(signals.held())  # The inner block ended: the signal still waits.
  assert seen == [True, True]
  assert not signals.held()
