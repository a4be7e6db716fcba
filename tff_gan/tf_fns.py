"""Pure-TensorFlow training functions (no TFF import).

These functions are the arithmetic of every scheme: local adversarial updates on one
client's data and the server's application of an aggregated delta. They are written to run
inside a `tf.function` (the TFF wiring in `schemes/` wraps them) and follow one argument
convention: what TFF hands over at run time (datasets, broadcast weights, seeds) comes first;
what is bound when a process is built (models, losses, optimizers) comes after, keyword-only.

Optimizers are `tff.learning.optimizers.Optimizer`s, used only through their functional
`initialize(specs)` / `next(state, weights, gradients)` interface, so this module needs no
TFF import and every optimizer state is an explicit tensor structure.
"""

from __future__ import annotations

import collections

import tensorflow as tf

from tff_gan import losses as losses_lib
from tff_gan.state import ClientOutput, GanWeights, ServerBroadcast, ServerState

_HASH_BUCKETS = 2**62


def round_seed(seed, round_num):
  """The stateless seed of round `round_num` of a run with run seed `seed` (int64 `[2]`)."""
  return tf.random.experimental.stateless_fold_in(seed, tf.cast(round_num, tf.int64))


def batch_seed(seed, step, batch):
  """A seed unique to (round seed, local step, batch contents).

  Clients share the round seed; folding in a hash of the batch gives each client its own
  noise stream without the client having to know its identity.
  """
  content_key = tf.strings.to_hash_bucket_fast(tf.io.serialize_tensor(batch), _HASH_BUCKETS)
  step_seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(step, tf.int64))
  return tf.random.experimental.stateless_fold_in(step_seed, content_key)


def sample_noise(batch_size, noise_dim, seed):
  """Standard normal generator noise `[batch_size, noise_dim]` from a stateless seed."""
  return tf.random.stateless_normal([batch_size, noise_dim], seed=seed)


def initialize_optimizer(optimizer, variables):
  """The initial state of a functional optimizer for `variables`, as tensors.

  Per-variable parts of the state are tuples (not lists), so that the state can be carried
  through a `tf.data` loop, which would try to stack a list into one tensor.
  """
  specs = tuple(tf.TensorSpec(v.shape, v.dtype) for v in variables)
  return tf.nest.map_structure(tf.convert_to_tensor, optimizer.initialize(specs))


def apply_gradients(optimizer, optimizer_state, variables, gradients):
  """One functional-optimizer step on Keras variables; returns the new optimizer state."""
  weights = tuple(v.read_value() for v in variables)
  optimizer_state, new_weights = optimizer.next(optimizer_state, weights, tuple(gradients))
  for variable, value in zip(variables, new_weights, strict=True):
    variable.assign(value)
  return optimizer_state


def proximal_gradients(gradients, variables, anchor, proximal_mu: float):
  """Adds the gradient μ(w − w_anchor) of FedProx's term (μ/2)‖w − w_anchor‖² (Li et al. 2020).

  With `proximal_mu == 0` the gradients are returned untouched, so FedProx at μ = 0 is FedAvg
  exactly, not up to rounding.
  """
  if not proximal_mu:
    return gradients
  return [g + proximal_mu * (v - a) for g, v, a in zip(gradients, variables, anchor, strict=True)]


def assign_weights(variables, values):
  for variable, value in zip(variables, values, strict=True):
    variable.assign(value)


def discriminator_step(
    real, noise, gradient_penalty_seed, optimizer_state, *, generator, discriminator, loss,
    optimizer, proximal_mu: float = 0.0, anchor=None,
):
  """One discriminator update on a real batch and a generated batch.

  With `proximal_mu > 0`, the FedProx term pulls the weights toward `anchor` (the broadcast
  discriminator weights).

  Returns:
    `(discriminator_loss, new_optimizer_state)`.
  """
  fake = generator(noise, training=True)
  with tf.GradientTape() as tape:
    real_logits = discriminator(real, training=True)
    fake_logits = discriminator(fake, training=True)
    loss_value = loss.discriminator_loss(real_logits, fake_logits)
    if loss.gradient_penalty_weight:
      penalty = losses_lib.gradient_penalty(discriminator, real, fake, gradient_penalty_seed)
      loss_value += loss.gradient_penalty_weight * penalty
  variables = discriminator.trainable_variables
  gradients = proximal_gradients(tape.gradient(loss_value, variables), variables, anchor,
                                 proximal_mu)
  return loss_value, apply_gradients(optimizer, optimizer_state, variables, gradients)


