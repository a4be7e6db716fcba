"""The training schemes a run can name (`--scheme`), each one object with its own behaviour.

A scheme builds its `GanProcess` from a configuration and says how a run feeds it: which
clients exist, how much each trains per round, which clients a round samples, how many run
side by side and whether anything is communicated. The federated schemes share all of that
(`Scheme`); the centralized baseline (`Centralized`) overrides it: one client holding the
pooled data, as many steps per round as a FedGAN round's clients take together.
"""

from __future__ import annotations

import math

import numpy as np

from tff_gan import choices
from tff_gan.algorithms import (
  composition,
  dp_fedavg_gan,
  fedgan,
  fedsgd,
  multi_d,
  optimizers,
  scaffold,
)
from tff_gan.clients import populations, sampling
from tff_gan.core import losses, seeds
from tff_gan.core.models import GanModels
from tff_gan.run import builders, ledgers
from tff_gan.run.config import ConfigError, TrainConfig

# Slots per weight of each client optimizer's state (Adam: two moments).
_OPTIMIZER_SLOTS = {'sgd': 0, 'adam': 2, 'rmsprop': 1}


class Scheme:
  """A federated scheme: the clients of the data, sampled each round, training locally."""

  name = ''
  communicates = True  # Whether a round sends anything (metrics.csv's bytes columns).
  keeps_client_state = False  # Whether each client keeps state between rounds.

  def build_process(self, config: TrainConfig, models: GanModels) -> composition.GanProcess:
    raise NotImplementedError

  def _common_arguments(self, config: TrainConfig) -> dict:
    return dict(
        loss=losses.get_loss(config.loss),
        server_optimizer=optimizers.build_optimizer(config.server_optimizer,
                                                    config.server_learning_rate,
                                                    config.server_lr_half_life),
        aggregator=builders.build_aggregator(config),
        release_client_metrics=not config.dp_enabled,
        seed=config.seed,
        generator_ema_decay=config.generator_ema,
    )

  def _local_training_arguments(self, config: TrainConfig) -> dict:
    return dict(
        self._common_arguments(config),
        client_optimizer=optimizers.build_optimizer(config.client_optimizer,
                                                    config.client_learning_rate),
        proximal_mu=config.proximal_mu,
        example_dp=builders.example_dp(config),
    )

  def population(self, config: TrainConfig, task) -> populations.ClientData:
    """The run's clients."""
    return builders.federated_population(config, task)

  def check_population(self, config: TrainConfig, population: populations.ClientData) -> None:
    """Raises `ConfigError` if `population` cannot serve `config`'s rounds."""
    if config.clients_per_round > population.num_clients:
      raise ConfigError(f'--clients_per_round={config.clients_per_round} exceeds the '
                        f'{population.num_clients} clients of the data; lower it.')

  def local_work(self, config: TrainConfig, task) -> populations.LocalWork:
    """How much each sampled client trains per round."""
    del task  # A client's work depends only on the settings.
    return populations.LocalWork(batch_size=config.batch_size,
                                 local_epochs=config.local_epochs,
                                 local_steps=config.local_steps or None,
                                 poisson=config.example_dp,
                                 noise_key=(seeds.noise_key(config.dp_noise, config.seed)
                                            if config.example_dp else None))

  def client_ids(self, config: TrainConfig, num_clients: int, round_num: int) -> np.ndarray:
    """The clients round `round_num` samples: from the DP key when the accountant credits
    amplification by client sampling (client-level DP-FedAvg, `ledgers.ClientLevelLedger`),
    which needs a sample nobody can recompute from config.json; from the seed otherwise."""
    return sampling.sample_clients(
        num_clients, config.clients_per_round, round_num=round_num, seed=config.seed,
        method=config.client_sampling,
        key=(seeds.noise_key(config.dp_noise, config.seed)
             if ledgers.credits_client_sampling(config) else None))

  def parallel_clients(self, config: TrainConfig) -> int:
    """How many clients a round runs side by side."""
    return config.clients_per_round


