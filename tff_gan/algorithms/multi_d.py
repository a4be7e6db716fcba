"""Client-resident discriminators: one discriminator per client, the generator on the server.

The scheme of MD-GAN (Hardy et al. 2019) and UA-GAN (Zhang et al. 2021) in TFF (the
arithmetic is `core.feedback`'s). Each client keeps its own discriminator and its optimizer
state as *client state*: it enters a round as a client-placed value, is trained there and
comes back as a client-placed value that the caller keeps for that client's next round (in
simulation the driver holds it on the client's behalf; it is never aggregated and never
reaches the server). What travels: down, the generator's weights and the round seed; up,
each client's `Feedback` on the round's generated samples (`[steps, batch]` weights and
`[steps, batch, *data_shape]` gradients, a few kilobytes on `ring`) and its example count.

Type signatures (`S` the `ServerState`, `C` a client's `DiscriminatorState`):

* `initialize: ( -> S@SERVER)`; `S.weights.discriminator` and
  `S.discriminator_optimizer_state` hold the initial discriminator every client starts from
  (the server never trains it);
* `initial_client_state: (S -> C)`;
* with `warm_start_steps`, `warm_start: (<S@SERVER, {D}@CLIENTS, C@CLIENTS> -> C@CLIENTS)`:
  each client's discriminators pretrained on its data before round 1 (`core.warm_start`);
* `next: (<S@SERVER, {float32[?,*data_shape]*}@CLIENTS, C@CLIENTS> ->
  <S@SERVER, C@CLIENTS, M@SERVER>)`, `M` as in `composition` (client metrics unless
  withheld, `server`, `aggregator`);
* with the mean mixture, the round's halves for a sum computed outside TFF
  (`run.secure_rounds`): `client_work: (<S@SERVER, {D}@CLIENTS, C@CLIENTS> -> <P, int32,
  C>@CLIENTS)` and `server_step: (<S@SERVER, P@CLIENTS, int32@CLIENTS, float32@CLIENTS> ->
  <S@SERVER, M@SERVER>)`, `P` a client's weighted gradients alone (`_secure_halves`). The
  universal mixture has none: its odds reach e^±40, beyond a fixed-point sum.
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_gan.algorithms import common, composition, optimizers
from tff_gan.choices import DISCRIMINATOR_MIXTURES
from tff_gan.core import feedback, seeds, tf_fns, warm_start
from tff_gan.core import losses as losses_lib
from tff_gan.core.models import GanModels
from tff_gan.core.state import (
  ClientOutput,
  DiscriminatorState,
  Feedback,
  GanWeights,
  ServerBroadcast,
)

DEFAULT_LEARNING_RATE = 2e-4
# Critic steps per generator step in a WGAN-GP warm start (Gulrajani et al. 2017's n_critic).
WARM_START_CRITIC_STEPS = 5


def build_multi_d_process(
    models: GanModels,
    *,
    loss: losses_lib.GanLoss | None = None,
    client_optimizer: tff.learning.optimizers.Optimizer | None = None,
    generator_optimizer: tff.learning.optimizers.Optimizer | None = None,
    generator_steps: int = 1,
    batch_size: int = 64,
    mixture: str = 'mean',
    sample_anchor: float = 0.0,
    release_client_metrics: bool = True,
    seed: int = 0,
    generator_ema_decay: float = 0.0,
    sanitizer: feedback.GsSanitizer | None = None,
    shard_steps: int | None = None,
    shard_epochs: int = 1,
    warm_start_steps: int = 0,
) -> composition.GanProcess:
  """Builds the client-resident-discriminator process (signatures in the module docstring).

  Args:
    models: The task's `GanModels` (networks without batch normalization: the feedback is
      per sample).
    loss: A `GanLoss`; defaults to the non-saturating loss. The `universal` mixture needs a
      discriminator that estimates odds: the non-saturating loss.
    client_optimizer: Each client's discriminator optimizer; its state persists across the
      client's rounds. Defaults to Adam(2e-4, β1 = 0.5).
    generator_optimizer: The server's generator optimizer. Defaults to Adam(2e-4, β1 = 0.5).
    generator_steps: Generator steps per round, each on its own batch of the round's noise.
    batch_size: Generated samples per generator step.
    mixture: `mean` (MD-GAN) or `universal` (UA-GAN): see `core.feedback`.
    sample_anchor: λ ≥ 0 of the server's pull toward the samples the clients judged
      (`feedback.train_generator_on_feedback`).
    release_client_metrics: Whether round metrics include the clients' mean losses.
    seed: Seeds the initial weights and all noise.
    generator_ema_decay: If positive, the server keeps an average of the generator's weights
      over rounds with this decay (`ServerState.generator_ema`), used for samples.
    sanitizer: GS-WGAN (`feedback.GsSanitizer`, mean mixture only): each client clips and
      noises every per-sample gradient before it leaves, sends an example count of 1 (an
      unweighted mean over clients) and no metrics. With `sanitizer.shards` K > 1 the
      client state holds K discriminators (every tensor stacked, `[K, ...]`); each round the
      client draws one (`feedback.draw_shard`), trains it on the examples of its shard
      (`feedback.shard_of`) in batches of `batch_size`, and only that one answers.
    shard_steps: With K > 1 shards, the cap on the chosen discriminator's steps per round
      (None: `shard_epochs` passes over its shard). The client dataset then brings all of its
      data, once.
    shard_epochs: With K > 1 shards, the passes the chosen discriminator makes over its
      shard in a round (the shard's examples in the round's order, repeated): its critic
      steps. Each discriminator answers in about 1 of K rounds, so it trains only then.
    warm_start_steps: If positive, the process has a `warm_start`: before round 1 each of a
      client's discriminators takes this many steps on its shard (all its data if K = 1)
      against a generator of its own, both fresh draws of the initial weights, the generator
      stepping once every `WARM_START_CRITIC_STEPS` (WGAN-GP's loss) or every step (others);
      the generators are discarded (`core.warm_start`).
  """
  if mixture not in DISCRIMINATOR_MIXTURES:
    raise ValueError(f"unknown mixture '{mixture}'; choose one of: "
                     f"{', '.join(DISCRIMINATOR_MIXTURES)}.")
  if not sample_anchor >= 0:
    raise ValueError(f'sample_anchor must be >= 0, got {sample_anchor}.')
  if generator_steps <= 0 or batch_size <= 0 or shard_epochs <= 0 or warm_start_steps < 0:
    raise ValueError('generator_steps, batch_size and shard_epochs must be positive and '
                     f'warm_start_steps >= 0, got {generator_steps}, {batch_size}, '
                     f'{shard_epochs} and {warm_start_steps}.')
  loss = loss or losses_lib.NON_SATURATING
  if sanitizer is not None:
    if mixture != 'mean':
      raise ValueError('GS-WGAN sanitizes per-sample gradients of the mean mixture; the '
                       'universal mixture also sends odds. Use the mean mixture.')
    release_client_metrics = False
  if mixture == 'universal' and loss.gradient_penalty_weight:
    raise ValueError('the universal mixture reads odds off the discriminators, which a '
                     'Wasserstein critic does not estimate; use the mean mixture.')
  client_optimizer = client_optimizer or optimizers.build_optimizer('adam', DEFAULT_LEARNING_RATE)
  generator_optimizer = generator_optimizer or optimizers.build_optimizer(
      'adam', DEFAULT_LEARNING_RATE)

  initial_model_state = tff.tensorflow.computation(common.initial_state_fn(
      models, generator_server_optimizer=generator_optimizer,
      discriminator_server_optimizer=client_optimizer, seed=seed,
      generator_ema=generator_ema_decay > 0))
  model_state_type = initial_model_state.type_signature.result
  data_type = tff.SequenceType(tff.TensorType(np.float32, models.data_spec().shape))
  one_state_type = DiscriminatorState(weights=model_state_type.weights.discriminator,
                                      optimizer_state=model_state_type
                                      .discriminator_optimizer_state)
  shards = sanitizer.shards if sanitizer is not None else 1

  def stack(one):  # The client state: K copies of a discriminator's state, or the one.
    if shards == 1:
      return one
    return tf.nest.map_structure(lambda t: tf.repeat(t[None], shards, axis=0), one)

  client_state_type = tff.tensorflow.computation(stack, one_state_type).type_signature.result
  broadcast_type = ServerBroadcast(
      weights=GanWeights(generator=model_state_type.weights.generator, discriminator=()),
      round_seed=tff.TensorType(np.int64, [2]))

  def one_discriminator_update(dataset, client_state, broadcast):
    update = common.with_fresh_models(
        feedback.client_feedback_update, models, loss=loss, optimizer=client_optimizer,
        noise_dim=models.noise_dim, generator_steps=generator_steps, batch_size=batch_size,
        mixture=mixture, sanitizer=sanitizer)
    output, num_examples, metrics, new_state = update(dataset, broadcast, client_state)
    return common.keep_state_if_non_finite(
        ClientOutput(delta=output, num_examples=num_examples, metrics=metrics),
        new_state, client_state)

  def client_update(dataset, client_state, broadcast):
    if shards == 1:
      return one_discriminator_update(dataset, client_state, broadcast)
    shard = feedback.draw_shard(dataset, sanitizer, broadcast.round_seed)
    # Cached before the passes: each repeat would otherwise hash all the client's examples.
    shard_data = dataset.unbatch().filter(
        lambda example: tf.equal(feedback.shard_of(example, shards), shard)).cache().repeat(
            shard_epochs).batch(batch_size)
    if shard_steps is not None:
      shard_data = shard_data.take(shard_steps)
    output, discarded, new_one = one_discriminator_update(
        shard_data, tf.nest.map_structure(lambda t: tf.gather(t, shard), client_state),
        broadcast)
    new_state = tf.nest.map_structure(
        lambda stacked, new: tf.tensor_scatter_nd_update(stacked, [[shard]], new[None]),
        client_state, new_one)
    return output, discarded, new_state

  client_update_fn = client_update
  client_update = tff.tensorflow.computation(client_update_fn, data_type, client_state_type,
                                             broadcast_type)
  output_type = client_update.type_signature.result[0]
  aggregation_process = composition.default_aggregator().create(output_type.delta,
                                                                output_type.num_examples)

  state_type, initialize = composition.with_aggregator_state(initial_model_state,
                                                             aggregation_process)

  @tff.tensorflow.computation(state_type)
  def make_broadcast(state):
    return ServerBroadcast(weights=GanWeights(generator=state.weights.generator, discriminator=()),
                           round_seed=seeds.round_seed(state.seed, state.round_num))

  @tff.tensorflow.computation(state_type)
  def initial_client_state(state):
    return stack(DiscriminatorState(weights=state.weights.discriminator,
                                    optimizer_state=state.discriminator_optimizer_state))

  def server_update_fn(state, mean_feedback, aggregator_state):
    train = common.with_fresh_models(_server_generator_steps, models, loss=loss,
                                     optimizer=generator_optimizer, noise_dim=models.noise_dim,
                                     mixture=mixture, sample_anchor=sample_anchor)
    generator_weights, optimizer_state = train(
        state.weights.generator, state.generator_optimizer_state,
        seeds.round_seed(state.seed, state.round_num), mean_feedback)
    return tf_fns.with_generator_ema(state._replace(
        weights=state.weights._replace(generator=generator_weights),
        generator_optimizer_state=optimizer_state, aggregator_state=aggregator_state,
        round_num=state.round_num + 1), generator_ema_decay)

  server_update = tff.tensorflow.computation(server_update_fn, state_type, output_type.delta,
                                             aggregation_process.state_type.member)

  next_fn = composition.stateful_next(
      state_type=state_type, data_type=data_type, client_state_type=client_state_type,
      make_broadcast=make_broadcast, client_update=client_update,
      aggregation_process=aggregation_process, server_update=server_update,
      release_client_metrics=release_client_metrics)

  parts = {}
  if warm_start_steps:
    parts['warm_start'] = _warm_start(
        models, loss=loss, client_optimizer=client_optimizer,
        generator_optimizer=generator_optimizer, batch_size=batch_size, shards=shards,
        steps=warm_start_steps, state_type=state_type, data_type=data_type,
        client_state_type=client_state_type)
  if mixture == 'mean':
    parts |= _secure_halves(
        client_update_fn, server_update_fn, state_type=state_type, data_type=data_type,
        client_state_type=client_state_type, broadcast_type=broadcast_type,
        output_type=output_type, aggregation_process=aggregation_process,
        make_broadcast=make_broadcast, release_client_metrics=release_client_metrics)
  return composition.GanProcess(initialize, next_fn, initial_client_state=initial_client_state,
                                **parts)


def _warm_start(models, *, loss, client_optimizer, generator_optimizer, batch_size, shards,
                steps, state_type, data_type, client_state_type):
  """`warm_start: (<S@SERVER, {D}@CLIENTS, C@CLIENTS> -> C@CLIENTS)` (module docstring)."""

  @tff.tensorflow.computation(data_type, client_state_type, state_type.weights.generator,
                              tff.TensorType(np.int64, [2]))
  def pretrain(dataset, client_state, initial_generator, seed):
    return common.with_fresh_models(
        warm_start.pretrain_shards, models, loss=loss, discriminator_optimizer=client_optimizer,
        generator_optimizer=generator_optimizer, noise_dim=models.noise_dim,
        batch_size=batch_size, shards=shards, steps=steps,
        critic_steps=WARM_START_CRITIC_STEPS if loss.gradient_penalty_weight else 1)(
            dataset, client_state, initial_generator, seed)

  @tff.tensorflow.computation(state_type)
  def pretraining_inputs(state):
    return state.weights.generator, seeds.warm_start_seed(state.seed)

  @tff.federated_computation(tff.FederatedType(state_type, tff.SERVER),
                             tff.FederatedType(data_type, tff.CLIENTS),
                             tff.FederatedType(client_state_type, tff.CLIENTS))
  def warm_start_fn(state, client_data, client_states):
    initial_generator, seed = tff.federated_broadcast(
        tff.federated_map(pretraining_inputs, state))
    return tff.federated_map(pretrain, (client_data, client_states, initial_generator, seed))

  return warm_start_fn


def _secure_halves(client_update_fn, server_update_fn, *, state_type, data_type,
                   client_state_type, broadcast_type, output_type, aggregation_process,
                   make_broadcast, release_client_metrics) -> dict:
  """The mean mixture's round in two halves, for a sum computed outside TFF
  (`run.secure_rounds`): `{'client_work': ..., 'server_step': ...}`.

  A client's payload is its `Feedback.weighted_gradient` alone: the mean mixture's weights
  are all ones (`core.feedback`), public, so they are not sent, and the server step puts
  ones back. Their n_k-weighted mean is 1, as the plain round's is, so with every scale 1
  and the payloads of `client_work` on the same state, `server_step` after `client_work` is
  `next` (and each client's new state is the one `next` returns).

  * `client_work: (<S@SERVER, {D}@CLIENTS, C@CLIENTS> -> <P, int32, C>@CLIENTS)`, `P` the
    `ClientOutput` whose delta is the weighted gradient;
  * `server_step: (<S@SERVER, P@CLIENTS, int32@CLIENTS, float32@CLIENTS> -> <S@SERVER,
    M@SERVER>)`, each payload's delta first multiplied by its scale.
  """

  def payload_update(dataset, client_state, broadcast):
    output, discarded, new_state = client_update_fn(dataset, client_state, broadcast)
    return output._replace(delta=output.delta.weighted_gradient), discarded, new_state

  payload_update = tff.tensorflow.computation(payload_update, data_type, client_state_type,
                                              broadcast_type)
  payload_type = payload_update.type_signature.result[0]
  payload_aggregation = composition.default_aggregator().create(payload_type.delta,
                                                                payload_type.num_examples)
  aggregator_state_type = aggregation_process.state_type.member
  if payload_aggregation.state_type.member != aggregator_state_type:
    raise TypeError('the payload aggregator keeps a state the server state cannot hold.')

  @tff.tensorflow.computation(state_type, payload_type.delta, aggregator_state_type)
  def server_update_on_gradient(state, mean_gradient, aggregator_state):
    ones = tf.ones(tf.shape(mean_gradient)[:2], mean_gradient.dtype)
    return server_update_fn(state, Feedback(weight=ones, weighted_gradient=mean_gradient),
                            aggregator_state)

  @tff.tensorflow.computation(payload_type, tff.TensorType(np.float32))
  def scale_payload(payload, scale):
    return payload._replace(delta=payload.delta * scale)

  @tff.federated_computation(tff.FederatedType(state_type, tff.SERVER),
                             tff.FederatedType(data_type, tff.CLIENTS),
                             tff.FederatedType(client_state_type, tff.CLIENTS))
  def client_work(state, client_data, client_states):
    broadcast = tff.federated_broadcast(tff.federated_map(make_broadcast, state))
    return tff.federated_map(payload_update, (client_data, client_states, broadcast))

  @tff.federated_computation(tff.FederatedType(state_type, tff.SERVER),
                             tff.FederatedType(payload_type, tff.CLIENTS),
                             tff.FederatedType(tff.TensorType(np.int32), tff.CLIENTS),
                             tff.FederatedType(tff.TensorType(np.float32), tff.CLIENTS))
  def server_step(state, payloads, discarded, scales):
    scaled = tff.federated_map(scale_payload, (payloads, scales))
    aggregate = payload_aggregation.next(state.aggregator_state, scaled.delta,
                                         scaled.num_examples)
    new_state = tff.federated_map(server_update_on_gradient,
                                  (state, aggregate.result, aggregate.state))
    metrics = composition.round_metrics(
        scaled, discarded, tff.federated_value(collections.OrderedDict(), tff.SERVER),
        aggregate.measurements, release_client_metrics)
    return new_state, metrics

  return dict(client_work=client_work, server_step=server_step)


def _server_generator_steps(generator_weights, optimizer_state, round_seed, mean_feedback, *,
                            generator, discriminator, loss, optimizer, noise_dim, mixture,
                            sample_anchor):
  del discriminator  # Built by `with_fresh_models`; the server has no discriminator to use.
  gradients = feedback.sample_gradients(mean_feedback, loss=loss, mixture=mixture)
  return feedback.train_generator_on_feedback(
      generator_weights, optimizer_state, round_seed, gradients, generator=generator,
      optimizer=optimizer, noise_dim=noise_dim, sample_anchor=sample_anchor)
