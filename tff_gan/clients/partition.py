"""Splits a centralized labelled dataset into simulated clients' private datasets.

Pure numpy. `partition` returns, for each client, the indices of the examples that client
holds; every scheme hands out every example to exactly one client. The schemes range from
identically distributed clients to strongly label-skewed (non-IID) ones:

- `iid`: a uniform random split into nearly equal parts.
- `dirichlet`: label skew controlled by a concentration parameter (Hsu et al., 2019,
  "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
  Classification"). Small `dirichlet_alpha` gives each client few labels; large gives IID.
- `pathological`: each client holds `labels_per_client` label shards (McMahan et al., 2017,
  "Communication-Efficient Learning of Deep Networks from Decentralized Data").
"""

from __future__ import annotations

import math

import numpy as np

from tff_gan.choices import MIN_DIRICHLET_ALPHA, SPLITS

# How many times the Dirichlet scheme redraws all proportions to avoid empty clients before it
# falls back to moving single examples into them.
_MAX_DIRICHLET_DRAWS = 100
# Random shard swaps per shard used to mix the pathological scheme's initial assignment.
_SWAPS_PER_SHARD = 20


def alpha_problem(alpha: float) -> str:
  """The one-line refusal of a Dirichlet concentration outside [MIN_DIRICHLET_ALPHA, ∞)."""
  return (f'--dirichlet_alpha must be a finite number >= {MIN_DIRICHLET_ALPHA:g}, got {alpha:g} '
          f'(below it every label already lands on one client, and numpy\'s sampler takes '
          f'minutes); use e.g. 0.1 for strong label skew, 100 for nearly IID clients, or '
          f'--partition=pathological --labels_per_client=1.')