class FedGan(Scheme):
  name = 'fedgan'

  def build_process(self, config, models):
    rate = config.client_generator_learning_rate
    return fedgan.build_fedgan_process(
        models, proximal_generator=config.proximal_networks == 'both',
        client_generator_optimizer=None if rate is None else optimizers.build_optimizer(
            config.client_optimizer, rate),
        **self._local_training_arguments(config))


class DpFedAvgGan(Scheme):
  name = 'dp_fedavg_gan'

  def build_process(self, config, models):
    return dp_fedavg_gan.build_dp_fedavg_gan_process(
        models,
        generator_optimizer=optimizers.build_optimizer('adam', config.generator_learning_rate),
        server_generator_steps=config.server_gen_steps,
        server_generator_batch_size=config.batch_size,
        **self._local_training_arguments(config),
    )


class Scaffold(Scheme):
  """FedGAN with SCAFFOLD's control variates (`algorithms.scaffold`): each client keeps its
  gradient estimate c_k between rounds and corrects its local steps by c − c_k."""

  name = 'scaffold'
  keeps_client_state = True
  # Every client's c_k (both networks' weights) is held in memory by the driver.
  max_client_state_bytes = 2**30

  def build_process(self, config, models):
    per_client = 4 * (models.generator_fn().count_params()
                      + models.discriminator_fn().count_params())
    total = per_client * max(config.num_clients, 1)
    if total > self.max_client_state_bytes:
      raise ConfigError(
          f'--scheme=scaffold keeps a control variate of both networks for each of the '
          f'{config.num_clients} clients ({total / 2**20:.0f} MiB, at most '
          f'{self.max_client_state_bytes / 2**20:.0f} MiB): draw fewer with --num_clients, '
          'lower --model_width, or use --scheme=fedgan.')
    arguments = self._local_training_arguments(config)
    for name in ('aggregator', 'proximal_mu', 'example_dp'):  # Refused by run.config.
      del arguments[name]
    return scaffold.build_scaffold_process(
        models, participation=config.clients_per_round / max(config.num_clients, 1),
        control_batches=scaffold.DEFAULT_CONTROL_BATCHES,
        learning_rate_half_life=config.client_lr_half_life, **arguments)


class FedSgd(Scheme):
  name = 'fedsgd'

  def build_process(self, config, models):
    return fedsgd.build_fedsgd_process(models, **self._common_arguments(config))


class Centralized(FedGan):
  """The baseline that measures the federated–centralized gap: FedGAN's nets, losses and
  client optimizer trained on the pooled data by one client that nothing is sent to, each
  round taking as many steps as all sampled clients of a FedGAN round do together."""

  name = 'centralized'
  communicates = False

  def population(self, config, task):
    examples = task.training_examples(config.conditional)
    return populations.ClientPopulation(examples, [np.arange(len(examples))])

  def check_population(self, config, population):
    del config, population  # One client holds everything: any round size is served.

  def local_work(self, config, task):
    steps = self.steps_per_round(config, task)  # Enough passes over the data for the steps.
    return populations.LocalWork(
        batch_size=config.batch_size,
        local_epochs=math.ceil(steps * config.batch_size / len(task.examples)),
        local_steps=steps)

  def steps_per_round(self, config: TrainConfig, task) -> int:
    """As many steps as the federated run takes in all.

    That is the expected total over the `clients_per_round` clients a FedGAN round with the
    same settings samples: `local_steps` each when set, else `local_epochs` passes over each
    client's share of the partition, averaged over clients.
    """
    population = builders.federated_population(config, task)
    if config.local_steps:
      per_client = config.local_steps * np.ones(population.num_clients)
    else:
      per_client = config.local_epochs * np.ceil(population.client_sizes / config.batch_size)
    return max(1, round(per_client.mean() * config.clients_per_round))

  def client_ids(self, config, num_clients, round_num):
    return np.zeros(1, np.int64)

  def parallel_clients(self, config):
    return 1


