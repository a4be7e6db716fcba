"""User-level DP on `ring`: quality at a target ε, over seeds, and quality against ε.

A population of `--num_clients` generated clients of 128 examples each
(`--examples_per_client`, so the population costs nothing to hold; one batch of 128 each),
Poisson client sampling at each configuration's expected clients a round (or
`--clients_per_round`), each configuration's clip, δ = 1e-5. For every configuration (a
scheme, its settings, its rounds, its clip and its clients a round: `CONFIGURATIONS`) and
every target ε it computes the noise multiplier z that spends exactly that ε over the run
(`tff_gan.privacy.accounting.noise_multiplier_for_epsilon`, as `bin/privacy.py
--target_epsilon`), trains every seed, and prints as the mean over seeds at the last round:
ε spent (from `metrics.csv`), modes of 8, high-quality fraction, reverse KL, and the minutes
of training per run; then each seed's modes and high-quality fraction at every evaluated
round of the runs at `--epsilons`, from the record's curves (`curves.py`). A run without DP
(same clients, plain mean) is each configuration's reference. It writes a PNG of modes and
high quality against ε for the first configuration at `--curve_epsilons`.

Runs live in `--work_dir`: a finished run is read again, not rerun, and an interrupted one
resumes from its checkpoint. Every finished run's figures are also appended to `--record`
(`bench/results/`, committed: `runs/` is not), and a run the record holds is not trained
again. `--noreference` skips the runs without DP. `--jobs=2` trains two runs at a time
(sharing the cores: see `procs.train_cells`).

  # The README's figure (from the record: it trains nothing once the runs are recorded):
  .venv/bin/python bench/dp_quality.py --configurations=dp_fedavg_gan_4steps --epsilons=10 \\
      --curve_epsilons=2,4,10,20 --seeds=0 --noreference --figure=docs/dp_quality_vs_epsilon.png
  .venv/bin/python bench/dp_quality.py --configurations=fedgan --epsilons=10 --curve_epsilons=10 \\
      --seeds=0,1,2 --noreference   # without --curve_epsilons it trains eps 2, 4 and 20 too
  .venv/bin/python bench/dp_quality.py --configurations=fedgan_400 --epsilons=10 \\
      --curve_epsilons=10 --seeds=1,2,0 --noreference --jobs=2   # 2.7-8 h a run: README
"""

from __future__ import annotations

import functools
import math
import os
import sys
from typing import NamedTuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'bin'))
import _cli  # noqa: E402  (sets TF_CPP_MIN_LOG_LEVEL and the import path)
import curves  # noqa: E402
import procs  # noqa: E402
from absl import flags  # noqa: E402

DELTA = 1e-5
# Every client holds 128 generated examples, one batch. --batch_size is also the batch of the
# generator's steps on the server (dp_fedavg_gan): at 32 those steps were too noisy for
# precise samples (10 clients at the same noise per coordinate, seed 0: 61 % high quality at
# round 1500, against 87 % at 128).
EXAMPLES_PER_CLIENT = 128
COMMON = [f'--examples_per_client={EXAMPLES_PER_CLIENT}', '--batch_size=128',
          '--client_sampling=poisson']


class Configuration(NamedTuple):
  """A scheme's `bin/train.py` flags, its rounds, its clip C and its expected clients a
  round (Poisson)."""

  flags: tuple[str, ...]
  rounds: int
  clip: float
  clients_per_round: int = 100


# Each configuration: its flags, rounds, clip C and clients a round. With one batch a client, a
# dp_fedavg_gan client takes one discriminator step a round (its --local_steps=4 is a cap) and
# the server 4 generator steps from the generator's average. That one step is Adam's first
# (a fresh optimizer every round), which moves every weight by about the learning rate: its
# norm is 1e-3 * sqrt(133,121 weights) ~ 0.35 whatever the data (0.352-0.354 measured), so a
# clip of 1 only added 2.9 times the noise the update needs; C = 0.35 clips next to nothing.
# Its runs spend 500-900 rounds at 0-2 modes (probes without noise too), hence 1500
# rounds. fedgan takes 16 local epochs (16 steps; 4 stayed at 0-2 modes): 8/8, 88 % at
# round 600 (one 10-client probe); at 200 clients a round that is about 23 s a round on 2
# cores, some 4 hours a run. Narrower dp_fedavg_gan discriminators stayed at 0-5 modes even
# without noise (150-275 rounds), so both schemes keep the full width (fedgan_400: below).
#
# dp_fedavg_gan_4steps: the same scheme with 4 passes over the client's batch, so 4
# discriminator steps a client and round (Adam's first four: norm up to 4 * 0.35, hence C =
# 1.4). Noise and signal both grow fourfold, but the discriminator learns four steps a round:
# the 10-client probe at this population's noise per coordinate (seed 0) had 8/8 from round
# 450 and 33 % high quality at 600, against 8/8 from 700 and 6 % at 800 with one step. On the
# population at eps 10 the seeds still climbed at round 1200 (74-84 %), hence 1500 rounds.
CONFIGURATIONS = {
    'dp_fedavg_gan': Configuration(('--scheme=dp_fedavg_gan',), 1500, 0.35),
    'dp_fedavg_gan_4steps': Configuration(('--scheme=dp_fedavg_gan', '--local_epochs=4'), 1500,
                                          1.4),
    'fedgan': Configuration(('--scheme=fedgan', '--local_epochs=16'), 600, 1.0),
    # fedgan_400: fedgan with the generator's average, 400 clients a round. At 100 a round the
    # noise collapsed seeds 1 and 2 onto 3 modes; 10-client probes at the noise per coordinate
    # of 100, 200 and 400 clients a round (z' = 10 z / m) collapsed, collapsed and trained
    # (8/8 at 88.8 %, 7/8 at 93.0 %). Narrower networks (width 0.5, 0.25, 0.125), server
    # momentum, 8 or 4 local epochs and clients of 32 examples did not do it for less (README).
    # A round costs four of fedgan's: about 16 s alone on 2 cores. At eps 10 seeds 1, 2 and 0
    # ended with 7, 8 and 8 / 8 modes at 85.6, 87.4 and 85.2 % high quality.
    'fedgan_400': Configuration(('--scheme=fedgan', '--local_epochs=16', '--generator_ema=0.98'),
                                600, 1.0, clients_per_round=400),
}

