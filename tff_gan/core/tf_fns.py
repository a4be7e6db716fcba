"""Pure-TensorFlow training steps (no TFF import).

The arithmetic every scheme shares: one discriminator or generator step, optimizer steps on
Keras variables, the server's application of an aggregated delta and its generator training.
Each client's local work, built from these steps, is in `client_work`. The functions run
inside a `tf.function` (the TFF wiring in `tff_gan.algorithms` wraps them) and follow one argument
convention: what TFF hands over at run time (datasets, broadcast weights, seeds) comes first;
what is bound when a process is built (models, losses, optimizers) comes after, keyword-only.

Optimizers are `tff.learning.optimizers.Optimizer`s, used only through their functional
`initialize(specs)` / `next(state, weights, gradients)` interface, so this module needs no
TFF import and every optimizer state is an explicit tensor structure.

Functions without tensor-dependent Python control flow (every one here but `train_generator`,
whose loop runs over a tensor) carry `tf.autograph.experimental.do_not_convert`: traced as
written, they give the same graph, while AutoGraph would rewrite each of them, and the TFF
optimizer code they call, anew in every process (about 2 of a tiny run's 15 s of start-up,
measured on `fedgan` and `multi_d`). `losses`, `seeds`, `feedback` and `client_work` mark
theirs the same way; a marked function that branched on a tensor would fail when traced.
"""

from __future__ import annotations

import tensorflow as tf

from tff_gan.core import losses as losses_lib
from tff_gan.core import seeds
from tff_gan.core.state import GanWeights, ServerState


@tf.autograph.experimental.do_not_convert
def sample_noise(batch_size, noise_dim, seed):
  """Standard normal generator noise `[batch_size, noise_dim]` from a stateless seed."""
  return tf.random.stateless_normal([batch_size, noise_dim], seed=seed)


@tf.autograph.experimental.do_not_convert
def initialize_optimizer(optimizer, variables):
  """The initial state of a functional optimizer for `variables`, as tensors.

  Per-variable parts of the state are tuples (not lists), so that the state can be carried
  through a `tf.data` loop, which would try to stack a list into one tensor.
  """
  specs = tuple(tf.TensorSpec(v.shape, v.dtype) for v in variables)
  return tf.nest.map_structure(tf.convert_to_tensor, optimizer.initialize(specs))


@tf.autograph.experimental.do_not_convert
def scale_learning_rate(optimizer_state, scale):
  """A `tff.learning.optimizers` state whose learning rate is multiplied by `scale` (a
  float32 scalar; None leaves the state as it is)."""
  if scale is None:
    return optimizer_state
  return type(optimizer_state)(
      (key, value * scale if key == 'learning_rate' else value)
      for key, value in optimizer_state.items())


@tf.autograph.experimental.do_not_convert
def apply_gradients(optimizer, optimizer_state, variables, gradients):
  """One functional-optimizer step on Keras variables; returns the new optimizer state."""
  weights = tuple(v.read_value() for v in variables)
  optimizer_state, new_weights = optimizer.next(optimizer_state, weights, tuple(gradients))
  for variable, value in zip(variables, new_weights, strict=True):
    variable.assign(value)
  return optimizer_state


@tf.autograph.experimental.do_not_convert
def proximal_gradients(gradients, variables, anchor, proximal_mu: float):
  """Adds the gradient μ(w − w_anchor) of FedProx's term (μ/2)‖w − w_anchor‖² (Li et al. 2020).

  With `proximal_mu == 0` the gradients are returned untouched, so FedProx at μ = 0 is FedAvg
  exactly, not up to rounding.
  """
  if not proximal_mu:
    return gradients
  return [g + proximal_mu * (v - a) for g, v, a in zip(gradients, variables, anchor, strict=True)]


@tf.autograph.experimental.do_not_convert
def corrected_gradients(gradients, correction):
  """SCAFFOLD's corrected gradients g + (c − c_k) (Karimireddy et al. 2020): `correction` is
  the control-variate difference, one tensor per variable, or None for none."""
  if correction is None:
    return gradients
  return [g + c for g, c in zip(gradients, correction, strict=True)]


