"""Builders: the library objects a `TrainConfig` asks for (aggregator, clients, context, ε).

The schemes (`schemes`) build their processes from these; the round loops (`training`,
`async_training`) run them.
"""

from __future__ import annotations

import os

import numpy as np

from tff_gan import choices
from tff_gan.algorithms import aggregators
from tff_gan.clients import partition, populations
from tff_gan.core import conditional, dp_sgd, feedback, seeds
from tff_gan.run import rundir
from tff_gan.run.config import ConfigError, TrainConfig
from tff_gan.runtime import contexts, tls


def build_aggregator(config: TrainConfig):
  """The `tff.aggregators` factory `config` asks for (DP-FedAvg under client-level DP)."""
  if config.aggregator in choices.SECURE_AGGREGATORS:  # The run loop sums (`run.secure_rounds`);
    return aggregators.build_aggregator('mean')  # TFF then averages the one decrypted mean.
  if not config.client_dp:
    return aggregators.build_aggregator(config.aggregator, bits=config.effective_bits,
                                        hadamard=config.hadamard)
  try:
    return aggregators.dp_aggregator(
        noise_multiplier=config.dp_noise_multiplier,
        clients_per_round=config.clients_per_aggregation,
        clip=config.effective_dp_clip,
        noise_key=seeds.noise_key(config.dp_noise, config.seed),
        adaptive_clip_quantile=config.dp_adaptive_clip_quantile,
    )
  except ValueError as e:
    raise ConfigError(str(e)) from e


def gs_sanitizer(config: TrainConfig) -> feedback.GsSanitizer | None:
  """GS-WGAN's sanitization of the clients' feedback under `--scheme=gs_wgan`, else None."""
  if config.scheme != 'gs_wgan':
    return None
  return feedback.GsSanitizer(clip=config.effective_dp_clip,
                              noise_multiplier=config.dp_noise_multiplier,
                              noise_key=seeds.noise_key(config.dp_noise, config.seed),
                              shards=config.discriminator_shards)


def example_dp(config: TrainConfig) -> dp_sgd.ExampleDp | None:
  """The clients' DP-SGD settings under `--dp_unit=example`, else None."""
  if not config.example_dp:
    return None
  return dp_sgd.ExampleDp(clip=config.effective_dp_clip,
                          noise_multiplier=config.dp_noise_multiplier,
                          batch_size=config.batch_size)


def federated_population(config: TrainConfig, task) -> populations.ClientData:
  """The clients of a federated run (the centralized baseline pools them: `schemes`).

  * `--partition=natural`: the data's own clients (writers, folders, files); with
    `num_clients` N > 0, N of them drawn at random (seeded), else all.
  * `config.examples_per_client`: each client draws its own examples on the executor
    (`populations.GeneratedClients`, for tasks that generate data).
  * Otherwise the task's examples are split over `config.num_clients` clients as
    `config.partition` says.

  With `config.conditional`, every example carries its class (`tff_gan.core.conditional.pack`).
  """
  if config.partition == 'natural':
    try:
      population = task.natural_population(config.conditional)
    except ValueError as e:
      raise ConfigError(str(e)) from e
    if not config.num_clients:
      return population
    if config.num_clients > population.num_clients:
      raise ConfigError(
          f'--num_clients={config.num_clients} exceeds the {population.num_clients} clients '
          f'in --data_dir {config.data_dir}; lower it, or 0 for all of them.')
    rng = np.random.default_rng(seeds.derived_seed(config.seed, seeds.NATURAL_SUBSET_SALT))
    chosen = np.sort(rng.choice(population.num_clients, config.num_clients, replace=False))
    return populations.ClientSubset(population, chosen)
  if config.examples_per_client:
    if not task.generates_data:
      raise ConfigError(
          f'--examples_per_client needs a task that generates its examples (ring, grid); '
          f'task {task.name} holds a fixed dataset: drop the flag to split it over clients.')
    sample_fn = task.generate_examples
    if config.conditional:
      def sample_fn(labels, seed):
        return conditional.pack(task.generate_examples(labels, seed), labels, task.num_labels)
    try:
      return populations.GeneratedClients(
          config.num_clients, config.examples_per_client, num_labels=task.num_labels,
          sample_fn=sample_fn, scheme=config.partition,
          dirichlet_alpha=config.dirichlet_alpha, labels_per_client=config.labels_per_client,
          seed=config.seed)
    except ValueError as e:
      raise ConfigError(str(e)) from e
  if config.num_clients > len(task.examples):
    raise ConfigError(f'--num_clients={config.num_clients} exceeds the '
                                 f'{len(task.examples)} examples of task {task.name}; use '
                                 'fewer clients, or --examples_per_client where the task '
                                 'generates populations.')
  try:
    client_indices = partition.partition(
        task.labels,
        config.num_clients,
        scheme=config.partition,
        dirichlet_alpha=config.dirichlet_alpha,
        labels_per_client=config.labels_per_client,
        seed=config.seed,
    )
    return populations.ClientPopulation(task.training_examples(config.conditional), client_indices,
                                        labels=task.labels if task.labelled else None)
  except ValueError as e:
    raise ConfigError(str(e)) from e


def client_tls(config: TrainConfig) -> tls.ClientTls | None:
  """The trainer's TLS settings for its remote workers, read from `config`'s files."""
  if not config.tls_ca:
    return None
  try:
    return tls.ClientTls.from_files(config.tls_ca, config.tls_client_cert,
                                    config.tls_client_key, config.auth_token_file)
  except (OSError, ValueError) as e:
    raise ConfigError(f'cannot read the TLS files: {e}') from e


def execution_context(config: TrainConfig, parallel_clients: int,
                      tls_settings: tls.ClientTls | None):
  """Where the run's computations execute: a local worker, or `config.workers`.

  Args:
    config: The run's configuration.
    parallel_clients: How many clients a round runs side by side (sizes a local worker).
    tls_settings: `client_tls(config)`, read once by the caller (remote workers only).
  """
  if config.executor == 'remote':
    return contexts.remote_context(config.worker_addresses,
                                   timeout_seconds=config.worker_timeout, tls=tls_settings)
  return contexts.local_cpp_context(
      log_path=os.path.join(config.output_dir, rundir.WORKER_LOG),
      parallel_clients=parallel_clients)
