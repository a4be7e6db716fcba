"""Print the task's metrics of a trained generator, from a checkpoint of a bin/train.py run.

By default the samples are those bin/train.py evaluated at that round (config.num_eval_samples
samples, noise seed config.seed + round), so the values equal the round's metric columns in
metrics.csv. Prints one `name=value` line per metric (floats to 6 significant digits, as in
metrics.csv), or with --json one JSON object (full precision; NaN as null). A task without
metrics prints nothing, or {}.

Examples:
  python bin/evaluate.py --output_dir=runs/demo
  python bin/evaluate.py --output_dir=runs/demo --round=150 --num_samples=10000 --json
"""

from __future__ import annotations

import json
import math
import os
import sys

import _cli
from absl import flags

from tff_gan.run import rundir

flags.DEFINE_string('output_dir', None, 'Directory of a bin/train.py run (holds config.json '
                    'and checkpoints/).')
flags.DEFINE_integer('round', None, 'Round whose checkpoint to evaluate (default: the latest '
                     'saved).')
flags.DEFINE_integer('num_samples', None, 'Number of generated samples to score (default: the '
                     "run's --num_eval_samples).")
flags.DEFINE_integer('seed', None, 'Seed of the generator noise (default: the run\'s --seed '
                     'plus the round, as bin/train.py evaluates).')
flags.DEFINE_bool('json', False, 'Print one JSON object instead of name=value lines.')

FLAGS = flags.FLAGS



def format_value(value) -> str:
  """A metric as metrics.csv writes it: floats to 6 significant digits, ints as they are."""
  if isinstance(value, float) or (hasattr(value, 'dtype') and value.dtype.kind == 'f'):
    return f'{float(value):.6g}'
  return str(value)


def json_value(value):
  """A metric as a JSON value: NaN and infinities (not JSON) become null."""
  if hasattr(value, 'item'):  # numpy scalar
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def main(argv: list[str]) -> int:
  program = os.path.basename(argv[0])
  _cli.parse_flags(argv, __doc__)
  try:  # Checked before TensorFlow is imported, so a typo costs milliseconds.
    config, round_num = rundir.open_run(FLAGS.output_dir, FLAGS.round, FLAGS.num_samples,
                                        FLAGS.seed)
  except rundir.RunError as e:
    _cli.usage_error(program, str(e))
  num_samples = config.num_eval_samples if FLAGS.num_samples is None else FLAGS.num_samples
  seed = config.seed + round_num if FLAGS.seed is None else FLAGS.seed

  _cli.quiet_tensorflow()
  from tff_gan.run import export, recorder, schemes  # noqa: PLC0415

  try:
    task, models, generator_weights = _cli.load_round(FLAGS.output_dir, config, round_num)
  except _cli.LoadError as e:
    print(f'{program}: error: {e}', file=sys.stderr)
    return 1
  samples = export.SampleGenerator(models)(generator_weights, num_samples, seed)
  # The run's own cached classifier (image tasks), or with --eval=federated the one FedAvg
  # trains again on the run's clients (deterministically), so the values match metrics.csv.
  clients = schemes.build_population(config, task) if config.eval == 'federated' else None
  task.prepare_evaluation(os.path.join(FLAGS.output_dir, rundir.CLASSIFIER_DIR), clients=clients)
  metrics = recorder.evaluate_samples(task, samples, config.conditional)
  if FLAGS.json:
    print(json.dumps({name: json_value(value) for name, value in metrics.items()},
                     allow_nan=False))
  else:
    for name, value in metrics.items():
      print(f'{name}={format_value(value)}')
  return 0


if __name__ == '__main__':
  sys.exit(_cli.run(main))
