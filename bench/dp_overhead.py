"""Round time with differential privacy against the same round without it.

Builds the same scheme twice on the same task, clients and seeds — once with the weighted
mean, once with the DP aggregator (clipping plus Gaussian noise, fixed or adaptive clip) —
and alternates rounds between them so machine noise hits both alike; prints the ratio.

Usage: python bench/dp_overhead.py [--scheme=dp_fedavg_gan] [--clients_per_round=20]
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'bin'))
import _cli  # noqa: E402  (sets TF_CPP_MIN_LOG_LEVEL and the import path)
from absl import flags  # noqa: E402

flags.DEFINE_string('scheme', 'dp_fedavg_gan', 'fedgan or dp_fedavg_gan.')
flags.DEFINE_integer('num_clients', 200, 'Client population.')
flags.DEFINE_integer('clients_per_round', 20, 'Clients per round (fixed sampling).')
flags.DEFINE_integer('local_steps', 5, 'Local steps per client per round.')
flags.DEFINE_bool('adaptive', False, 'Use adaptive clipping (quantile 0.5).')
flags.DEFINE_integer('rounds', 8, 'Timed rounds per side (after one warm-up round each).')
FLAGS = flags.FLAGS


def main(argv):
  _cli.parse_flags(argv, __doc__)
  _cli.quiet_tensorflow()
  import dataclasses  # noqa: PLC0415

  import tasks  # noqa: PLC0415
  from tff_gan.clients import populations as data
  from tff_gan.clients import sampling  # noqa: PLC0415
  from tff_gan.run import config as config_lib  # noqa: PLC0415
  from tff_gan.run import schemes  # noqa: PLC0415
  from tff_gan.runtime import contexts  # noqa: PLC0415

  plain = config_lib.TrainConfig(
      scheme=FLAGS.scheme, num_clients=FLAGS.num_clients,
      clients_per_round=FLAGS.clients_per_round, local_steps=FLAGS.local_steps,
      batch_size=64).validate()
  private = dataclasses.replace(
      plain, dp_noise_multiplier=1.0, dp_clip=0.1,
      dp_adaptive_clip_quantile=0.5 if FLAGS.adaptive else None).validate()
  task = tasks.get_task(plain.task)
  population = schemes.build_population(plain, task)
  work = data.LocalWork(batch_size=plain.batch_size, local_steps=plain.local_steps)
  processes = {name: schemes.build_process(config, task.gan_models())
               for name, config in (('plain', plain), ('dp', private))}
  times = {name: [] for name in processes}
  with contexts.local_cpp_context():
    states = {name: process.initialize() for name, process in processes.items()}
    for round_num in range(FLAGS.rounds + 1):
      client_ids = sampling.sample_clients(plain.num_clients, plain.clients_per_round,
                                       round_num=round_num, seed=0)
      for name, process in processes.items():
        datasets = population.round_datasets(client_ids, work, round_num=round_num, seed=0)
        start = time.perf_counter()
        states[name], _ = process.next(states[name], datasets)
        if round_num > 0:  # Round 0 warms up (tracing, worker start).
          times[name].append(time.perf_counter() - start)
  plain_median, dp_median = (statistics.median(times[n]) for n in ('plain', 'dp'))
  print(f'scheme={plain.scheme} clients_per_round={plain.clients_per_round} '
        f'local_steps={plain.local_steps} clip={"adaptive" if FLAGS.adaptive else "fixed"} '
        f'rounds={FLAGS.rounds}')
  print(f'  round without DP (median): {plain_median * 1000:8.1f} ms')
  print(f'  round with DP (median):    {dp_median * 1000:8.1f} ms')
  print(f'  ratio DP / no DP:          {dp_median / plain_median:8.2f}')
  return 0


if __name__ == '__main__':
  sys.exit(_cli.run(main))
