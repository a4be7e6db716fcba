"""FedSGD: clients send gradients at the global weights; the server takes the step.

Each sampled client computes the gradients of the discriminator and generator losses at the
broadcast weights, averaged over its examples; the server combines them weighted by the
number of examples (n_k / n) and applies its optimizer: with SGD at learning rate η,
θ ← θ − η·Σ_k (n_k/n) ∇L_k, one centralized step on the pooled data (McMahan et al. 2017).
"""

from __future__ import annotations

import collections

import tensorflow_federated as tff

from tff_gan.algorithms import common, composition, optimizers
from tff_gan.core import client_work, tf_fns
from tff_gan.core import losses as losses_lib
from tff_gan.core.models import GanModels


def build_fedsgd_process(
    models: GanModels,
    *,
    loss: losses_lib.GanLoss | None = None,
    server_optimizer: tff.learning.optimizers.Optimizer | None = None,
    aggregator: composition.AggregationFactory | None = None,
    release_client_metrics: bool = True,
    seed: int = 0,
    generator_ema_decay: float = 0.0,
) -> composition.GanProcess:
  """Builds the FedSGD training process (signatures as in `fedgan.build_fedgan_process`).

  Args:
    models: The task's `GanModels`.
    loss: A `GanLoss`; defaults to the non-saturating loss.
    server_optimizer: Steps both networks along the aggregated gradients (one state per
      network, kept in `ServerState`). Defaults to Adam(2e-4, β1 = 0.5).
    aggregator: A `tff.aggregators` factory; defaults to the weighted mean (weights n_k).
    release_client_metrics: Whether round metrics include the clients' mean losses.
    seed: Seeds the initial weights and all noise.
    generator_ema_decay: If positive, the server keeps an average of the generator's weights
      over rounds with this decay (`ServerState.generator_ema`), used for samples.
  """
  loss = loss or losses_lib.NON_SATURATING
  server_optimizer = server_optimizer or optimizers.build_optimizer(
      'adam', common.DEFAULT_CLIENT_LEARNING_RATE)

  def client_update(dataset, broadcast):
    gradients = common.with_fresh_models(client_work.fedsgd_client_gradients, models, loss=loss,
                                         noise_dim=models.noise_dim)
    return gradients(dataset, broadcast)

  def server_update(state, aggregated_delta, aggregator_state):
    new_state = tf_fns.server_update(state, aggregated_delta, aggregator_state,
                                     generator_optimizer=server_optimizer,
                                     discriminator_optimizer=server_optimizer)
    return new_state, collections.OrderedDict()

  scheme = composition.SchemeFns(
      initial_state=common.initial_state_fn(
          models, generator_server_optimizer=server_optimizer,
          discriminator_server_optimizer=server_optimizer, seed=seed,
          generator_ema=generator_ema_decay > 0),
      client_update=client_update,
      server_update=server_update,
  )
  return composition.build_process(scheme, data_spec=models.data_spec(), aggregator=aggregator,
                                   release_client_metrics=release_client_metrics,
                                   generator_ema_decay=generator_ema_decay)
