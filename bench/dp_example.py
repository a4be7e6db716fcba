"""Example-level DP for silos: quality at a target ε per silo, over seeds.

The cross-silo settings of the README, 10 clients ("hospitals") all sampled every round,
every client's discriminator trained with DP-SGD (`--dp_unit=example`: Poisson batches, each
example's gradient clipped to 1, noise z·1), δ = 1e-5:

* `ring` (`dp_fedavg_gan`, `fedgan`; the default): 2,000 examples a silo, batches of 500
  expected, one DP-SGD step a silo a round;
* `ring` with `fedgan_server_adam`: the same silos, 4,000 rounds, both networks' optimizer
  on the server (each silo one SGD step at learning rate 1 on each network; the server's Adam
  at 2e-3 halving every 2,000 rounds on their mean; the generator's average at 0.98), the
  setting that reaches the README's target at ε = 6;
* `digits` (`digits_fedgan`): the 1,797 embedded digits split over the 10 silos, batches of
  32 expected, one local epoch (6 steps) a round;
* `ring` with `gs_wgan`: GS-WGAN instead of DP-SGD. Each silo keeps K = 100 discriminators
  (a quarter-width critic each, never sent), its 2,000 examples hashed over them; every round
  one drawn at random trains on its shard and answers, its per-sample gradients on the
  round's 16 generated samples clipped to 1 and noised with σ·1 (`--dp_noise_multiplier` is
  σ). Its reference without noise is the same run at σ = 0 (clipped, not noised).

A silo's ε then depends on its rate B / n and its steps alone (GS-WGAN: on K, σ, the batch
and the rounds). For every configuration
(`CONFIGURATIONS`) and target ε it computes the z that spends exactly that ε over the run
for the smallest silo (as `bin/privacy.py --dp_unit=example --target_epsilon`), trains every
seed, and prints as the mean over seeds at the last round: ε spent (the largest over silos,
from `metrics.csv`), the quality figures (`ring`: modes of 8, high-quality fraction, reverse
KL; `digits`: Fréchet distance and classifier score), and the minutes of training per run.
A run without DP is each configuration's reference. It writes a PNG of the first two figures
against ε for the first configuration at `--curve_epsilons`. `ring` and `digits`
configurations are run separately.

Runs live in `--work_dir`: a finished run is read again, not rerun, and an interrupted one
resumes from its checkpoint. Every finished run's figures are also appended to `--record`
(`bench/results/`, committed: `runs/` is not), and a run the record holds is not trained
again. `--noreference` skips the runs without DP. `--jobs=2` trains two runs at a time
(sharing the cores: see `procs.train_cells`).

  .venv/bin/python bench/dp_example.py                        # the README's table and figure
  .venv/bin/python bench/dp_example.py --configurations=fedgan --epsilons=6 --seeds=0
  .venv/bin/python bench/dp_example.py --configurations=fedgan_server_adam --epsilons=6 \
      --curve_epsilons=6 --seeds=0,1,2 --noreference --jobs=2
  .venv/bin/python bench/dp_example.py --configurations=digits_fedgan --epsilons=1,4,10 \
      --curve_epsilons=1,4,10 --figure=runs/dp_example/digits_vs_epsilon.png
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'bin'))
import _cli  # noqa: E402  (sets TF_CPP_MIN_LOG_LEVEL and the import path)
import procs  # noqa: E402
from absl import flags  # noqa: E402

DELTA = 1e-5


@dataclasses.dataclass(frozen=True)
class Configuration:
  """A setting: `bin/train.py` flags of the silos and the scheme, rounds, the figures it is
  judged by, and what the accountant needs: the smallest silo's examples n (its ε is the
  largest), the expected batch B and the DP-SGD steps a silo takes a round (min(local steps,
  ⌈n / B⌉) for one local epoch). With `shards` K > 0 the setting is GS-WGAN's: its
  accountant needs K, the batch of generated samples and `steps_per_round`, the generator
  steps a round (one sanitized message a round)."""

  flags: tuple[str, ...]
  rounds: int
  examples: int
  batch: int
  steps_per_round: int
  figures: tuple[procs.Figure, ...] = procs.RING_FIGURES
  shards: int = 0


# ring: a batch of 500 of 2,000 (q = 1/4). At a fixed number of steps the noise on the mean
# gradient, z/B, hardly falls with larger batches, and smaller ones pay more (ε = 6 over 1,000
# steps: z/B 0.0130 at 500, 0.0129 at 2,000, 0.0143 at 128, 0.0172 at 64), so 500 is where the
# batch stops costing. The steps are the knob: one DP-SGD step a round, so a silo takes
# `rounds` steps.
RING_SILOS = ('--num_clients=10', '--examples_per_client=2000', '--batch_size=500',
              '--local_steps=1')
# digits: the 1,797 embedded digits split over 10 silos (180 or 179 each), batches of 32
# expected, one local epoch (6 steps) a round. The MLP pair: TF Privacy clips its Dense layers
# with ghost norms, where the DCGAN's convolutions need per-example Jacobians: on 2 loaded
# cores a round of 60 DP-SGD steps took 36-48 s with the DCGAN pair and about 4 s with the MLP.
DIGITS_SMALLEST_SILO, DIGITS_BATCH = 179, 32
DIGITS_SILOS = ('--task=digits', '--model=mlp', '--num_clients=10',
                f'--batch_size={DIGITS_BATCH}')
# dp_fedavg_gan's server takes 4 generator steps a round on the mean of the 10 silos' DP
# discriminators (post-processing: no privacy spent); fedgan's clients take one generator step
# per discriminator step against their own DP discriminator. In fedgan_server_adam the
# optimizers' moments live on the server and average the noise over rounds (a fresh client
# Adam takes a sign step of it every round); README: "What it reaches".
SERVER_ADAM = ('--client_optimizer=sgd', '--client_learning_rate=1', '--server_optimizer=adam',
               '--server_learning_rate=0.002', '--server_lr_half_life=2000',
               '--generator_ema=0.98')
CONFIGURATIONS = {
    'dp_fedavg_gan': Configuration((*RING_SILOS, '--scheme=dp_fedavg_gan', '--server_gen_steps=4'),
                                   1000, 2000, 500, 1),
    'fedgan': Configuration((*RING_SILOS, '--scheme=fedgan'), 1000, 2000, 500, 1),
    'fedgan_server_adam': Configuration((*RING_SILOS, '--scheme=fedgan', *SERVER_ADAM), 4000,
                                        2000, 500, 1),
    'digits_fedgan': Configuration((*DIGITS_SILOS, '--scheme=fedgan'), 300, DIGITS_SMALLEST_SILO,
                                   DIGITS_BATCH, math.ceil(DIGITS_SMALLEST_SILO / DIGITS_BATCH),
                                   procs.IMAGE_FIGURES),
    # GS-WGAN's setting of the README: 100 discriminators a silo, 20 examples each; the
    # critics at a quarter width keep the 1,000 of them under the state limit (about 100 MB).
    'gs_wgan': Configuration(
        ('--num_clients=10', '--examples_per_client=2000', '--scheme=gs_wgan',
         '--discriminator_shards=100', '--batch_size=16', '--discriminator_width=0.25'),
        1000, 2000, 16, 1, shards=100),
}

procs.define_dp_bench_flags(CONFIGURATIONS, epsilons=['6'], curve_epsilons=['2', '4', '6', '10'],
                            work_dir=os.path.join(procs.REPO_ROOT, 'runs', 'dp_example'),
                            record=os.path.join(procs.REPO_ROOT, 'bench', 'results',
                                                'dp_example.csv'),
                            default_configurations=['dp_fedavg_gan', 'fedgan'])
flags.register_validator(
    'configurations', lambda names: len({CONFIGURATIONS[n].figures for n in names}) == 1,
    'ring and digits configurations have different figures; run them separately')
FLAGS = flags.FLAGS


def rounds(configuration: str) -> int:
  return FLAGS.rounds or CONFIGURATIONS[configuration].rounds


@functools.cache  # Each cell's z: read by every seed's run and by the table.
def noise_multiplier(configuration: str, target_epsilon: float) -> float:
  from tff_gan.privacy import accounting  # noqa: PLC0415  (after _cli set the path)
  from tff_gan.run import ledgers  # noqa: PLC0415
  c = CONFIGURATIONS[configuration]
  if c.shards:  # GS-WGAN's σ, as its run's ledger accounts it.
    return ledgers.gs_wgan_noise_multiplier(target_epsilon, c.shards, rounds(configuration),
                                            c.steps_per_round, c.batch, DELTA)
  return accounting.noise_multiplier_for_epsilon(
      target_epsilon, accounting.example_sampling(c.examples, c.batch),
      rounds(configuration) * c.steps_per_round, DELTA)


def run(configuration: str, target: float, seed: int) -> dict[str, float]:
  """Trains (or resumes, or reads from the record) one run; its figures at the last round.
  `target` is the ε the noise is calibrated to, or infinity for the run without DP."""
  private = math.isfinite(target)
  dp = ['--dp_unit=example', f'--dp_noise_multiplier={noise_multiplier(configuration, target):.6f}',
        f'--dp_delta={DELTA}'] if private else []
  if not private and CONFIGURATIONS[configuration].shards:
    dp = ['--dp_unit=example', '--dp_noise_multiplier=0']  # gs_wgan always clips.
  name = ((f'{configuration}_eps{target:g}' if private else f'{configuration}_no_dp')
          + f'_r{rounds(configuration)}_s{seed}' + procs.flags_suffix(FLAGS.extra))
  return procs.recorded_figures(
      FLAGS.record, os.path.join(FLAGS.work_dir, name),
      [*CONFIGURATIONS[configuration].flags, *dp, f'--eval_every={FLAGS.eval_every}',
       f'--seed={seed}', *FLAGS.extra], rounds(configuration), private,
      CONFIGURATIONS[configuration].figures)


def describe(configuration: str) -> str:
  c = CONFIGURATIONS[configuration]
  steps = (f'{c.steps_per_round} sanitized message(s) a silo a round' if c.shards else
           f'{c.steps_per_round} DP-SGD step(s) a silo a round, Poisson batches')
  return f'{configuration}: {" ".join(c.flags)}, {steps}, {rounds(configuration)} rounds'


def main(argv):
  _cli.parse_flags(argv, __doc__)
  procs.run_dp_bench(
      run, rounds=rounds, z_text=lambda c, t: f'{noise_multiplier(c, t):.3f}',
      setting=('example-level DP, every silo in every round, clip 1, delta '
               f'{DELTA:g}; ' + '; '.join(map(describe, FLAGS.configurations))
               + f'; more flags: {" ".join(FLAGS.extra) or "none"}'),
      label='under DP-SGD', xlabel=f'ε of each silo (δ = {DELTA:g})',
      title=lambda c: f'{c}, 10 silos, {rounds(c)} rounds',
      figures=CONFIGURATIONS[FLAGS.configurations[0]].figures)
  return 0


if __name__ == '__main__':
  sys.exit(_cli.run(main))
