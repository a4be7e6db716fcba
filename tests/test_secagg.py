"""`--aggregator=secagg`'s primitives against independent references: numpy's sums mod 2^32,
scipy's chi-square test, a breadth-first search of the neighbour graph, and the server's view
checked against what it may see."""

from __future__ import annotations

import random

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from scipy import stats

from tff_gan.secure import fixed_point, secagg
from tff_gan.secure import secagg_crypto as crypto
from tff_gan.secure import secagg_parties as parties

SIGNIFICANCE = 0.001  # Of the chi-square tests; their inputs are seeded, so they are stable.


def seeded_bytes(seed: int):
  """A reproducible stand-in for the OS's CSPRNG (keys, seeds, nonces): for tests only."""
  return random.Random(seed).randbytes


def random_vectors(ids, length, seed):
  rng = np.random.default_rng(seed)
  return {i: rng.integers(0, 2**32, size=length, dtype=np.uint32) for i in ids}


def numpy_sum(vectors, ids):
  """The reference: Σ mod 2^32, in uint64 so that nothing wraps before the modulo."""
  total = np.zeros_like(next(iter(vectors.values())), np.uint64)
  for i in ids:
    total += vectors[i].astype(np.uint64)
  return (total % 2**32).astype(np.uint32)


def start_round(ids, neighbours=None, threshold=None, seed=0):
  """Server and clients after steps 0 and 1, every client present: for tests that play the
  server's side by hand."""
  params = secagg.check_params(len(ids), neighbours, threshold)
  graph = secagg.neighbour_graph(ids, params.neighbours, seed)
  return start_round_on(graph, params.threshold, seed)


def start_round_on(graph, threshold, seed=0):
  server = secagg.SecAggServer(graph, threshold)
  clients = {u: secagg.SecAggClient(u, graph[u], threshold, random_bytes=seeded_bytes(seed + u))
             for u in graph}
  for u, client in clients.items():
    server.receive_keys(u, client.advertise_keys())
  for u, client in clients.items():
    server.receive_shares(u, client.share_keys(server.keys_for(u)))
  return server, clients


@pytest.mark.parametrize('count, length, neighbours', [
    (2, 1, None), (3, 1000, None), (7, 4097, None), (10, 1000, None), (10, 1000, 3),
    (12, 333, 4), (25, 200, 6)])
def test_sum_is_exact(count, length, neighbours):
  ids = [3 * i + 11 for i in range(count)]  # Any uint32 ids, not 0..n-1.
  vectors = random_vectors(ids, length, count)
  total, view = secagg.secure_sum(vectors, neighbours=neighbours, graph_seed=count)
  assert total.dtype == np.uint32 and view.survivors == set(ids) and not view.dropped
  np.testing.assert_array_equal(total, numpy_sum(vectors, ids))
  # The server did need to unmask: the masked inputs alone sum to something else.
  assert not np.array_equal(numpy_sum(view.masked_inputs, ids), total)


@pytest.mark.parametrize('neighbours, before_sharing, before_input, before_unmasking', [
    (None, {1}, {2, 3}, {4}),  # k = 9, t = 5: each survivor keeps >= 5 answering neighbours.
    (None, set(), {0, 1, 2, 3}, set()),  # Exactly t answer for every survivor: the edge.
    (None, set(), set(), {0, 1, 2, 3}),
    (4, set(), {6}, set()),  # k = 4, t = 3, sparse.
    (3, {5}, set(), {8}),  # k = 3, t = 2.
])
def test_dropouts_below_the_threshold_are_recovered(neighbours, before_sharing, before_input,
                                                    before_unmasking):
  ids = list(range(10))
  vectors = random_vectors(ids, 777, 1)
  total, view = secagg.secure_sum(
      vectors, neighbours=neighbours, dropouts_before_sharing=before_sharing,
      dropouts_before_input=before_input, dropouts_before_unmasking=before_unmasking)
  survivors = set(ids) - before_sharing - before_input
  assert view.survivors == survivors and view.dropped == before_input
  np.testing.assert_array_equal(total, numpy_sum(vectors, survivors))


@pytest.mark.parametrize('dropouts, needed, got', [
    ({'dropouts_before_input': {0, 1, 2, 3, 4}}, 5, 4),
    ({'dropouts_before_unmasking': {0, 1, 2, 3, 4}}, 5, 4),
    ({'dropouts_before_sharing': {0, 1, 2, 3, 4}}, 5, 4)])
