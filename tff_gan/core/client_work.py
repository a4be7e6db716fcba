"""Each scheme's local work on one client's data (pure TensorFlow, no TFF import).

One loop (`local_loop`) walks a client's batches for every scheme; what a step does is the
scheme's: FedGAN's discriminator-then-generator step, DP-FedAvg-GAN's discriminator step,
FedSGD's gradients at the broadcast weights. Every function here runs inside a `tf.function`
(the TFF wiring in `tff_gan.algorithms` wraps them); the argument convention is `tf_fns`'.
"""

from __future__ import annotations

import collections

import tensorflow as tf

from tff_gan.core import dp_sgd, seeds
from tff_gan.core import losses as losses_lib
from tff_gan.core.state import ClientOutput, GanWeights, ServerBroadcast
from tff_gan.core.tf_fns import (
  assign_weights,
  discriminator_step,
  generator_step,
  initialize_optimizer,
  sample_noise,
  scale_learning_rate,
  weights_delta,
)


def local_loop(dataset: tf.data.Dataset, round_seed, step, carry, *, num_seeds: int):
  """The one loop over a client's batches that every scheme's local work runs.

  For each batch, in order, `carry = step(batch, batch_size, step_seeds, carry)`, where
  `step_seeds` are `num_seeds` stateless seeds unique to (round seed, step, batch contents)
  (`seeds.batch_seed`); or, when the dataset yields `(batch, step_seed)` pairs (Poisson
  batches, `dp_sgd.poisson_batches`), split from its `step_seed`, which does not depend on the
  data. Must run inside a `tf.function`; an iterator loop is far faster than a dataset
  reduce.

  Returns:
    `(carry, num_steps, num_examples)`: the final carry, the int64 number of batches and
    the float32 number of examples.
  """
  num_steps = tf.constant(0, tf.int64)
  num_examples = tf.constant(0.0)
  seeded = isinstance(dataset.element_spec, tuple)
  for element in iter(dataset):
    batch, step_seed = element if seeded else (element, None)
    batch_size = tf.shape(batch)[0]
    if not seeded:
      step_seed = seeds.batch_seed(round_seed, num_steps, batch)
    step_seeds = tf.random.experimental.stateless_split(step_seed, num_seeds)
    carry = step(batch, batch_size, step_seeds, carry)
    num_steps += 1
    num_examples += tf.cast(batch_size, tf.float32)
  return carry, num_steps, num_examples


@tf.autograph.experimental.do_not_convert
def _mean_over_steps(total, num_steps):
  return total / tf.maximum(tf.cast(num_steps, tf.float32), 1.0)


@tf.autograph.experimental.do_not_convert
def _discriminator_work(example_dp: dp_sgd.ExampleDp | None):
  """`(step, fake_batch_size, num_examples)` of a client's discriminator steps.

  Without example-level DP: `tf_fns.discriminator_step`, a generated batch as large as the
  real one, and the examples actually trained on. With it: the DP-SGD step
  (`dp_sgd.private_discriminator_step`), generated batches of the expected size B, and B per
  step as the example count (the drawn Poisson sizes depend on private data, so nothing
  reports them).
  """
  if example_dp is None:
    return discriminator_step, (lambda batch_size: batch_size), (lambda steps, n: n)

  def step(*args, correction=None, **kwargs):
    if correction is not None:
      raise ValueError('SCAFFOLD corrections are not built for DP-SGD discriminator steps.')
    return dp_sgd.private_discriminator_step(*args, **kwargs, example_dp=example_dp)

  return (step, (lambda batch_size: example_dp.batch_size),
          (lambda steps, n: tf.cast(steps, tf.float32) * example_dp.batch_size))


