"""Running `bin/train.py` from a benchmark and watching it: its rows as they land, its memory.

Shared by the benchmarks that run whole trainings (`scaling.py`, `wall_clock.py`,
`heterogeneity.py`, `dp_example.py`, `dp_quality.py`): training them, and reading their figures.
"""

from __future__ import annotations

import csv
import math
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


def last_figures(rows: list[dict[str, str]], private: bool) -> dict[str, float]:
  """A `ring` run's figures from its `metrics.csv` rows: ε at the end (infinity without DP),
  and modes, high-quality fraction and reverse KL at its last evaluation, with its minutes."""
  last = [row for row in rows if row['modes_captured']][-1]
  return {'epsilon': float(rows[-1]['epsilon']) if private else math.inf,
          'modes': float(last['modes_captured']), 'high': float(last['high_quality_fraction']),
          'kl': float(last['reverse_kl'] or 'nan'),
          'minutes': sum(float(row['round_seconds']) for row in rows) / 60}


def mean(results: list[dict[str, float]]) -> dict[str, float]:
  """Each figure's mean over runs."""
  return {k: sum(r[k] for r in results) / len(results) for k in results[0]}


def write_quality_against_epsilon(path: str, points: list[dict[str, float]],
                                  reference: dict[str, float] | None, *, label: str,
                                  xlabel: str, title: str) -> None:
  """A PNG of modes and high-quality fraction against ε: `points` (figures of `last_figures`
  or their `mean`) as a curve, `reference` (no DP) as a dashed line."""
  import matplotlib  # noqa: PLC0415  (only the figures need it)
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # noqa: PLC0415

  points = sorted(points, key=lambda m: m['epsilon'])
  figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for axis, key, name, top in ((axes[0], 'modes', 'modes of 8', 8.4),
                               (axes[1], 'high', 'high-quality fraction', 1.05)):
    axis.plot([m['epsilon'] for m in points], [m[key] for m in points], 'o-', label=label)
    if reference is not None:
      axis.axhline(reference[key], color='gray', linestyle='--', label='no DP')
    axis.set(xlabel=xlabel, ylabel=name, ylim=(0, top))
    axis.legend(fontsize=8)
  figure.suptitle(title)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


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
