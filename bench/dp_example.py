"""Example-level DP for silos on `ring`: quality against each silo's ε, over seeds.

The cross-silo setting of the README: 10 clients ("hospitals") of 2,000 examples each, all
sampled every round, every client's discriminator trained with DP-SGD (`--dp_unit=example`:
Poisson batches of expected size 128, each example's gradient clipped to 1, noise z·1), the
README's defaults otherwise (one local epoch a round), δ = 1e-5. For each noise multiplier
z (and a run without DP, the reference) it trains every seed and prints, as the mean over
seeds at the last round: the largest ε over clients (all clients take the same steps, so
all spend the same), modes of 8, high-quality fraction and reverse KL, with the training
minutes per run. It writes a PNG of modes and high quality against ε.

Runs live in `--work_dir`: a finished run is read again, not rerun, and an interrupted one
resumes from its checkpoint.

  .venv/bin/python bench/dp_example.py                        # the README's table
  .venv/bin/python bench/dp_example.py --noise=2,3 --seeds=0 --rounds=100
"""

from __future__ import annotations

import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'bin'))
import _cli  # noqa: E402  (sets TF_CPP_MIN_LOG_LEVEL and the import path)
import procs  # noqa: E402
from absl import flags  # noqa: E402

SILOS = ['--num_clients=10', '--examples_per_client=2000', '--batch_size=128']

flags.DEFINE_list('noise', ['1.5', '2', '3'], 'Noise multipliers z, one configuration each '
                  '(plus one without DP).')
flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds per configuration.')
flags.DEFINE_integer('rounds', 300, 'Rounds per run.')
flags.DEFINE_integer('local_steps', 0, 'Cap on the DP-SGD steps of each client per round (0: '
                     "none, one local epoch: 16 steps, as the README's defaults).")
flags.DEFINE_integer('eval_every', 50, 'Rounds between evaluations.')
flags.DEFINE_list('extra', [], 'More bin/train.py flags for every run (e.g. '
                  '--model_width=0.5). The reference without DP must train: at a quarter of '
                  'the width, or 4 steps a round, it did not (0-6 modes at round 300).')
flags.DEFINE_string('work_dir', os.path.join(procs.REPO_ROOT, 'runs', 'dp_example'),
                    'Where the runs are kept (finished ones are reused, others resumed).')
flags.DEFINE_string('figure', None, 'PNG of quality against epsilon (default: '
                    '<work_dir>/quality_vs_epsilon.png).')
FLAGS = flags.FLAGS


def run(noise: str | None, seed: int) -> dict[str, float]:
  """Trains (or resumes, or reads) one configuration's seed; its figures at the last round."""
  name = f'z{noise}' if noise else 'no_dp'
  dp = ['--dp_unit=example', f'--dp_noise_multiplier={noise}'] if noise else []
  extra = ''.join('_' + flag.strip('-').replace('=', '-') for flag in FLAGS.extra)
  rows = procs.train_or_read(
      os.path.join(FLAGS.work_dir,
                   f'{name}_steps{FLAGS.local_steps}_r{FLAGS.rounds}_s{seed}{extra}'),
      [*SILOS, *dp, f'--local_steps={FLAGS.local_steps}', f'--eval_every={FLAGS.eval_every}',
       f'--seed={seed}', *FLAGS.extra], FLAGS.rounds)
  return procs.last_figures(rows, private=bool(noise))


def write_figure(path: str, table: dict[str, dict[str, float]]) -> None:
  steps = f'{FLAGS.local_steps} DP-SGD steps' if FLAGS.local_steps else 'a local epoch'
  procs.write_quality_against_epsilon(
      path, [m for m in table.values() if math.isfinite(m['epsilon'])], table.get('no DP'),
      label='DP-SGD (mean over seeds)', xlabel='ε of each silo (δ = 1e-5)',
      title=f'ring, 10 silos × 2,000 examples, {FLAGS.rounds} rounds of {steps}')


def main(argv):
  _cli.parse_flags(argv, __doc__)
  seeds = [int(s) for s in FLAGS.seeds]
  configurations = [None, *FLAGS.noise]
  results = {noise: [] for noise in configurations}
  start = time.perf_counter()
  for seed in seeds:
    for noise in configurations:
      results[noise].append(run(noise, seed))
    print(f'seed {seed} done after {(time.perf_counter() - start) / 60:.0f} min', flush=True)
  table = {(f'z = {noise}' if noise else 'no DP'): procs.mean(results[noise])
           for noise in configurations}
  print(f'\nring, 10 silos x 2000 examples, {FLAGS.rounds} rounds, local steps '
        f'{FLAGS.local_steps or "one epoch"} (batch 128, clip 1), delta 1e-5, extra flags '
        f'{FLAGS.extra or "none"}, seeds {seeds}; mean over seeds at the last round')
  print('| configuration | ε per silo | modes of 8 | high quality | reverse KL | minutes |')
  print('|---|---:|---:|---:|---:|---:|')
  for name, m in table.items():
    epsilon = f"{m['epsilon']:.2f}" if math.isfinite(m['epsilon']) else '∞'
    kl = 'n/a' if math.isnan(m['kl']) else f"{m['kl']:.2f}"
    print(f"| {name} | {epsilon} | {m['modes']:.1f} | {100 * m['high']:.0f} % | {kl} | "
          f"{m['minutes']:.1f} |")
  figure = FLAGS.figure or os.path.join(FLAGS.work_dir, 'quality_vs_epsilon.png')
  write_figure(figure, table)
  print(f'quality against epsilon: {figure}')
  return 0


if __name__ == '__main__':
  sys.exit(_cli.run(main))