def fedgan_client_update(
    dataset: tf.data.Dataset,
    broadcast: ServerBroadcast,
    *,
    generator: tf.keras.Model,
    discriminator: tf.keras.Model,
    loss: losses_lib.GanLoss,
    generator_optimizer,
    discriminator_optimizer,
    noise_dim: int,
    proximal_mu: float = 0.0,
    proximal_generator: bool = True,
    example_dp: dp_sgd.ExampleDp | None = None,
    correction: GanWeights | None = None,
    learning_rate_scale=None,
) -> ClientOutput:
  """FedGAN local work: adversarial training of D and G on one client's batches.

  Starting from the broadcast weights, every batch of `dataset` gives one discriminator step
  (real batch against a generated batch of the same size) followed by one generator step on
  fresh noise. The client optimizers start from their initial state every round, as in
  FedAvg. Must run inside a `tf.function`: the weight assignment, the local steps and the
  delta are then ordered by automatic control dependencies.

  Args:
    dataset: The client's batches, float32 `[B, *data_shape]`; its length sets the local work.
    broadcast: The round's `ServerBroadcast`.
    generator: A Keras generator built in the calling graph.
    discriminator: A Keras discriminator (logits) built in the calling graph.
    loss: The `GanLoss`.
    generator_optimizer: Client optimizer for G.
    discriminator_optimizer: Client optimizer for D.
    noise_dim: Length of the noise vector.
    proximal_mu: FedProx's μ ≥ 0: each network's local objective gains
      (μ/2)‖w − w_broadcast‖²; 0 is FedAvg.
    proximal_generator: Whether the proximal term applies to the generator too (False: to
      the discriminator alone).
    example_dp: If set, the discriminator steps are DP-SGD (`_discriminator_work`) on
      Poisson batches; the generator steps read only that discriminator (post-processing).
    correction: SCAFFOLD's control-variate difference c − c_k per network (`GanWeights`),
      added to every local gradient (`algorithms.scaffold`); None: none.
    learning_rate_scale: A float32 scalar multiplying both client optimizers' learning rate
      this round (a schedule over rounds); None: 1.

  Returns:
    A `ClientOutput` with the weight deltas, the number of real examples trained on and the
    mean losses over the local steps (0 when the dataset was empty).
  """
  d_step, fake_batch_size, count_examples = _discriminator_work(example_dp)
  generator_variables = generator.trainable_variables
  discriminator_variables = discriminator.trainable_variables
  assign_weights(generator_variables, broadcast.weights.generator)
  assign_weights(discriminator_variables, broadcast.weights.discriminator)
  generator_state = scale_learning_rate(
      initialize_optimizer(generator_optimizer, generator_variables), learning_rate_scale)
  discriminator_state = scale_learning_rate(
      initialize_optimizer(discriminator_optimizer, discriminator_variables), learning_rate_scale)

  def step(batch, batch_size, step_seeds, carry):
    generator_state, discriminator_state, discriminator_loss_sum, generator_loss_sum = carry
    discriminator_loss, discriminator_state = d_step(
        batch,
        sample_noise(fake_batch_size(batch_size), noise_dim, step_seeds[0]),
        step_seeds[2],
        discriminator_state,
        generator=generator,
        discriminator=discriminator,
        loss=loss,
        optimizer=discriminator_optimizer,
        proximal_mu=proximal_mu,
        anchor=broadcast.weights.discriminator,
        correction=correction and correction.discriminator,
    )
    generator_loss, generator_state = generator_step(
        sample_noise(fake_batch_size(batch_size), noise_dim, step_seeds[1]),
        generator_state,
        generator=generator,
        discriminator=discriminator,
        loss=loss,
        optimizer=generator_optimizer,
        proximal_mu=proximal_mu if proximal_generator else 0.0,
        anchor=broadcast.weights.generator,
        correction=correction and correction.generator,
    )
    return (generator_state, discriminator_state, discriminator_loss_sum + discriminator_loss,
            generator_loss_sum + generator_loss)

  carry = (generator_state, discriminator_state, tf.constant(0.0), tf.constant(0.0))
  (_, _, discriminator_loss_sum, generator_loss_sum), num_steps, num_examples = local_loop(
      dataset, broadcast.round_seed, step, carry, num_seeds=3)
  return ClientOutput(
      delta=GanWeights(
          generator=weights_delta(generator_variables, broadcast.weights.generator),
          discriminator=weights_delta(discriminator_variables, broadcast.weights.discriminator),
      ),
      num_examples=count_examples(num_steps, num_examples),
      metrics=collections.OrderedDict(
          discriminator_loss=_mean_over_steps(discriminator_loss_sum, num_steps),
          generator_loss=_mean_over_steps(generator_loss_sum, num_steps),
      ),
  )


def discriminator_client_update(
    dataset: tf.data.Dataset,
    broadcast: ServerBroadcast,
    *,
    generator: tf.keras.Model,
    discriminator: tf.keras.Model,
    loss: losses_lib.GanLoss,
    discriminator_optimizer,
    noise_dim: int,
    proximal_mu: float = 0.0,
    example_dp: dp_sgd.ExampleDp | None = None,
) -> ClientOutput:
  """DP-FedAvg-GAN local work: discriminator steps only, against the broadcast generator.

  Every batch gives one discriminator step (the client's real batch against a generated batch
  of the same size; with `example_dp`, a DP-SGD step as in `fedgan_client_update`); the
  generator is only sampled from. Must run inside a `tf.function`.

  Returns:
    A `ClientOutput` whose `delta` is the discriminator's list of weight deltas.
  """
  discriminator_variables = discriminator.trainable_variables
  assign_weights(generator.trainable_variables, broadcast.weights.generator)
  assign_weights(discriminator_variables, broadcast.weights.discriminator)
  discriminator_state = initialize_optimizer(discriminator_optimizer, discriminator_variables)
  d_step, fake_batch_size, count_examples = _discriminator_work(example_dp)

  def step(batch, batch_size, step_seeds, carry):
    discriminator_state, loss_sum = carry
    discriminator_loss, discriminator_state = d_step(
        batch,
        sample_noise(fake_batch_size(batch_size), noise_dim, step_seeds[0]),
        step_seeds[1],
        discriminator_state,
        generator=generator,
        discriminator=discriminator,
        loss=loss,
        optimizer=discriminator_optimizer,
        proximal_mu=proximal_mu,
        anchor=broadcast.weights.discriminator,
    )
    return discriminator_state, loss_sum + discriminator_loss

  (_, loss_sum), num_steps, num_examples = local_loop(
      dataset, broadcast.round_seed, step, (discriminator_state, tf.constant(0.0)),
      num_seeds=2)
  return ClientOutput(
      delta=weights_delta(discriminator_variables, broadcast.weights.discriminator),
      num_examples=count_examples(num_steps, num_examples),
      metrics=collections.OrderedDict(
          discriminator_loss=_mean_over_steps(loss_sum, num_steps)),
  )


