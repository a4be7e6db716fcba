"""DP-FedAvg-GAN: clients train only the discriminator; the server trains the generator.

The scheme of Augenstein et al., "Generative Models for Effective ML on Private,
Decentralized Datasets" (ICLR 2020). Each sampled client trains the discriminator on its own
data against samples of the broadcast generator and returns only the discriminator delta.
The server applies the aggregated delta with its server optimizer — with a differentially
private aggregator (`aggregators.dp_aggregator`) this is DP-FedAvg — and then trains
the generator for `server_generator_steps` steps against the new discriminator, on noise
alone. The generator never touches client data, so its training is post-processing of the
private discriminator and costs no privacy.
"""

from __future__ import annotations

import collections

import tensorflow_federated as tff

from tff_gan.algorithms import common, composition, optimizers
from tff_gan.core import client_work, dp_sgd, tf_fns
from tff_gan.core import losses as losses_lib
from tff_gan.core.models import GanModels
from tff_gan.core.state import GanWeights

DEFAULT_GENERATOR_LEARNING_RATE = 2e-4


def build_dp_fedavg_gan_process(
    models: GanModels,
    *,
    loss: losses_lib.GanLoss | None = None,
    client_optimizer: tff.learning.optimizers.Optimizer | None = None,
    server_optimizer: tff.learning.optimizers.Optimizer | None = None,
    generator_optimizer: tff.learning.optimizers.Optimizer | None = None,
    server_generator_steps: int = 1,
    server_generator_batch_size: int = 64,
    aggregator: composition.AggregationFactory | None = None,
    release_client_metrics: bool = True,
    proximal_mu: float = 0.0,
    example_dp: dp_sgd.ExampleDp | None = None,
    seed: int = 0,
    generator_ema_decay: float = 0.0,
) -> composition.GanProcess:
  """Builds the DP-FedAvg-GAN training process.

  Type signatures:

  * `initialize: ( -> ServerState@SERVER)`
  * `next: (<ServerState@SERVER, {float32[?,*data_shape]*}@CLIENTS> ->
    <ServerState@SERVER, M@SERVER>)`; `M.server.generator_loss` is the mean loss of the
    server's generator steps.

  Args:
    models: The task's `GanModels`.
    loss: A `GanLoss`; defaults to the non-saturating loss.
    client_optimizer: Client optimizer of the discriminator, fresh every round. Defaults to
      Adam(2e-4, β1 = 0.5).
    server_optimizer: Applies the aggregated discriminator delta; its state is kept in
      `ServerState.discriminator_optimizer_state`. Defaults to SGD with learning rate 1.
    generator_optimizer: Trains the generator on the server; its state is kept in
      `ServerState.generator_optimizer_state`. Defaults to Adam(2e-4, β1 = 0.5).
    server_generator_steps: Generator steps per round.
    server_generator_batch_size: Noise vectors per generator step.
    aggregator: A `tff.aggregators` factory for the discriminator deltas; defaults to the
      weighted mean. Pass `tff_gan.algorithms.aggregators.dp_aggregator(...)` for DP-FedAvg.
    release_client_metrics: Whether round metrics include the clients' mean discriminator
      loss and example count; turn off under differential privacy.
    proximal_mu: FedProx's μ ≥ 0 for the clients' discriminator objective; 0 is FedAvg.
    example_dp: If set (`core.dp_sgd.ExampleDp`), each client's discriminator steps are DP-SGD
      on Poisson batches (example-level DP, instead of clipping and noising whole updates).
    seed: Seeds the initial weights and all noise.
    generator_ema_decay: If positive, the server keeps an average of the generator's weights
      over rounds with this decay (`ServerState.generator_ema`), used for samples.

  Returns:
    A `composition.GanProcess`.
  """
  if server_generator_steps <= 0 or server_generator_batch_size <= 0:
    raise ValueError('server_generator_steps and server_generator_batch_size must be positive, '
                     f'got {server_generator_steps} and {server_generator_batch_size}.')
  common.check_proximal_mu(proximal_mu)
  loss = loss or losses_lib.NON_SATURATING
  client_optimizer = client_optimizer or optimizers.build_optimizer(
      'adam', common.DEFAULT_CLIENT_LEARNING_RATE)
  server_optimizer = server_optimizer or optimizers.build_optimizer('sgd', 1.0)
  generator_optimizer = generator_optimizer or optimizers.build_optimizer(
      'adam', DEFAULT_GENERATOR_LEARNING_RATE)

  def client_update(dataset, broadcast):
    local_work = common.with_fresh_models(
        client_work.discriminator_client_update,
        models,
        loss=loss,
        discriminator_optimizer=client_optimizer,
        noise_dim=models.noise_dim,
        proximal_mu=proximal_mu,
        example_dp=example_dp,
    )
    return local_work(dataset, broadcast)

  def server_update(state, aggregated_delta, aggregator_state):
    discriminator_state, discriminator_weights = tf_fns.apply_delta(
        server_optimizer,
        state.discriminator_optimizer_state,
        state.weights.discriminator,
        aggregated_delta,
    )
    weights = GanWeights(generator=state.weights.generator, discriminator=discriminator_weights)
    train = common.with_fresh_models(
        tf_fns.train_generator,
        models,
        loss=loss,
        optimizer=generator_optimizer,
        noise_dim=models.noise_dim,
        num_steps=server_generator_steps,
        batch_size=server_generator_batch_size,
    )
    generator_weights, generator_state, generator_loss = train(
        weights, state.generator_optimizer_state, tf_fns.server_generator_seed(state))
    new_state = state._replace(
        weights=GanWeights(generator=generator_weights, discriminator=discriminator_weights),
        generator_optimizer_state=generator_state,
        discriminator_optimizer_state=discriminator_state,
        aggregator_state=aggregator_state,
        round_num=state.round_num + 1,
    )
    return new_state, collections.OrderedDict(generator_loss=generator_loss)

  scheme = composition.SchemeFns(
      initial_state=common.initial_state_fn(
          models,
          generator_server_optimizer=generator_optimizer,
          discriminator_server_optimizer=server_optimizer,
          seed=seed, generator_ema=generator_ema_decay > 0,
      ),
      client_update=client_update,
      server_update=server_update,
  )
  return composition.build_process(scheme, data_spec=common.data_spec(models, example_dp),
                                   aggregator=aggregator,
                                   release_client_metrics=release_client_metrics,
                                   generator_ema_decay=generator_ema_decay)