@tf.autograph.experimental.do_not_convert
def assign_weights(variables, values):
  for variable, value in zip(variables, values, strict=True):
    variable.assign(value)


@tf.autograph.experimental.do_not_convert
def discriminator_step(
    real, noise, gradient_penalty_seed, optimizer_state, *, generator, discriminator, loss,
    optimizer, proximal_mu: float = 0.0, anchor=None, correction=None,
):
  """One discriminator update on a real batch and a generated batch.

  With `proximal_mu > 0`, the FedProx term pulls the weights toward `anchor` (the broadcast
  discriminator weights); a `correction` (SCAFFOLD's c − c_k) is added to the gradients.

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
  gradients = corrected_gradients(gradients, correction)
  return loss_value, apply_gradients(optimizer, optimizer_state, variables, gradients)


@tf.autograph.experimental.do_not_convert
def generator_step(noise, optimizer_state, *, generator, discriminator, loss, optimizer,
                   proximal_mu: float = 0.0, anchor=None, correction=None):
  """One generator update against the current discriminator (FedProx term and correction as
  above).

  Returns:
    `(generator_loss, new_optimizer_state)`.
  """
  with tf.GradientTape() as tape:
    fake_logits = discriminator(generator(noise, training=True), training=True)
    loss_value = loss.generator_loss(fake_logits)
  variables = generator.trainable_variables
  gradients = proximal_gradients(tape.gradient(loss_value, variables), variables, anchor,
                                 proximal_mu)
  gradients = corrected_gradients(gradients, correction)
  return loss_value, apply_gradients(optimizer, optimizer_state, variables, gradients)


@tf.autograph.experimental.do_not_convert
def weights_delta(variables, initial_values):
  return [v.read_value() - w for v, w in zip(variables, initial_values, strict=True)]


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


@tf.autograph.experimental.do_not_convert
def apply_delta(optimizer, optimizer_state, weights, delta):
  """Applies an aggregated delta with a server optimizer.

  The negated delta is the optimizer's pseudo-gradient, so plain SGD with learning rate α
  gives θ ← θ + α·Δ (α = 1 is FedAvg).

  Returns:
    `(new_optimizer_state, new_weights)`.
  """
  # TFF hands sequences back as lists or tuples depending on where they came from; optimizers
  # such as SGD with momentum require the state and the weights to match exactly.
  pseudo_gradient = as_tuples(tf.nest.map_structure(tf.negative, delta))
  new_state, new_weights = optimizer.next(as_tuples(optimizer_state), as_tuples(weights),
                                          pseudo_gradient)
  return new_state, list(new_weights)


@tf.autograph.experimental.do_not_convert
def as_tuples(structure):
  """`structure` with every list or plain tuple turned into a tuple (dicts kept as they are)."""
  if isinstance(structure, list) or type(structure) is tuple:
    return tuple(as_tuples(x) for x in structure)
  if isinstance(structure, dict):
    return type(structure)((k, as_tuples(v)) for k, v in structure.items())
  return structure


@tf.autograph.experimental.do_not_convert
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
  return state._replace(
      weights=GanWeights(generator=generator_weights, discriminator=discriminator_weights),
      generator_optimizer_state=generator_state,
      discriminator_optimizer_state=discriminator_state,
      aggregator_state=aggregator_state,
      round_num=state.round_num + 1,
  )


@tf.autograph.experimental.do_not_convert
def with_generator_ema(new_state: ServerState, decay: float) -> ServerState:
  """`new_state` with its generator average moved toward its generator weights.

  ema ← decay·ema + (1 − decay)·w, once per round; a state without an average is returned
  as it is.
  """
  if not tf.nest.flatten(new_state.generator_ema):
    return new_state
  ema = [decay * average + (1.0 - decay) * weight for average, weight in
         zip(new_state.generator_ema, new_state.weights.generator, strict=True)]
  return new_state._replace(generator_ema=ema)


@tf.autograph.experimental.do_not_convert
def server_generator_seed(state: ServerState):
  """The seed of the server's generator noise in round `state.round_num`."""
  return seeds.server_generator_seed(state.seed, state.round_num)