def test_dropouts_past_the_threshold_abort_with_one_line(dropouts, needed, got):
  vectors = random_vectors(range(10), 50, 2)
  with pytest.raises(secagg.SecAggAborted) as error:
    secagg.secure_sum(vectors, **dropouts)
  message = str(error.value)
  assert '\n' not in message and message.startswith('secagg: ')
  assert f'needs {needed}' in message or f'threshold {needed}' in message
  assert f'got {got}' in message or f'{got} of its neighbours' in message


def chi_square_p(values: np.ndarray, buckets: int) -> float:
  counts = np.bincount(values, minlength=buckets)
  return stats.chisquare(counts).pvalue


def test_masked_vectors_look_uniform():
  # Each masked input of an all-zero vector is its masks alone: its bytes and its values' top
  # four bits (16 buckets) pass a chi-square test of uniformity; the inputs obviously fail.
  ids, length = list(range(6)), 2**16
  zeros = {i: np.zeros(length, np.uint32) for i in ids}
  structured, _ = secagg.encode(np.linspace(-1, 1, length - 1), 10.0, 3, 16,
                                np.random.default_rng(0))
  for vectors in (zeros, {i: structured for i in ids}):
    total, view = secagg.secure_sum(vectors, neighbours=3, random_bytes=seeded_bytes(7),
                                    dropouts_before_input={5})
    assert len(view.masked_inputs) == 5
    for masked in view.masked_inputs.values():
      assert chi_square_p(masked.view(np.uint8), 256) > SIGNIFICANCE
      assert chi_square_p(masked >> 28, 16) > SIGNIFICANCE
    assert chi_square_p(vectors[0].view(np.uint8), 256) < 1e-100
    assert chi_square_p(vectors[0] >> 28, 16) < 1e-100
    np.testing.assert_array_equal(total, numpy_sum(vectors, range(5)))


@pytest.mark.parametrize('count, neighbours', [
    (2, 1), (10, 9), (10, 3), (10, 4), (9, 3), (9, 4), (9, 8), (33, 7), (50, 32)])
def test_neighbour_graph_is_regular_symmetric_and_connected(count, neighbours):
  ids = [7 * i + 1 for i in range(count)]
  graph = secagg.neighbour_graph(ids, neighbours, seed=count)
  assert sorted(graph) == ids
  for u, vs in graph.items():
    assert u not in vs and all(u in graph[v] for v in vs)
  degrees = sorted(len(vs) for vs in graph.values())
  if neighbours % 2 and count % 2:  # No k-regular graph exists: one client gets k + 1.
    assert degrees == [neighbours] * (count - 1) + [neighbours + 1]
  else:
    assert degrees == [neighbours] * count
  reached, frontier = {ids[0]}, [ids[0]]  # Breadth-first search from any client.
  while frontier:
    frontier = [v for u in frontier for v in graph[u] if v not in reached]
    reached.update(frontier)
  assert reached == set(ids)
  # The graph is public: the same seed gives it to everyone; another seed shuffles it.
  assert graph == secagg.neighbour_graph(reversed(ids), neighbours, seed=count)
  if 2 < neighbours + 1 < count:
    assert graph != secagg.neighbour_graph(ids, neighbours, seed=count + 1)


@pytest.mark.parametrize('args, words', [
    ((1,), ['at least 2 clients']),
    ((10, 12), ['--secagg_neighbours 12', 'at most 9', '--clients_per_round']),
    ((10, 0), ['--secagg_neighbours', '>= 1']),
    ((3, 1), ['no valid --secagg_threshold', 'raise --secagg_neighbours to 2']),
    ((10, 8, 4), ['--secagg_threshold 4', 'half of 8', 'at least 5', 'lying']),
    ((9, 3, 2), ['--secagg_threshold 2', 'both odd', 'at least 3']),
    ((10, 8, 9), ['--secagg_threshold 9', 'at most 8']),
    ((10, 8, True), ['--secagg_threshold', '>= 1'])])
def test_parameters_are_validated_in_one_line(args, words):
  with pytest.raises(ValueError) as error:
    secagg.check_params(*args)
  message = str(error.value)
  assert '\n' not in message and all(word in message for word in words), message


def test_default_parameters():
  assert secagg.check_params(10) == secagg.SecAggParams(10, 9, 5)  # Complete graph.
  assert secagg.check_params(100) == secagg.SecAggParams(100, 32, 17)
  assert secagg.check_params(2) == secagg.SecAggParams(2, 1, 1)
  for count in range(2, 80):
    params = secagg.check_params(count)
    assert params.threshold <= params.neighbours < 2 * params.threshold  # k/2 < t <= k.


