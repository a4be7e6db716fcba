"""Does fresh feedback rescue client-resident discriminators? A plain-TF check, no TFF.

`--scheme=multi_d` gives the generator 16 server steps a round on feedback the clients
computed for the round's first generator, so all but the first follow stale feedback. This
benchmark removes that staleness in the simplest setting: `ring`, 10 clients split by
`--partition`, one discriminator per client, the generator trained against their mixture
(`mean` or `universal`, as `tff_gan.core.feedback` defines them) by autodiff, and every
step alternating one discriminator step on every client (its own real batch against a fresh
generated one) with one generator step — the limit of one server step per exchange. 4,800
steps are the 300 rounds × 16 steps of a `multi_d` run. Prints the task's metrics every 800
steps, one line per (partition, mixture, seed).

Usage: python bench/fresh_feedback.py [--partitions=pathological,iid] [--mixtures=universal,mean]
  [--seeds=0] [--steps=4800]
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'bin'))
import _cli  # noqa: E402  (sets TF_CPP_MIN_LOG_LEVEL and the import path)
from absl import flags  # noqa: E402

flags.DEFINE_list('partitions', ['pathological', 'iid'], 'Client splits: iid, pathological '
                  '(2 modes per client), dirichlet (alpha 0.1).')
flags.DEFINE_list('mixtures', ['universal', 'mean'], 'Mixtures of the discriminators.')
flags.DEFINE_list('seeds', ['0'], 'Seeds.')
flags.DEFINE_integer('steps', 4800, 'Alternating steps per run.')
FLAGS = flags.FLAGS

NUM_CLIENTS, BATCH, LEARNING_RATE, MAX_LOGIT = 10, 128, 2e-4, 40.0


def run(partition_name: str, mixture: str, seed: int, steps: int) -> list[str]:
  import numpy as np  # noqa: PLC0415
  import tensorflow as tf  # noqa: PLC0415

  import tasks  # noqa: PLC0415
  from tff_gan.clients import partition  # noqa: PLC0415

  tf.keras.utils.set_random_seed(seed)
  task = tasks.get_task('ring', seed=seed)
  models = task.gan_models()
  split = {'pathological': dict(labels_per_client=2), 'dirichlet': dict(dirichlet_alpha=0.1)}
  parts = partition.partition(np.asarray(task.labels), NUM_CLIENTS, scheme=partition_name,
                              seed=seed, **split.get(partition_name, {}))
  sizes = np.array([len(part) for part in parts], np.float32)
  log_pi = tf.constant(np.log(sizes / sizes.sum()), tf.float32)[:, None]
  data = [tf.constant(np.asarray(task.examples)[part], tf.float32) for part in parts]
  generator = models.generator_fn()
  discriminators = [models.discriminator_fn() for _ in parts]
  adam = lambda: tf.keras.optimizers.Adam(LEARNING_RATE, beta_1=0.5)  # noqa: E731
  generator_optimizer, discriminator_optimizers = adam(), [adam() for _ in parts]

  @tf.function
  def step():
    for examples, discriminator, optimizer in zip(data, discriminators, discriminator_optimizers,
                                                  strict=True):
      real = tf.gather(examples, tf.random.uniform([BATCH], 0, tf.shape(examples)[0], tf.int32))
      fake = generator(tf.random.normal([BATCH, models.noise_dim]), training=True)
      with tf.GradientTape() as tape:
        loss = (tf.reduce_mean(tf.nn.softplus(-discriminator(real, training=True)))
                + tf.reduce_mean(tf.nn.softplus(discriminator(fake, training=True))))
      variables = discriminator.trainable_variables
      optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
    with tf.GradientTape() as tape:
      samples = generator(tf.random.normal([BATCH, models.noise_dim]), training=True)
      logits = tf.stack([tf.reshape(d(samples, training=True), [-1]) for d in discriminators])
      if mixture == 'universal':  # log Σ π_k exp(ℓ_k): the mixture's odds.
        mixed = tf.reduce_logsumexp(tf.clip_by_value(logits, -MAX_LOGIT, MAX_LOGIT) + log_pi, 0)
        loss = tf.reduce_mean(tf.nn.softplus(-mixed))
      else:  # Σ π_k L_G(D_k).
        loss = tf.reduce_mean(tf.reduce_sum(tf.exp(log_pi) * tf.nn.softplus(-logits), 0))
    variables = generator.trainable_variables
    generator_optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables,
                                            strict=True))

  lines, start = [], time.perf_counter()
  for index in range(1, steps + 1):
    step()
    if index % 800 == 0 or index == steps:
      metrics = task.evaluate(generator(tf.random.normal([2000, models.noise_dim])).numpy())
      lines.append(f'{partition_name:12s} {mixture:9s} seed {seed}  step {index:5d}  '
                   + '  '.join(f'{k}={v:.3g}' for k, v in metrics.items())
                   + f'  ({time.perf_counter() - start:.0f} s)')
      print(lines[-1], flush=True)
  return lines


def main(argv):
  _cli.parse_flags(argv, __doc__)
  _cli.quiet_tensorflow()
  for partition_name in FLAGS.partitions:
    for mixture in FLAGS.mixtures:
      for seed in FLAGS.seeds:
        run(partition_name, mixture, int(seed), FLAGS.steps)
  return 0


if __name__ == '__main__':
  sys.exit(_cli.run(main))
