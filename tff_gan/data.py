"""Client data: per-client example arrays, client sampling and per-round tf.data pipelines.

Each round a sampled client makes `local_epochs` passes over its shuffled examples in batches
of `batch_size`, stopping after `local_steps` batches when that cap is set (TFF's usual
`client_epochs_per_round` / `max_batches` semantics). The client's FedAvg weight is the number
of examples it actually trained on, which follows its dataset size n_k unless the cap binds.
Every shuffle and every sample is seeded from (run seed, round, client), so a run is
reproducible and a round can be recomputed without replaying earlier ones.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf


def _derived_seed(*entropy: int) -> int:
  return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0])


@dataclasses.dataclass(frozen=True)
class LocalWork:
  """How much a client trains per round.

  Attributes:
    batch_size: Examples per local step.
    local_epochs: Passes over the client's data per round.
    local_steps: Optional cap on the batches per round (None: no cap).
  """

  batch_size: int = 64
  local_epochs: int = 1
  local_steps: int | None = None

  def __post_init__(self):
    if self.batch_size <= 0:
      raise ValueError(f'batch_size must be positive, got {self.batch_size}.')
    if self.local_epochs <= 0:
      raise ValueError(f'local_epochs must be positive, got {self.local_epochs}.')
    if self.local_steps is not None and self.local_steps <= 0:
      raise ValueError(f'local_steps must be positive (or unset), got {self.local_steps}.')


def client_dataset(examples: np.ndarray, work: LocalWork, *, seed: int) -> tf.data.Dataset:
  """The batches one client trains on in one round."""
  dataset = tf.data.Dataset.from_tensor_slices(examples.astype(np.float32, copy=False))
  dataset = dataset.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
  dataset = dataset.repeat(work.local_epochs).batch(work.batch_size)
  if work.local_steps is not None:
    dataset = dataset.take(work.local_steps)
  return dataset


class ClientPopulation:
  """The examples held by each simulated client.

  Args:
    examples: All examples, `[N, *data_shape]`.
    client_indices: For each client, the indices of its examples in `examples`.
  """

  def __init__(self, examples: np.ndarray, client_indices: list[np.ndarray]):
    if not client_indices:
      raise ValueError('a population needs at least one client.')
    empty = [i for i, idx in enumerate(client_indices) if len(idx) == 0]
    if empty:
      raise ValueError(f'clients {empty[:5]} hold no examples; use fewer clients or another '
                       'partition.')
    self._examples = examples
    self._client_indices = [np.asarray(idx, np.int64) for idx in client_indices]

  @property
  def num_clients(self) -> int:
    return len(self._client_indices)

  @property
  def client_sizes(self) -> np.ndarray:
    return np.array([len(idx) for idx in self._client_indices])

  def client_examples(self, client_id: int) -> np.ndarray:
    return self._examples[self._client_indices[client_id]]

  def round_datasets(
      self, client_ids, work: LocalWork, *, round_num: int, seed: int
  ) -> list[tf.data.Dataset]:
    """The datasets of `client_ids` for round `round_num` (shuffles seeded per client/round)."""
    return [
        client_dataset(
            self.client_examples(client_id), work, seed=_derived_seed(seed, round_num, client_id)
        )
        for client_id in client_ids
    ]


def sample_clients(num_clients: int, clients_per_round: int, *, round_num: int, seed: int,
                   method: str = 'fixed') -> np.ndarray:
  """The sorted client ids of round `round_num`.

  Args:
    num_clients: Population size.
    clients_per_round: Exact (`fixed`) or expected (`poisson`) number of clients.
    round_num: The round; with `seed` it alone determines the sample.
    seed: The run seed.
    method: `fixed` draws exactly `clients_per_round` clients uniformly without
      replacement; `poisson` includes each client independently with probability
      `clients_per_round / num_clients` (the sample may be empty). These are the two
      samplings `tff_gan.privacy` accounts for.
  """
  if not 0 < clients_per_round <= num_clients:
    raise ValueError(f'clients_per_round must be in [1, num_clients={num_clients}], got '
                     f'{clients_per_round}.')
  rng = np.random.default_rng(_derived_seed(seed, round_num, 0x5A3F))
  if method == 'poisson':
    return np.flatnonzero(rng.random(num_clients) < clients_per_round / num_clients)
  if method != 'fixed':
    raise ValueError(f"unknown client sampling '{method}'; choose one of: fixed, poisson.")
  if clients_per_round == num_clients:
    return np.arange(num_clients)
  return np.sort(rng.choice(num_clients, size=clients_per_round, replace=False))


def surviving_clients(client_ids: np.ndarray, dropout_rate: float, *, round_num: int,
                      seed: int) -> np.ndarray:
  """The sampled clients that do not drop out after the broadcast.

  Each client independently fails with probability `dropout_rate` (seeded from the run seed
  and the round, independently of the client sample and of any data), as devices that go
  offline mid-round do.
  """
  if not 0 <= dropout_rate < 1:
    raise ValueError(f'dropout_rate must be in [0, 1), got {dropout_rate}.')
  if dropout_rate == 0:
    return np.asarray(client_ids)
  rng = np.random.default_rng(_derived_seed(seed, round_num, 0xD209))
  return np.asarray(client_ids)[rng.random(len(client_ids)) >= dropout_rate]