def test_shares_are_sealed_for_their_recipient():
  ids = [0, 1, 2, 3]
  server, clients = start_round(ids)
  view = server.view
  assert len(view.encrypted_shares) == 4 * 3
  sender, recipient = 2, 1
  ciphertext = view.encrypted_shares[sender, recipient]
  sender_key = view.public_keys[sender][:crypto.PUBLIC_KEY_BYTES]
  opened = crypto.decrypt_shares(clients[recipient]._share_keys.private, sender_key, 0, sender,
                                 recipient, ciphertext)
  index, seed_share, key_share = opened
  assert index == clients[sender].neighbours.index(recipient) + 1
  # The server holds no share in the clear: not in any ciphertext, key or request it saw.
  seen = b''.join([*view.encrypted_shares.values(), *view.public_keys.values()])
  assert seed_share not in seen and key_share not in seen
  assert seed_share[:8] not in seen and key_share[:8] not in seen
  # Another recipient's key, another claimed pair or round, or one flipped bit: refused.
  other_key = clients[3]._share_keys.private
  for attempt in [(other_key, sender_key, 0, sender, recipient, ciphertext),
                  (clients[recipient]._share_keys.private, sender_key, 0, 3, recipient,
                   ciphertext),
                  (clients[recipient]._share_keys.private, sender_key, 1, sender, recipient,
                   ciphertext),
                  (clients[recipient]._share_keys.private, sender_key, 0, sender, recipient,
                   ciphertext[:-1] + bytes([ciphertext[-1] ^ 1]))]:
    with pytest.raises(InvalidTag):
      crypto.decrypt_shares(*attempt)
  # A client handed altered shares aborts instead of opening them.
  inbox = server.shares_for(recipient)
  inbox[sender] = inbox[sender][:20] + bytes([inbox[sender][20] ^ 1]) + inbox[sender][21:]
  clients[recipient].masked_input(np.zeros(5, np.uint32), inbox)
  with pytest.raises(secagg.SecAggAborted, match='fail to decrypt'):
    clients[recipient].unmask({sender}, set())


def test_a_server_lying_about_dropouts_gets_too_few_shares():
  # The server tells some neighbours of client 0 that it survived and the others that it
  # dropped. Each honest client opens one kind of share per neighbour, once: with t > k/2 the
  # server cannot collect t of both (b_0 and 0's mask key) and so cannot unmask y_0 alone.
  ids = list(range(9))

  def collected(server, clients, target=0):
    for u in server.graph:
      clients[u].masked_input(np.zeros(4, np.uint32), server.shares_for(u))
    counts = {parties.SEED: 0, parties.KEY: 0}
    for position, u in enumerate(server.graph[target]):
      lie = ({target}, set()) if position % 2 else (set(), {target})
      for share in parties.unpack_unmask_shares(clients[u].unmask(*lie)):
        counts[share.kind] += share.owner == target
      with pytest.raises(secagg.SecAggAborted, match='twice'):
        clients[u].unmask(set(), {target})  # Asking again, the other way round: refused.
    return counts

  server, clients = start_round(ids, neighbours=8)  # t = 5.
  counts = collected(server, clients)
  assert sum(counts.values()) == 8 and min(counts.values()) < server.threshold
  # Why t > k/2 is enforced: with t = 4 the same lie yields 4 shares of each.
  graph = secagg.neighbour_graph(ids, 8, 0)
  server, clients = start_round_on(graph, threshold=4)
  assert min(collected(server, clients).values()) >= server.threshold


def test_a_client_masks_one_input_only():
  # Two inputs under the same masks would give the server their difference.
  server, clients = start_round([0, 1, 2])
  inbox = server.shares_for(0)
  clients[0].masked_input(np.zeros(3, np.uint32), inbox)
  with pytest.raises(secagg.SecAggAborted, match='second masked input'):
    clients[0].masked_input(np.ones(3, np.uint32), inbox)


def test_a_corrupt_key_share_is_caught():
  ids = list(range(5))
  server, clients = start_round(ids)
  for u in ids[1:]:
    server.receive_masked_input(u, clients[u].masked_input(np.zeros(3, np.uint32),
                                                           server.shares_for(u)))
  for u in ids[1:]:
    shares = parties.unpack_unmask_shares(clients[u].unmask(*server.unmask_request(u)))
    shares = [parties.UnmaskShare(s.owner, s.kind, s.index, bytes(32))
              if s.kind == parties.KEY else s for s in shares]
    server.receive_unmask(u, parties.pack_unmask_shares(shares))
  with pytest.raises(secagg.SecAggAborted, match='does not match its public key'):
    server.result()


