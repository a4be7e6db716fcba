"""SecAgg+ secure aggregation by pairwise masks: the primitives of `--aggregator=secagg`.

Pairwise masking after Bonawitz et al. 2017 ("Practical Secure Aggregation for Privacy-
Preserving Machine Learning") on the sparse neighbour graph of Bell et al. 2020 ("Secure
Single-Server Aggregation with (Poly)Logarithmic Overhead", SecAgg+). This module holds the
parameters and their checks, the neighbour graph, the fixed-point format in Z/2^32 and
`secure_sum`, which runs one round; the steps and parties are in `secagg_parties`, and the
cryptographic building blocks (X25519, HKDF, ChaCha20, ChaCha20-Poly1305, Shamir) with what
each key is bound to in `secagg_crypto`.

Roles and threat model. Simulated: every party runs in this one process, and the pairwise
channels between clients (keys, sealed shares) pass through the server object, which records
what it receives in a `ServerView`; bytes are counted, nothing is sent over a network.

* A client (`SecAggClient`) holds, for one round only, two X25519 key pairs (c_u seals the
  shares it sends, s_u agrees a mask seed s_uv with each neighbour v) and a self-mask seed b_u.
  Each of its k neighbours in a public graph holds one Shamir share of b_u and one of s_u's
  private key, threshold t, sealed so that only it can open them. The client sends
  y_u = x_u + PRG(b_u) + Σ_v ±PRG(s_uv) mod 2^32, PRG being the ChaCha20 keystream: y_u is
  uniform to whoever lacks b_u, whatever it knows of the other masks.
* The server (`SecAggServer`) relays every message and sees every public key, the sealed
  shares (ciphertexts under keys agreed between the two clients), every y_u, and in the last
  step the survivors' b_u and the dropped clients' mask keys, which it needs to take the masks
  out. Semi-honest (it follows the protocol) and colluding with fewer than t neighbours of any
  client, it learns the sum over the survivors and no single x_u. On a sparse graph it could
  learn the sum of each piece of the survivors' graph that falls apart from the rest; the
  complete graph (the default up to 33 clients) cannot fall apart, and Bell et al. show that a
  random graph of degree k of order log n rarely does.
* A malicious server could lie about dropouts: tell some neighbours of v that v survived (for
  shares of b_v) and others that v dropped (for shares of its mask key), then unmask y_v alone.
  A client answers once and opens one kind of share per neighbour, so the two groups are
  disjoint, and with t > k/2 (enforced) they cannot both reach t. It could also pick the graph
  seed so that a victim's neighbours are its accomplices (SecAgg+ assumes public randomness;
  here the caller passes the seed), relay keys of its own in place of a client's (nothing here
  authenticates a client: Bonawitz et al.'s active-security version signs keys under a PKI),
  or drop, replay or alter inputs and the sum: nothing verifies the sum. A rebuilt mask key is
  checked against its public key; a wrong share of b_u goes unnoticed and spoils the sum. A
  malicious client can send any vector in the ring: there is no range proof.

Parameters (`check_params`): k neighbours per client (`--secagg_neighbours`) is by default
every other client up to 33 clients per round (the complete graph: Bonawitz et al.'s
protocol, which assumes nothing of the graph), else 32, so that a client's cost stops growing
with n. Bell et al. need k of order log n, with constants that grow with the dropout and
corruption rates; 32 is a choice for this project's rounds (tens to hundreds of clients), not
a bound proven for every rate. The threshold t (`--secagg_threshold`) is by default ⌊k/2⌋ + 1
(k + 1 in place of k when k and n are both odd), the least that defeats a server lying about
dropouts, so the round survives the most dropouts (a survivor's seed needs t of its
neighbours to answer the unmasking); a larger t resists more clients colluding with the
server (t of a client's neighbours hold both its secrets) but fails the round sooner.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Collection, Mapping

import numpy as np

from tff_gan.secure import fixed_point
from tff_gan.secure import secagg_crypto as crypto
from tff_gan.secure.secagg_parties import SecAggAborted, SecAggClient, SecAggServer, ServerView

__all__ = [  # The parties are re-exported: callers need import `secagg` alone.
    'DEFAULT_MAX_NEIGHBOURS', 'MAX_CENTERED', 'MODULUS', 'SecAggAborted', 'SecAggClient',
    'SecAggParams', 'SecAggServer', 'ServerView', 'check_params', 'choose_fraction_bits',
    'decode', 'encode', 'from_ring', 'neighbour_graph', 'secure_sum', 'to_ring',
]

DEFAULT_MAX_NEIGHBOURS = 32
MODULUS = 2**32
MAX_CENTERED = 2**31 - 1  # A signed sum must stay in [-(2^31 - 1), 2^31 - 1] to decode.


@dataclasses.dataclass(frozen=True)
class SecAggParams:
  """A round's client count n, neighbours k and threshold t (built by `check_params`)."""
  clients: int
  neighbours: int
  threshold: int

  @property
  def max_degree(self) -> int:
    """k, or k + 1 for one client when k and n are both odd (no k-regular graph exists)."""
    return self.neighbours + (self.neighbours % 2 and self.clients % 2)


