"""Training one generator against many discriminators it never sees (pure TF, no TFF).

The client-resident-discriminator scheme (MD-GAN, Hardy et al. 2019; UA-GAN, Zhang et al.
2021): every client keeps its own discriminator D_k; the server keeps the generator G. In a
round each sampled client trains D_k on its data against samples of the broadcast G, then
judges the round's generated samples x = G(z) — the server's noise z, drawn from the round
seed, so client and server generate the same x — and returns, per sample, what G's update
needs (`Feedback`). The server averages the feedback over clients and takes G's steps by
backpropagating it through G (a vector–Jacobian product): no discriminator weight, and no
real example, ever reaches the server.

Two mixtures of the clients' discriminators:

* `mean` (MD-GAN): G minimizes Σ_k π_k L_G(D_k(G(z))), π_k = n_k / n. Each client returns the
  per-sample gradient ∂L_G/∂x of its own discriminator; the server averages them.
* `universal` (UA-GAN): D_k's optimum has odds D_k/(1 − D_k) = p_k(x)/q(x), so the odds of
  the mixture p = Σ π_k p_k are the π-weighted mean of the clients' odds: the universal
  discriminator's logit is L(x) = log Σ_k π_k exp(ℓ_k(x)), and G minimizes L_G(L(G(z))).
  Each client returns its odds exp(ℓ_k) and exp(ℓ_k)·∂ℓ_k/∂x; their means give
  ∂L/∂x = mean(odds·∂ℓ)/mean(odds) and L = log mean(odds). A discriminator that never saw
  a mode no longer vetoes it: where a client holding the mode has high odds, the mixture
  does too. Logits are clipped to ±`MAX_LOGIT` before exp (float32 range).

With one client and either mixture, a round's generator step equals a generator step
against that client's discriminator (a test checks).

GS-WGAN (Chen et al. 2020; `GsSanitizer`): before the mean mixture's feedback leaves the
client, each per-sample gradient ∂L_G/∂x_i is clipped to L2 norm C and Gaussian noise of
standard deviation σ·C is added to it; the weights are all ones and the example count is not
sent. Whatever the client's data, its message is then a Gaussian mechanism of ℓ2 sensitivity
2C·√(steps·batch) (each of the steps·batch clipped vectors can move by at most 2C), that is
of noise multiplier σ / (2·√(steps·batch)) (`message_noise_multiplier`).
"""

from __future__ import annotations

import collections
import dataclasses
import math

import tensorflow as tf

from tff_gan.core import client_work, seeds, tf_fns
from tff_gan.core.losses import GanLoss
from tff_gan.core.state import DiscriminatorState, Feedback, ServerBroadcast

MAX_LOGIT = 40.0


@dataclasses.dataclass(frozen=True)
class GsSanitizer:
  """GS-WGAN's sanitization of a client's feedback (module docstring).

  Attributes:
    clip: C, the L2 bound of each per-sample gradient.
    noise_multiplier: σ; each clipped gradient gets noise of standard deviation σ·C.
    noise_key: The key the noise descends from (`seeds.noise_key`), folded with the round
      seed and a hash of the client's trained discriminator, so each client draws its own.
    shards: K ≥ 1, the discriminators each client keeps (`algorithms.multi_d`): its data is
      split over them by a hash of each example, and every round one of them, drawn at
      random, trains on its shard and answers.
  """

  clip: float
  noise_multiplier: float
  noise_key: tuple[int, int]
  shards: int = 1

  def __post_init__(self):
    if not (self.clip > 0 and self.noise_multiplier >= 0 and self.shards >= 1):
      raise ValueError(f'GS-WGAN needs clip > 0, noise_multiplier >= 0 and shards >= 1, got '
                       f'{self}.')


def message_noise_multiplier(noise_multiplier: float, generator_steps: int,
                             batch_size: int) -> float:
  """The noise multiplier of one client's whole sanitized message of a round (σ per
  per-sample gradient, sensitivity 2C·√(steps·batch)), for accounting."""
  return noise_multiplier / (2 * math.sqrt(generator_steps * batch_size))


@tf.autograph.experimental.do_not_convert
def shard_of(example, shards: int):
  """The shard (int64 in [0, shards)) an example belongs to: a hash of its contents, so
  adding or removing one example changes one shard and no other."""
  return tf.strings.to_hash_bucket_fast(tf.io.serialize_tensor(example), shards)


@tf.autograph.experimental.do_not_convert
def draw_shard(dataset: tf.data.Dataset, sanitizer: GsSanitizer, round_seed):
  """The shard a client's round uses: uniform in [0, shards), from the noise key, the round
  and a hash of the round's batches (a keyed pseudo-random function: without the key, nobody
  can tell which shard answered)."""
  fingerprint = dataset.reduce(tf.constant(0, tf.int64), lambda acc, batch: tf.bitwise.bitwise_xor(
      acc, tf.strings.to_hash_bucket_fast(tf.io.serialize_tensor(batch), 2**62)))
  seed = seeds.batch_seed(seeds.keyed_seed(sanitizer.noise_key, round_seed[1]), round_seed[0],
                          fingerprint)
  return tf.random.stateless_uniform([], seed, 0, sanitizer.shards, dtype=tf.int64)


