"""User-level DP on `ring`: quality at a target ε, over seeds, and quality against ε.

A population of `--num_clients` generated clients of 128 examples each
(`--examples_per_client`, so the population costs nothing to hold; one batch of 128 each),
Poisson client sampling at `--clients_per_round` expected clients a round, each
configuration's clip, δ = 1e-5. For every configuration (a scheme, its settings, its rounds
and its clip: `CONFIGURATIONS`) and every target ε it computes the
noise multiplier z that spends exactly that ε over the run
(`tff_gan.privacy.accounting.noise_multiplier_for_epsilon`, as `bin/privacy.py
--target_epsilon`), trains every seed, and prints as the mean over seeds at the last round:
ε spent (from `metrics.csv`), modes of 8, high-quality fraction, reverse KL, and the minutes
of training per run. A run without DP (same clients, plain mean) is each configuration's
reference. It writes a PNG of modes and high quality against ε for the first configuration
at `--curve_epsilons`.

Runs live in `--work_dir`: a finished run is read again, not rerun, and an interrupted one
resumes from its checkpoint. `--jobs=2` trains two runs at a time (one per core).

  .venv/bin/python bench/dp_quality.py                         # the README's table and figure
  .venv/bin/python bench/dp_quality.py --configurations=fedgan --epsilons=10 --seeds=0
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

DELTA = 1e-5
# Every client holds 128 generated examples, one batch. --batch_size is also the batch of the
# generator's steps on the server (dp_fedavg_gan): at 32 those steps were too noisy for
# precise samples (10 clients at the same noise per coordinate, seed 0: 61 % high quality at
# round 1500, against 87 % at 128).
EXAMPLES_PER_CLIENT = 128
COMMON = [f'--examples_per_client={EXAMPLES_PER_CLIENT}', '--batch_size=128',
          '--client_sampling=poisson']
# Each configuration: its flags, its rounds and its clip C. With one batch a client, a
# dp_fedavg_gan client takes one discriminator step a round (its --local_steps=4 is a cap) and
# the server 4 generator steps from the generator's average. That one step is Adam's first
# (a fresh optimizer every round), which moves every weight by about the learning rate: its
# norm is 1e-3 * sqrt(133,121 weights) ~ 0.35 whatever the data (0.352-0.354 measured), so a
# clip of 1 only added 2.9 times the noise the update needs; C = 0.35 clips next to nothing.
# Its runs spend 500-900 rounds at 0-2 modes (probes without noise too), hence 1500
# rounds. fedgan takes 16 local epochs (16 steps; 4 stayed at 0-2 modes): 8/8, 88 % at
# round 600 (one 10-client probe); at 200 clients a round that is about 23 s a round on 2
# cores, some 4 hours a run. Narrower networks did not train on ring even without noise (0-2
# modes), so both keep the full width.
CONFIGURATIONS = {
    'dp_fedavg_gan': (['--scheme=dp_fedavg_gan'], 1500, 0.35),
    'fedgan': (['--scheme=fedgan', '--local_epochs=16'], 600, 1.0),
}

flags.DEFINE_list('configurations', list(CONFIGURATIONS),
                  'Schemes and their settings: ' + ', '.join(CONFIGURATIONS) + '. The first '
                  'is drawn against epsilon.')
flags.DEFINE_list('epsilons', ['10'], 'Target epsilons of the table (each sets z).')
flags.DEFINE_list('curve_epsilons', ['2', '4', '10', '20'],
                  'Target epsilons of the figure, for the first configuration.')
flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds per configuration and epsilon.')
flags.DEFINE_integer('num_clients', 1_000_000, 'Clients in the population.')
flags.DEFINE_integer('clients_per_round', 100, 'Expected clients per round (Poisson).')
flags.DEFINE_integer('rounds', 0, "Rounds per run (0: each configuration's own).")
flags.DEFINE_integer('eval_every', 50, 'Rounds between evaluations.')
flags.DEFINE_integer('jobs', 1, 'Runs trained at once.')
flags.DEFINE_list('extra', [], 'More bin/train.py flags for every run.')
flags.DEFINE_string('work_dir', os.path.join(procs.REPO_ROOT, 'runs', 'dp_quality'),
                    'Where the runs are kept (finished ones are reused, others resumed).')
flags.DEFINE_string('figure', None, 'PNG of quality against epsilon (default: '
                    '<work_dir>/quality_vs_epsilon.png).')
flags.register_validator('configurations', lambda names: set(names) <= set(CONFIGURATIONS),
                         'unknown configuration; choose from ' + ', '.join(CONFIGURATIONS))


def _positive_numbers(values: list[str]) -> bool:
  try:
    return all(math.isfinite(float(v)) and float(v) > 0 for v in values)
  except ValueError:
    return False


for _name in ('epsilons', 'curve_epsilons'):
  flags.register_validator(_name, _positive_numbers, f'--{_name} takes positive numbers')
FLAGS = flags.FLAGS


def rounds(configuration: str) -> int:
  return FLAGS.rounds or CONFIGURATIONS[configuration][1]


def clip(configuration: str) -> float:
  return CONFIGURATIONS[configuration][2]


def noise_multiplier(configuration: str, target_epsilon: float) -> float:
  from tff_gan.privacy import accounting  # noqa: PLC0415  (after _cli set the path)
  sampling = accounting.Sampling('poisson', FLAGS.num_clients, FLAGS.clients_per_round)
  return accounting.noise_multiplier_for_epsilon(target_epsilon, sampling,
                                                 rounds(configuration), DELTA)


def run(configuration: str, target: float, seed: int) -> dict[str, float]:
  """Trains (or resumes, or reads) one run; its figures at the last round. `target` is the
  ε the noise is calibrated to, or infinity for the run without DP."""
  private = math.isfinite(target)
  dp = [f'--dp_noise_multiplier={noise_multiplier(configuration, target):.6f}',
        f'--dp_clip={clip(configuration):g}', f'--dp_delta={DELTA}'] if private else []
  name = (f'{configuration}_eps{target:g}' if private else f'{configuration}_no_dp') + (
      f'_n{FLAGS.num_clients}_m{FLAGS.clients_per_round}_r{rounds(configuration)}_s{seed}'
      + (f'_c{clip(configuration):g}' if private else '')
      + ''.join('_' + flag.strip('-').replace('=', '-') for flag in FLAGS.extra))
  rows = procs.train_or_read(
      os.path.join(FLAGS.work_dir, name),
      [*COMMON, *CONFIGURATIONS[configuration][0], *dp,
       f'--num_clients={FLAGS.num_clients}', f'--clients_per_round={FLAGS.clients_per_round}',
       f'--eval_every={FLAGS.eval_every}', f'--seed={seed}', *FLAGS.extra], rounds(configuration))
  return procs.last_figures(rows, private)


def write_figure(path: str, configuration: str, points: dict[float, dict[str, float]]) -> None:
  procs.write_quality_against_epsilon(
      path, [m for target, m in points.items() if math.isfinite(target)],
      points.get(math.inf), label=f'{configuration} under DP (mean over seeds)',
      xlabel=f'ε of one client (δ = {DELTA:g})',
      title=(f'ring, user-level DP, {configuration}: {FLAGS.num_clients:,} clients, '
             f'{FLAGS.clients_per_round} a round (Poisson), {rounds(configuration)} rounds'))


def main(argv):
  _cli.parse_flags(argv, __doc__)
  seeds = [int(s) for s in FLAGS.seeds]
  table_targets = [math.inf, *(float(e) for e in FLAGS.epsilons)]
  curve_targets = [math.inf, *(float(e) for e in FLAGS.curve_epsilons)]
  cells = [(c, t) for c in FLAGS.configurations for t in table_targets]
  cells += [(FLAGS.configurations[0], t) for t in curve_targets
            if (FLAGS.configurations[0], t) not in cells]
  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(FLAGS.jobs) as pool:
    futures = {(c, t, s): pool.submit(run, c, t, s) for s in seeds for c, t in cells}
    results = {cell: [futures[(*cell, s)].result() for s in seeds] for cell in cells}
  print(f'done after {(time.perf_counter() - start) / 60:.0f} min\n')
  print(f'ring, user-level DP: {FLAGS.num_clients} clients x {EXAMPLES_PER_CLIENT} examples, '
        f'{FLAGS.clients_per_round} a round (Poisson), delta {DELTA:g}, '
        f'flags {" ".join(COMMON + FLAGS.extra)}; seeds {seeds}, mean at '
        'the last round')
  print('| configuration | rounds | target ε | z | clip | ε spent | modes of 8 | high quality | '
        'reverse KL | minutes a run |')
  print('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
  for (configuration, target), runs in results.items():
    m = procs.mean(runs)
    private = math.isfinite(target)
    target_text, z, c, spent = (
        f'{target:g}', f'{noise_multiplier(configuration, target):.3f}',
        f'{clip(configuration):g}', f"{m['epsilon']:.2f}") if private else ('no DP', '—', '—', '∞')
    kl = 'n/a' if math.isnan(m['kl']) else f"{m['kl']:.2f}"
    print(f"| {configuration} | {rounds(configuration)} | {target_text} | {z} | {c} | {spent} | "
          f"{m['modes']:.1f} | "
          f"{100 * m['high']:.0f} % | {kl} | {m['minutes']:.1f} |")
  figure = FLAGS.figure or os.path.join(FLAGS.work_dir, 'quality_vs_epsilon.png')
  first = FLAGS.configurations[0]
  write_figure(figure, first, {t: procs.mean(results[(first, t)]) for t in curve_targets})
  print(f'quality against epsilon: {figure}')
  return 0


if __name__ == '__main__':
  sys.exit(_cli.run(main))
