"""Running `bin/train.py` from a benchmark and watching it: its rows as they land, its memory.

Shared by the benchmarks that run whole trainings (`scaling.py`, `wall_clock.py`,
`heterogeneity.py`, `dp_example.py`).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO_ROOT, 'bin', 'train.py')


def peak_rss_mib(pid: int) -> float | None:
  """The peak resident memory (VmHWM) of a live process, in MiB; None once it is gone."""
  try:
    with open(f'/proc/{pid}/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return None


def children(pid: int) -> list[int]:
  try:
    with open(f'/proc/{pid}/task/{pid}/children') as f:
      return [int(child) for child in f.read().split()]
  except OSError:
    return []


def read_rows(path: str) -> list[dict[str, str]]:
  try:
    with open(path, newline='') as f:
      return list(csv.DictReader(f))
  except FileNotFoundError:
    return []


def train_or_read(output_dir: str, flags: list[str], rounds: int) -> list[dict[str, str]]:
  """The `metrics.csv` rows of a `bin/train.py` run of `rounds` rounds in `output_dir`:
  read when the run there is finished, else trained (resuming from its checkpoint)."""
  rows = read_rows(os.path.join(output_dir, 'metrics.csv'))
  if not rows or int(rows[-1]['round']) < rounds:
    args = [sys.executable, TRAIN, f'--rounds={rounds}', f'--output_dir={output_dir}',
            '--noprogress', *flags]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode:
      raise SystemExit(f'{" ".join(args)} failed:\n{result.stderr[-2000:]}')
    rows = read_rows(os.path.join(output_dir, 'metrics.csv'))
  return rows


class TrainRun:
  """`bin/train.py` with `flags` in a subprocess, polled every `poll_seconds`.

  Attributes:
    rows: `metrics.csv` rows seen so far.
    row_times: For each row, seconds from the command's start until it was seen.
    trainer_peak_mib / worker_peak_mib: Peak resident memory of the training process and of
      its TFF worker, as last seen alive.
  """

  def __init__(self, output_dir: str, flags: list[str], poll_seconds: float = 0.1):
    self.output_dir = output_dir
    self._metrics = os.path.join(output_dir, 'metrics.csv')
    self._poll_seconds = poll_seconds
    self.rows: list[dict[str, str]] = []
    self.row_times: list[float] = []
    self.trainer_peak_mib = self.worker_peak_mib = 0.0
    self._start = time.perf_counter()
    self._process = subprocess.Popen(
        [sys.executable, TRAIN, f'--output_dir={output_dir}', '--overwrite', '--noprogress',
         *flags], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

  def poll(self) -> bool:
    """Takes one look; returns whether the run is still going."""
    alive = self._process.poll() is None
    if alive:
      self.trainer_peak_mib = max(self.trainer_peak_mib, peak_rss_mib(self._process.pid) or 0)
      for child in children(self._process.pid):
        self.worker_peak_mib = max(self.worker_peak_mib, peak_rss_mib(child) or 0)
    rows = read_rows(self._metrics)
    now = time.perf_counter() - self._start
    for row in rows[len(self.rows):]:
      self.rows.append(row)
      self.row_times.append(now)
    return alive

  def wait(self, until=None) -> None:
    """Polls until the run ends, or until `until(self)` holds (then stops the run)."""
    while self.poll():
      if until is not None and until(self):
        self._process.terminate()
        self._process.wait()
        return
      time.sleep(self._poll_seconds)
    if self._process.returncode:
      raise RuntimeError(f'bin/train.py exited with {self._process.returncode}: '
                         f'{self._process.stderr.read().strip()[-2000:]}')
