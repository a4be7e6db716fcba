"""Per-round time of the TFF FedGAN process against the same steps in one plain-TF loop.

Both sides run the same client update (`tff_gan.tf_fns.fedgan_client_update`) on the same
models, client datasets and seeds, and the same weighted average and server step; the TFF
side runs them as a federated round on TFF's C++ runtime, the plain side as a Python loop
over clients calling one `tf.function` in this process. Rounds alternate between the two
sides so machine noise hits both alike; the ratio is printed.

Usage: python bench/round_overhead.py [--task=ring] [--num_clients=10] [--rounds=8]
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'bin'))
import _cli  # noqa: E402  (sets TF_CPP_MIN_LOG_LEVEL and the import path)
from absl import flags  # noqa: E402

flags.DEFINE_string('task', 'ring', 'Task whose models and data are used.')
flags.DEFINE_string('model', 'mlp', 'Network pair.')
flags.DEFINE_integer('num_clients', 10, 'Clients per round (all sampled).')
flags.DEFINE_integer('local_steps', 10, 'Local steps per client per round.')
flags.DEFINE_integer('batch_size', 64, 'Client batch size.')
flags.DEFINE_integer('rounds', 8, 'Timed rounds per side (after one warm-up round each).')
FLAGS = flags.FLAGS


def main(argv):
  _cli.parse_flags(argv, __doc__)
  _cli.quiet_tensorflow()
  import numpy as np  # noqa: PLC0415
  import tensorflow as tf  # noqa: PLC0415

  import tasks  # noqa: PLC0415
  from tff_gan import config as config_lib  # noqa: PLC0415
  from tff_gan import contexts, data, losses, optimizers, tf_fns, training  # noqa: PLC0415
  from tff_gan.schemes import fedgan  # noqa: PLC0415
  from tff_gan.state import GanWeights, ServerBroadcast  # noqa: PLC0415

  config = config_lib.TrainConfig(
      task=FLAGS.task, model=FLAGS.model, num_clients=FLAGS.num_clients,
      clients_per_round=FLAGS.num_clients, local_steps=FLAGS.local_steps,
      batch_size=FLAGS.batch_size, client_learning_rate=1e-3).validate()
  task = tasks.get_task(config.task, seed=config.seed, model=config.model)
  models = task.gan_models()
  population = training.build_population(config, task)
  work = data.LocalWork(batch_size=config.batch_size, local_steps=config.local_steps)
  client_optimizer = optimizers.build_optimizer('adam', config.client_learning_rate)
  server_optimizer = optimizers.build_optimizer('sgd', 1.0)
  process = fedgan.build_fedgan_process(models, client_optimizer=client_optimizer,
                                        server_optimizer=server_optimizer, seed=config.seed)

  # The plain-TF side: one generator/discriminator pair, one traced client update.
  generator, discriminator = models.generator_fn(), models.discriminator_fn()
  client_update = tf.function(lambda dataset, broadcast: tf_fns.fedgan_client_update(
      dataset, broadcast, generator=generator, discriminator=discriminator,
      loss=losses.NON_SATURATING, generator_optimizer=client_optimizer,
      discriminator_optimizer=client_optimizer, noise_dim=models.noise_dim))

  @tf.function
  def server_step(state, delta):
    return tf_fns.server_update(state, delta, state.aggregator_state,
                                generator_optimizer=server_optimizer,
                                discriminator_optimizer=server_optimizer)

  def plain_round(state, datasets):
    broadcast = ServerBroadcast(weights=state.weights,
                                round_seed=tf_fns.round_seed(state.seed, state.round_num))
    outputs = [client_update(dataset, broadcast) for dataset in datasets]
    total = tf.add_n([o.num_examples for o in outputs])
    def weighted_mean(*deltas):
      return tf.add_n([o.num_examples * d for o, d in zip(outputs, deltas, strict=True)]) / total

    delta = tf.nest.map_structure(weighted_mean, *[o.delta for o in outputs])
    return server_step(state, GanWeights(*delta))

  client_ids = np.arange(config.num_clients)
  tff_times, plain_times = [], []
  with contexts.local_cpp_context():
    tff_state = process.initialize()
    plain_state = tff_state
    for round_num in range(FLAGS.rounds + 1):
      datasets = population.round_datasets(client_ids, work, round_num=round_num, seed=0)
      start = time.perf_counter()
      tff_state, _ = process.next(tff_state, datasets)
      tff_seconds = time.perf_counter() - start
      datasets = population.round_datasets(client_ids, work, round_num=round_num, seed=0)
      start = time.perf_counter()
      plain_state = plain_round(plain_state, datasets)
      tf.nest.map_structure(lambda t: t.numpy(), plain_state.weights)
      plain_seconds = time.perf_counter() - start
      if round_num > 0:  # Round 0 warms up both sides (tracing, worker start).
        tff_times.append(tff_seconds)
        plain_times.append(plain_seconds)

  print(f"  plain-TF client update traces: {client_update.experimental_get_tracing_count()}")
  steps = config.num_clients * config.local_steps
  tff_median, plain_median = statistics.median(tff_times), statistics.median(plain_times)
  print(f'task={config.task} model={config.model} clients={config.num_clients} '
        f'local_steps={config.local_steps} batch={config.batch_size} rounds={FLAGS.rounds}')
  print(f'  TFF round (median):      {tff_median * 1000:8.1f} ms  '
        f'({tff_median / steps * 1000:.2f} ms per client step)')
  print(f'  plain-TF round (median): {plain_median * 1000:8.1f} ms  '
        f'({plain_median / steps * 1000:.2f} ms per client step)')
  print(f'  ratio TFF / plain-TF:    {tff_median / plain_median:8.2f}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
