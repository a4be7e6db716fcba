"""FedGAN on `digits` (IID and Dirichlet) against the centralized baseline, at equal steps.

Trains three runs with the same DCGAN nets, losses, client optimizer, seed and rounds:
FedGAN over 10 IID clients, FedGAN over 10 Dirichlet(α) clients, and `--scheme=centralized`
(one pooled client taking, each round, as many steps as the 10 clients together). Prints a
Markdown table of the Fréchet classifier distance and classifier score at the last round
and the best over the run, with the held-out real-data values beside them.

Usage: python bench/digits_quality.py [--rounds=100] [--dirichlet_alpha=0.3]
           [--output_root=runs/bench_digits]
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'bin'))
import _cli  # noqa: E402  (sets TF_CPP_MIN_LOG_LEVEL and the import path)
from absl import flags  # noqa: E402

flags.DEFINE_integer('rounds', 100, 'Rounds per run.')
flags.DEFINE_float('dirichlet_alpha', 0.3, 'Concentration of the non-IID run.')
flags.DEFINE_string('output_root', 'runs/bench_digits', 'Where the runs are written.')
FLAGS = flags.FLAGS

COMMON = dict(task='digits', model='dcgan', num_clients=10, clients_per_round=10,
              batch_size=32, local_epochs=5, eval_every=10)


def main(argv):
  _cli.parse_flags(argv, __doc__)
  _cli.quiet_tensorflow()
  import tasks  # noqa: PLC0415
  from tff_gan.run import config as config_lib  # noqa: PLC0415
  from tff_gan.run import rundir, training  # noqa: PLC0415

  runs = {
      'FedGAN, IID': dict(scheme='fedgan', partition='iid'),
      f'FedGAN, Dirichlet α={FLAGS.dirichlet_alpha:g}': dict(
          scheme='fedgan', partition='dirichlet', dirichlet_alpha=FLAGS.dirichlet_alpha),
      'centralized': dict(scheme='centralized'),
  }
  results = []
  for name, settings in runs.items():
    output_dir = os.path.join(FLAGS.output_root, settings['scheme'] + '_' +
                              settings.get('partition', 'pooled'))
    config = config_lib.TrainConfig(rounds=FLAGS.rounds, output_dir=output_dir,
                                    **COMMON, **settings).validate()
    start = time.perf_counter()
    training.train(config, tasks.get_task('digits', model='dcgan'), show_progress=False,
                   overwrite=True)
    seconds = time.perf_counter() - start
    with open(os.path.join(output_dir, 'metrics.csv'), newline='') as f:
      evaluated = [row for row in csv.DictReader(f) if row['frechet_distance']]
    with open(os.path.join(output_dir, rundir.REFERENCE_FILE)) as f:
      reference = json.load(f)
    results.append((name, evaluated, seconds, reference))
    print(f'{name}: done in {seconds:.0f} s', flush=True)

  steps = int(evaluated[-1]['num_examples']) // COMMON['batch_size']
  print(f'\ndigits, DCGAN, 10 clients, {FLAGS.rounds} rounds of {steps} optimizer steps '
        f'(batch {COMMON["batch_size"]}, {COMMON["local_epochs"]} local epochs), seed 0\n')
  print('| run | Fréchet distance, last (best) | classifier score, last (best) | wall time |')
  print('|---|---:|---:|---:|')
  for name, rows, seconds, _ in results:
    distances = [float(r['frechet_distance']) for r in rows]
    scores = [float(r['classifier_score']) for r in rows]
    print(f'| {name} | {distances[-1]:.1f} ({min(distances):.1f}) '
          f'| {scores[-1]:.2f} ({max(scores):.2f}) | {seconds / 60:.1f} min |')
  reference = results[0][3]
  print(f'| real held-out digits | {reference["frechet_distance"]:.2f} '
        f'| {reference["classifier_score"]:.2f} | |')
  return 0


if __name__ == '__main__':
  sys.exit(_cli.run(main))
