"""Running `bin/train.py` from a benchmark and watching it: its rows as they land, its memory.

Shared by the benchmarks that run whole trainings (`scaling.py`, `wall_clock.py`,
`heterogeneity.py`, `dp_example.py`, `dp_quality.py`): training them, and reading their figures.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

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
    with _TRAINING_LOCK:
      if _STOPPED.is_set():  # `interrupt_training` ran: this run does not start.
        raise SystemExit(f'{output_dir}: not started, the benchmark is stopping')
      process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
      _TRAINING.add(process)
    try:
      _, stderr = process.communicate()
    except BaseException:  # Ctrl-C while this thread waits: the run stops with it.
      process.send_signal(signal.SIGINT)
      process.wait()
      raise
    finally:
      with _TRAINING_LOCK:
        _TRAINING.discard(process)
    if process.returncode:
      raise SystemExit(f'{" ".join(args)} failed:\n{stderr[-2000:]}')
    rows = read_rows(os.path.join(output_dir, 'metrics.csv'))
  return rows


# The `bin/train.py` processes `train_or_read` is waiting for, on any thread.
_TRAINING: set[subprocess.Popen] = set()
_TRAINING_LOCK = threading.Lock()
_STOPPED = threading.Event()


def interrupt_training() -> None:
  """Sends SIGINT to every `bin/train.py` that `train_or_read` is waiting for, which stops
  it once its round is recorded and checkpointed (where the run resumes), and starts no
  further one in this process."""
  with _TRAINING_LOCK:
    _STOPPED.set()
    for process in _TRAINING:
      process.send_signal(signal.SIGINT)


@dataclasses.dataclass(frozen=True)
class Figure:
  """One quality figure of a DP benchmark: a `metrics.csv` column, its table header and text,
  and the top of its axis in the figure (None: fit to the points)."""

  column: str
  header: str
  text: Callable[[float], str]
  top: float | None = None


def _number(digits: int) -> Callable[[float], str]:
  return lambda value: 'n/a' if math.isnan(value) else f'{value:.{digits}f}'


# `ring`: modes of 8, high-quality fraction, reverse KL. Images: the task's Fréchet distance
# (lower is better) and classifier score (higher is better, at most the number of classes).
RING_FIGURES = (Figure('modes_captured', 'modes of 8', _number(1), 8.4),
                Figure('high_quality_fraction', 'high quality', lambda v: f'{100 * v:.0f} %',
                       1.05),
                Figure('reverse_kl', 'reverse KL', _number(2)))
IMAGE_FIGURES = (Figure('frechet_distance', 'Fréchet distance', _number(1)),
                 Figure('classifier_score', 'classifier score', _number(2)))


RECORD_COLUMNS = ('run', 'epsilon', *(f.column for f in RING_FIGURES + IMAGE_FIGURES),
                  'minutes', 'source')
# The record's curves CSV (`curves_path`): every evaluated row of each recorded run.
CURVE_COLUMNS = ('run', 'round', 'epsilon', *(f.column for f in RING_FIGURES + IMAGE_FIGURES),
                 'source')


def curves_path(record: str) -> str:
  """The curves CSV of the record `record`: `<record>_curves.csv` beside it."""
  base, extension = os.path.splitext(record)
  return f'{base}_curves{extension}'


def append_rows(path: str, columns: tuple[str, ...], rows: list[dict[str, str]]) -> None:
  """Appends `rows` to the CSV `path`, under a header of `columns` if it is new or empty."""
  with open(path, 'a', newline='') as f:
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator='\n')
    if f.tell() == 0:
      writer.writeheader()
    writer.writerows(rows)
    f.write(text.getvalue())


def last_figures(rows: list[dict[str, str]], private: bool,
                 figures: tuple[Figure, ...] = RING_FIGURES) -> dict[str, float]:
  """A run's figures from its `metrics.csv` rows: ε at the end (infinity without DP), each of
  `figures` at its last evaluation (keyed by column), and the minutes it trained."""
  last = [row for row in rows if row[figures[0].column]][-1]
  return {'epsilon': float(rows[-1]['epsilon']) if private else math.inf,
          **{f.column: float(last[f.column] or 'nan') for f in figures},
          'minutes': sum(float(row['round_seconds']) for row in rows) / 60}


_RECORD_LOCK = threading.Lock()


def recorded_figures(record: str, output_dir: str, flags: list[str], rounds: int, private: bool,
                     figures: tuple[Figure, ...] = RING_FIGURES) -> dict[str, float]:
  """`last_figures` of the run in `output_dir`, kept in the CSV `record` (committed under
  `bench/results/`; `runs/` is not). A run the record holds (by its directory's name) is not
  trained again; otherwise it is trained or resumed (`train_or_read`) and its figures are
  appended to the record with the day they were taken (`source`), and its evaluated rows to the
  record's curves CSV (`curves_path`, read by `curves.py`). The record has a column for every
  figure of `RING_FIGURES` and `IMAGE_FIGURES`, empty where a run has none."""
  name = os.path.basename(os.path.normpath(output_dir))
  keys = ('epsilon', *(f.column for f in figures), 'minutes')
  for row in read_rows(record):
    if row['run'] == name:
      return {key: float(row[key] or 'nan') for key in keys}
  rows = train_or_read(output_dir, flags, rounds)
  result = last_figures(rows, private, figures)
  source = time.strftime('trained %Y-%m-%d')
  columns = [f.column for f in figures]
  os.makedirs(os.path.dirname(record), exist_ok=True)
  with _RECORD_LOCK:  # Runs finish on several threads.
    # The curve first: a run the record holds has its curve too.
    append_rows(curves_path(record), CURVE_COLUMNS,
                [{'run': name, 'round': row['round'], 'epsilon': row.get('epsilon', ''),
                  **{c: row[c] for c in columns}, 'source': source}
                 for row in rows if row[columns[0]]])  # The evaluated rounds.
    append_rows(record, RECORD_COLUMNS, [{'run': name, 'source': source,
                                          **{k: f'{v:.6g}' for k, v in result.items()}}])
  return result


def mean(results: list[dict[str, float]]) -> dict[str, float]:
  """Each figure's mean over runs."""
  return {k: sum(r[k] for r in results) / len(results) for k in results[0]}


def flags_suffix(extra: list[str]) -> str:
  """A run name's suffix for extra `bin/train.py` flags: `_name-value` each."""
  return ''.join('_' + flag.strip('-').replace('=', '-') for flag in extra)


def define_dp_bench_flags(configurations, *, epsilons: list[str], curve_epsilons: list[str],
                          work_dir: str, record: str, default_configurations=None) -> None:
  """The flags both DP benchmarks take: `--configurations` (of `configurations`; by default
  `default_configurations`, else all), `--epsilons`,
  `--curve_epsilons`, `--seeds`, `--rounds`, `--eval_every`, `--jobs`, `--extra`,
  `--work_dir`, `--figure`, `--record` (`recorded_figures`) and `--reference`, with their
  validators."""
  from absl import flags  # noqa: PLC0415  (only the benchmarks with flags need it)

  flags.DEFINE_list('configurations', list(default_configurations or configurations),
                    'Schemes and their settings: ' + ', '.join(configurations) + '. The first '
                    'is drawn against epsilon.')
  flags.DEFINE_list('epsilons', epsilons, 'Target epsilons of the table (each sets z).')
  flags.DEFINE_list('curve_epsilons', curve_epsilons,
                    'Target epsilons of the figure, for the first configuration.')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds per configuration and epsilon.')
  flags.DEFINE_integer('rounds', 0, "Rounds per run (0: each configuration's own).")
  flags.DEFINE_integer('eval_every', 50, 'Rounds between evaluations.')
  flags.DEFINE_integer('jobs', 1, 'Runs trained at once.')
  flags.DEFINE_list('extra', [], 'More bin/train.py flags for every run.')
  flags.DEFINE_string('work_dir', work_dir,
                      'Where the runs are kept (finished ones are reused, others resumed).')
  flags.DEFINE_string('figure', None, 'PNG of quality against epsilon (default: '
                      '<work_dir>/quality_vs_epsilon.png).')
  flags.DEFINE_string('record', record, "CSV of every finished run's figures, read before "
                      'training: a run it holds (by name) is not trained again.')
  flags.DEFINE_boolean('reference', True, 'Also train every configuration without DP (the '
                       "table's reference, the figure's dashed line).")

  def positive_numbers(values: list[str]) -> bool:
    try:
      return all(math.isfinite(float(v)) and float(v) > 0 for v in values)
    except ValueError:
      return False

  flags.register_validator('configurations', lambda names: set(names) <= set(configurations),
                           'unknown configuration; choose from ' + ', '.join(configurations))
  for name in ('epsilons', 'curve_epsilons'):
    flags.register_validator(name, positive_numbers, f'--{name} takes positive numbers')


def train_cells(run, configurations: list[str], epsilons: list[str], curve_epsilons: list[str],
                seeds: list[int], jobs: int,
                reference: bool = True) -> dict[tuple[str, float], list[dict[str, float]]]:
  """Every seed's figures (`run(configuration, target ε, seed)`, ε infinite without DP) for
  each configuration at each of `epsilons` and, if `reference`, without DP, and for the first
  configuration at each of `curve_epsilons` too; `jobs` runs at a time. Ctrl-C, SIGINT to
  this process alone, or a run that fails starts no further run and interrupts the running
  ones (`interrupt_training`); each resumes from its checkpoint when the benchmark runs again.

  The runs share every core, each worker sized for all of them: pinning each of 2 runs to a
  core of its own (`taskset`) was slower, 6.5 s a round of `dp_quality.py`'s
  `dp_fedavg_gan_4steps` against 3.2-4.5 s shared: a pinned worker kept its core only 50-80 %
  busy (top), running one client at a time."""
  import concurrent.futures  # noqa: PLC0415

  targets = [math.inf] * reference + [float(e) for e in epsilons]
  cells = [(c, t) for c in configurations for t in targets]
  cells += [(configurations[0], float(t)) for t in curve_epsilons
            if (configurations[0], float(t)) not in cells]
  start = time.perf_counter()
  waiting = [(c, t, s) for s in seeds for c, t in cells]
  figures = {}
  with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
    running = {}
    try:
      while waiting or running:  # At most `jobs` submitted: none queues behind a failure.
        while waiting and len(running) < jobs:
          key = waiting.pop(0)
          running[pool.submit(run, *key)] = key
        done, _ = concurrent.futures.wait(running,
                                          return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
          figures[running.pop(future)] = future.result()  # A failed run raises here.
    except BaseException:  # Ctrl-C (or SIGINT to this process alone) or a failed run: the
      interrupt_training()  # running ones stop too, each resumable from its checkpoint.
      raise
  print(f'done after {(time.perf_counter() - start) / 60:.0f} min\n')
  return {cell: [figures[(*cell, s)] for s in seeds] for cell in cells}


def print_dp_table(results, rounds, z_text, clip=None, figures=RING_FIGURES) -> None:
  """The Markdown table of `train_cells`' results, means over seeds: configuration, rounds
  (`rounds(configuration)`), target ε, z (`z_text(configuration, target)`), the clip if
  `clip(configuration)` is given, ε spent, each of `figures`, minutes."""
  clip_header = ' clip |' if clip else ''
  print(f'| configuration | rounds | target ε | z |{clip_header} ε spent | '
        + ''.join(f'{f.header} | ' for f in figures) + 'minutes a run |')
  print('|---|---:|---:|---:|' + ('---:|' if clip else '') + '---:|' * (len(figures) + 2))
  for (configuration, target), runs in results.items():
    m = mean(runs)
    private = math.isfinite(target)
    cells = [configuration, str(rounds(configuration)), f'{target:g}' if private else 'no DP',
             z_text(configuration, target) if private else '—']
    if clip:
      cells.append(f'{clip(configuration):g}' if private else '—')
    cells += [f"{m['epsilon']:.2f}" if private else '∞',
              *(f.text(m[f.column]) for f in figures), f"{m['minutes']:.1f}"]
    print('| ' + ' | '.join(cells) + ' |')


def run_dp_bench(run, *, setting: str, rounds, z_text, clip=None, label: str, xlabel: str,
                 title, figures: tuple[Figure, ...] = RING_FIGURES) -> None:
  """A DP benchmark's body after its flags (`define_dp_bench_flags`) are parsed: trains every
  cell (`train_cells` with `run`), prints `setting` and the table (`print_dp_table`), and
  draws the first configuration's first two `figures` against ε, `label` and
  `title(configuration)` naming it."""
  from absl import flags  # noqa: PLC0415

  options = flags.FLAGS
  first = options.configurations[0]
  results = train_cells(run, options.configurations, options.epsilons, options.curve_epsilons,
                        [int(s) for s in options.seeds], options.jobs, options.reference)
  print(f'{setting}; seeds {", ".join(options.seeds)}, mean at the last round')
  print_dp_table(results, rounds, z_text, clip, figures)
  figure = options.figure or os.path.join(options.work_dir, 'quality_vs_epsilon.png')
  write_quality_against_epsilon(
      figure, [mean(results[(first, float(e))]) for e in options.curve_epsilons],
      mean(results[(first, math.inf)]) if options.reference else None,
      label=f'{first} {label}, ' + (f'seed {options.seeds[0]}' if len(options.seeds) == 1
                                     else f'mean over seeds {", ".join(options.seeds)}'),
      xlabel=xlabel,
      title=title(first), figures=figures[:2])
  print(f'quality against epsilon: {figure}')


def write_quality_against_epsilon(path: str, points: list[dict[str, float]],
                                  reference: dict[str, float] | None, *, label: str,
                                  xlabel: str, title: str,
                                  figures: tuple[Figure, ...] = RING_FIGURES[:2]) -> None:
  """A PNG of each of `figures` against ε, side by side: `points` (figures of `last_figures`
  or their `mean`) as a curve, `reference` (no DP) as a dashed line."""
  import matplotlib  # noqa: PLC0415  (only the figures need it)
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # noqa: PLC0415

  points = sorted(points, key=lambda m: m['epsilon'])
  figure, axes = plt.subplots(1, len(figures), figsize=(5 * len(figures), 3.6))
  for axis, f in zip(axes, figures, strict=True):
    axis.plot([m['epsilon'] for m in points], [m[f.column] for m in points], 'o-', label=label)
    if reference is not None:
      axis.axhline(reference[f.column], color='gray', linestyle='--', label='no DP')
    axis.set(xlabel=xlabel, ylabel=f.header)
    if f.top is not None:
      axis.set_ylim(0, f.top)
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
