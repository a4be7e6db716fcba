"""Which clients take part in a round: sampling and dropouts, seeded from (seed, round).

A sample that amplifies differential privacy must be secret: whoever knows who took part in
a round loses the amplification the accountant credits. `sample_clients(key=...)` draws the
sample from a secret key (the run's DP key, `seeds.noise_key`) instead of the run seed,
which config.json publishes.
"""

from __future__ import annotations

import numpy as np

from tff_gan.choices import CLIENT_SAMPLING
from tff_gan.core import seeds


def sample_clients(num_clients: int, clients_per_round: int, *, round_num: int, seed: int,
                   method: str = 'fixed', key: tuple[int, int] | None = None) -> np.ndarray:
  """The sorted client ids of round `round_num`.

  Args:
    num_clients: Population size.
    clients_per_round: Exact (`fixed`) or expected (`poisson`) number of clients.
    round_num: The round; with `seed` it alone determines the sample.
    seed: The run seed.
    method: `fixed` draws exactly `clients_per_round` clients uniformly without
      replacement; `poisson` includes each client independently with probability
      `clients_per_round / num_clients` (the sample may be empty). These are the two
      samplings `tff_gan.privacy.accounting` accounts for.
  """
  if not 0 < clients_per_round <= num_clients:
    raise ValueError(f'clients_per_round must be in [1, num_clients={num_clients}], got '
                     f'{clients_per_round}.')
  if key is None:
    rng = np.random.default_rng(seeds.derived_seed(seed, round_num, seeds.CLIENT_SAMPLING_SALT))
  else:
    rng = np.random.Generator(np.random.Philox(
        key=(int(key[0]) << 64) | int(key[1]),
        counter=[0, 0, int(round_num), seeds.CLIENT_SAMPLING_SALT]))
  if method == 'poisson':
    return np.flatnonzero(rng.random(num_clients) < clients_per_round / num_clients)
  if method not in CLIENT_SAMPLING:
    raise ValueError(f"unknown client sampling '{method}'; choose one of: "
                     f"{', '.join(CLIENT_SAMPLING)}.")
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
  rng = np.random.default_rng(seeds.derived_seed(seed, round_num, seeds.DROPOUT_SALT))
  return np.asarray(client_ids)[rng.random(len(client_ids)) >= dropout_rate]