def _is_count(value) -> bool:
  return isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 1


def check_params(clients: int, neighbours: int | None = None,
                 threshold: int | None = None) -> SecAggParams:
  """k and t for a round of `clients`, defaults filled in (see the module docstring).

  Raises:
    ValueError: With one line naming the flag, the limit and the fix.
  """
  if not _is_count(clients) or clients < 2:
    raise ValueError(f'--aggregator=secagg needs at least 2 clients per round, got {clients}.')
  if neighbours is None:
    neighbours = min(clients - 1, DEFAULT_MAX_NEIGHBOURS)
  if not _is_count(neighbours):
    raise ValueError(f'--secagg_neighbours must be an integer >= 1, got {neighbours!r}.')
  if neighbours > clients - 1:
    raise ValueError(f'--secagg_neighbours {neighbours} needs {neighbours + 1} clients per '
                     f'round, got {clients}; lower it to at most {clients - 1} or raise '
                     '--clients_per_round.')
  degree = SecAggParams(clients, neighbours, 1).max_degree
  lowest = degree // 2 + 1  # Bell et al.: t > k/2, for every client's degree.
  odd = (f' (--secagg_neighbours {neighbours} and {clients} clients are both odd, so one '
         f'client has {degree})') if degree > neighbours else ''
  if lowest > neighbours:
    raise ValueError(f'--secagg_neighbours {neighbours} leaves no valid --secagg_threshold'
                     f'{odd}; raise --secagg_neighbours to {neighbours + 1}.')
  threshold = lowest if threshold is None else threshold
  if not _is_count(threshold):
    raise ValueError(f'--secagg_threshold must be an integer >= 1, got {threshold!r}.')
  if threshold > neighbours:
    raise ValueError(f'--secagg_threshold {threshold} is more than --secagg_neighbours '
                     f'{neighbours}: no secret could be rebuilt; lower it to at most '
                     f'{neighbours}.')
  if 2 * threshold <= degree:
    raise ValueError(f'--secagg_threshold {threshold} is not above half of {degree} neighbours'
                     f'{odd}: a server lying about dropouts could rebuild both of a client\'s '
                     f'secrets and see its update (Bell et al. 2020); raise it to at least '
                     f'{lowest}.')
  return SecAggParams(int(clients), int(neighbours), int(threshold))


