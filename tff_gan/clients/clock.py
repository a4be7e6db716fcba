"""Simulated time: how long each client's local work takes, stragglers and timeouts."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tff_gan.core import seeds


@dataclasses.dataclass(frozen=True)
class ClientClock:
  """Simulated seconds a client's local work takes.

  Task `j` of client `k` takes exp(mu + sigma·ε), ε ~ N(0, 1) drawn from (seed, j, k), times
  `straggler_slowdown` if `k` is a straggler; a fixed `straggler_fraction` of clients are,
  drawn from (seed, k). `timeout` is how long the server waits for a report before giving up
  on it: `client_timeout`, or by default the time a straggler takes at the 99.9th percentile
  (mu + 3.09 sigma), so it cuts off only clients that will never report.
  """

  mu: float
  sigma: float
  straggler_fraction: float
  straggler_slowdown: float
  timeout: float
  seed: int

  @classmethod
  def from_config(cls, config) -> ClientClock:
    mu, sigma = config.latency
    timeout = config.client_timeout or (
        config.straggler_slowdown * math.exp(mu + 3.09 * sigma))
    return cls(mu, sigma, config.straggler_fraction, config.straggler_slowdown, timeout,
               config.seed)

  def is_straggler(self, client_ids) -> np.ndarray:
    return np.array([np.random.default_rng([self.seed, seeds.STRAGGLER_SALT, int(k)]).random()
                     < self.straggler_fraction for k in client_ids], bool)

  def durations(self, client_ids, task_index: int) -> np.ndarray:
    """Seconds each of `client_ids` takes for its task number `task_index`."""
    client_ids = np.asarray(client_ids, np.int64)
    noise = np.array([np.random.default_rng([self.seed, seeds.LATENCY_SALT, task_index, int(k)])
                      .standard_normal() for k in client_ids])
    seconds = np.exp(self.mu + self.sigma * noise) if len(client_ids) else np.zeros(0)
    return np.where(self.is_straggler(client_ids), self.straggler_slowdown, 1.0) * seconds

  def sync_round_seconds(self, client_ids, completed, round_num: int) -> float:
    """How long a synchronous round waits: for its slowest client, or the timeout when a
    sampled client never reports."""
    if len(completed) < len(client_ids):
      return self.timeout
    if not len(client_ids):
      return 0.0
    return float(min(self.durations(client_ids, round_num).max(), self.timeout))
