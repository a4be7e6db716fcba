"""Privacy budget of DP training: ε for a configuration, or the noise for a target ε.

--dp_unit=client (DP-FedAvg, user-level: one client's whole data is the unit):

Accounts one Gaussian mechanism per round on a sample of clients, with dp_accounting's RDP
(default) or PLD accountant, exactly as bin/train.py reports ε in metrics.csv for fixed
clipping. (With adaptive clipping, part of the noise pays for the clip-norm estimate; TFF
splits the noise multiplier so the round's total privacy cost is that of the given one.)

Sampling and neighbouring relation:
  poisson  each client joins a round with probability clients_per_round/num_clients;
           neighbouring datasets add or remove one client's data.
  fixed    exactly clients_per_round clients, drawn without replacement; neighbouring
           datasets replace one client's data (RDP only), which moves the clipped sum by
           up to twice the clip: the accountant sees noise multiplier z/2.

--dp_unit=example (DP-SGD inside one client, as bin/train.py --dp_unit=example: one example
is the unit): the client's --examples=n examples are Poisson-sampled at rate
min(1, batch_size/n) for each of its --steps DP-SGD steps; neighbouring datasets add or
remove one example. bin/train.py reports the largest such epsilon over its clients.

Examples:
  python bin/privacy.py --num_clients=1000 --clients_per_round=100 \\
      --noise_multiplier=1.19 --rounds=300 --delta=1e-5 --sampling=poisson
  python bin/privacy.py --num_clients=1000 --clients_per_round=100 --rounds=300 \\
      --target_epsilon=10 --sampling=poisson
  python bin/privacy.py --dp_unit=example --examples=2000 --batch_size=64 --steps=3000 \\
      --noise_multiplier=1.0
"""

from __future__ import annotations

import math
import os
import sys

import _cli
from absl import flags

flags.DEFINE_enum('dp_unit', 'client', ['client', 'example'], 'What one unit of privacy is: '
                  "a client's whole data (DP-FedAvg) or one example of a client (DP-SGD).")
flags.DEFINE_integer('examples', None, '--dp_unit=example: examples the client holds (n).')
flags.DEFINE_integer('batch_size', None, '--dp_unit=example: expected Poisson batch size B; '
                     'each example joins a step with probability min(1, B/n).')
flags.DEFINE_integer('steps', None, '--dp_unit=example: DP-SGD steps the client takes.')
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
  needed, unused = (('num_clients', 'clients_per_round', 'rounds'),
                    ('examples', 'batch_size', 'steps'))
  if FLAGS.dp_unit == 'example':
    needed, unused = unused, needed
  for name in needed:
    if FLAGS[name].value is None or FLAGS[name].value <= 0:
      _cli.usage_error(program, f'--{name} must be a positive integer with '
                       f'--dp_unit={FLAGS.dp_unit}.')
  for name in unused:
    if FLAGS[name].value is not None:
      _cli.usage_error(program, f'--{name} has no meaning with --dp_unit={FLAGS.dp_unit}; '
                       'drop it.')
  if FLAGS.dp_unit == 'example' and FLAGS.sampling != 'poisson':
    _cli.usage_error(program, '--dp_unit=example samples examples by Poisson sampling; drop '
                     '--sampling.')
  if (FLAGS.noise_multiplier is None) == (FLAGS.target_epsilon is None):
    _cli.usage_error(program, 'give exactly one of --noise_multiplier (to get epsilon) and '
                     '--target_epsilon (to get the noise multiplier).')
  for name in ('noise_multiplier', 'target_epsilon', 'delta'):
    if FLAGS[name].value is not None and not math.isfinite(FLAGS[name].value):
      _cli.usage_error(program, f'--{name} must be a finite number, got {FLAGS[name].value}.')
  from tff_gan.privacy import accounting as privacy  # noqa: PLC0415

  try:
    if FLAGS.dp_unit == 'example':
      sampling, count = privacy.example_sampling(FLAGS.examples, FLAGS.batch_size), FLAGS.steps
      setting = (f'dp_unit=example examples={FLAGS.examples} batch_size={FLAGS.batch_size} '
                 f'steps={FLAGS.steps}')
    else:
      sampling = privacy.Sampling(FLAGS.sampling, FLAGS.num_clients, FLAGS.clients_per_round)
      count = FLAGS.rounds
      setting = (f'num_clients={FLAGS.num_clients} clients_per_round='
                 f'{FLAGS.clients_per_round} rounds={FLAGS.rounds} sampling={FLAGS.sampling}')
    privacy.make_accountant(FLAGS.accountant, sampling)
    privacy.check_delta(FLAGS.delta, flag='--delta')
    if FLAGS.noise_multiplier is not None and FLAGS.noise_multiplier < 0:
      raise ValueError(f'--noise_multiplier must be >= 0, got {FLAGS.noise_multiplier}.')
  except ValueError as e:
    _cli.usage_error(program, str(e))
  if FLAGS.dp_unit == 'example':
    warning = privacy.delta_warning(FLAGS.delta, FLAGS.examples, 'examples', 'example',
                                    flag='--delta')
  else:
    warning = privacy.delta_warning(FLAGS.delta, FLAGS.num_clients, 'clients', flag='--delta')
  if warning:
    print(f'{program}: warning: {warning}', file=sys.stderr)

  import dp_accounting  # noqa: PLC0415

  setting += f' accountant={FLAGS.accountant} delta={FLAGS.delta:g}'
  if FLAGS.noise_multiplier is not None:
    event = privacy.clipped_sum_event(dp_accounting.GaussianDpEvent(FLAGS.noise_multiplier),
                                      sampling)
    epsilon = privacy.epsilon(event, sampling, count, FLAGS.delta, FLAGS.accountant)
    print(f'epsilon={epsilon:.6g}  ({setting} noise_multiplier={FLAGS.noise_multiplier:g})')
  else:
    try:
      z = privacy.noise_multiplier_for_epsilon(FLAGS.target_epsilon, sampling, count,
                                               FLAGS.delta, FLAGS.accountant)
    except ValueError as e:
      _cli.usage_error(program, str(e))
    print(f'noise_multiplier={z:.6g}  ({setting} target_epsilon={FLAGS.target_epsilon:g})')
  return 0


if __name__ == '__main__':
  sys.exit(_cli.run(main))
