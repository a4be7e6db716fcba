"""Draw samples from a trained generator and export it as a standalone Keras model.

Reads a bin/train.py run (--output_dir: its config.json and checkpoints/) and, for the
checkpoint of --round (default: the latest), writes to --export_dir:

  samples_round_<N>.png    the task's picture of --num_samples samples
  samples_round_<N>.npy    those samples, float32 [num_samples, *data_shape]
  generator_round_<N>.keras  the generator in Keras' native format

The .keras file loads with plain `tf.keras.models.load_model(path)` (standard layers only, no
custom objects). It maps noise [batch, noise_dim] drawn from N(0, I) to samples; the .npy holds
its output for `tf.random.stateless_normal([num_samples, noise_dim], seed=[SEED, 1])`, the
noise bin/train.py evaluates with. Files are written to temporary names and renamed into place
only once all three are complete.

Tabular runs also write samples_round_<N>.csv: the samples in the columns' own units, under
the header of the training files (the .npy holds them normalized, as the generator emits).

A class-conditional run (bin/train.py --conditional) exports G(noise, one_hot_labels) with
two inputs, noise [batch, noise_dim] and one-hot labels [batch, num_classes]; its samples are
of class --label, or of classes 0, 1, ..., K-1, 0, 1, ... in turn without it, and their
labels are also written to labels_round_<N>.npy.

Examples:
  python bin/generate.py --output_dir=runs/demo
  python bin/generate.py --output_dir=runs/digits --round=50 --num_samples=16 --seed=3
  python bin/generate.py --output_dir=runs/cgan --label=7
"""

from __future__ import annotations

import os
import sys

import _cli
from absl import flags

from tff_gan.run import rundir

flags.DEFINE_string('output_dir', None, 'Directory of a bin/train.py run (holds config.json '
                    'and checkpoints/).')
flags.DEFINE_integer('round', None, 'Round whose checkpoint to use (default: the latest '
                     'saved).')
flags.DEFINE_integer('num_samples', 64, 'Number of samples to draw.')
flags.DEFINE_integer('seed', 0, 'Seed of the generator noise; the same seed gives the same '
                     'samples.')
flags.DEFINE_integer('label', None, 'Conditional runs: the class to generate (default: every '
                     'class in turn).')
flags.DEFINE_string('export_dir', None, 'Where the files are written (default: '
                    'OUTPUT_DIR/export; created if needed).')

FLAGS = flags.FLAGS



def main(argv: list[str]) -> int:
  program = os.path.basename(argv[0])
  _cli.parse_flags(argv, __doc__)
  try:  # Checked before TensorFlow is imported, so a typo costs milliseconds.
    config, round_num = rundir.open_run(FLAGS.output_dir, FLAGS.round, FLAGS.num_samples,
                                        FLAGS.seed)
    if FLAGS.export_dir == '':
      raise rundir.RunError('--export_dir must not be empty.')
    export_dir = FLAGS.export_dir or os.path.join(FLAGS.output_dir, 'export')
    rundir.check_writable_dir(export_dir, '--export_dir')
    rundir.check_label(config, FLAGS.label)
  except rundir.RunError as e:
    _cli.usage_error(program, str(e))

  _cli.quiet_tensorflow()
  import numpy as np  # noqa: PLC0415

  from tff_gan import files  # noqa: PLC0415
  from tff_gan.core import conditional  # noqa: PLC0415
  from tff_gan.run import export  # noqa: PLC0415

  try:
    task, models, generator_weights = _cli.load_round(FLAGS.output_dir, config, round_num)
    generator = export.build_generator(models, generator_weights)
    outputs = {}
    if config.conditional:
      samples, labels = export.conditional_samples(generator, task, FLAGS.num_samples,
                                                   FLAGS.seed, FLAGS.label)
      generator = conditional.labelled_generator(generator, task.noise_dim, task.num_labels)
      outputs[os.path.join(export_dir, f'labels_round_{round_num}.npy')] = (
          lambda path: np.save(path, labels))
    else:
      samples = export.SampleGenerator(models)(generator_weights, FLAGS.num_samples,
                                               FLAGS.seed)
    for suffix, writer in task.sample_exports(samples).items():
      outputs[os.path.join(export_dir, f'samples_round_{round_num}.{suffix}')] = writer
    os.makedirs(export_dir, exist_ok=True)
    written = files.write_outputs(outputs | {
        os.path.join(export_dir, f'samples_round_{round_num}.png'):
            lambda path: task.render(samples, path),
        os.path.join(export_dir, f'samples_round_{round_num}.npy'):
            lambda path: np.save(path, samples),
        os.path.join(export_dir, f'generator_round_{round_num}.keras'):
            lambda path: generator.save(path),
    })
  except rundir.RunError as e:
    _cli.usage_error(program, str(e))
  except (_cli.LoadError, OSError) as e:
    print(f'{program}: error: {rundir.first_line(e)}', file=sys.stderr)
    return 1
  for path in written:
    print(f'{program}: wrote {path}')
  return 0


if __name__ == '__main__':
  sys.exit(_cli.run(main))