def test_bytes_each_way():
  ids, length = list(range(10)), 1001
  _, view = secagg.secure_sum(random_vectors(ids, length, 3), dropouts_before_input={9})
  k = 9  # Client 0 opens a share of each neighbour: 8 survivors' seeds and client 9's key.
  assert view.bytes_up[0] == (64 + k * (4 + crypto.SHARES_CIPHERTEXT_BYTES) + 4 * length
                              + k * parties.UNMASK_SHARE_BYTES)
  assert view.bytes_down[0] == k * (4 + 64) + k * (4 + crypto.SHARES_CIPHERTEXT_BYTES) + k * 5
  assert view.bytes_up[9] == 64 + k * (4 + crypto.SHARES_CIPHERTEXT_BYTES)
  assert crypto.SHARES_CIPHERTEXT_BYTES == 94 and parties.UNMASK_SHARE_BYTES == 39


def test_inputs_are_validated():
  with pytest.raises(ValueError, match='uint32'):
    secagg.secure_sum({0: np.zeros(3, np.int64), 1: np.zeros(3, np.int64)})
  with pytest.raises(ValueError, match='one length'):
    secagg.secure_sum({0: np.zeros(3, np.uint32), 1: np.zeros(4, np.uint32)})
  with pytest.raises(ValueError, match='not among'):
    secagg.secure_sum(random_vectors(range(3), 3, 0), dropouts_before_input={7})
  with pytest.raises(ValueError, match='2\\^32'):
    secagg.secure_sum({-1: np.zeros(3, np.uint32), 1: np.zeros(3, np.uint32)})


def test_ring_lift_round_trips():
  values = np.array([-2**31, -1, 0, 1, 2**31 - 1], np.int64)
  residues = secagg.to_ring(values)
  assert residues.dtype == np.uint32
  np.testing.assert_array_equal(residues, np.mod(values, 2**32))
  np.testing.assert_array_equal(secagg.from_ring(residues), values)


def test_fixed_point_mean_decodes_within_the_bound():
  clip, weights = 1.0, [30, 1, 200, 57, 9]
  ids = list(range(len(weights)))
  fraction_bits = secagg.choose_fraction_bits(clip, max(weights), len(weights))
  rng = np.random.default_rng(4)
  updates = [rng.normal(size=3000) * scale for scale in (0.005, 0.05, 0.01, 0.1, 0.02)]
  encoded = [secagg.encode(u, clip, w, fraction_bits, rng)
             for u, w in zip(updates, weights, strict=True)]
  assert [clipped for _, clipped in encoded] == [np.linalg.norm(u) > clip for u in updates]
  total, _ = secagg.secure_sum({i: e for i, (e, _) in zip(ids, encoded, strict=True)})
  mean, total_weight = secagg.decode(total, fraction_bits)
  assert total_weight == sum(weights)
  clipped = [u * min(1.0, clip / np.linalg.norm(u)) for u in updates]
  expected = np.average(clipped, axis=0, weights=weights)
  assert np.abs(mean - expected).max() < 2.0**-fraction_bits


@pytest.mark.parametrize('sign', [1, -1])
def test_extreme_sums_decode_and_one_more_bit_would_wrap(sign):
  clip, max_weight, max_clients = 0.7, 1000, 12
  fraction_bits = secagg.choose_fraction_bits(clip, max_weight, max_clients)
  assert (max_clients * max_weight * fixed_point.coordinate_bound(clip, fraction_bits + 1)
          > secagg.MAX_CENTERED)
  update = np.array([0.0, sign * clip, 0.0])
  rounding = np.random.default_rng(5)
  inputs = {}
  for i in range(max_clients):
    ring, _ = secagg.encode(update, clip, max_weight, fraction_bits, rounding)
    inputs[i] = ring
  total, _ = secagg.secure_sum(inputs)
  mean, total_weight = secagg.decode(total, fraction_bits)
  assert total_weight == max_clients * max_weight
  assert abs(mean[1] - sign * clip) < 2.0**-fraction_bits and mean[0] == mean[2] == 0
  with pytest.raises(ValueError) as error:
    secagg.choose_fraction_bits(1.0, 2**20, 2**11)
  message = str(error.value)
  assert '\n' not in message and message.startswith('--aggregator=secagg:') and '2^31' in message
