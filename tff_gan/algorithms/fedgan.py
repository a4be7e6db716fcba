"""FedGAN: clients train both networks adversarially; the server averages both.

The server initializes G and D; every sampled client trains D and G on its own data for its
local steps, starting from the broadcast weights; the server combines the deltas of both
networks weighted by the number of examples each client trained on (n_k / n) and applies them
with a server optimizer. With server SGD at learning rate 1 this is FedAvg of both networks
(Rasouli et al., "FedGAN: Federated Generative Adversarial Networks", 2020).
"""

from __future__ import annotations

import collections

import tensorflow_federated as tff

from tff_gan.algorithms import common, composition, optimizers
from tff_gan.core import client_work, dp_sgd, tf_fns
from tff_gan.core import losses as losses_lib
from tff_gan.core.models import GanModels


def build_fedgan_process(
    models: GanModels,
    *,
    loss: losses_lib.GanLoss | None = None,
    client_optimizer: tff.learning.optimizers.Optimizer | None = None,
    client_generator_optimizer: tff.learning.optimizers.Optimizer | None = None,
    server_optimizer: tff.learning.optimizers.Optimizer | None = None,
    aggregator: composition.AggregationFactory | None = None,
    release_client_metrics: bool = True,
    proximal_mu: float = 0.0,
    proximal_generator: bool = True,
    example_dp: dp_sgd.ExampleDp | None = None,
    seed: int = 0,
    generator_ema_decay: float = 0.0,
) -> composition.GanProcess:
  """Builds the FedGAN training process.

  Type signatures:

  * `initialize: ( -> ServerState@SERVER)`
  * `next: (<ServerState@SERVER, {float32[?,*data_shape]*}@CLIENTS> ->
    <ServerState@SERVER, M@SERVER>)`

  Each client dataset yields batches; one D step and one G step are taken per batch, so the
  client's data pipeline (`tff_gan.clients.populations.client_dataset`) sets the local steps
  or epochs.

  Args:
    models: The task's `GanModels`.
    loss: A `GanLoss`; defaults to the non-saturating loss.
    client_optimizer: Client optimizer of the discriminator, and of the generator unless
      `client_generator_optimizer` is given; it starts fresh every round. Defaults to
      Adam(2e-4, β1 = 0.5).
    client_generator_optimizer: Client optimizer of the generator, if it differs.
    server_optimizer: Server optimizer applied to each network's aggregated delta (one state
      per network, kept in `ServerState`). Defaults to SGD with learning rate 1 (FedAvg).
    aggregator: A `tff.aggregators` factory; defaults to the weighted mean with weights n_k.
      A differentially private factory (see `tff_gan.algorithms.aggregators`) clips and noises each
      client's joint (G, D) update.
    release_client_metrics: Whether round metrics include the clients' mean losses and
      example count; turn off under differential privacy.
    proximal_mu: FedProx's μ ≥ 0: the local objective of each network it applies to gains
      (μ/2)‖w − w_broadcast‖², keeping local updates near the global model on
      heterogeneous clients. 0 (the default) is FedAvg exactly.
    proximal_generator: Whether the proximal term applies to the generator too; False keeps
      it on the discriminator alone (the network that drifts toward a client's own modes,
      while the generator stays free to move).
    example_dp: If set (`core.dp_sgd.ExampleDp`), each client's discriminator steps are DP-SGD
      on Poisson batches (example-level DP; the population's `LocalWork.poisson` draws them).
    seed: Seeds the initial weights and all generator noise.
    generator_ema_decay: If positive, the server keeps an average of the generator's weights
      over rounds with this decay (`ServerState.generator_ema`), used for samples.

  Returns:
    A `composition.GanProcess`.
  """
  common.check_proximal_mu(proximal_mu)
  loss = loss or losses_lib.NON_SATURATING
  discriminator_optimizer = client_optimizer or optimizers.build_optimizer(
      'adam', common.DEFAULT_CLIENT_LEARNING_RATE
  )
  generator_optimizer = client_generator_optimizer or discriminator_optimizer
  server_optimizer = server_optimizer or optimizers.build_optimizer('sgd', 1.0)

  def client_update(dataset, broadcast):
    local_work = common.with_fresh_models(
        client_work.fedgan_client_update,
        models,
        loss=loss,
        generator_optimizer=generator_optimizer,
        discriminator_optimizer=discriminator_optimizer,
        noise_dim=models.noise_dim,
        proximal_mu=proximal_mu,
        proximal_generator=proximal_generator,
        example_dp=example_dp,
    )
    return local_work(dataset, broadcast)

  def server_update(state, aggregated_delta, aggregator_state):
    new_state = tf_fns.server_update(
        state,
        aggregated_delta,
        aggregator_state,
        generator_optimizer=server_optimizer,
        discriminator_optimizer=server_optimizer,
    )
    return new_state, collections.OrderedDict()

  scheme = composition.SchemeFns(
      initial_state=common.initial_state_fn(
          models,
          generator_server_optimizer=server_optimizer,
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


