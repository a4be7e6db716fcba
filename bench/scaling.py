"""Round time against clients per round, and round time and memory against the population.

Two tables from one run, on `ring` (MLP pair), every client taking 10 local steps of batch 64
on 640 examples it draws itself on the TFF worker (`--examples_per_client`):

* clients per round 5, 10, 20, 40, 80 in one process and one worker: the median round time
  of each, a least-squares line through them with its R², and the time per client against
  the time per client at 10;
* populations of 100, 1,000 and 10,000 clients at 10 clients per round, each a `bin/train.py`
  run: the median round time and the peak resident memory of the trainer and of its worker.

Usage: python bench/scaling.py [--clients_per_round=5,10,20,40,80]
  [--populations=100,1000,10000] [--rounds=3]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'bin'))
import _cli  # noqa: E402  (sets TF_CPP_MIN_LOG_LEVEL and the import path)
import procs  # noqa: E402
from absl import flags  # noqa: E402

flags.DEFINE_list('clients_per_round', ['5', '10', '20', '40', '80'], 'Round sizes to time.')
flags.DEFINE_list('populations', ['100', '1000', '10000'], 'Population sizes to run.')
flags.DEFINE_integer('rounds', 3, 'Timed rounds per round size (after one warm-up).')
flags.DEFINE_integer('population_rounds', 8, 'Rounds of each population run.')
FLAGS = flags.FLAGS

WORK_FLAGS = dict(examples_per_client=640, local_steps=10, batch_size=64)


def clients_per_round_table(sizes: list[int]) -> list[str]:
  import numpy as np  # noqa: PLC0415

  import tasks  # noqa: PLC0415
  from tff_gan.clients import populations as data
  from tff_gan.run import config as config_lib  # noqa: PLC0415
  from tff_gan.run import schemes  # noqa: PLC0415
  from tff_gan.runtime import contexts  # noqa: PLC0415

  config = config_lib.TrainConfig(num_clients=max(sizes), clients_per_round=max(sizes),
                                  **WORK_FLAGS).validate()
  task = tasks.get_task(config.task, seed=config.seed)
  clients = schemes.build_population(config, task)
  work = data.LocalWork(batch_size=config.batch_size, local_steps=config.local_steps)
  process = schemes.build_process(config, task.gan_models()).with_client_data(
      clients, work)
  medians = {}
  with contexts.local_cpp_context(parallel_clients=min(sizes)):
    state = process.initialize()
    for size in sizes:
      seconds = []
      for round_num in range(FLAGS.rounds + 1):
        keys = data.round_keys(np.arange(size), round_num=round_num, seed=0)
        start = time.perf_counter()
        state, _ = process.next(state, keys)
        seconds.append(time.perf_counter() - start)
      medians[size] = statistics.median(seconds[1:])  # The first is a warm-up.
  x = np.array(sizes, float)
  y = np.array([medians[size] for size in sizes])
  slope, intercept = np.polyfit(x, y, 1)
  r_squared = 1 - np.sum((y - (slope * x + intercept)) ** 2) / np.sum((y - y.mean()) ** 2)
  reference = medians[10] / 10 if 10 in medians else None
  lines = ['clients per round (ring, 10 steps of batch 64 each):',
           f'  {"clients":>8} {"round":>10} {"per client":>11} {"vs 10":>7}']
  for size in sizes:
    per_client = medians[size] / size
    ratio = f'{per_client / reference:7.2f}' if reference else '      -'
    lines.append(f'  {size:8d} {medians[size] * 1000:8.0f} ms {per_client * 1000:8.1f} ms {ratio}')
  lines.append(f'  fit: {intercept * 1000:.0f} ms + {slope * 1000:.1f} ms per client, '
               f'R² = {r_squared:.4f}')
  return lines


def population_table(populations: list[int]) -> list[str]:
  lines = ['population (10 clients per round):',
           f'  {"clients":>8} {"round":>10} {"trainer peak":>13} {"worker peak":>12}']
  base = None
  for population in populations:
    with tempfile.TemporaryDirectory() as output_dir:
      rounds = FLAGS.population_rounds
      run = procs.TrainRun(output_dir, [
          f'--num_clients={population}', '--clients_per_round=10', f'--rounds={rounds}',
          f'--eval_every={rounds}', f'--checkpoint_every={rounds}',
          *(f'--{name}={value}' for name, value in WORK_FLAGS.items())])
      run.wait()
    seconds = statistics.median(float(row['round_seconds']) for row in run.rows[1:])
    base = base or (seconds, run.trainer_peak_mib, run.worker_peak_mib)
    lines.append(f'  {population:8d} {seconds * 1000:8.0f} ms {run.trainer_peak_mib:9.0f} MiB '
                 f'{run.worker_peak_mib:8.0f} MiB   (x{seconds / base[0]:.2f}, '
                 f'x{run.trainer_peak_mib / base[1]:.2f}, x{run.worker_peak_mib / base[2]:.2f})')
  return lines


def main(argv):
  _cli.parse_flags(argv, __doc__)
  _cli.quiet_tensorflow()
  try:
    sizes = sorted(int(size) for size in FLAGS.clients_per_round)
    populations = sorted(int(population) for population in FLAGS.populations)
  except ValueError as e:
    _cli.usage_error(os.path.basename(argv[0]), f'sizes must be integers: {e}.')
  lines = []
  if sizes:
    lines += clients_per_round_table(sizes)
  if populations:
    lines += population_table(populations)
  print('\n'.join(lines))
  return 0


if __name__ == '__main__':
  sys.exit(_cli.run(main))
