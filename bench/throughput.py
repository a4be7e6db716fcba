"""How close a FedGAN round comes to the machine's arithmetic limit, against plain-TF loops.

For each task (`ring` with the MLP pair, `digits` with the DCGAN pair), 10 clients each take
10 local steps of batch 64 per round. Printed side by side from one run:

* peak: the dense float32 FLOP/s of chained 1024×1024 matmuls on all cores (median of 5);
* FLOPs of one client step (a discriminator step and a generator step, forward, backward and
  the Adam updates), counted by TensorFlow's profiler on the step's graph;
* the TFF round (`tff_gan` as `bin/train.py` runs it: client datasets built on the worker
  from keys, one client per core), its FLOP/s and its fraction of the peak;
* the same round as a straightforward plain-TF loop in one process: per client, set the
  weights, then for each batch call a `tf.function` train step with Keras Adam optimizers;
* the same round as a fused plain-TF loop: per client one `tf.function` running
  `tff_gan.core.client_work.fedgan_client_update` over the whole dataset (the client work TFF runs).

Rounds alternate between the three sides, so machine noise hits them alike.

Usage: python bench/throughput.py [--tasks=ring,digits] [--rounds=5]
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'bin'))
import _cli  # noqa: E402  (sets TF_CPP_MIN_LOG_LEVEL and the import path)
from absl import flags  # noqa: E402

flags.DEFINE_list('tasks', ['ring', 'digits'], 'Tasks to measure (ring: MLP, digits: DCGAN).')
flags.DEFINE_integer('clients', 10, 'Clients per round.')
flags.DEFINE_integer('local_steps', 10, 'Local steps per client per round.')
flags.DEFINE_integer('batch_size', 64, 'Client batch size.')
flags.DEFINE_integer('rounds', 5, 'Timed rounds per side (after one warm-up round each).')
FLAGS = flags.FLAGS

MODELS = {'ring': 'mlp', 'digits': 'dcgan'}


def matmul_peak_flops(tf, size: int = 1024, chain: int = 10, repeats: int = 5) -> float:
  """Dense float32 FLOP/s of `chain` dependent size×size matmuls in one graph (median)."""
  a = tf.random.normal([size, size])
  b = tf.random.normal([size, size]) / size**0.5  # Keeps the chained product's scale.

  @tf.function
  def chained(a, b):
    for _ in range(chain):
      a = tf.matmul(a, b)
    return a[0, 0]

  chained(a, b).numpy()
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    chained(a, b).numpy()
    rates.append(2 * size**3 * chain / (time.perf_counter() - start))
  return statistics.median(rates)


def step_flops(tf, models, optimizer, batch_size: int) -> float:
  """FLOPs of one client step, counted by TF's profiler on the step's graph."""
  from tff_gan.core import losses, tf_fns  # noqa: PLC0415

  generator, discriminator = models.generator_fn(), models.discriminator_fn()
  generator_state = tf_fns.initialize_optimizer(optimizer, generator.trainable_variables)
  discriminator_state = tf_fns.initialize_optimizer(optimizer, discriminator.trainable_variables)

  @tf.function
  def step(real):
    noise = tf.random.normal([batch_size, models.noise_dim])
    discriminator_loss, _ = tf_fns.discriminator_step(
        real, noise, tf.constant([0, 0], tf.int64), discriminator_state, generator=generator,
        discriminator=discriminator, loss=losses.NON_SATURATING, optimizer=optimizer)
    generator_loss, _ = tf_fns.generator_step(
        noise, generator_state, generator=generator, discriminator=discriminator,
        loss=losses.NON_SATURATING, optimizer=optimizer)
    return discriminator_loss + generator_loss

  graph = step.get_concrete_function(models.data_spec(batch_size)).graph
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options['output'] = 'none'
  return float(tf.compat.v1.profiler.profile(graph, options=options).total_float_ops)


class StraightforwardLoop:
  """What a TF user would write: per client, set weights, loop over batches in Python."""

  def __init__(self, tf, models, learning_rate: float):
    self._tf = tf
    self.generator, self.discriminator = models.generator_fn(), models.discriminator_fn()
    self._generator_optimizer = tf.keras.optimizers.Adam(learning_rate, beta_1=0.5)
    self._discriminator_optimizer = tf.keras.optimizers.Adam(learning_rate, beta_1=0.5)
    self._noise_dim = models.noise_dim
    self.train_step = tf.function(self._train_step)

  def _train_step(self, real):
    tf = self._tf
    cross_entropy = tf.keras.losses.BinaryCrossentropy(from_logits=True)
    batch_size = tf.shape(real)[0]
    with tf.GradientTape() as tape:
      fake = self.generator(tf.random.normal([batch_size, self._noise_dim]), training=True)
      real_logits = self.discriminator(real, training=True)
      fake_logits = self.discriminator(fake, training=True)
      loss = (cross_entropy(tf.ones_like(real_logits), real_logits)
              + cross_entropy(tf.zeros_like(fake_logits), fake_logits))
    self._apply(self._discriminator_optimizer, tape, loss, self.discriminator)
    with tf.GradientTape() as tape:
      fake = self.generator(tf.random.normal([batch_size, self._noise_dim]), training=True)
      fake_logits = self.discriminator(fake, training=True)
      loss = cross_entropy(tf.ones_like(fake_logits), fake_logits)
    self._apply(self._generator_optimizer, tape, loss, self.generator)

  @staticmethod
  def _apply(optimizer, tape, loss, model):
    variables = model.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))

  def round(self, weights, datasets):
    """One FedAvg round; returns the new (generator, discriminator) weight lists."""
    import numpy as np  # noqa: PLC0415

    deltas, sizes = [], []
    for dataset in datasets:
      self.generator.set_weights(weights[0])
      self.discriminator.set_weights(weights[1])
      for optimizer in (self._generator_optimizer, self._discriminator_optimizer):
        for variable in optimizer.variables:  # A fresh optimizer per client, as in FedAvg.
          variable.assign(self._tf.zeros_like(variable))
      size = 0
      for batch in dataset:
        self.train_step(batch)
        size += int(batch.shape[0])
      deltas.append([[new - old for new, old in zip(model.get_weights(), initial, strict=True)]
                     for model, initial in ((self.generator, weights[0]),
                                            (self.discriminator, weights[1]))])
      sizes.append(size)
    shares = np.array(sizes, np.float32) / sum(sizes)
    return [[old + sum(s * d[net][i] for s, d in zip(shares, deltas, strict=True))
             for i, old in enumerate(weights[net])] for net in (0, 1)]


def measure(task_name: str, peak: float) -> list[str]:
  import numpy as np  # noqa: PLC0415
  import tensorflow as tf  # noqa: PLC0415

  import tasks  # noqa: PLC0415
  from tff_gan.algorithms import fedgan, optimizers  # noqa: PLC0415
  from tff_gan.clients import populations as data  # noqa: PLC0415
  from tff_gan.core import client_work, losses  # noqa: PLC0415
  from tff_gan.core.state import GanWeights, ServerBroadcast  # noqa: PLC0415
  from tff_gan.run import config as config_lib  # noqa: PLC0415
  from tff_gan.run import schemes  # noqa: PLC0415
  from tff_gan.runtime import contexts  # noqa: PLC0415

  config = config_lib.TrainConfig(
      task=task_name, model=MODELS[task_name], num_clients=FLAGS.clients,
      clients_per_round=FLAGS.clients, local_steps=FLAGS.local_steps,
      batch_size=FLAGS.batch_size).validate()
  task = tasks.get_task(config.task, seed=config.seed, model=config.model)
  models = task.gan_models()
  population = schemes.build_population(config, task)
  steps_examples = FLAGS.local_steps * FLAGS.batch_size  # Enough epochs for full batches.
  work = data.LocalWork(batch_size=FLAGS.batch_size,
                        local_epochs=math.ceil(steps_examples / population.client_sizes.min()),
                        local_steps=FLAGS.local_steps)
  optimizer = optimizers.build_optimizer('adam', config.client_learning_rate)
  flops_per_round = (step_flops(tf, models, optimizer, FLAGS.batch_size)
                     * FLAGS.clients * FLAGS.local_steps)
  process = fedgan.build_fedgan_process(models, client_optimizer=optimizer, seed=config.seed)
  keyed_process = process.with_client_data(population, work)

  generator, discriminator = models.generator_fn(), models.discriminator_fn()
  fused_update = tf.function(lambda dataset, broadcast: client_work.fedgan_client_update(
      dataset, broadcast, generator=generator, discriminator=discriminator,
      loss=losses.NON_SATURATING, generator_optimizer=optimizer,
      discriminator_optimizer=optimizer, noise_dim=models.noise_dim))

  def fused_round(weights, datasets):
    broadcast = ServerBroadcast(weights=weights, round_seed=tf.constant([0, 0], tf.int64))
    outputs = [fused_update(dataset, broadcast) for dataset in datasets]
    shares = np.array([o.num_examples.numpy() for o in outputs]) / sum(
        o.num_examples.numpy() for o in outputs)
    return tf.nest.map_structure(
        lambda old, *deltas: old + sum(s * d.numpy() for s, d in zip(shares, deltas, strict=True)),
        weights, *[GanWeights(*o.delta) for o in outputs])

  straightforward = StraightforwardLoop(tf, models, config.client_learning_rate)
  client_ids = np.arange(FLAGS.clients)
  times = {'tff': [], 'straightforward': [], 'fused': []}
  with contexts.local_cpp_context(parallel_clients=FLAGS.clients):
    state = keyed_process.initialize()
    initial = [list(map(np.asarray, state.weights.generator)),
               list(map(np.asarray, state.weights.discriminator))]
    plain_weights, fused_weights = initial, GanWeights(*initial)
    for round_num in range(FLAGS.rounds + 1):
      start = time.perf_counter()
      state, _ = keyed_process.next(
          state, data.round_keys(client_ids, round_num=round_num, seed=0))
      tff_seconds = time.perf_counter() - start
      datasets = population.round_datasets(client_ids, work, round_num=round_num, seed=0)
      start = time.perf_counter()
      plain_weights = straightforward.round(plain_weights, datasets)
      straightforward_seconds = time.perf_counter() - start
      datasets = population.round_datasets(client_ids, work, round_num=round_num, seed=0)
      start = time.perf_counter()
      fused_weights = fused_round(fused_weights, datasets)
      fused_seconds = time.perf_counter() - start
      if round_num:  # Round 0 warms every side up (tracing, worker start).
        times['tff'].append(tff_seconds)
        times['straightforward'].append(straightforward_seconds)
        times['fused'].append(fused_seconds)

  medians = {side: statistics.median(values) for side, values in times.items()}
  lines = [f'{task_name} ({config.model}), {FLAGS.clients} clients x {FLAGS.local_steps} '
           f'steps, batch {FLAGS.batch_size}: {flops_per_round / 1e9:.2f} GFLOP per round']
  for side, label in (('tff', 'TFF round (tff_gan)'),
                      ('straightforward', 'plain TF, straightforward loop'),
                      ('fused', 'plain TF, fused client update')):
    rate = flops_per_round / medians[side]
    lines.append(f'  {label:32s} {medians[side] * 1000:8.1f} ms  {rate / 1e9:6.1f} GFLOP/s  '
                 f'{rate / peak:5.1%} of peak  TFF speed-up {medians[side] / medians["tff"]:.2f}x')
  return lines


def main(argv):
  _cli.parse_flags(argv, __doc__)
  _cli.quiet_tensorflow()
  import tensorflow as tf  # noqa: PLC0415

  for name in FLAGS.tasks:
    if name not in MODELS:
      _cli.usage_error(os.path.basename(argv[0]),
                       f'--tasks: unknown task {name!r}; choose from ring, digits.')
  peak = matmul_peak_flops(tf)
  lines = [f'peak: {peak / 1e9:.0f} GFLOP/s (chained 1024x1024 float32 matmuls, '
           f'{os.cpu_count()} cores)']
  for name in FLAGS.tasks:
    lines += measure(name, peak)
  print('\n'.join(lines))
  return 0


if __name__ == '__main__':
  sys.exit(_cli.run(main))
