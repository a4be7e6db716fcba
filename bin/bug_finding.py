"""The DP-FedAvg-GAN bug-finding scenario (Augenstein et al., ICLR 2020) on embedded digits.

An app update inverts the pixels of some writers' digits; a classifier deployed before the
update fails on them. Without looking at anyone's data, the writers with the lowest and the
highest accuracy are selected, a differentially private federated GAN is trained on each
group, and their samples are shown side by side: the inversion appears in one and not in the
other. See experiments/bug_finding.py and tutorials/privacy.ipynb.

Writes to --output_dir: bug_finding.png (the side-by-side grid, titled with each run's
epsilon and its samples' Frechet distances to clean and to inverted digits), summary.json
(writers, accuracies, epsilon, the fraction of bright-background samples, the Frechet
distances), samples_<group>.npy (the samples those numbers describe), and a bin/train.py run
per group (lowest_accuracy/, highest_accuracy/). Rerunning the same command resumes both
runs.

Examples:
  python bin/bug_finding.py
  python bin/bug_finding.py --rounds=100 --dp_noise_multiplier=1.2 --output_dir=runs/bugs
"""

from __future__ import annotations

import os
import sys

import _cli
from absl import flags

from experiments.bug_finding_config import BugFindingConfig
from tff_gan.run import rundir
from tff_gan.run.config import ConfigError

_DEFAULTS = BugFindingConfig()

flags.DEFINE_string('output_dir', _DEFAULTS.output_dir, 'Where the grid, the summary and the '
                    'two training runs are written.')
flags.DEFINE_integer('num_writers', _DEFAULTS.num_writers, 'Simulated writers the 1797 digits '
                     'are spread over.')
flags.DEFINE_float('inverted_fraction', _DEFAULTS.inverted_fraction, 'Fraction of writers '
                   'whose pixels the app update inverts.')
flags.DEFINE_float('selection_fraction', _DEFAULTS.selection_fraction, 'Fraction of writers in '
                   'each selected group (lowest and highest accuracy), at most 0.5.')
flags.DEFINE_integer('rounds', _DEFAULTS.rounds, 'DP-FedAvg-GAN rounds per group.')
flags.DEFINE_integer('clients_per_round', _DEFAULTS.clients_per_round, 'Writers of a group '
                     'sampled per round (the expected number under Poisson sampling).')
flags.DEFINE_string('client_sampling', _DEFAULTS.client_sampling, 'How a round samples its '
                    'writers: poisson (each writer independently, add-or-remove-one '
                    'accounting) or fixed (exactly --clients_per_round, accounted at the '
                    'replace-one sensitivity, twice the clip: a far larger epsilon).')
flags.DEFINE_float('dp_noise_multiplier', _DEFAULTS.dp_noise_multiplier, 'Gaussian noise '
                   'multiplier of DP-FedAvg.')
flags.DEFINE_float('dp_clip', _DEFAULTS.dp_clip, "L2 clip norm of a writer's discriminator "
                   'update.')
flags.DEFINE_float('dp_delta', _DEFAULTS.dp_delta, 'delta at which epsilon is reported '
                   '(writer-level).')
flags.DEFINE_integer('batch_size', _DEFAULTS.batch_size, 'Client batch size.')
flags.DEFINE_integer('local_epochs', _DEFAULTS.local_epochs, 'Passes over its data a writer '
                     'makes per round, in batches of --batch_size.')
flags.DEFINE_integer('local_steps', _DEFAULTS.local_steps, 'Cap on the discriminator steps '
                     '(batches) a writer takes per round; 0 means no cap.')
flags.DEFINE_string('client_optimizer', _DEFAULTS.client_optimizer, "The writers' "
                    'discriminator optimizer, fresh every round: sgd, adam (beta1=0.5) or '
                    'rmsprop.')
flags.DEFINE_float('client_learning_rate', _DEFAULTS.client_learning_rate, "Learning rate of "
                   "the writers' discriminator optimizer.")
flags.DEFINE_integer('server_gen_steps', _DEFAULTS.server_gen_steps, 'Generator steps the '
                     'server takes per round.')
flags.DEFINE_float('generator_learning_rate', _DEFAULTS.generator_learning_rate, "Learning "
                   "rate of the server's generator optimizer (Adam).")
flags.DEFINE_float('generator_ema', _DEFAULTS.generator_ema, 'Decay of the moving average of '
                   "the generator's weights the server keeps, updated once per round; samples, "
                   'evaluation and the Frechet distances use the average. 0: off.')
flags.DEFINE_string('model', _DEFAULTS.model, 'Network pair: dcgan or mlp.')
flags.DEFINE_float('model_width', _DEFAULTS.model_width, 'Multiplier on hidden layer sizes and '
                   'filters: small networks, because DP noise grows with the number of weights.')
flags.DEFINE_float('discriminator_width', _DEFAULTS.discriminator_width, "The "
                   "discriminator's own multiplier (0: --model_width): only its update is "
                   'noised, so the noise norm grows with the square root of its parameters.')
flags.DEFINE_integer('eval_every', _DEFAULTS.eval_every, 'Evaluate and checkpoint every N '
                     'rounds.')
flags.DEFINE_integer('seed', _DEFAULTS.seed, 'Seed of the writers, the inversion and the '
                     'training runs.')
flags.DEFINE_bool('overwrite', False, 'Start both training runs over instead of resuming.')
flags.DEFINE_bool('progress', True, 'Show progress bars.')

FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
  program = os.path.basename(argv[0])
  _cli.parse_flags(argv, __doc__)
  settings = {name: FLAGS[name].value for name in BugFindingConfig.__dataclass_fields__}
  try:  # Checked before TensorFlow is imported, so a typo costs milliseconds.
    config = BugFindingConfig(**settings).validate()
    rundir.check_output_dir_writable(config.output_dir)
  except ConfigError as e:
    _cli.usage_error(program, str(e))
  _cli.quiet_tensorflow()
  from experiments import bug_finding  # noqa: PLC0415 (imports TensorFlow)
  from tff_gan.runtime.workers import WorkerError  # noqa: PLC0415

  try:
    summary = bug_finding.run(config, show_progress=FLAGS.progress, overwrite=FLAGS.overwrite)
  except ConfigError as e:
    _cli.usage_error(program, str(e))
  except WorkerError as e:
    print(f'{program}: error: {e}', file=sys.stderr)
    return 1
  for name, population in summary['populations'].items():
    print(f"{program}: {name}: {len(population['writers'])} writers "
          f"({population['inverted_writers']} inverted), deployed accuracy "
          f"{100 * population['mean_accuracy']:.0f}%, epsilon={population['epsilon']:.3g}, "
          f"bright-background samples {100 * population['bright_background_fraction']:.0f}%, "
          f"Frechet distance to clean digits {population['frechet_distance']['clean']:.0f}, "
          f"to inverted {population['frechet_distance']['inverted']:.0f}")
  print(f'{program}: wrote {config.output_dir}/{bug_finding.GRID_FILE} and '
        f'{config.output_dir}/{bug_finding.SUMMARY_FILE}')
  return 0


if __name__ == '__main__':
  sys.exit(_cli.run(main))
