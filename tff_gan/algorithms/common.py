"""What every scheme shares: the initial server state and building models in a computation.

Scheme modules define TF bodies that TFF traces into its own graphs; the Keras models those
bodies use must be built there, on each trace, never captured from outside.
"""

from __future__ import annotations

import functools
import math

import tensorflow as tf

from tff_gan.core import client_work, seeds, tf_fns
from tff_gan.core.models import GanModels
from tff_gan.core.state import ClientOutput, GanWeights, ServerState

DEFAULT_CLIENT_LEARNING_RATE = 2e-4


def _read_weights(model: tf.keras.Model):
  return [v.read_value() for v in model.trainable_variables]


def initial_state_fn(
    models: GanModels,
    *,
    generator_server_optimizer,
    discriminator_server_optimizer,
    seed: int,
    generator_ema: bool = False,
):
  """Returns a TF body building the initial `ServerState` (without aggregator state).

  `seed` fixes the initial weights (see `seeds.keras_initializers_seeded`) as well as every
  later round's randomness. With `generator_ema`, the state carries an average of the
  generator's weights, starting at the initial ones.
  """

  def initial_state():
    tf.random.set_seed(seed)
    with seeds.keras_initializers_seeded(seed):
      generator = models.generator_fn()
      discriminator = models.discriminator_fn()
    generator_weights = _read_weights(generator)
    discriminator_weights = _read_weights(discriminator)
    return ServerState(
        weights=GanWeights(generator=generator_weights, discriminator=discriminator_weights),
        generator_optimizer_state=tf_fns.initialize_optimizer(
            generator_server_optimizer, generator.trainable_variables
        ),
        discriminator_optimizer_state=tf_fns.initialize_optimizer(
            discriminator_server_optimizer, discriminator.trainable_variables
        ),
        aggregator_state=(),
        round_num=tf.constant(0, tf.int64),
        seed=seeds.run_seed(seed),
        generator_ema=[tf.identity(w) for w in generator_weights] if generator_ema else (),
    )

  return initial_state


def check_proximal_mu(proximal_mu: float) -> None:
  if not (math.isfinite(proximal_mu) and proximal_mu >= 0):
    raise ValueError(f'--proximal_mu must be a finite number >= 0, got {proximal_mu}.')


def with_fresh_models(fn, models: GanModels, **bound):
  """`fn` as a `tf.function` bound to a new generator and discriminator built right here.

  Call inside the TFF computation whose graph should own the models; `bound` holds the other
  construction-time arguments of `fn` (loss, optimizers, ...).
  """
  return tf.function(functools.partial(
      fn, generator=models.generator_fn(), discriminator=models.discriminator_fn(), **bound))


def data_spec(models: GanModels, example_dp) -> tf.TensorSpec | tuple[tf.TensorSpec, ...]:
  """What a client dataset yields: batches, or `(batch, step seed)` pairs under example DP.

  With example-level DP (`example_dp` a `core.dp_sgd.ExampleDp`), clients draw Poisson
  batches that carry each step's seed (`core.dp_sgd.poisson_batches`).
  """
  if example_dp is None:
    return models.data_spec()
  return models.data_spec(), tf.TensorSpec([2], tf.int64)


def keep_state_if_non_finite(output: ClientOutput, new_state, old_state):
  """`(guarded_output, discarded, state)`: a client whose round produced a NaN or Inf sends
  nothing (weight 0) and keeps its state (e.g. its discriminator) as it was before the
  round."""
  guarded, discarded = client_work.discard_non_finite(output)
  finite = tf.equal(discarded, 0)
  state = tf.nest.map_structure(lambda new, old: tf.where(finite, new, old), new_state,
                                old_state)
  return guarded, discarded, state
