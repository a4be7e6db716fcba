"""A benchmark's runs stop together (`bench/procs.train_cells`): Ctrl-C, SIGINT to the
benchmark alone, or one run that fails starts no further run and interrupts the running
ones. Before, the benchmark waited for the running runs and then started the next: a second
process could come to train a directory the first was still training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import REPO_ROOT

# A benchmark of three seeds, two at a time, whose `bin/train.py` is FAKE_TRAIN.
BENCH = """
import os, sys
sys.path.insert(0, os.path.join(sys.argv[1], 'bench'))
import procs
procs.TRAIN = sys.argv[2]
def run(configuration, target, seed):
  return procs.train_or_read(os.path.join(sys.argv[3], f's{seed}'), [f'--seed={seed}'], 1)
procs.train_cells(run, ['c'], ['1'], [], [0, 1, 2], jobs=2, reference=False)
"""

# Marks its output directory `started`, and `interrupted` on SIGINT (then exits 130); with
# FAIL_SEED_1 set, seed 1 fails once seed 0 has started; otherwise it trains for a minute.
FAKE_TRAIN = """
import os, signal, sys, time
out = next(a.split('=', 1)[1] for a in sys.argv if a.startswith('--output_dir='))
def stop(*_):
  open(os.path.join(out, 'interrupted'), 'w').close()
  sys.exit(130)
signal.signal(signal.SIGINT, stop)
os.makedirs(out)
open(os.path.join(out, 'started'), 'w').close()
if '--seed=1' in sys.argv and os.environ.get('FAIL_SEED_1'):
  while not os.path.exists(os.path.join(os.path.dirname(out), 's0', 'started')):
    time.sleep(0.05)
  sys.exit(2)
time.sleep(60)
"""


def start_bench(tmp_path, **env):
  fake = tmp_path / 'fake_train.py'
  fake.write_text(FAKE_TRAIN)
  work = tmp_path / 'runs'
  work.mkdir()
  bench = subprocess.Popen([sys.executable, '-c', BENCH, REPO_ROOT, str(fake), str(work)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, **env}, start_new_session=True)
  return bench, work


def kill_left(bench):
  """Kills the benchmark and its runs if a failed assertion left them running."""
  if bench.poll() is None:
    os.killpg(bench.pid, signal.SIGKILL)
    bench.wait()


def wait_for(paths, seconds=60):
  deadline = time.monotonic() + seconds
  while not all(p.exists() for p in paths):
    assert time.monotonic() < deadline, [str(p) for p in paths if not p.exists()]
    time.sleep(0.05)


def test_sigint_to_the_benchmark_alone_stops_its_runs_and_starts_no_other(tmp_path):
  bench, work = start_bench(tmp_path)
  try:
    wait_for([work / 's0' / 'started', work / 's1' / 'started'])
    bench.send_signal(signal.SIGINT)  # Its session's other processes get nothing.
    _, stderr = bench.communicate(timeout=30)  # Not the minute the runs would take.
  finally:
    kill_left(bench)
  assert bench.returncode != 0
  assert 'KeyboardInterrupt' in stderr
  assert (work / 's0' / 'interrupted').exists() and (work / 's1' / 'interrupted').exists()
  assert not (work / 's2').exists()


def test_a_failed_run_stops_the_others_and_starts_no_other(tmp_path):
  bench, work = start_bench(tmp_path, FAIL_SEED_1='1')
  try:
    _, stderr = bench.communicate(timeout=30)
  finally:
    kill_left(bench)
  assert bench.returncode == 1
  assert f'--output_dir={work / "s1"}' in stderr and 'failed' in stderr
  assert (work / 's0' / 'interrupted').exists()
  assert not (work / 's2').exists()