@tf.autograph.experimental.do_not_convert
def sanitize(weighted_gradient, sanitizer: GsSanitizer, seed):
  """Each per-sample gradient of `[steps, batch, *shape]` clipped to `sanitizer.clip` in L2
  and noised with N(0, (σ·C)²) per coordinate, under the stateless `seed`."""
  flat = tf.reshape(weighted_gradient, [tf.shape(weighted_gradient)[0],
                                        tf.shape(weighted_gradient)[1], -1])
  norms = tf.norm(flat, axis=-1, keepdims=True)
  clipped = flat * tf.minimum(1.0, sanitizer.clip / tf.maximum(norms, 1e-12))
  noise = tf.random.stateless_normal(tf.shape(clipped), seed,
                                     stddev=sanitizer.noise_multiplier * sanitizer.clip)
  return tf.reshape(clipped + noise, tf.shape(weighted_gradient))


@tf.autograph.experimental.do_not_convert
def feedback_noise(round_seed, step, batch_size: int, noise_dim: int):
  """The noise of the round's generator step `step`, the same on every client and the server."""
  seed = tf.random.experimental.stateless_fold_in(
      tf.random.experimental.stateless_fold_in(round_seed,
                                               tf.constant(seeds.FEEDBACK_SALT, tf.int64)),
      tf.cast(step, tf.int64))
  return tf_fns.sample_noise(batch_size, noise_dim, seed)


@tf.autograph.experimental.do_not_convert
def _per_sample_logit_gradients(discriminator, samples):
  """`(logits [B], ∂ℓ_i/∂x_i [B, *shape])`: per-sample, since the networks treat examples
  independently (no batch normalization), the gradient of Σ_i ℓ_i is the per-sample one."""
  with tf.GradientTape() as tape:
    tape.watch(samples)
    logits = tf.reshape(discriminator(samples, training=True), [-1])
  return logits, tape.gradient(logits, samples)


@tf.autograph.experimental.do_not_convert
def generator_loss_slope(loss: GanLoss, logits):
  """dL_G/dℓ per sample for the loss L_G(ℓ) = mean_i l(ℓ_i), times the batch size."""
  with tf.GradientTape() as tape:
    tape.watch(logits)
    value = loss.generator_loss(logits[:, None]) * tf.cast(tf.size(logits), tf.float32)
  return tape.gradient(value, logits)


def client_feedback_update(
    dataset: tf.data.Dataset,
    broadcast: ServerBroadcast,
    client_state: DiscriminatorState,
    *,
    generator: tf.keras.Model,
    discriminator: tf.keras.Model,
    loss: GanLoss,
    optimizer,
    noise_dim: int,
    generator_steps: int,
    batch_size: int,
    mixture: str,
    sanitizer: GsSanitizer | None = None,
):
  """A client's round: train its own discriminator, then judge the round's generated samples.

  Every batch of `dataset` gives one step of the client's discriminator (its real batch
  against a generated batch of the same size), from the client's own weights and optimizer
  state. Then, for each of the round's `generator_steps` noise batches, the client computes
  its `Feedback` on the samples G(z); with a `sanitizer` (mean mixture), GS-WGAN's
  sanitized feedback, an example count of 1 and no metrics computed from the discriminator
  (both zero). Must run inside a `tf.function`.

  Returns:
    `(feedback, num_examples, metrics, new_client_state)`: `feedback` a `Feedback` with
    leading dimensions `[generator_steps, batch_size]`.
  """
  tf_fns.assign_weights(generator.trainable_variables, broadcast.weights.generator)
  tf_fns.assign_weights(discriminator.trainable_variables, client_state.weights)

  def step(batch, size, step_seeds, carry):
    optimizer_state, loss_sum = carry
    discriminator_loss, optimizer_state = tf_fns.discriminator_step(
        batch, tf_fns.sample_noise(size, noise_dim, step_seeds[0]), step_seeds[1],
        optimizer_state, generator=generator, discriminator=discriminator, loss=loss,
        optimizer=optimizer)
    return optimizer_state, loss_sum + discriminator_loss

  (optimizer_state, loss_sum), num_steps, num_examples = client_work.local_loop(
      dataset, broadcast.round_seed, step,
      (tf_fns.as_tuples(client_state.optimizer_state), tf.constant(0.0)), num_seeds=2)

  weights, weighted_gradients, generator_losses = [], [], []
  for j in range(generator_steps):
    samples = generator(feedback_noise(broadcast.round_seed, j, batch_size, noise_dim),
                        training=True)
    logits, logit_gradients = _per_sample_logit_gradients(discriminator, samples)
    generator_losses.append(loss.generator_loss(logits[:, None]))
    if mixture == 'mean':
      slope = generator_loss_slope(loss, logits)
      weight = tf.ones_like(logits)
      weighted_gradient = _expand(slope, logit_gradients) * logit_gradients
    else:
      weight = tf.exp(tf.clip_by_value(logits, -MAX_LOGIT, MAX_LOGIT))
      weighted_gradient = _expand(weight, logit_gradients) * logit_gradients
    weights.append(weight)
    weighted_gradients.append(weighted_gradient)
  new_state = DiscriminatorState(
      weights=[v.read_value() for v in discriminator.trainable_variables],
      optimizer_state=optimizer_state)
  metrics = collections.OrderedDict(
      discriminator_loss=loss_sum / tf.maximum(tf.cast(num_steps, tf.float32), 1.0),
      generator_loss=tf.reduce_mean(generator_losses))
  weights, weighted_gradients = tf.stack(weights), tf.stack(weighted_gradients)
  if sanitizer is not None:
    weighted_gradients = sanitize(weighted_gradients, sanitizer, seeds.batch_seed(
        seeds.keyed_seed(sanitizer.noise_key, broadcast.round_seed[1]), broadcast.round_seed[0],
        tf.concat([tf.reshape(w, [-1]) for w in new_state.weights], 0)))
    num_examples = tf.ones_like(num_examples)
    metrics = tf.nest.map_structure(tf.zeros_like, metrics)
  return (Feedback(weight=weights, weighted_gradient=weighted_gradients),
          num_examples, metrics, new_state)


