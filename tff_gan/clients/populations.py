"""Client populations and the per-round tf.data pipelines of their clients.

A population (`ClientData`) builds a client's round dataset in TensorFlow from a key (its id
and its round's shuffle seed, `round_keys`), so TFF builds datasets on the worker and a round
sends clients only their keys (`GanProcess.with_client_data`). `ClientPopulation` splits
a task's fixed examples; `GeneratedClients` lets each client draw its own.

Each round a sampled client makes `local_epochs` passes over its shuffled examples in batches
of `batch_size`, stopping after `local_steps` batches when that cap is set (TFF's usual
`client_epochs_per_round` / `max_batches` semantics). The client's FedAvg weight is the number
of examples it actually trained on, which follows its dataset size n_k unless the cap binds.
Every shuffle and every sample is seeded from (run seed, round, client), so a run is
reproducible and a round can be recomputed without replaying earlier ones.
"""

from __future__ import annotations

import abc
import dataclasses

import numpy as np
import tensorflow as tf

from tff_gan.choices import SPLITS
from tff_gan.core import dp_sgd, seeds


@dataclasses.dataclass(frozen=True)
class LocalWork:
  """How much a client trains per round.

  Attributes:
    batch_size: Examples per local step.
    local_epochs: Passes over the client's data per round.
    local_steps: Optional cap on the batches per round (None: no cap).
    poisson: Draw batches by Poisson sampling (`core.dp_sgd.poisson_batches`, for
      example-level DP): ⌈local_epochs · n / batch_size⌉ steps (capped by `local_steps`),
      each holding every example with probability batch_size / n. Otherwise shuffled
      passes in fixed-size batches.
    noise_key: With `poisson`, the key (`core.seeds.noise_key`) the masks, the DP-SGD noise
      and the generated batches descend from, folded with the client's round seed; None
      derives them from the round seed alone (tests).
  """

  batch_size: int = 64
  local_epochs: int = 1
  local_steps: int | None = None
  poisson: bool = False
  noise_key: tuple[int, int] | None = None

  def __post_init__(self):
    if self.batch_size <= 0:
      raise ValueError(f'batch_size must be positive, got {self.batch_size}.')
    if self.local_epochs <= 0:
      raise ValueError(f'local_epochs must be positive, got {self.local_epochs}.')
    if self.local_steps is not None and self.local_steps <= 0:
      raise ValueError(f'local_steps must be positive (or unset), got {self.local_steps}.')


def client_dataset(examples, work: LocalWork, *, seed) -> tf.data.Dataset:
  """The batches one client trains on in one round.

  Args:
    examples: The client's examples, `[n, *data_shape]`: a numpy array, or a tensor when
      the dataset is built inside a TF graph (as on TFF's executor).
    work: The client's `LocalWork`.
    seed: The shuffle seed, a Python int or an int64 scalar tensor; the same seed gives the
      same batches either way.
  """
  if isinstance(examples, np.ndarray):
    examples = examples.astype(np.float32, copy=False)
  if work.poisson:
    steps = dp_sgd.poisson_steps(tf.shape(examples, out_type=tf.int64)[0],
                                 batch_size=work.batch_size, local_epochs=work.local_epochs,
                                 local_steps=work.local_steps)
    return dp_sgd.poisson_batches(
        examples, batch_size=work.batch_size, steps=steps,
        seed=(_stateless_seed(seed) if work.noise_key is None
              else seeds.keyed_seed(work.noise_key, seed)))
  dataset = tf.data.Dataset.from_tensor_slices(examples)
  buffer_size = tf.shape(examples, out_type=tf.int64)[0]
  dataset = dataset.shuffle(buffer_size, seed=seed, reshuffle_each_iteration=True)
  dataset = dataset.repeat(work.local_epochs).batch(work.batch_size)
  if work.local_steps is not None:
    dataset = dataset.take(work.local_steps)
  return dataset


def _stateless_seed(seed) -> tf.Tensor:
  """The int64 `[2]` stateless seed of a shuffle seed (Python int or int64 scalar)."""
  return tf.stack([tf.constant(0, tf.int64), tf.cast(seed, tf.int64)])


def round_keys(client_ids, *, round_num: int, seed: int) -> list[np.ndarray]:
  """For each client, int64 `[2]`: its id and its shuffle seed for round `round_num`.

  A key is all a client needs to build its round's dataset (`ClientData.dataset`), so the
  keys are what a round sends to the clients instead of the data.
  """
  return [np.array([client_id, seeds.shuffle_seed(seed, round_num, client_id)], np.int64)
          for client_id in client_ids]


# Generated populations list their clients' labels (per-client coverage) up to this size.
MAX_LABELLED_CLIENTS = 1000