def fedsgd_client_gradients(
    dataset: tf.data.Dataset,
    broadcast: ServerBroadcast,
    *,
    generator: tf.keras.Model,
    discriminator: tf.keras.Model,
    loss: losses_lib.GanLoss,
    noise_dim: int,
) -> ClientOutput:
  """FedSGD local work: the gradients of both losses at the broadcast weights, no local step.

  The gradients are averaged over the client's examples, (1/|D_k|) Σ ∇ℓ, batch by batch
  (each batch against a generated batch of the same size); both are taken at the broadcast
  weights (simultaneous, not alternating). They are returned negated as the `delta`, so the
  server's optimizer, which treats −Δ as its gradient, steps along them: θ ← θ − η∇ with SGD.
  Must run inside a `tf.function`.
  """
  generator_variables = generator.trainable_variables
  discriminator_variables = discriminator.trainable_variables
  assign_weights(generator_variables, broadcast.weights.generator)
  assign_weights(discriminator_variables, broadcast.weights.discriminator)
  # Tuples, not lists: a `tf.data` loop would try to stack a list into one tensor.
  generator_sum = tuple(tf.zeros_like(v) for v in generator_variables)
  discriminator_sum = tuple(tf.zeros_like(v) for v in discriminator_variables)

  def step(batch, batch_size, step_seeds, carry):
    generator_sum, discriminator_sum, discriminator_loss_sum, generator_loss_sum = carry
    size = tf.cast(batch_size, tf.float32)
    with tf.GradientTape(persistent=True) as tape:
      fake = generator(sample_noise(batch_size, noise_dim, step_seeds[0]), training=True)
      real_logits = discriminator(batch, training=True)
      fake_logits = discriminator(fake, training=True)
      discriminator_loss = loss.discriminator_loss(real_logits, fake_logits)
      if loss.gradient_penalty_weight:
        discriminator_loss += loss.gradient_penalty_weight * losses_lib.gradient_penalty(
            discriminator, batch, tf.stop_gradient(fake), step_seeds[2])
      generator_loss = loss.generator_loss(fake_logits)
    discriminator_sum = tuple(s + size * g for s, g in zip(
        discriminator_sum, tape.gradient(discriminator_loss, discriminator_variables),
        strict=True))
    generator_sum = tuple(s + size * g for s, g in zip(
        generator_sum, tape.gradient(generator_loss, generator_variables), strict=True))
    return (generator_sum, discriminator_sum, discriminator_loss_sum + size * discriminator_loss,
            generator_loss_sum + size * generator_loss)

  carry = (generator_sum, discriminator_sum, tf.constant(0.0), tf.constant(0.0))
  sums, _, num_examples = local_loop(dataset, broadcast.round_seed, step, carry, num_seeds=3)
  generator_sum, discriminator_sum, discriminator_loss_sum, generator_loss_sum = sums
  total = tf.maximum(num_examples, 1.0)
  return ClientOutput(
      delta=GanWeights(generator=[-s / total for s in generator_sum],
                       discriminator=[-s / total for s in discriminator_sum]),
      num_examples=num_examples,
      metrics=collections.OrderedDict(discriminator_loss=discriminator_loss_sum / total,
                                      generator_loss=generator_loss_sum / total),
  )


def discard_non_finite(output: ClientOutput):
  """Zeroes a client output holding a NaN or Inf, so it carries weight 0 and no delta.

  Returns:
    `(guarded_output, discarded)`, where `discarded` is int32 1 for a zeroed output, else 0.
  """
  values = tf.nest.flatten((output.delta, output.num_examples, output.metrics))
  finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in values])

  def keep_if_finite(value):
    return tf.where(finite, value, tf.zeros_like(value))

  guarded = ClientOutput(
      delta=tf.nest.map_structure(keep_if_finite, output.delta),
      num_examples=keep_if_finite(output.num_examples),
      metrics=tf.nest.map_structure(keep_if_finite, output.metrics),
  )
  return guarded, tf.cast(tf.logical_not(finite), tf.int32)
