"""Privacy budget of DP-FedAvg training: ε for a configuration, or the noise for a target ε.

Accounts one Gaussian mechanism per round on a sample of clients, with dp_accounting's RDP
(default) or PLD accountant, exactly as bin/train.py reports ε in metrics.csv for fixed
clipping. (With adaptive clipping, part of the noise pays for the clip-norm estimate; TFF
splits the noise multiplier so the round's total privacy cost is that of the given one.)

Sampling and neighbouring relation:
  poisson  each client joins a round with probability clients_per_round/num_clients;
           neighbouring datasets add or remove one client's data.
  fixed    exactly clients_per_round clients, drawn without replacement; neighbouring
           datasets replace one client's data (RDP only).

Examples:
  python bin/privacy.py --num_clients=1000 --clients_per_round=100 \\
      --noise_multiplier=1.19 --rounds=300 --delta=1e-5 --sampling=poisson
  python bin/privacy.py --num_clients=1000 --clients_per_round=100 --rounds=300 \\
      --target_epsilon=10 --sampling=poisson
"""

from __future__ import annotations

import os
import sys

import _cli
from absl import flags

flags.DEFINE_integer('num_clients', None, 'Client population size.')
flags.DEFINE_integer('clients_per_round', None, 'Expected (poisson) or exact (fixed) clients '
                     'per round.')
flags.DEFINE_integer('rounds', None, 'Number of rounds.')
flags.DEFINE_float('noise_multiplier', None, 'Gaussian noise multiplier z; prints epsilon.')
flags.DEFINE_float('target_epsilon', None, 'Prints the smallest noise multiplier that spends '
                   'at most this epsilon (instead of --noise_multiplier).')
flags.DEFINE_float('delta', 1e-5, 'delta of the (epsilon, delta) guarantee.')
flags.DEFINE_string('sampling', 'poisson', 'Client sampling: poisson or fixed.')
flags.DEFINE_string('accountant', 'rdp', 'Accountant: rdp or pld (pld needs poisson).')

FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
  program = os.path.basename(argv[0])
  _cli.parse_flags(argv, __doc__)
  for name in ('num_clients', 'clients_per_round', 'rounds'):
    if FLAGS[name].value is None or FLAGS[name].value <= 0:
      _cli.usage_error(program, f'--{name} must be a positive integer.')
  if (FLAGS.noise_multiplier is None) == (FLAGS.target_epsilon is None):
    _cli.usage_error(program, 'give exactly one of --noise_multiplier (to get epsilon) and '
                     '--target_epsilon (to get the noise multiplier).')
  from tff_gan.privacy import accounting as privacy  # noqa: PLC0415

  try:
    sampling = privacy.Sampling(FLAGS.sampling, FLAGS.num_clients, FLAGS.clients_per_round)
    privacy.make_accountant(FLAGS.accountant, sampling)
    privacy.check_delta(FLAGS.delta)
    if FLAGS.noise_multiplier is not None and FLAGS.noise_multiplier < 0:
      raise ValueError(f'--noise_multiplier must be >= 0, got {FLAGS.noise_multiplier}.')
  except ValueError as e:
    _cli.usage_error(program, str(e))
  if FLAGS.delta >= 1 / FLAGS.num_clients:
    print(f'{program}: warning: delta={FLAGS.delta:g} >= 1/num_clients; use a smaller delta.',
          file=sys.stderr)

  import dp_accounting  # noqa: PLC0415

  setting = (f'num_clients={FLAGS.num_clients} clients_per_round={FLAGS.clients_per_round} '
             f'rounds={FLAGS.rounds} sampling={FLAGS.sampling} accountant={FLAGS.accountant} '
             f'delta={FLAGS.delta:g}')
  if FLAGS.noise_multiplier is not None:
    epsilon = privacy.epsilon(dp_accounting.GaussianDpEvent(FLAGS.noise_multiplier), sampling,
                              FLAGS.rounds, FLAGS.delta, FLAGS.accountant)
    print(f'epsilon={epsilon:.6g}  ({setting} noise_multiplier={FLAGS.noise_multiplier:g})')
  else:
    try:
      z = privacy.noise_multiplier_for_epsilon(FLAGS.target_epsilon, sampling, FLAGS.rounds,
                                               FLAGS.delta, FLAGS.accountant)
    except ValueError as e:
      _cli.usage_error(program, str(e))
    print(f'noise_multiplier={z:.6g}  ({setting} target_epsilon={FLAGS.target_epsilon:g})')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