class ClientData(abc.ABC):
  """A population of clients whose round datasets TF code builds from a key.

  `dataset(key, work)` is plain TensorFlow, so TFF can run it on the executor: a round sends
  each client only its key (`round_keys`), never its examples, and the controller holds no
  client's data (see `tff_gan.algorithms.composition.GanProcess.with_client_data`).
  """

  @property
  @abc.abstractmethod
  def num_clients(self) -> int:
    """Number of clients."""

  @property
  @abc.abstractmethod
  def client_sizes(self) -> np.ndarray:
    """Examples held by each client, `[num_clients]`."""

  @abc.abstractmethod
  def client_examples_tensor(self, client_id: tf.Tensor) -> tf.Tensor:
    """One client's examples `[n, *data_shape]`, built in TF from its int64 id."""

  def dataset(self, key: tf.Tensor, work: LocalWork) -> tf.data.Dataset:
    """The batches of the client and round that `key` (an element of `round_keys`) names."""
    return client_dataset(self.client_examples_tensor(key[0]), work, seed=key[1])

  def client_labels(self, labels: np.ndarray | None, num_labels: int) -> np.ndarray | None:
    """Which labels each client holds, bool `[num_clients, num_labels]`, or None if unknown.

    Args:
      labels: The label of each of the task's examples (populations that split them), or
        None.
      num_labels: How many labels the task has.
    """
    del labels, num_labels
    return None

  def client_labels_tensor(self, client_id: tf.Tensor) -> tf.Tensor:
    """The int64 label of each of client `client_id`'s examples `[n]`, built in TF.

    What federated evaluation trains its classifier on, on the executor
    (`tasks.federated_eval`). Populations that do not know their labels raise.
    """
    del client_id
    raise ValueError(f'{type(self).__name__} does not know its clients\' labels; build it with '
                     'them (e.g. ClientPopulation(..., labels=...)).')


class ClientPopulation(ClientData):
  """A task's fixed examples, split over clients by index lists (`tff_gan.clients.partition`).

  The examples travel to the executor as one constant of the round's computation; each
  client's dataset is gathered from it there.

  Args:
    examples: All examples, `[N, *data_shape]`.
    client_indices: For each client, the indices of its examples in `examples`.
    labels: Optional int `[N]`, the label of each example (`client_labels_tensor`).
  """

  def __init__(self, examples: np.ndarray, client_indices: list[np.ndarray],
               labels: np.ndarray | None = None):
    if not client_indices:
      raise ValueError('a population needs at least one client.')
    empty = [i for i, idx in enumerate(client_indices) if len(idx) == 0]
    if empty:
      raise ValueError(f'clients {empty[:5]} hold no examples; use fewer clients or another '
                       'partition.')
    self._examples = examples.astype(np.float32, copy=False)
    self._client_indices = [np.asarray(idx, np.int64) for idx in client_indices]
    if labels is not None and np.shape(labels) != (len(examples),):
      raise ValueError(f'labels must hold one label per example, got shape {np.shape(labels)} '
                       f'for {len(examples)} examples.')
    self._labels = None if labels is None else np.asarray(labels, np.int64)

  @property
  def num_clients(self) -> int:
    return len(self._client_indices)

  @property
  def client_sizes(self) -> np.ndarray:
    return np.array([len(idx) for idx in self._client_indices])

  def client_examples(self, client_id: int) -> np.ndarray:
    return self._examples[self._client_indices[client_id]]

  def client_labels(self, labels, num_labels):
    if labels is None:
      return None
    held = np.zeros((self.num_clients, num_labels), bool)
    for k, indices in enumerate(self._client_indices):
      held[k, np.asarray(labels)[indices]] = True
    return held

  def _client_gather(self, values: np.ndarray, client_id: tf.Tensor) -> tf.Tensor:
    indices = tf.RaggedTensor.from_row_lengths(np.concatenate(self._client_indices),
                                               self.client_sizes)
    return tf.gather(tf.constant(values), indices[client_id])

  def client_examples_tensor(self, client_id: tf.Tensor) -> tf.Tensor:
    return self._client_gather(self._examples, client_id)

  def client_labels_tensor(self, client_id: tf.Tensor) -> tf.Tensor:
    if self._labels is None:
      return super().client_labels_tensor(client_id)
    return self._client_gather(self._labels, client_id)

  def round_datasets(
      self, client_ids, work: LocalWork, *, round_num: int, seed: int
  ) -> list[tf.data.Dataset]:
    """The datasets of `client_ids` for round `round_num`, built here in Python.

    The same batches as `dataset` builds on the executor from `round_keys`, as long as TF's
    global seed is unset in this process: `tf.random.set_seed` changes the shuffles built
    here, eagerly, but not the executor's (TFF traces them in a graph of their own).
    """
    return [client_dataset(self.client_examples(int(client_id)), work, seed=int(shuffle_seed))
            for client_id, shuffle_seed in round_keys(client_ids, round_num=round_num, seed=seed)]