@tf.autograph.experimental.do_not_convert
def sample_gradients(mean_feedback: Feedback, *, loss: GanLoss, mixture: str):
  """The per-sample gradients ∂L_G/∂x `[steps, batch, *shape]` the clients' mean feedback
  gives (times the batch size: the loss is a mean over the batch)."""
  ratio = mean_feedback.weighted_gradient / _expand(
      tf.maximum(mean_feedback.weight, tf.keras.backend.epsilon() ** 4),
      mean_feedback.weighted_gradient)
  if mixture == 'mean':
    return ratio
  mixture_logits = tf.math.log(tf.maximum(mean_feedback.weight, 1e-30))
  slopes = tf.stack([generator_loss_slope(loss, logits) for logits in tf.unstack(mixture_logits)])
  return _expand(slopes, ratio) * ratio


@tf.autograph.experimental.do_not_convert
def _expand(per_sample, like):
  """`per_sample` (`[B]` or `[S, B]`) reshaped to broadcast against `like` (`[B, ...]` or
  `[S, B, ...]`): ones appended for the sample's own dimensions."""
  shape = tf.concat([tf.shape(per_sample),
                     tf.ones([tf.rank(like) - tf.rank(per_sample)], tf.int32)], 0)
  return tf.reshape(per_sample, shape)


@tf.autograph.experimental.do_not_convert
def train_generator_on_feedback(
    generator_weights,
    optimizer_state,
    round_seed,
    gradients,
    *,
    generator: tf.keras.Model,
    optimizer,
    noise_dim: int,
    sample_anchor: float = 0.0,
):
  """The server's generator steps of a round, one per noise batch of the feedback.

  The clients judged the round's first generator, G₀; after the server's first step their
  feedback is stale. Step j minimizes, over the current G and the round's noise z_j,

      mean_i [ g_ij · G(z_ij) + (λ/2) ‖G(z_ij) − G₀(z_ij)‖² ],

  g the clients' per-sample gradients `gradients[j]`: the first term backpropagates the
  feedback through G (at G = G₀ it is the generator loss's gradient), the second
  (`sample_anchor` λ) keeps the samples near the ones the feedback is about. Without it
  (λ = 0) a generator that takes many steps on stale feedback overshoots and the
  discriminators win (plain-TF check on `ring`, 300 blocks of 16 D then 16 G steps: 0 of 8
  modes; λ = 300: 6–7). Must run inside a `tf.function`.

  Returns:
    `(new_generator_weights, new_optimizer_state)`.
  """
  tf_fns.assign_weights(generator.trainable_variables, generator_weights)
  steps, batch_size = gradients.shape[0], gradients.shape[1]
  noises = [feedback_noise(round_seed, j, batch_size, noise_dim) for j in range(steps)]
  judged = [generator(noise, training=True) for noise in noises] if sample_anchor else None
  for j in range(steps):
    with tf.GradientTape() as tape:
      samples = generator(noises[j], training=True)
      per_sample = tf.reshape(gradients[j] * samples, [batch_size, -1])
      loss = tf.reduce_sum(per_sample, axis=1)
      if sample_anchor:
        drift = tf.reshape(samples - judged[j], [batch_size, -1])
        loss += 0.5 * sample_anchor * tf.reduce_sum(tf.square(drift), axis=1)
      loss = tf.reduce_mean(loss)
    variables = generator.trainable_variables
    optimizer_state = tf_fns.apply_gradients(optimizer, optimizer_state, variables,
                                             tape.gradient(loss, variables))
  return [v.read_value() for v in generator.trainable_variables], optimizer_state