def neighbour_graph(client_ids: Collection[int], neighbours: int,
                    seed: int) -> dict[int, tuple[int, ...]]:
  """The Harary graph H_{k,n} over a random permutation of the clients (Bell et al. 2020).

  Clients sit on a circle in the order a public seed shuffles them into; each is linked to the
  ⌊k/2⌋ nearest on either side and, for odd k, to the one opposite. Every client then has k
  neighbours, but for k and n both odd, where one has k + 1.

  Returns:
    Client id -> its neighbours, sorted; the graph is symmetric.
  """
  ids = sorted({crypto.check_client_id(i) for i in client_ids})
  count = len(ids)
  if not 1 <= neighbours <= count - 1:
    raise ValueError(f'{neighbours} neighbours need {neighbours + 1} clients, got {count}.')
  order = [ids[i] for i in np.random.default_rng(seed).permutation(count)]
  links = {i: set() for i in ids}

  def link(a: int, b: int) -> None:
    links[order[a % count]].add(order[b % count])
    links[order[b % count]].add(order[a % count])

  for position in range(count):
    for step in range(1, neighbours // 2 + 1):
      link(position, position + step)
  if neighbours % 2:
    for position in range(count // 2 + count % 2):
      link(position, position + (count + 1) // 2)
  return {i: tuple(sorted(links[i])) for i in ids}


def choose_fraction_bits(clip: float, max_weight: int, max_clients: int, *,
                         min_fraction_bits: int = fixed_point.MIN_FRACTION_BITS) -> int:
  """The most fraction bits f with which no sum can wrap ±2^31 (mod 2^32).

  The worst coordinate of a sum is K·n·coordinate_bound(clip, f), with K `max_clients` and n
  `max_weight`; it and the weight slot K·n must stay within ±(2^31 - 1). The decoded mean is
  then within 2^-f of the exact weighted mean of the clipped updates, per coordinate.

  Raises:
    ValueError: With one line naming the limit, when even `min_fraction_bits` wraps.
  """
  fixed_point.check_count('max_weight', max_weight)
  fixed_point.check_count('max_clients', max_clients)
  fixed_point.check_clip(clip)
  scale = max_clients * max_weight
  fraction_bits = fixed_point.most_fraction_bits(clip, scale, MAX_CENTERED, min_fraction_bits)
  if fraction_bits is not None:
    return fraction_bits
  needed = scale * fixed_point.coordinate_bound(clip, min_fraction_bits)
  raise ValueError(
      f'--aggregator=secagg: clip {clip:g} × weights up to {max_weight} × {max_clients} '
      f'clients at {min_fraction_bits} fraction bits needs sums up to 2^{math.log2(needed):.1f}'
      ', but integers mod 2^32 hold only ±2^31; lower --dp_clip, --clients_per_round or the '
      'client weights.')


def to_ring(values: np.ndarray) -> np.ndarray:
  """Signed integers as uint32 residues mod 2^32 (two's complement)."""
  return (np.asarray(values, np.int64) & (MODULUS - 1)).astype(np.uint32)


def from_ring(residues: np.ndarray) -> np.ndarray:
  """The centered lift: uint32 residues as signed int64 in [-2^31, 2^31)."""
  return np.asarray(residues, np.uint32).view(np.int32).astype(np.int64)


def encode(update: np.ndarray, clip: float, weight: int, fraction_bits: int,
           rng: np.random.Generator | None = None) -> tuple[np.ndarray, bool]:
  """A client's input: `fixed_point.encode`'s weighted integers mod 2^32, then n_k.

  Returns:
    The uint32 vector (one more value than `update`: the weight last), and whether the
    update was clipped.
  """
  if weight > MAX_CENTERED:
    raise ValueError(f'--aggregator=secagg: weight {weight} passes 2^31 - 1.')
  values, clipped = fixed_point.encode(update, clip, weight, fraction_bits, rng,
                                       aggregator='secagg')
  return to_ring(np.append(values, np.int64(weight))), clipped


def decode(sums: np.ndarray, fraction_bits: int) -> tuple[np.ndarray, int]:
  """The weighted mean (float64) and the total weight Σ n_k from a unmasked sum of `encode`s.

  Raises:
    ValueError: If the weight slot is not positive (the sum wrapped or is corrupt).
  """
  signed = from_ring(sums)
  if signed.size < 1 or signed[-1] < 1:
    raise ValueError(f'--aggregator=secagg: the sum has total weight '
                     f'{signed[-1] if signed.size else None}: it wrapped or is corrupt.')
  total_weight = int(signed[-1])
  return fixed_point.decode(signed[:-1], total_weight, fraction_bits), total_weight


def secure_sum(vectors: Mapping[int, np.ndarray], *, neighbours: int | None = None,
               threshold: int | None = None, dropouts_before_sharing: Collection[int] = (),
               dropouts_before_input: Collection[int] = (),
               dropouts_before_unmasking: Collection[int] = (), graph_seed: int = 0,
               round_id: int = 0, random_bytes: crypto.RandomBytes = secrets.token_bytes,
               ) -> tuple[np.ndarray, ServerView]:
  """One SecAgg+ round with every party in this process: the survivors' sum mod 2^32.

  Every client advertises keys. Then, by the step at which each stops answering:

  Args:
    vectors: Client id (uint32) -> its input, 1-D uint32 of one length (`encode`).
    neighbours: k (`check_params`'s default if None).
    threshold: t (`check_params`'s default if None).
    dropouts_before_sharing: Clients that send no shares: nobody masks with them.
    dropouts_before_input: Clients that share but send no masked input: they are left out
      of the sum, and the server rebuilds their mask keys to take their masks out.
    dropouts_before_unmasking: Clients whose input arrives but which open no shares: they
      are in the sum, and the others' shares must rebuild their seeds.
    graph_seed: The public seed of the neighbour graph.
    round_id: Bound into every derived key and sealed share.
    random_bytes: Draws keys, seeds and nonces; the OS's CSPRNG but in tests.

  Returns:
    The uint32 sum over `view.survivors`, and the server's view of the round.

  Raises:
    SecAggAborted: With one line, when too many clients dropped out (a secret needed has
      fewer than t shares, or a client has fewer than t neighbours left).
    ValueError: On bad parameters or inputs.
  """
  ids = sorted(crypto.check_client_id(i) for i in vectors)
  dropouts = [set(dropouts_before_sharing), set(dropouts_before_input),
              set(dropouts_before_unmasking)]
  strangers = set().union(*dropouts) - set(ids)
  if strangers:
    raise ValueError(f'dropouts {sorted(strangers)} are not among the round\'s clients.')
  if len({(np.asarray(v).dtype, np.shape(v)) for v in vectors.values()}) > 1:
    raise ValueError('secagg sums vectors of one dtype (uint32) and one length.')
  params = check_params(len(ids), neighbours, threshold)
  graph = neighbour_graph(ids, params.neighbours, graph_seed)
  server = SecAggServer(graph, params.threshold, round_id=round_id)
  clients = {u: SecAggClient(u, graph[u], params.threshold, round_id=round_id,
                             random_bytes=random_bytes) for u in ids}
  for u in ids:
    server.receive_keys(u, clients[u].advertise_keys())
  sharing = [u for u in ids if u not in dropouts[0]]
  for u in sharing:
    server.receive_shares(u, clients[u].share_keys(server.keys_for(u)))
  inputs = [u for u in sharing if u not in dropouts[1]]
  for u in inputs:
    server.receive_masked_input(u, clients[u].masked_input(vectors[u], server.shares_for(u)))
  for u in inputs:
    if u not in dropouts[2]:
      server.receive_unmask(u, clients[u].unmask(*server.unmask_request(u)))
  return server.result(), server.view