def generator_step(noise, optimizer_state, *, generator, discriminator, loss, optimizer,
                   proximal_mu: float = 0.0, anchor=None):
  """One generator update against the current discriminator (FedProx term as above).

  Returns:
    `(generator_loss, new_optimizer_state)`.
  """
  with tf.GradientTape() as tape:
    fake_logits = discriminator(generator(noise, training=True), training=True)
    loss_value = loss.generator_loss(fake_logits)
  variables = generator.trainable_variables
  gradients = proximal_gradients(tape.gradient(loss_value, variables), variables, anchor,
                                 proximal_mu)
  return loss_value, apply_gradients(optimizer, optimizer_state, variables, gradients)


def weights_delta(variables, initial_values):
  return [v.read_value() - w for v, w in zip(variables, initial_values, strict=True)]


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

  Returns:
    A `ClientOutput` with the weight deltas, the number of real examples trained on and the
    mean losses over the local steps (0 when the dataset was empty).
  """
  generator_variables = generator.trainable_variables
  discriminator_variables = discriminator.trainable_variables
  assign_weights(generator_variables, broadcast.weights.generator)
  assign_weights(discriminator_variables, broadcast.weights.discriminator)
  generator_state = initialize_optimizer(generator_optimizer, generator_variables)
  discriminator_state = initialize_optimizer(discriminator_optimizer, discriminator_variables)

  num_steps = tf.constant(0, tf.int64)
  num_examples = tf.constant(0.0)
  discriminator_loss_sum = tf.constant(0.0)
  generator_loss_sum = tf.constant(0.0)
  for batch in iter(dataset):  # An iterator loop: far faster than a dataset reduce.
    batch_size = tf.shape(batch)[0]
    step_seeds = tf.random.experimental.stateless_split(
        batch_seed(broadcast.round_seed, num_steps, batch), 3
    )
    discriminator_loss, discriminator_state = discriminator_step(
        batch,
        sample_noise(batch_size, noise_dim, step_seeds[0]),
        step_seeds[2],
        discriminator_state,
        generator=generator,
        discriminator=discriminator,
        loss=loss,
        optimizer=discriminator_optimizer,
        proximal_mu=proximal_mu,
        anchor=broadcast.weights.discriminator,
    )
    generator_loss, generator_state = generator_step(
        sample_noise(batch_size, noise_dim, step_seeds[1]),
        generator_state,
        generator=generator,
        discriminator=discriminator,
        loss=loss,
        optimizer=generator_optimizer,
        proximal_mu=proximal_mu,
        anchor=broadcast.weights.generator,
    )
    num_steps += 1
    num_examples += tf.cast(batch_size, tf.float32)
    discriminator_loss_sum += discriminator_loss
    generator_loss_sum += generator_loss

  steps = tf.maximum(tf.cast(num_steps, tf.float32), 1.0)
  return ClientOutput(
      delta=GanWeights(
          generator=weights_delta(generator_variables, broadcast.weights.generator),
          discriminator=weights_delta(discriminator_variables, broadcast.weights.discriminator),
      ),
      num_examples=num_examples,
      metrics=collections.OrderedDict(
          discriminator_loss=discriminator_loss_sum / steps,
          generator_loss=generator_loss_sum / steps,
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
) -> ClientOutput:
  """DP-FedAvg-GAN local work: discriminator steps only, against the broadcast generator.

  Every batch gives one discriminator step (the client's real batch against a generated batch
  of the same size); the generator is only sampled from. Must run inside a `tf.function`.

  Returns:
    A `ClientOutput` whose `delta` is the discriminator's list of weight deltas.
  """
  discriminator_variables = discriminator.trainable_variables
  assign_weights(generator.trainable_variables, broadcast.weights.generator)
  assign_weights(discriminator_variables, broadcast.weights.discriminator)
  discriminator_state = initialize_optimizer(discriminator_optimizer, discriminator_variables)

  num_steps = tf.constant(0, tf.int64)
  num_examples = tf.constant(0.0)
  loss_sum = tf.constant(0.0)
  for batch in iter(dataset):  # An iterator loop: far faster than a dataset reduce.
    batch_size = tf.shape(batch)[0]
    step_seeds = tf.random.experimental.stateless_split(
        batch_seed(broadcast.round_seed, num_steps, batch), 2
    )
    discriminator_loss, discriminator_state = discriminator_step(
        batch,
        sample_noise(batch_size, noise_dim, step_seeds[0]),
        step_seeds[1],
        discriminator_state,
        generator=generator,
        discriminator=discriminator,
        loss=loss,
        optimizer=discriminator_optimizer,
        proximal_mu=proximal_mu,
        anchor=broadcast.weights.discriminator,
    )
    num_steps += 1
    num_examples += tf.cast(batch_size, tf.float32)
    loss_sum += discriminator_loss

  return ClientOutput(
      delta=weights_delta(discriminator_variables, broadcast.weights.discriminator),
      num_examples=num_examples,
      metrics=collections.OrderedDict(
          discriminator_loss=loss_sum / tf.maximum(tf.cast(num_steps, tf.float32), 1.0)
      ),
  )


def train_generator(
    weights: GanWeights,
    optimizer_state,
    seed,
    *,
    generator: tf.keras.Model,
    discriminator: tf.keras.Model,
    loss: losses_lib.GanLoss,
    optimizer,
    noise_dim: int,
    num_steps: int,
    batch_size: int,
):
  """Server-side generator training against a fixed discriminator (DP-FedAvg-GAN).

  Uses only generated samples: no client data. Must run inside a `tf.function`.

  Args:
    weights: Current `GanWeights` (the discriminator already updated this round).
    optimizer_state: The generator optimizer's state, carried across rounds.
    seed: int64 `[2]` stateless seed for this round's noise.
    num_steps: Generator steps to take.
    batch_size: Noise vectors per step.

  Returns:
    `(new_generator_weights, new_optimizer_state, mean_generator_loss)`.
  """
  assign_weights(generator.trainable_variables, weights.generator)
  assign_weights(discriminator.trainable_variables, weights.discriminator)
  loss_sum = tf.constant(0.0)
  for step in tf.range(num_steps):
    noise = sample_noise(batch_size, noise_dim,
                         tf.random.experimental.stateless_fold_in(seed, tf.cast(step, tf.int64)))
    generator_loss, optimizer_state = generator_step(
        noise, optimizer_state, generator=generator, discriminator=discriminator, loss=loss,
        optimizer=optimizer)
    loss_sum += generator_loss
  new_weights = [v.read_value() for v in generator.trainable_variables]
  return new_weights, optimizer_state, loss_sum / max(num_steps, 1)


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
  num_steps = tf.constant(0, tf.int64)
  num_examples = tf.constant(0.0)
  discriminator_loss_sum = tf.constant(0.0)
  generator_loss_sum = tf.constant(0.0)
  for batch in iter(dataset):  # An iterator loop: far faster than a dataset reduce.
    batch_size = tf.shape(batch)[0]
    size = tf.cast(batch_size, tf.float32)
    step_seeds = tf.random.experimental.stateless_split(
        batch_seed(broadcast.round_seed, num_steps, batch), 3)
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
    num_steps += 1
    num_examples += size
    discriminator_loss_sum += size * discriminator_loss
    generator_loss_sum += size * generator_loss

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


def apply_delta(optimizer, optimizer_state, weights, delta):
  """Applies an aggregated delta with a server optimizer.

  The negated delta is the optimizer's pseudo-gradient, so plain SGD with learning rate α
  gives θ ← θ + α·Δ (α = 1 is FedAvg).

  Returns:
    `(new_optimizer_state, new_weights)`.
  """
  # TFF hands sequences back as lists or tuples depending on where they came from; optimizers
  # such as SGD with momentum require the state and the weights to match exactly.
  pseudo_gradient = _as_tuples(tf.nest.map_structure(tf.negative, delta))
  new_state, new_weights = optimizer.next(_as_tuples(optimizer_state), _as_tuples(weights),
                                          pseudo_gradient)
  return new_state, list(new_weights)


def _as_tuples(structure):
  """`structure` with every list or plain tuple turned into a tuple (dicts kept as they are)."""
  if isinstance(structure, list) or type(structure) is tuple:
    return tuple(_as_tuples(x) for x in structure)
  if isinstance(structure, dict):
    return type(structure)((k, _as_tuples(v)) for k, v in structure.items())
  return structure


def server_update(
    state: ServerState,
    aggregated_delta: GanWeights,
    aggregator_state,
    *,
    generator_optimizer,
    discriminator_optimizer,
) -> ServerState:
  """Applies the round's aggregated deltas to both networks and advances the round (FedGAN)."""
  generator_state, generator_weights = apply_delta(
      generator_optimizer,
      state.generator_optimizer_state,
      state.weights.generator,
      aggregated_delta.generator,
  )
  discriminator_state, discriminator_weights = apply_delta(
      discriminator_optimizer,
      state.discriminator_optimizer_state,
      state.weights.discriminator,
      aggregated_delta.discriminator,
  )
  return ServerState(
      weights=GanWeights(generator=generator_weights, discriminator=discriminator_weights),
      generator_optimizer_state=generator_state,
      discriminator_optimizer_state=discriminator_state,
      aggregator_state=aggregator_state,
      round_num=state.round_num + 1,
      seed=state.seed,
  )


def server_generator_seed(state: ServerState):
  """The seed of the server's generator noise in round `state.round_num`.

  Derived from the round seed through a fixed fold, so it never equals a client's seed.
  """
  return tf.random.experimental.stateless_fold_in(
      round_seed(state.seed, state.round_num), tf.constant(-1, tf.int64))
