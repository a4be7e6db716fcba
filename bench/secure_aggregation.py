"""Round time, bytes and ring quality of the secure aggregators against `mean`, side by side.

Trains FedGAN on `ring` with the README's defaults once per aggregator and seed (only
`--aggregator` differs), and prints one table: the median seconds of a round (the first round,
which builds the computations, excluded), payload bytes down and up per round, upload as a
multiple of `mean`'s, and modes captured and high-quality fraction at the last round (mean
over seeds, with the spread). Runs live in `--work_dir`: a finished run is read again, an
interrupted one resumes, so the bench can be continued and `--seeds` widened later.

  .venv/bin/python bench/secure_aggregation.py                  # the README's table
  .venv/bin/python bench/secure_aggregation.py --rounds=5 --seeds=0 --aggregators=mean,he
"""

from __future__ import annotations

import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'bin'))
import _cli  # noqa: E402  (sets TF_CPP_MIN_LOG_LEVEL and the import path)
import procs  # noqa: E402
from absl import flags  # noqa: E402

from tff_gan import choices  # noqa: E402

flags.DEFINE_integer('rounds', 300, 'Rounds per run.')
flags.DEFINE_integer('eval_every', 50, 'Rounds between evaluations.')
flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds per aggregator.')
flags.DEFINE_list('aggregators', ['mean', 'secure', *choices.SECURE_AGGREGATORS],
                  'Aggregators to compare (the first is the reference for bytes up).')
flags.DEFINE_string('work_dir', os.path.join(procs.REPO_ROOT, 'runs', 'secure_aggregation'),
                    'Where the runs are kept (finished ones are reused, others resumed).')
FLAGS = flags.FLAGS


def run(aggregator: str, seed: int) -> dict[str, float]:
  rows = procs.train_or_read(
      os.path.join(FLAGS.work_dir, f'{aggregator}_r{FLAGS.rounds}_s{seed}'),
      [f'--aggregator={aggregator}', f'--seed={seed}', f'--eval_every={FLAGS.eval_every}'],
      FLAGS.rounds)
  last = [row for row in rows if row['modes_captured']][-1]
  return {
      'seconds': statistics.median(float(row['round_seconds']) for row in rows[1:] or rows),
      'down': statistics.mean(int(row['bytes_down']) for row in rows),
      'up': statistics.mean(int(row['bytes_up']) for row in rows),
      'modes': float(last['modes_captured']),
      'high': float(last['high_quality_fraction']),
  }


def spread(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
  mean = statistics.mean(values) * scale
  if len(values) == 1:
    return f'{mean:.{digits}f}'
  return f'{mean:.{digits}f} ({min(values) * scale:.{digits}f}–{max(values) * scale:.{digits}f})'


def main(argv):
  _cli.parse_flags(argv, __doc__)
  allowed = choices.AGGREGATORS + choices.SECURE_AGGREGATORS
  for name in FLAGS.aggregators:
    if name not in allowed:
      _cli.usage_error(argv[0], f"unknown aggregator '{name}'; choose from {', '.join(allowed)}.")
  seeds = [int(s) for s in FLAGS.seeds]
  results = {name: [] for name in FLAGS.aggregators}
  for seed in seeds:  # Seed by seed, so an interrupted bench holds whole seeds.
    for name in FLAGS.aggregators:
      results[name].append(run(name, seed))
      print(f'{name}, seed {seed}: done', flush=True)
  reference_up = statistics.mean(r['up'] for r in results[FLAGS.aggregators[0]])
  print(f'\nring, fedgan, README defaults, {FLAGS.rounds} rounds, seeds {seeds}: median round '
        'seconds (first round excluded), payload MB per round, modes and high-quality % at '
        'the last round (mean over seeds, range)\n')
  print(f'| aggregator | round s | MB down | MB up | up vs {FLAGS.aggregators[0]} '
        '| modes (of 8) | high quality % |')
  print('|---|---:|---:|---:|---:|---:|---:|')
  for name, runs in results.items():
    up = statistics.mean(r['up'] for r in runs)
    print(f"| {name} | {spread([r['seconds'] for r in runs], digits=2)} "
          f"| {statistics.mean(r['down'] for r in runs) / 1e6:.2f} | {up / 1e6:.2f} "
          f"| {up / reference_up:.2f} | {spread([r['modes'] for r in runs])} "
          f"| {spread([r['high'] for r in runs], 100, 0)} |")
  return 0


if __name__ == '__main__':
  sys.exit(_cli.run(main))