class GeneratedClients(ClientData):
  """Clients that draw their own examples from a task's generative recipe, on the executor.

  Client `k` holds `examples_per_client` examples. Their labels are drawn with the client's
  label skew (`scheme`), then the examples from the task's `sample_fn(labels, seed)`; every
  draw is stateless and seeded from (`seed`, `k`), so a client holds the same examples every
  round and in every process, and the controller stores nothing per client: any population
  size costs the same memory and the same round time.

  Label skew per client, over the task's `num_labels` labels:

  * `iid`: each label uniformly;
  * `dirichlet`: label proportions p ~ Dir(`dirichlet_alpha` · 1) drawn for the client, then
    each label from p (Hsu et al., 2019);
  * `pathological`: `labels_per_client` distinct labels chosen uniformly for the client, then
    each label uniformly among them.

  Unlike `ClientPopulation`, which splits one finite dataset, every client here has the same
  size and clients' label proportions are drawn independently.
  """

  def __init__(self, num_clients: int, examples_per_client: int, *, num_labels: int,
               sample_fn, scheme: str = 'iid', dirichlet_alpha: float = 0.5,
               labels_per_client: int = 2, seed: int = 0):
    if num_clients <= 0 or examples_per_client <= 0:
      raise ValueError(f'num_clients and examples_per_client must be positive, got '
                       f'{num_clients} and {examples_per_client}.')
    if scheme not in SPLITS:
      raise ValueError(f"unknown scheme {scheme!r}; choose one of: {', '.join(SPLITS)}.")
    if scheme == 'pathological' and not 1 <= labels_per_client <= num_labels:
      raise ValueError(f'labels_per_client must be between 1 and {num_labels}, got '
                       f'{labels_per_client}; lower it.')
    self._num_clients = num_clients
    self._examples_per_client = examples_per_client
    self._num_labels = num_labels
    self._sample_fn = sample_fn
    self._scheme = scheme
    self._dirichlet_alpha = dirichlet_alpha
    self._labels_per_client = labels_per_client
    self._seed = seed

  @property
  def num_clients(self) -> int:
    return self._num_clients

  @property
  def client_sizes(self) -> np.ndarray:
    return np.full(self._num_clients, self._examples_per_client)

  def client_labels_tensor(self, client_id: tf.Tensor) -> tf.Tensor:
    """The int64 labels `[examples_per_client]` of client `client_id`."""
    client_seed = seeds.generated_client_seed(self._seed, seeds.GENERATED_LABELS_SALT,
                                              client_id)
    skew_seed, label_seed = tf.unstack(tf.random.experimental.stateless_split(client_seed, 2))
    shape = [self._examples_per_client]
    if self._scheme == 'iid':
      return tf.random.stateless_uniform(shape, label_seed, 0, self._num_labels, tf.int64)
    if self._scheme == 'dirichlet':
      weights = tf.random.stateless_gamma([self._num_labels], skew_seed,
                                          alpha=self._dirichlet_alpha)
      # Categorical sampling normalizes the weights; the floor keeps log finite.
      logits = tf.math.log(tf.maximum(weights, np.finfo(np.float32).tiny))
      return tf.random.stateless_categorical(logits[None], shape[0], label_seed)[0]
    chosen = tf.argsort(tf.random.stateless_uniform([self._num_labels], skew_seed))
    picks = tf.random.stateless_uniform(shape, label_seed, 0, self._labels_per_client, tf.int32)
    return tf.cast(tf.gather(chosen[:self._labels_per_client], picks), tf.int64)

  def client_labels(self, labels, num_labels):
    del labels  # Each client draws its own.
    if self._num_clients > MAX_LABELLED_CLIENTS:
      return None
    held = np.zeros((self._num_clients, num_labels), bool)
    for k in range(self._num_clients):
      held[k, self.client_labels_tensor(tf.constant(k, tf.int64)).numpy()] = True
    return held

  def client_examples_tensor(self, client_id: tf.Tensor) -> tf.Tensor:
    example_seed = seeds.generated_client_seed(self._seed, seeds.GENERATED_EXAMPLES_SALT,
                                               client_id)
    return self._sample_fn(self.client_labels_tensor(client_id), example_seed)


class ClientSubset(ClientData):
  """Some clients of a population, renumbered 0..n-1 (client `k` is `base` client `ids[k]`)."""

  def __init__(self, base: ClientData, ids):
    ids = np.asarray(ids, np.int64)
    if not len(ids) or ids.min() < 0 or ids.max() >= base.num_clients:
      raise ValueError(f'a subset needs client ids in [0, {base.num_clients}), got {ids}.')
    self.base, self.ids = base, ids

  @property
  def num_clients(self) -> int:
    return len(self.ids)

  @property
  def client_sizes(self) -> np.ndarray:
    return self.base.client_sizes[self.ids]

  def client_examples_tensor(self, client_id: tf.Tensor) -> tf.Tensor:
    return self.base.client_examples_tensor(tf.gather(tf.constant(self.ids), client_id))

  def dataset(self, key: tf.Tensor, work: LocalWork) -> tf.data.Dataset:
    base_key = tf.stack([tf.gather(tf.constant(self.ids), key[0]), key[1]])
    return self.base.dataset(base_key, work)

  def client_labels(self, labels, num_labels):
    held = self.base.client_labels(labels, num_labels)
    return None if held is None else held[self.ids]

  def client_labels_tensor(self, client_id: tf.Tensor) -> tf.Tensor:
    return self.base.client_labels_tensor(tf.gather(tf.constant(self.ids), client_id))
