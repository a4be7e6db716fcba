"""Ring quality under heterogeneous clients: partitions × schemes × seeds, side by side.

Runs `bin/train.py` (the README's defaults plus the row's flags) for every combination and
prints, for each, the mean over seeds at the last round of modes captured, high-quality
fraction and reverse KL, with the number of seeds whose last evaluation reached 8/8 modes.

  .venv/bin/python bench/heterogeneity.py                      # the README's table
  .venv/bin/python bench/heterogeneity.py --rounds=100 --seeds=0,1 --schemes=fedgan,multi_d
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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
    'multi_d': ['--scheme=multi_d'],
    'multi_d-universal': ['--scheme=multi_d', '--discriminator_mixture=universal'],
}

flags.DEFINE_integer('rounds', 300, 'Rounds per run.')
flags.DEFINE_integer('eval_every', 50, 'Rounds between evaluations.')
flags.DEFINE_list('seeds', ['0', '1', '2', '3', '4'], 'Seeds per combination.')
flags.DEFINE_list('partitions', list(PARTITIONS), 'Rows: ' + ', '.join(PARTITIONS) + '.')
flags.DEFINE_list('schemes', list(SCHEMES), 'Columns: ' + ', '.join(SCHEMES) + '.')
flags.DEFINE_list('extra', [], 'More bin/train.py flags for every run (e.g. --local_steps=8).')
FLAGS = flags.FLAGS


def run(partition: str, scheme: str, seed: int, output_dir: str) -> dict[str, float]:
  args = [sys.executable, procs.TRAIN, f'--rounds={FLAGS.rounds}',
          f'--eval_every={FLAGS.eval_every}', f'--seed={seed}', f'--output_dir={output_dir}',
          '--noprogress', *PARTITIONS[partition], *SCHEMES[scheme], *FLAGS.extra]
  start = time.perf_counter()
  result = subprocess.run(args, capture_output=True, text=True, check=False)
  if result.returncode:
    raise SystemExit(f'{" ".join(args)} failed:\n{result.stderr[-2000:]}')
  last = procs.read_rows(os.path.join(output_dir, 'metrics.csv'))[-1]
  return {'modes': float(last['modes_captured']), 'high': float(last['high_quality_fraction']),
          'kl': float(last['reverse_kl'] or 'nan'), 'seconds': time.perf_counter() - start}


def main(argv):
  _cli.parse_flags(argv, __doc__)
  seeds = [int(s) for s in FLAGS.seeds]
  print(f'ring, {FLAGS.rounds} rounds, seeds {seeds}; mean over seeds at the last round: '
        'modes of 8 (runs at 8/8), high-quality %, reverse KL, minutes per run')
  print('| partition | ' + ' | '.join(FLAGS.schemes) + ' |')
  print('|---|' + '---|' * len(FLAGS.schemes))
  with tempfile.TemporaryDirectory(prefix='heterogeneity_') as root:
    for partition in FLAGS.partitions:
      cells = []
      for scheme in FLAGS.schemes:
        results = [run(partition, scheme, seed, os.path.join(root, f'{partition}_{scheme}_{seed}'))
                   for seed in seeds]
        mean = {k: sum(r[k] for r in results) / len(results) for k in results[0]}
        full = sum(r['modes'] == 8 for r in results)
        cells.append(f"{mean['modes']:.1f} ({full}/{len(results)}), {100 * mean['high']:.0f} %, "
                     f"{mean['kl']:.2f}, {mean['seconds'] / 60:.1f} min")
      print(f'| {partition} | ' + ' | '.join(cells) + ' |', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
