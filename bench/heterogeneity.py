"""Ring quality under heterogeneous clients: partitions × schemes × seeds, side by side.

Runs `bin/train.py` (the README's defaults plus the row's and column's flags) for every
combination, seed by seed (so an interrupted bench still holds whole seeds; `--jobs=2` trains
two at a time), and prints for
each combination the mean over seeds, at the last round, of modes captured (with how many
runs ended at 8/8 and how many held 8/8 at every evaluation from round 150), high-quality
fraction and reverse KL. It writes a figure of the last round's samples of the first seed,
partitions down, schemes across.

Runs live in `--work_dir`: a finished run is read again, not rerun, and an interrupted one
resumes from its checkpoint, so the bench can be stopped and continued (in another session
too) and `--seeds` widened later.

  .venv/bin/python bench/heterogeneity.py                      # the README's table
  .venv/bin/python bench/heterogeneity.py --rounds=100 --seeds=0,1 --schemes=fedgan,multi_d
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'bin'))
import _cli  # noqa: E402  (sets TF_CPP_MIN_LOG_LEVEL and the import path)
import procs  # noqa: E402
from absl import flags  # noqa: E402

PARTITIONS = {
    'iid': [],
    'pathological-2': ['--partition=pathological', '--labels_per_client=2'],
    'dirichlet-0.1': ['--partition=dirichlet', '--dirichlet_alpha=0.1'],
}
SCHEMES = {
    'fedgan': ['--scheme=fedgan'],
    'fedgan-ema': ['--scheme=fedgan', '--generator_ema=0.99'],
    'fedgan-2-epochs': ['--scheme=fedgan', '--local_epochs=2'],
    'fedgan-prox-d': ['--scheme=fedgan', '--proximal_mu=1', '--proximal_networks=discriminator'],
    'scaffold': ['--scheme=scaffold'],
    'multi_d': ['--scheme=multi_d'],
    'multi_d-universal': ['--scheme=multi_d', '--discriminator_mixture=universal'],
}
# The IID goal holds 8/8 at every evaluation from this round on.
STEADY_FROM_ROUND = 150

flags.DEFINE_integer('rounds', 300, 'Rounds per run.')
flags.DEFINE_integer('eval_every', 50, 'Rounds between evaluations.')
flags.DEFINE_list('seeds', ['0', '1', '2', '3', '4'], 'Seeds per combination.')
flags.DEFINE_list('partitions', list(PARTITIONS), 'Rows: ' + ', '.join(PARTITIONS) + '.')
flags.DEFINE_list('schemes', ['fedgan', 'scaffold', 'multi_d-universal'],
                  'Columns: ' + ', '.join(SCHEMES) + '.')
flags.DEFINE_integer('jobs', 1, 'Runs trained at once (2 on 2 cores: about 1.5x the runs '
                     'per hour).')
flags.DEFINE_list('extra', [], 'More bin/train.py flags for every run (e.g. --local_steps=8).')
flags.DEFINE_string('work_dir', os.path.join(procs.REPO_ROOT, 'runs', 'heterogeneity'),
                    'Where the runs are kept (finished ones are reused, others resumed).')
flags.DEFINE_string('figure', None, 'PNG of the first seed\'s last samples (default: '
                    '<work_dir>/samples.png).')
FLAGS = flags.FLAGS


def run_dir(partition: str, scheme: str, seed: int) -> str:
  extra = '_'.join(flag.strip('-').replace('=', '-') for flag in FLAGS.extra)
  name = f'{partition}_{scheme}_r{FLAGS.rounds}_s{seed}' + (f'_{extra}' if extra else '')
  return os.path.join(FLAGS.work_dir, name)


def run(partition: str, scheme: str, seed: int) -> dict[str, float]:
  """Trains (or resumes, or reads) one combination; its figures at the last round."""
  rows = procs.train_or_read(
      run_dir(partition, scheme, seed),
      [f'--eval_every={FLAGS.eval_every}', f'--seed={seed}', *PARTITIONS[partition],
       *SCHEMES[scheme], *FLAGS.extra], FLAGS.rounds)
  evaluations = [row for row in rows if row['modes_captured']]
  last = evaluations[-1]
  steady = [float(row['modes_captured']) for row in evaluations
            if int(row['round']) >= STEADY_FROM_ROUND]
  return {'modes': float(last['modes_captured']), 'high': float(last['high_quality_fraction']),
          'kl': float(last['reverse_kl'] or 'nan'),
          'steady': float(bool(steady) and min(steady) == 8),
          'minutes': sum(float(row['round_seconds']) for row in rows) / 60}


def cell(results: list[dict[str, float]]) -> str:
  if not results:
    return '–'
  mean = {k: sum(r[k] for r in results) / len(results) for k in results[0]}
  full = sum(r['modes'] == 8 for r in results)
  steady = sum(int(r['steady']) for r in results)
  kl = 'n/a' if math.isnan(mean['kl']) else f"{mean['kl']:.2f}"
  return (f"{mean['modes']:.1f} ({full}/{len(results)} end, {steady} steady), "
          f"{100 * mean['high']:.0f} %, {kl}, {mean['minutes']:.1f} min")


def write_figure(path: str, seed: int) -> None:
  import matplotlib  # noqa: PLC0415  (only the figure needs it)
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # noqa: PLC0415
  from PIL import Image  # noqa: PLC0415

  rows, columns = len(FLAGS.partitions), len(FLAGS.schemes)
  figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
  for i, partition in enumerate(FLAGS.partitions):
    for j, scheme in enumerate(FLAGS.schemes):
      axis = axes[i][j]
      axis.axis('off')
      png = os.path.join(run_dir(partition, scheme, seed), 'samples',
                         f'round_{FLAGS.rounds:05d}.png')
      if os.path.exists(png):
        with Image.open(png) as image:
          axis.imshow(image.convert('RGB'))
      axis.set_title(f'{partition} · {scheme}', fontsize=9)
  figure.suptitle(f'ring, round {FLAGS.rounds}, seed {seed}')
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def main(argv):
  _cli.parse_flags(argv, __doc__)
  for name in FLAGS.schemes:
    if name not in SCHEMES:
      _cli.usage_error(argv[0], f"unknown scheme column '{name}'; choose from "
                       f"{', '.join(SCHEMES)}.")
  for name in FLAGS.partitions:
    if name not in PARTITIONS:
      _cli.usage_error(argv[0], f"unknown partition row '{name}'; choose from "
                       f"{', '.join(PARTITIONS)}.")
  seeds = [int(s) for s in FLAGS.seeds]
  cells = [(p, s) for p in FLAGS.partitions for s in FLAGS.schemes]
  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(FLAGS.jobs) as pool:  # Seed by seed, in order.
    futures = {(*cell, seed): pool.submit(run, *cell, seed) for seed in seeds for cell in cells}
    results = {cell: [futures[(*cell, seed)].result() for seed in seeds] for cell in cells}
  print(f'done after {(time.perf_counter() - start) / 60:.0f} min', flush=True)
  print(f'\nring, {FLAGS.rounds} rounds, seeds {seeds}, extra flags {FLAGS.extra or "none"}. '
        'Mean over seeds at the last round: modes of 8 (runs at 8/8 at the end; runs at 8/8 at '
        f'every evaluation from round {STEADY_FROM_ROUND}), high-quality %, reverse KL, '
        'training minutes per run')
  print('| partition | ' + ' | '.join(FLAGS.schemes) + ' |')
  print('|---|' + '---|' * len(FLAGS.schemes))
  for partition in FLAGS.partitions:
    print(f'| {partition} | '
          + ' | '.join(cell(results[partition, scheme]) for scheme in FLAGS.schemes) + ' |')
  figure = FLAGS.figure or os.path.join(FLAGS.work_dir, 'samples.png')
  write_figure(figure, seeds[0])
  print(f'samples of seed {seeds[0]}: {figure}')
  return 0


if __name__ == '__main__':
  sys.exit(_cli.run(main))