procs.define_dp_bench_flags(CONFIGURATIONS, epsilons=['10'], curve_epsilons=['2', '4', '10', '20'],
                            work_dir=os.path.join(procs.REPO_ROOT, 'runs', 'dp_quality'),
                            record=os.path.join(procs.REPO_ROOT, 'bench', 'results',
                                                'dp_quality.csv'))
flags.DEFINE_integer('num_clients', 1_000_000, 'Clients in the population.')
flags.DEFINE_integer('clients_per_round', 0,
                     "Expected clients per round (Poisson); 0: each configuration's own.")
FLAGS = flags.FLAGS


def rounds(configuration: str) -> int:
  return FLAGS.rounds or CONFIGURATIONS[configuration].rounds


def clip(configuration: str) -> float:
  return CONFIGURATIONS[configuration].clip


def clients_per_round(configuration: str) -> int:
  return FLAGS.clients_per_round or CONFIGURATIONS[configuration].clients_per_round


@functools.cache  # Each cell's z: read by every seed's run and by the table.
def noise_multiplier(configuration: str, target_epsilon: float) -> float:
  from tff_gan.privacy import accounting  # noqa: PLC0415  (after _cli set the path)
  sampling = accounting.Sampling('poisson', FLAGS.num_clients, clients_per_round(configuration))
  return accounting.noise_multiplier_for_epsilon(target_epsilon, sampling,
                                                 rounds(configuration), DELTA)


def run_name(configuration: str, target: float, seed: int) -> str:
  """The name of a run: its directory in `--work_dir`, its key in the record."""
  private = math.isfinite(target)
  return (f'{configuration}_eps{target:g}' if private else f'{configuration}_no_dp') + (
      f'_n{FLAGS.num_clients}_m{clients_per_round(configuration)}'
      f'_r{rounds(configuration)}_s{seed}'
      + (f'_c{clip(configuration):g}' if private else '')
      + procs.flags_suffix(FLAGS.extra))


def run(configuration: str, target: float, seed: int) -> dict[str, float]:
  """Trains (or resumes, or reads from the record) one run; its figures at the last round.
  `target` is the ε the noise is calibrated to, or infinity for the run without DP."""
  private = math.isfinite(target)
  dp = [f'--dp_noise_multiplier={noise_multiplier(configuration, target):.6f}',
        f'--dp_clip={clip(configuration):g}', f'--dp_delta={DELTA}'] if private else []
  return procs.recorded_figures(
      FLAGS.record, os.path.join(FLAGS.work_dir, run_name(configuration, target, seed)),
      [*COMMON, *CONFIGURATIONS[configuration].flags, *dp, f'--num_clients={FLAGS.num_clients}',
       f'--clients_per_round={clients_per_round(configuration)}',
       f'--eval_every={FLAGS.eval_every}', f'--seed={seed}', *FLAGS.extra], rounds(configuration),
      private)


def main(argv):
  _cli.parse_flags(argv, __doc__)
  per_round = ', '.join(f'{clients_per_round(c)} ({c})' for c in FLAGS.configurations)
  procs.run_dp_bench(
      run, rounds=rounds, z_text=lambda c, t: f'{noise_multiplier(c, t):.3f}', clip=clip,
      setting=(f'ring, user-level DP: {FLAGS.num_clients} clients x {EXAMPLES_PER_CLIENT} '
               f'examples, clients a round (Poisson) {per_round}, delta {DELTA:g}, '
               f'flags {" ".join(COMMON + FLAGS.extra)}'),
      label='under DP', xlabel=f'ε of one client (δ = {DELTA:g})',
      title=lambda c: (f'ring, user-level DP, {c}: {FLAGS.num_clients:,} clients, '
                       f'{clients_per_round(c)} a round (Poisson), {rounds(c)} rounds'))
  curves.print_table(
      procs.curves_path(FLAGS.record),
      {f'{c}, ε {t}, seed {s}': run_name(c, float(t), int(s))
       for c in FLAGS.configurations for t in FLAGS.epsilons for s in FLAGS.seeds},
      ('modes_captured', 'high_quality_fraction'))
  return 0


if __name__ == '__main__':
  sys.exit(_cli.run(main))