def partition(
    labels: np.ndarray,
    num_clients: int,
    *,
    scheme: str = 'iid',
    dirichlet_alpha: float = 0.5,
    labels_per_client: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
  """Assigns the examples with the given labels to `num_clients` clients.

  Args:
    labels: Integer array `[N]`, the label of each example. For the `iid` scheme only its
      length matters.
    num_clients: Number of clients, between 1 and `N`.
    scheme: One of `tff_gan.choices.SPLITS`:
      - `'iid'`: shuffle, then split into `num_clients` parts whose sizes differ by at most 1.
      - `'dirichlet'`: for each label, draw client proportions q ~ Dir(alpha * 1_K) over the
        K clients and split that label's (shuffled) examples by q. Client sizes are unequal.
        Every client gets at least one example: all proportions are redrawn (up to 100
        times) while some client is empty, after which each remaining empty client receives
        one example moved from the currently largest client.
      - `'pathological'`: sort the examples by label, cut them into
        `num_clients * labels_per_client` contiguous shards of nearly equal size, and give
        each client `labels_per_client` shards, chosen so that a client's shards have
        distinct (majority) labels. Each client then holds exactly `labels_per_client`
        labels whenever this is possible, which needs two things: (1) no label fills more
        than `num_clients` shards (else, by pigeonhole, some client gets two shards of that
        label and holds fewer distinct labels), and (2) shards do not straddle label
        boundaries, which holds when each label's count is a multiple of the shard size
        (a straddling shard brings its client a few examples of a neighbouring label too).
    dirichlet_alpha: Concentration of the `dirichlet` scheme, positive. Ignored otherwise.
    labels_per_client: Shards (and so labels) per client in the `pathological` scheme,
      between 1 and the number of distinct labels. Ignored otherwise.
    seed: Seed of the `np.random.default_rng` that drives every random choice; the same
      arguments always give the same partition.

  Returns:
    A list of `num_clients` sorted int64 arrays of example indices. Every index in
    `range(N)` appears in exactly one array, and no array is empty.

  Raises:
    ValueError: If an argument is out of range or the scheme is unknown.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f'labels must be a 1-D array, got shape {labels.shape}; flatten it first.')
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be integers, got dtype {labels.dtype}; cast them to int.')
  num_examples = labels.shape[0]
  if isinstance(num_clients, bool) or not isinstance(num_clients, int | np.integer):
    raise ValueError(f'num_clients must be an int, got {num_clients!r}.')
  if not 1 <= num_clients <= num_examples:
    raise ValueError(
        f'num_clients must be between 1 and the number of examples ({num_examples}), got '
        f'{num_clients}; use fewer clients or more examples.'
    )
  if scheme not in SPLITS:
    raise ValueError(f"unknown scheme {scheme!r}; choose one of: {', '.join(SPLITS)}.")
  rng = np.random.default_rng(seed)

  if scheme == 'iid':
    client_indices = np.array_split(rng.permutation(num_examples), num_clients)
  elif scheme == 'dirichlet':
    if not (math.isfinite(dirichlet_alpha) and dirichlet_alpha >= MIN_DIRICHLET_ALPHA):
      raise ValueError(alpha_problem(dirichlet_alpha))
    client_indices = _dirichlet_split(labels, num_clients, dirichlet_alpha, rng)
  else:
    num_distinct_labels = np.unique(labels).size
    if isinstance(labels_per_client, bool) or not isinstance(labels_per_client, int | np.integer):
      raise ValueError(f'labels_per_client must be an int, got {labels_per_client!r}.')
    if not 1 <= labels_per_client <= num_distinct_labels:
      raise ValueError(
          f'labels_per_client must be between 1 and the number of distinct labels '
          f'({num_distinct_labels}), got {labels_per_client}; lower it.'
      )
    if num_clients * labels_per_client > num_examples:
      raise ValueError(
          f'the pathological scheme needs num_clients * labels_per_client '
          f'({num_clients * labels_per_client}) shards but there are only {num_examples} '
          'examples; use fewer clients or fewer labels per client.'
      )
    client_indices = _pathological_split(labels, num_clients, labels_per_client, rng)

  return [np.sort(indices).astype(np.int64) for indices in client_indices]


def _dirichlet_split(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
  """The `dirichlet` scheme of `partition`; returns unsorted index arrays."""
  indices_by_label = [np.flatnonzero(labels == label) for label in np.unique(labels)]
  for _ in range(_MAX_DIRICHLET_DRAWS):
    parts_per_client = [[] for _ in range(num_clients)]
    for label_indices in indices_by_label:
      proportions = rng.dirichlet(np.full(num_clients, alpha))
      shuffled = rng.permutation(label_indices)
      # Cut points from the rounded cumulative proportions: every example is used once.
      cut_points = np.round(np.cumsum(proportions)[:-1] * shuffled.size).astype(np.int64)
      for client, part in enumerate(np.split(shuffled, cut_points)):
        parts_per_client[client].append(part)
    client_indices = [np.concatenate(parts) for parts in parts_per_client]
    if all(indices.size for indices in client_indices):
      return client_indices

  # Still some empty clients: move one example into each from the largest client. Since
  # num_clients <= num_examples, the largest client has at least 2 examples while one is empty.
  for client, indices in enumerate(client_indices):
    if indices.size:
      continue
    largest = int(np.argmax([other.size for other in client_indices]))
    donor = client_indices[largest]
    moved_position = rng.integers(donor.size)
    client_indices[client] = donor[moved_position : moved_position + 1]
    client_indices[largest] = np.delete(donor, moved_position)
  return client_indices


def _pathological_split(
    labels: np.ndarray, num_clients: int, labels_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
  """The `pathological` scheme of `partition`; returns unsorted index arrays."""
  # Shuffle, then stable-sort by label, so which examples of a label share a shard is random.
  shuffled = rng.permutation(labels.size)
  sorted_indices = shuffled[np.argsort(labels[shuffled], kind='stable')]
  shards = np.array_split(sorted_indices, num_clients * labels_per_client)
  shard_labels = np.array([_majority(labels[shard]) for shard in shards])

  # Start from a round-robin deal of the shards grouped by label (labels in random order):
  # consecutive shards of one label go to different clients whenever no label fills more
  # than num_clients shards, which is exactly when distinct labels per client are possible.
  label_order = rng.permutation(np.unique(shard_labels))
  rank_of_label = {label: rank for rank, label in enumerate(label_order)}
  deal_order = sorted(
      rng.permutation(len(shards)), key=lambda shard: rank_of_label[shard_labels[shard]]
  )
  client_of_slot = rng.permutation(num_clients)
  shards_of_client = [[] for _ in range(num_clients)]
  for slot, shard in enumerate(deal_order):
    shards_of_client[client_of_slot[slot % num_clients]].append(shard)

  # Mix with random swaps between clients that never reduce either client's number of
  # distinct labels, so the pairing of labels is random rather than fixed by the deal.
  def num_distinct(client_shards: list[int]) -> int:
    return len({shard_labels[shard] for shard in client_shards})

  if num_clients > 1:
    for _ in range(_SWAPS_PER_SHARD * len(shards)):
      client_a, client_b = rng.choice(num_clients, size=2, replace=False)
      slot_a, slot_b = rng.integers(labels_per_client, size=2)
      shards_a, shards_b = shards_of_client[client_a], shards_of_client[client_b]
      swapped_a = shards_a.copy()
      swapped_b = shards_b.copy()
      swapped_a[slot_a], swapped_b[slot_b] = shards_b[slot_b], shards_a[slot_a]
      if num_distinct(swapped_a) >= num_distinct(shards_a) and num_distinct(
          swapped_b
      ) >= num_distinct(shards_b):
        shards_of_client[client_a], shards_of_client[client_b] = swapped_a, swapped_b

  return [
      np.concatenate([shards[shard] for shard in client_shards])
      for client_shards in shards_of_client
  ]


def _majority(shard_labels: np.ndarray) -> int:
  """The most frequent label in a shard (the smallest one on ties)."""
  values, counts = np.unique(shard_labels, return_counts=True)
  return int(values[np.argmax(counts)])
