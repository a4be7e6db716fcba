"""Bytes per round and modes captured for each aggregator, on `ring` with the README defaults.

Trains FedGAN once per aggregator (same seed, clients and schedule; only `--aggregator`
differs), reads each run's `metrics.csv`, and prints a Markdown table: payload bytes per round
down and up (from the types the round sends: see `tff_gan/algorithms/communication.py`), upload as a
fraction of `mean`'s, and the modes captured and high-quality fraction at the last round.

Usage: python bench/aggregators.py [--rounds=300] [--aggregators=mean,compressed]
           [--output_root=runs/bench_aggregators]
"""

from __future__ import annotations

import csv
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'bin'))
import _cli  # noqa: E402  (sets TF_CPP_MIN_LOG_LEVEL and the import path)
from absl import flags  # noqa: E402

flags.DEFINE_integer('rounds', 300, 'Rounds per run.')
flags.DEFINE_list('aggregators', ['mean', 'unweighted_mean', 'robust', 'secure', 'compressed',
                                  'compressed:4', 'compressed:4:hadamard'],
                  'Aggregators to compare; compressed takes :BITS and :hadamard suffixes.')
flags.DEFINE_string('output_root', 'runs/bench_aggregators', 'Where the runs are written.')
FLAGS = flags.FLAGS


def parse(spec: str) -> dict:
  name, *options = spec.split(':')
  settings = {'aggregator': name}
  for option in options:
    if option == 'hadamard':
      settings['hadamard'] = True
    else:
      settings['bits'] = int(option)
  return settings


def main(argv):
  _cli.parse_flags(argv, __doc__)
  _cli.quiet_tensorflow()
  import tasks  # noqa: PLC0415
  from tff_gan.run import config as config_lib  # noqa: PLC0415
  from tff_gan.run import training  # noqa: PLC0415

  results = []
  for spec in FLAGS.aggregators:
    output_dir = os.path.join(FLAGS.output_root, spec.replace(':', '_'))
    config = config_lib.TrainConfig(rounds=FLAGS.rounds, output_dir=output_dir,
                                    **parse(spec)).validate()
    os.makedirs(output_dir, exist_ok=True)
    start = time.perf_counter()
    training.train(config, tasks.get_task(config.task, seed=config.seed), show_progress=False)
    seconds = time.perf_counter() - start
    with open(os.path.join(output_dir, 'metrics.csv'), newline='') as f:
      rows = list(csv.DictReader(f))
    results.append((spec, rows, seconds))
    print(f'{spec}: done in {seconds:.0f} s', flush=True)

  mean_up = next((per_round(rows, 'bytes_up') for spec, rows, _ in results if spec == 'mean'),
                 None)
  print(f'\nring, FedGAN, README defaults, {FLAGS.rounds} rounds, seed 0\n')
  print('| aggregator | bytes down / round | bytes up / round | up vs mean | modes (of 8) '
        '| high quality | wall time |')
  print('|---|---:|---:|---:|---:|---:|---:|')
  for spec, rows, seconds in results:
    up = per_round(rows, 'bytes_up')
    ratio = f'{up / mean_up:.3f}' if mean_up else 'n/a'
    last = rows[-1]
    print(f'| {spec} | {per_round(rows, "bytes_down"):,.0f} | {up:,.0f} | {ratio} '
          f'| {last["modes_captured"]} | {float(last["high_quality_fraction"]):.1%} '
          f'| {seconds / 60:.1f} min |')
  return 0


def per_round(rows, column: str) -> float:
  return sum(int(row[column]) for row in rows) / len(rows)


if __name__ == '__main__':
  sys.exit(_cli.run(main))
