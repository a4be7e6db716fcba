"""The secure sums of `secure_rounds`: BFV (`he`) and SecAgg+ (`secagg`), behind one call.

Each takes the round's encoded client vectors (signed integers, `secure.fixed_point`) and
their weights n_k, keyed by report: `(client id, occurrence)`, the occurrence counting that
client's earlier reports in the same sum (above 0 only in an asynchronous buffer, which a fast
client can report into twice). Each gives their sum, decrypted or unmasked, with the bytes the
protocol cost beyond the model's broadcast. SIMULATED: every party runs on this machine (see
`secure_rounds`); the HE aggregator is a process of its own that holds no secret key.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from tff_gan.secure import he, he_process, secagg

_GRAPH_SALT = 0x5341  # Separates SecAgg+'s public graph seeds from every other stream.
ReportKey = tuple[int, int]  # (client id, occurrence): see the module docstring.


class Total(NamedTuple):
  """A secure sum, decrypted or unmasked, and the bytes it cost beyond the model's."""

  sums: np.ndarray | None  # Σ m_k·n_k·x_k as integers; None when no client sent anything.
  weight_slot: int  # Σ m_k·n_k (Σ n_k without multipliers).
  examples: int  # Σ n_k.
  bytes_up: int
  bytes_down: int


class HeSum:
  """BFV: a key holder, the clients' encryptor, an aggregator process (and, for multiplied
  sums, a second one that adds the weights alone)."""

  def __init__(self, params: he.HeParams, asynchronous: bool):
    self._key_holder = he.KeyHolder(params)
    self.public_context = self._key_holder.public_context_bytes()
    self._encryptor = he.Encryptor(self.public_context, params)
    self._aggregator = he_process.AggregatorProcess(self.public_context)
    self._weights = he_process.AggregatorProcess(self.public_context) if asynchronous else None
    self._has_context: set[int] = set()  # Clients that downloaded this process's key.

  def close(self) -> None:
    self._aggregator.close()
    if self._weights is not None:
      self._weights.close()

  def sum(self, vectors: dict[ReportKey, np.ndarray], weights: dict[ReportKey, int], sampled,
          round_num, multipliers: dict[ReportKey, int] | None) -> Total:
    """The reports' vectors summed (the public context counts down once per client). With
    `multipliers` m_k, Σ n_k comes from each report's second ciphertext, which holds n_k
    alone."""
    del round_num  # One key for the whole process.
    self._aggregator.reset()
    if self._weights is not None:
      self._weights.reset()
    bytes_up = 0
    for report, vector in vectors.items():
      encrypted = self._encryptor.encrypt(vector, weights[report])
      self._aggregator.add(encrypted, multipliers[report] if multipliers is not None else 1)
      bytes_up += encrypted.nbytes
      if multipliers is not None:
        weight_only = self._encryptor.encrypt(np.zeros(0, np.int64), weights[report])
        self._weights.add(weight_only)
        bytes_up += weight_only.nbytes
    new_clients = {int(c) for c in sampled} - self._has_context
    self._has_context |= new_clients
    bytes_down = len(new_clients) * len(self.public_context)
    if not vectors:
      return Total(None, 0, 0, bytes_up, bytes_down)
    sums, weight_slot = self._key_holder.decrypt(self._aggregator.result())
    examples = weight_slot
    if multipliers is not None:
      _, examples = self._key_holder.decrypt(self._weights.result())
    return Total(sums, weight_slot, examples, bytes_up, bytes_down)


class SecAggSum:
  """SecAgg+ (`secure.secagg`), every party in this process."""

  def __init__(self, seed: int, neighbours: int | None, threshold: int | None):
    self._seed, self._neighbours, self._threshold = seed, neighbours, threshold

  def close(self) -> None:
    pass

  def sum(self, vectors: dict[ReportKey, np.ndarray], weights: dict[ReportKey, int], sampled,
          round_num, multipliers: dict[ReportKey, int] | None) -> Total:
    """As `HeSum.sum`, without multipliers and one report a client; the sampled clients
    missing from `vectors` drop out after sharing.

    Raises:
      secagg.SecAggAborted: When too many dropped out for the threshold.
    """
    if multipliers is not None or any(occurrence for _, occurrence in vectors):
      raise ValueError('secagg sums synchronous rounds only: no multipliers, one report a '
                       'client.')
    length = next(iter(vectors.values())).size + 1 if vectors else 1
    inputs = {int(c): np.zeros(length, np.uint32) for c in sampled}
    for (client_id, _), vector in vectors.items():
      inputs[client_id] = secagg.to_ring(np.append(vector, np.int64(weights[client_id, 0])))
    if len(inputs) < 2 or not vectors:
      raise secagg.SecAggAborted(f'secagg: the round fails: {len(vectors)} of {len(inputs)} '
                                 'sampled clients sent an update; masking needs 2 or more.')
    graph_seed = int(np.random.default_rng([self._seed, _GRAPH_SALT,
                                            round_num]).integers(2**63))
    total, view = secagg.secure_sum(
        inputs, neighbours=self._neighbours, threshold=self._threshold,
        dropouts_before_input=set(inputs) - {c for c, _ in vectors}, graph_seed=graph_seed,
        round_id=round_num)
    signed = secagg.from_ring(total)
    return Total(signed[:-1], int(signed[-1]), int(signed[-1]), sum(view.bytes_up.values()),
                  sum(view.bytes_down.values()))
