"""FedGAN with SCAFFOLD's control variates: local training that does not drift to a client's modes.

On heterogeneous clients FedGAN's local steps follow each client's own data: a client holding
2 of 8 modes trains a discriminator that calls the other 6 fake and a generator that serves
its 2, and their average serves none. SCAFFOLD (Karimireddy et al., ICML 2020) corrects every
local gradient g_k(y) by c − c_k, where c_k estimates client k's gradient and c the mean of
all clients'; each local step then follows an estimate of the population's gradient. Here
both networks are corrected, with option I of the paper (c_k is client k's gradient at the
broadcast weights, averaged over its data, as FedSGD computes it):

1. the server broadcasts the weights x, the round seed, its control variate c and the
   round's client learning-rate multiplier (`learning_rate_half_life`'s schedule);
2. each sampled client takes FedGAN's local steps (one D step, one G step per batch) with
   gradients g_k(y) + c − c_k, using the c_k it kept from its previous round (0 before its
   first), then computes c_k⁺ = ∇f_k(x) over its data (or its first `control_batches`
   batches) and keeps it as client state (in
   simulation the driver holds it for the client, saves it with the checkpoints and restores
   it on resume, as `algorithms.multi_d`'s discriminators);
3. the server averages both networks' deltas and the control changes c_k⁺ − c_k (weights
   n_k), applies the deltas with its optimizer and moves c by the mean change times the
   fraction of the population a round samples (`participation`; 1 when every client takes
   part, so that c is then the mean of the clients' c_k).

Bytes: the control variate doubles both directions (x and c down, Δ and Δc up). A client
whose round produced a NaN or Inf sends nothing (weight 0) and keeps its c_k.

Type signatures (`S` the `ServerState` with `control`, `C` a client's c_k, `GanWeights`):

* `initialize: ( -> S@SERVER)`, c = 0;
* `initial_client_state: (S -> C)`, zeros;
* `next: (<S@SERVER, {float32[?,*data_shape]*}@CLIENTS, C@CLIENTS> ->
  <S@SERVER, C@CLIENTS, M@SERVER>)`, `M` as in `composition`.
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_gan.algorithms import common, composition, optimizers
from tff_gan.core import client_work, seeds, tf_fns
from tff_gan.core import losses as losses_lib
from tff_gan.core.models import GanModels
from tff_gan.core.state import GanWeights, ServerBroadcast

# Batches a client's gradient estimate reads in a run (`bin/train.py --scheme=scaffold`): 512
# examples at batch 128, a quarter of the work of a ring client's 16 local steps.
DEFAULT_CONTROL_BATCHES = 4


def build_scaffold_process(
    models: GanModels,
    *,
    loss: losses_lib.GanLoss | None = None,
    client_optimizer: tff.learning.optimizers.Optimizer | None = None,
    server_optimizer: tff.learning.optimizers.Optimizer | None = None,
    participation: float = 1.0,
    control_batches: int | None = None,
    learning_rate_half_life: float = 0.0,
    release_client_metrics: bool = True,
    seed: int = 0,
    generator_ema_decay: float = 0.0,
) -> composition.GanProcess:
  """Builds FedGAN with SCAFFOLD control variates (signatures in the module docstring).

  Args:
    models: The task's `GanModels`.
    loss: A `GanLoss`; defaults to the non-saturating loss.
    client_optimizer: Client optimizer of both networks, fresh every round (as FedGAN's).
      Defaults to Adam(2e-4, β1 = 0.5).
    server_optimizer: Server optimizer of the averaged deltas; defaults to SGD at 1 (FedAvg).
    participation: The expected fraction of the population a round samples, in (0, 1]:
      the server's c moves by this times the clients' mean control change.
    control_batches: How many batches of its data a client's gradient estimate c_k⁺ reads
      (the first of a second pass, which reshuffles); None: all of it. The estimate costs
      about as much as as many local steps.
    learning_rate_half_life: The rounds over which the client learning rate halves: round
      r (from 0) trains at lr·2^(−r/half_life); 0: constant. Small steps late sharpen the
      samples. The schedule depends on the round alone, so an extended run continues it.
    release_client_metrics: Whether round metrics include the clients' mean losses.
    seed: Seeds the initial weights and all generator noise.
    generator_ema_decay: If positive, the server keeps an average of the generator's weights.
  """
  if not 0.0 < participation <= 1.0:
    raise ValueError(f'participation must be in (0, 1], got {participation}.')
  if not learning_rate_half_life >= 0.0:
    raise ValueError(f'learning_rate_half_life must be >= 0, got {learning_rate_half_life}.')
  if control_batches is not None and control_batches < 1:
    raise ValueError(f'control_batches must be >= 1 or None, got {control_batches}.')
  loss = loss or losses_lib.NON_SATURATING
  client_optimizer = client_optimizer or optimizers.build_optimizer(
      'adam', common.DEFAULT_CLIENT_LEARNING_RATE)
  server_optimizer = server_optimizer or optimizers.build_optimizer('sgd', 1.0)
  model_state_fn = common.initial_state_fn(
      models, generator_server_optimizer=server_optimizer,
      discriminator_server_optimizer=server_optimizer, seed=seed,
      generator_ema=generator_ema_decay > 0)

  def initial_state():
    state = model_state_fn()
    return state._replace(control=tf.nest.map_structure(tf.zeros_like, state.weights))

  initial_model_state = tff.tensorflow.computation(initial_state)
  model_state_type = initial_model_state.type_signature.result
  data_type = tff.SequenceType(tff.TensorType(
      models.data_spec().dtype.as_numpy_dtype, models.data_spec().shape))
  control_type = model_state_type.control
  broadcast_type = (ServerBroadcast(weights=model_state_type.weights,
                                    round_seed=tff.TensorType(np.int64, [2])), control_type,
                    tff.TensorType(np.float32))

  def client_update(dataset, client_control, broadcast_and_control):
    broadcast, control, learning_rate_scale = broadcast_and_control
    correction = GanWeights(*tf.nest.map_structure(tf.subtract, control, client_control))
    work = common.with_fresh_models(
        _local_steps_then_estimate, models, loss=loss, optimizer=client_optimizer,
        noise_dim=models.noise_dim, control_batches=control_batches)
    output, new_control = work(dataset, broadcast, correction, learning_rate_scale)
    control_change = tf.nest.map_structure(tf.subtract, new_control, client_control)
    return common.keep_state_if_non_finite(
        output._replace(delta=collections.OrderedDict(weights=output.delta,
                                                      control=control_change)),
        new_control, client_control)

  client_update = tff.tensorflow.computation(client_update, data_type, control_type,
                                             broadcast_type)
  output_type = client_update.type_signature.result[0]
  aggregation_process = composition.default_aggregator().create(output_type.delta,
                                                                output_type.num_examples)
  state_type, initialize = composition.with_aggregator_state(initial_model_state,
                                                             aggregation_process)

  @tff.tensorflow.computation(state_type)
  def make_broadcast(state):
    scale = tf.constant(1.0)
    if learning_rate_half_life:
      scale = optimizers.halving(state.round_num, learning_rate_half_life)
    return (ServerBroadcast(weights=state.weights,
                            round_seed=seeds.round_seed(state.seed, state.round_num)),
            state.control, scale)

  @tff.tensorflow.computation(state_type)
  def initial_client_state(state):
    return tf.nest.map_structure(tf.zeros_like, state.control)

  @tff.tensorflow.computation(state_type, output_type.delta,
                              aggregation_process.state_type.member)
  def server_update(state, mean_delta, aggregator_state):
    new_state = tf_fns.server_update(
        state, GanWeights(*mean_delta['weights']), aggregator_state,
        generator_optimizer=server_optimizer, discriminator_optimizer=server_optimizer)
    control = tf.nest.map_structure(lambda c, change: c + participation * change,
                                    state.control, GanWeights(*mean_delta['control']))
    return tf_fns.with_generator_ema(new_state._replace(control=control), generator_ema_decay)

  next_fn = composition.stateful_next(
      state_type=state_type, data_type=data_type, client_state_type=control_type,
      make_broadcast=make_broadcast, client_update=client_update,
      aggregation_process=aggregation_process, server_update=server_update,
      release_client_metrics=release_client_metrics)
  return composition.GanProcess(initialize, next_fn, initial_client_state=initial_client_state)


def _local_steps_then_estimate(dataset, broadcast, correction, learning_rate_scale, *, generator,
                               discriminator, loss, optimizer, noise_dim, control_batches):
  """A client's corrected FedGAN steps, then its gradient estimate c_k⁺ at the broadcast
  weights: `(ClientOutput, GanWeights)`. One `tf.function`, so the two passes over the
  dataset (each reshuffles) run in this order."""
  output = client_work.fedgan_client_update(
      dataset, broadcast, generator=generator, discriminator=discriminator, loss=loss,
      generator_optimizer=optimizer, discriminator_optimizer=optimizer, noise_dim=noise_dim,
      correction=correction, learning_rate_scale=learning_rate_scale)
  estimate_data = dataset if control_batches is None else dataset.take(control_batches)
  # FedSGD's delta is the negated mean gradient at the broadcast weights.
  gradients = client_work.fedsgd_client_gradients(
      estimate_data, broadcast, generator=generator, discriminator=discriminator, loss=loss,
      noise_dim=noise_dim).delta
  return output, tf.nest.map_structure(tf.negative, gradients)
