"""Example-level DP for silos on `ring`: quality at a target ε per silo, over seeds.

The cross-silo setting of the README: 10 clients ("hospitals") of 2,000 examples each, all
sampled every round, every client's discriminator trained with DP-SGD (`--dp_unit=example`:
Poisson batches of expected size 500, each example's gradient clipped to 1, noise z·1), one
DP-SGD step per client a round, δ = 1e-5. Each silo's ε then depends on its rate 500/2000
and its steps (one a round) alone. For every configuration (`CONFIGURATIONS`) and target ε
it computes the z that spends exactly that ε over the run (as `bin/privacy.py
--dp_unit=example --target_epsilon`), trains every seed, and prints as the mean over seeds
at the last round: ε spent (the largest over silos, from `metrics.csv`), modes of 8,
high-quality fraction and reverse KL, with the minutes of training per run. A run without DP
is each configuration's reference. It writes a PNG of modes and high quality against ε for
the first configuration at `--curve_epsilons`.

Runs live in `--work_dir`: a finished run is read again, not rerun, and an interrupted one
resumes from its checkpoint. `--jobs=2` trains two runs at a time (one per core).

  .venv/bin/python bench/dp_example.py                        # the README's table and figure
  .venv/bin/python bench/dp_example.py --configurations=fedgan --epsilons=6 --seeds=0
"""

from __future__ import annotations

import functools
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'bin'))
import _cli  # noqa: E402  (sets TF_CPP_MIN_LOG_LEVEL and the import path)
import procs  # noqa: E402
from absl import flags  # noqa: E402

DELTA = 1e-5
EXAMPLES, BATCH = 2000, 500
# A batch of 500 of 2,000 (q = 1/4): at a fixed number of steps, the noise on the mean
# gradient, z/B, hardly falls with larger batches, and smaller ones pay more (ε = 6 over 1,000
# steps: z/B 0.0130 at 500, 0.0129 at 2,000, 0.0143 at 128, 0.0172 at 64), so 500 is where the
# batch stops costing. The steps are the knob: one DP-SGD step a round, so a silo takes
# `rounds` steps.
SILOS = ['--num_clients=10', f'--examples_per_client={EXAMPLES}', f'--batch_size={BATCH}',
         '--local_steps=1']
# Each configuration: its flags and rounds. dp_fedavg_gan's server takes 4 generator steps a
# round on the mean of the 10 silos' DP discriminators (post-processing: no privacy spent);
# fedgan's clients take one generator step each against their own DP discriminator.
CONFIGURATIONS = {
    'dp_fedavg_gan': (['--scheme=dp_fedavg_gan', '--server_gen_steps=4'], 1000),
    'fedgan': (['--scheme=fedgan'], 1000),
}

procs.define_dp_bench_flags(CONFIGURATIONS, epsilons=['6'], curve_epsilons=['2', '4', '6', '10'],
                            work_dir=os.path.join(procs.REPO_ROOT, 'runs', 'dp_example'))
FLAGS = flags.FLAGS


def rounds(configuration: str) -> int:
  return FLAGS.rounds or CONFIGURATIONS[configuration][1]


@functools.cache  # Each cell's z: read by every seed's run and by the table.
def noise_multiplier(configuration: str, target_epsilon: float) -> float:
  from tff_gan.privacy import accounting  # noqa: PLC0415  (after _cli set the path)
  return accounting.noise_multiplier_for_epsilon(
      target_epsilon, accounting.example_sampling(EXAMPLES, BATCH), rounds(configuration), DELTA)


def run(configuration: str, target: float, seed: int) -> dict[str, float]:
  """Trains (or resumes, or reads) one run; its figures at the last round. `target` is the
  ε the noise is calibrated to, or infinity for the run without DP."""
  private = math.isfinite(target)
  dp = ['--dp_unit=example', f'--dp_noise_multiplier={noise_multiplier(configuration, target):.6f}',
        f'--dp_delta={DELTA}'] if private else []
  name = ((f'{configuration}_eps{target:g}' if private else f'{configuration}_no_dp')
          + f'_r{rounds(configuration)}_s{seed}' + procs.flags_suffix(FLAGS.extra))
  rows = procs.train_or_read(
      os.path.join(FLAGS.work_dir, name),
      [*SILOS, *CONFIGURATIONS[configuration][0], *dp, f'--eval_every={FLAGS.eval_every}',
       f'--seed={seed}', *FLAGS.extra], rounds(configuration))
  return procs.last_figures(rows, private)


def main(argv):
  _cli.parse_flags(argv, __doc__)
  procs.run_dp_bench(
      run, rounds=rounds, z_text=lambda c, t: f'{noise_multiplier(c, t):.3f}',
      setting=(f'ring, example-level DP: 10 silos x {EXAMPLES} examples, all in every round, '
               f'Poisson batches of {BATCH} expected, one DP-SGD step a round, clip 1, delta '
               f'{DELTA:g}, flags {" ".join(FLAGS.extra) or "none"}'),
      label='under DP-SGD (mean over seeds)', xlabel=f'ε of each silo (δ = {DELTA:g})',
      title=lambda c: f'ring, 10 silos × {EXAMPLES:,} examples, {c}, {rounds(c)} rounds')
  return 0


if __name__ == '__main__':
  sys.exit(_cli.run(main))
