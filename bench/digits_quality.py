"""FedGAN on `digits` (IID and Dirichlet) against the centralized baseline, at equal steps.

Trains up to four runs with the same DCGAN nets, losses, seed and rounds: FedGAN over 10 IID
clients (`iid`), FedGAN over 10 Dirichlet(α) clients (`dirichlet`), SCAFFOLD over the same
Dirichlet clients with its own learning-rate defaults (`scaffold-dirichlet`), and
`--scheme=centralized` (one pooled client taking, each round, as many steps as the 10
clients together). Prints a Markdown table of the Fréchet classifier distance and classifier
score at the last round and the best over the run, with the held-out real-data values and
each distance's ratio to the IID run's beside them.

Usage: python bench/digits_quality.py [--rounds=100] [--dirichlet_alpha=0.3] [--seed=0]
           [--runs=iid,dirichlet,scaffold-dirichlet,centralized]
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
flags.DEFINE_integer('seed', 0, 'Seed of every run.')
RUNS = ('iid', 'dirichlet', 'scaffold-dirichlet', 'centralized')
flags.DEFINE_list('runs', list(RUNS), 'Which runs, in this order: ' + ', '.join(RUNS) + '.')
flags.register_validator('runs', lambda runs: bool(runs) and set(runs) <= set(RUNS),
                         'takes a comma-separated list of ' + ', '.join(RUNS))
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

  dirichlet = dict(partition='dirichlet', dirichlet_alpha=FLAGS.dirichlet_alpha)
  alpha = f'Dirichlet α={FLAGS.dirichlet_alpha:g}'
  runs = {
      'iid': ('FedGAN, IID', dict(scheme='fedgan', partition='iid')),
      'dirichlet': (f'FedGAN, {alpha}', dict(scheme='fedgan', **dirichlet)),
      'scaffold-dirichlet': (f'SCAFFOLD, {alpha}', dict(scheme='scaffold', **dirichlet)),
      'centralized': ('centralized', dict(scheme='centralized')),
  }
  results = []
  for key in FLAGS.runs:
    name, settings = runs[key]
    output_dir = os.path.join(FLAGS.output_root, f'{key}_s{FLAGS.seed}')
    config = config_lib.TrainConfig(rounds=FLAGS.rounds, output_dir=output_dir,
                                    seed=FLAGS.seed, **COMMON, **settings).validate()
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
        f'(batch {COMMON["batch_size"]}, {COMMON["local_epochs"]} local epochs), '
        f'seed {FLAGS.seed}\n')
  print('| run | Fréchet distance, last (best) | last ÷ IID\'s last '
        '| classifier score, last (best) | wall time |')
  print('|---|---:|---:|---:|---:|')
  iid_rows = {name: rows for name, rows, _, _ in results}.get(runs['iid'][0])
  for name, rows, seconds, _ in results:
    distances = [float(r['frechet_distance']) for r in rows]
    scores = [float(r['classifier_score']) for r in rows]
    ratio = (f'{distances[-1] / float(iid_rows[-1]["frechet_distance"]):.2f}×'
             if iid_rows else '–')
    print(f'| {name} | {distances[-1]:.1f} ({min(distances):.1f}) | {ratio} '
          f'| {scores[-1]:.2f} ({max(scores):.2f}) | {seconds / 60:.1f} min |')
  reference = results[0][3]
  print(f'| real held-out digits | {reference["frechet_distance"]:.2f} | '
        f'| {reference["classifier_score"]:.2f} | |')
  return 0


if __name__ == '__main__':
  sys.exit(_cli.run(main))