class MultiD(Scheme):
  """Client-resident discriminators (`algorithms.multi_d`): each client trains its own D,
  kept between rounds; the server trains G from the clients' feedback on its samples."""

  name = 'multi_d'
  keeps_client_state = True

  def build_process(self, config, models):
    return multi_d.build_multi_d_process(
        models,
        loss=losses.get_loss(config.loss),
        client_optimizer=optimizers.build_optimizer(config.client_optimizer,
                                                    config.client_learning_rate),
        generator_optimizer=optimizers.build_optimizer('adam', config.generator_learning_rate),
        generator_steps=config.server_gen_steps,
        batch_size=config.batch_size,
        mixture=config.discriminator_mixture,
        sample_anchor=config.sample_anchor,
        release_client_metrics=not config.dp_enabled,
        seed=config.seed,
        generator_ema_decay=config.generator_ema,
        sanitizer=builders.gs_sanitizer(config),
        shard_steps=config.local_steps or None,
        shard_epochs=config.local_epochs,
        warm_start_steps=config.warm_start_steps,
    )

  def check_population(self, config, population):
    super().check_population(config, population)
    limit = choices.MAX_CLIENT_RESIDENT_DISCRIMINATORS
    if population.num_clients > limit:
      raise ConfigError(f'--scheme={self.name} keeps a discriminator per client, for at most '
                        f'{limit} clients; the data has {population.num_clients}: use '
                        '--num_clients to draw fewer, or another scheme.')


class GsWgan(MultiD):
  """GS-WGAN (`feedback.GsSanitizer`): `multi_d` whose clients clip and noise every
  per-sample gradient before it leaves."""

  name = 'gs_wgan'
  # The clients' discriminator states a run may hold. They travel into and out of every
  # round's computation, and the copies multiply them: 1.6 GB of states (100 full-width ring
  # discriminators on 10 clients) grew the worker past 13 GB and 80 s a round.
  max_client_state_bytes = 2**28

  def build_process(self, config, models):
    per_discriminator = 4 * (1 + _OPTIMIZER_SLOTS.get(config.client_optimizer, 2)) * (
        models.discriminator_fn().count_params())
    total = per_discriminator * config.discriminator_shards * max(config.num_clients, 1)
    if total > self.max_client_state_bytes:
      raise ConfigError(
          f'--discriminator_shards={config.discriminator_shards} on {config.num_clients} '
          f'clients would keep {total / 2**20:.0f} MiB of discriminator state (at most '
          f'{self.max_client_state_bytes / 2**20:.0f} MiB): lower --discriminator_shards or '
          '--model_width.')
    return super().build_process(config, models)

  def local_work(self, config, task):
    # Plain batches (GS-WGAN needs no Poisson sampling); with shards, all of a client's data
    # arrives once, and the chosen shard's passes (`shard_epochs`) and steps (`shard_steps`)
    # are made inside the client: hashing every example once a round, not once a pass.
    del task
    sharded = config.discriminator_shards > 1
    return populations.LocalWork(
        batch_size=config.batch_size, local_epochs=1 if sharded else config.local_epochs,
        local_steps=None if sharded else config.local_steps or None)


SCHEMES: dict[str, Scheme] = {scheme.name: scheme for scheme in (
    FedGan(), DpFedAvgGan(), FedSgd(), Centralized(), MultiD(), GsWgan(), Scaffold())}
assert tuple(SCHEMES) == choices.SCHEMES, 'tff_gan.choices.SCHEMES lists the schemes here'


def for_config(config: TrainConfig) -> Scheme:
  """The `Scheme` `config.scheme` names."""
  if config.scheme not in SCHEMES:
    raise ConfigError(f"unknown --scheme '{config.scheme}'; choose one of: "
                      f"{', '.join(SCHEMES)}.")
  return SCHEMES[config.scheme]


def build_process(config: TrainConfig, models: GanModels) -> composition.GanProcess:
  """The `GanProcess` that `config` asks for."""
  return for_config(config).build_process(config, models)


def build_population(config: TrainConfig, task) -> populations.ClientData:
  """The clients of the run `config` describes (`Scheme.population`)."""
  return for_config(config).population(config, task)
