"""Warm start of client-resident discriminators (pure TF, no TFF): GS-WGAN's pretraining.

GS-WGAN (Chen et al. 2020) does not start private training from untrained critics: each of
its discriminators is first trained, without noise, against a generator of its own, which is
then thrown away. That costs no privacy: a discriminator never leaves its client, and what
leaves later (the sanitized per-sample gradients, `core.feedback`) is a Gaussian mechanism
whatever the discriminator is. It does cost the per-example amplification if done carelessly:
discriminator k may see its own shard and nothing else, or one example would move every
discriminator. So here each shard k gets its own pair: a discriminator and a generator,
both fresh draws of the initial weights (every tensor's entries permuted by a seed of k:
an i.i.d. initializer's draw permuted is another draw of it), trained on shard k alone. The
K discriminators then start private training apart from each other, each already a critic
of its shard's data, instead of K copies of one untrained network.

`pretrain_shards` runs inside a `tf.function` (`algorithms.multi_d` wraps it).
"""

from __future__ import annotations

import tensorflow as tf

from tff_gan.core import client_work, feedback, tf_fns
from tff_gan.core.losses import GanLoss
from tff_gan.core.state import DiscriminatorState


def redrawn(weights, seed):
  """Another draw of i.i.d.-initialized `weights`: each tensor's entries permuted under its
  own fold of the stateless `seed` (zeros stay zeros)."""
  return [tf.reshape(tf.random.experimental.stateless_shuffle(
      tf.reshape(w, [-1]), tf.random.experimental.stateless_fold_in(seed, i)), tf.shape(w))
      for i, w in enumerate(weights)]


def pretrain_shards(
    dataset: tf.data.Dataset,
    client_state: DiscriminatorState,
    initial_generator,
    seed,
    *,
    generator: tf.keras.Model,
    discriminator: tf.keras.Model,
    loss: GanLoss,
    discriminator_optimizer,
    generator_optimizer,
    noise_dim: int,
    batch_size: int,
    shards: int,
    steps: int,
    critic_steps: int,
) -> DiscriminatorState:
  """Each of a client's discriminators pretrained on its shard against a generator of its own.

  Args:
    dataset: All of the client's data, in batches (any size).
    client_state: The client's `shards` discriminators, every tensor stacked `[K, ...]`
      (or unstacked when `shards` is 1); their weights are the initial ones to redraw from.
    initial_generator: The generator's initial weights, redrawn for each shard's own.
    seed: An int64 `[2]` stateless seed (the run's warm-start seed).
    generator, discriminator: Keras networks built in the calling graph.
    loss: The `GanLoss` of the scheme (WGAN-GP for GS-WGAN).
    discriminator_optimizer, generator_optimizer: Functional optimizers, started fresh for
      each shard; the discriminator's state after pretraining is kept with its weights.
    noise_dim: Length of the noise vector.
    batch_size: Real examples per discriminator step.
    shards: K, the discriminators; an example belongs to shard `feedback.shard_of`.
    steps: Discriminator steps per shard (its shard's examples in order, repeated).
    critic_steps: Discriminator steps per step of the shard's generator.

  Returns:
    The new client state, structured like `client_state`.
  """
  examples = dataset.unbatch().cache()
  d_variables = discriminator.trainable_variables
  g_variables = generator.trainable_variables

  def pretrain(k, one: DiscriminatorState) -> DiscriminatorState:
    shard_seed = tf.random.experimental.stateless_fold_in(seed, k)
    tf_fns.assign_weights(d_variables, redrawn(one.weights, shard_seed))
    tf_fns.assign_weights(g_variables, redrawn(
        initial_generator, tf.random.experimental.stateless_fold_in(shard_seed, -1)))
    shard = examples
    if shards > 1:
      shard = examples.filter(lambda example: tf.equal(feedback.shard_of(example, shards), k))
    batches = shard.repeat().batch(batch_size).take(steps)

    def step(batch, size, step_seeds, carry):
      d_state, g_state, num = carry
      _, d_state = tf_fns.discriminator_step(
          batch, tf_fns.sample_noise(size, noise_dim, step_seeds[0]), step_seeds[1], d_state,
          generator=generator, discriminator=discriminator, loss=loss,
          optimizer=discriminator_optimizer)
      if (num + 1) % critic_steps == 0:
        _, g_state = tf_fns.generator_step(
            tf_fns.sample_noise(size, noise_dim, step_seeds[2]), g_state, generator=generator,
            discriminator=discriminator, loss=loss, optimizer=generator_optimizer)
      return d_state, g_state, num + 1

    carry = (tf_fns.as_tuples(tf_fns.initialize_optimizer(discriminator_optimizer, d_variables)),
             tf_fns.as_tuples(tf_fns.initialize_optimizer(generator_optimizer, g_variables)),
             tf.constant(0, tf.int64))
    (d_state, _, _), _, _ = client_work.local_loop(batches, shard_seed, step, carry,
                                                   num_seeds=3)
    return DiscriminatorState(weights=[v.read_value() for v in d_variables],
                              optimizer_state=d_state)

  if shards == 1:
    return pretrain(tf.constant(0, tf.int64), client_state)
  stacked = client_state
  for k in tf.range(shards, dtype=tf.int64):
    new = pretrain(k, tf.nest.map_structure(lambda t: tf.gather(t, k), stacked))  # noqa: B023
    stacked = tf.nest.map_structure(
        lambda old, value: tf.tensor_scatter_nd_update(old, [[k]], value[None]), stacked, new)  # noqa: B023
  return stacked
