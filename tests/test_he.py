"""`--aggregator=he`'s primitives against independent references: numpy sums and means, a
pure-Python primality check, SEAL's own security table, and the OS's process list."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import pytest
import tenseal as ts
from conftest import pid_alive

from tff_gan.secure import he, he_process

N = he.POLY_MODULUS_DEGREE
T = he.PLAIN_MODULUS


@pytest.fixture(scope='module')
def holder():
  return he.KeyHolder(he.HeParams(fraction_bits=16))


@pytest.fixture(scope='module')
def public(holder):
  return holder.public_context_bytes()


def aggregate(public, updates, multipliers=None):
  """The aggregator's encrypted sum of `(values, weight)` pairs, each encrypted by a client."""
  encryptor = he.Encryptor(public, he.HeParams(fraction_bits=16))
  aggregator = he.Aggregator(public)
  for i, (values, weight) in enumerate(updates):
    aggregator.add(encryptor.encrypt(values, weight), 1 if multipliers is None else multipliers[i])
  return aggregator.result()


class ConstantRng:
  """A stand-in generator whose uniform draws are all `value`: the worst-case rounding."""

  def __init__(self, value: float):
    self.value = value

  def random(self, shape):
    return np.full(shape, self.value)


def test_plain_modulus_is_a_batching_prime():
  assert all(T % d for d in range(2, math.isqrt(T) + 1))  # Trial division: prime.
  assert T % (2 * N) == 1
  assert math.log2(T) < 30
  context = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=N, plain_modulus=T,
                       coeff_mod_bit_sizes=list(he.COEFF_MOD_BIT_SIZES))
  assert context.seal_context().data.first_context_data().qualifiers().using_batching


def test_the_wide_format_is_a_batching_prime_within_128_bit_security():
  wide = he.WIDE_PLAIN_MODULUS
  # Trial division by every odd number up to √t (2^25), vectorized.
  divisors = np.arange(3, math.isqrt(wide) + 1, 2, dtype=np.int64)
  assert wide % 2 and np.all(wide % divisors)
  assert wide % (2 * N) == 1 and 49 < math.log2(wide) < 50
  assert sum(he.WIDE_COEFF_MOD_BIT_SIZES) <= he.MAX_COEFF_MODULUS_BITS_128[N]
  context = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=N, plain_modulus=wide,
                       coeff_mod_bit_sizes=list(he.WIDE_COEFF_MOD_BIT_SIZES))
  assert context.seal_context().data.first_context_data().qualifiers().using_batching
  # Sums with multipliers: decrypted exactly, at the noise budget's limit.
  params = he.choose_params(1.0, 1, 2, max_multiplier=he.MAX_MULTIPLIER_SUM // 2, wide=True)
  holder = he.KeyHolder(params)
  encryptor = he.Encryptor(holder.public_context_bytes(), params)
  aggregator = he.Aggregator(holder.public_context_bytes())
  values = np.random.default_rng(0).integers(-2**20, 2**20, N + 5)
  for _ in range(2):
    aggregator.add(encryptor.encrypt(values, 3), he.MAX_MULTIPLIER_SUM // 2)
  sums, total = holder.decrypt(aggregator.result())
  np.testing.assert_array_equal(sums, values * he.MAX_MULTIPLIER_SUM)
  assert total == 3 * he.MAX_MULTIPLIER_SUM


def test_coefficient_modulus_within_128_bit_security():
  assert sum(he.COEFF_MOD_BIT_SIZES) <= he.MAX_COEFF_MODULUS_BITS_128[N] == 218
  # SEAL enforces the same table: one bit more at N = 8192 is refused.
  with pytest.raises(ValueError):
    ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=N, plain_modulus=T,
               coeff_mod_bit_sizes=[60, 60, 60, 39])
  with pytest.raises(ValueError, match='128-bit'):
    he.HeParams(16, coeff_mod_bit_sizes=(60, 60, 60, 39))


def test_centered_lift_round_trips():
  limit = (T - 1) // 2
  values = np.array([-limit, -1, 0, 1, limit], np.int64)
  residues = he.to_residues(values)
  assert residues.min() >= 0 and residues.max() < T
  np.testing.assert_array_equal(he.from_residues(residues), values)


@pytest.mark.parametrize('length', [N - 1, N, 2 * N + 123])  # The weight slot ends a chunk,
def test_integer_sums_are_exact(holder, public, length):   # starts one, or shares one.
  rng = np.random.default_rng(length)
  clients = 5
  bound = (T - 1) // 2 // clients
  values = [rng.integers(-bound, bound + 1, size=length) for _ in range(clients)]
  weights = [int(w) for w in rng.integers(1, 1000, size=clients)]
  sums, total_weight = holder.decrypt(aggregate(public, list(zip(values, weights, strict=True))))
  np.testing.assert_array_equal(sums, np.sum(values, axis=0))
  assert sums.dtype == np.int64 and total_weight == sum(weights)


def test_multipliers_give_the_multiplied_sum_exactly(holder, public):
  rng = np.random.default_rng(1)
  multipliers, weights = [1, 3, 7], [5, 2, 9]
  bound = (T - 1) // 2 // (sum(m * w for m, w in zip(multipliers, weights, strict=True)))
  values = [rng.integers(-bound, bound + 1, size=N + 10) * w for w in weights]
  updates = list(zip(values, weights, strict=True))
  sums, total_weight = holder.decrypt(aggregate(public, updates, multipliers))
  np.testing.assert_array_equal(sums, sum(m * v for m, v in zip(multipliers, values, strict=True)))
  assert total_weight == sum(m * w for m, w in zip(multipliers, weights, strict=True))


def test_noise_budget_holds_up_to_the_multiplier_limit(holder, public):
  values = np.random.default_rng(2).integers(-1000, 1001, size=N)  # Residues span [0, t).
  aggregator = he.Aggregator(public)
  aggregator.add(he.Encryptor(public, holder.params).encrypt(values, 1), he.MAX_MULTIPLIER_SUM)
  sums, total_weight = holder.decrypt(aggregator.result())
  np.testing.assert_array_equal(sums, values * he.MAX_MULTIPLIER_SUM)
  assert total_weight == he.MAX_MULTIPLIER_SUM
  with pytest.raises(ValueError, match='noise budget'):
    aggregator.add(he.Encryptor(public, holder.params).encrypt(values, 1))


def test_decoded_mean_within_the_fixed_point_bound(public, holder):
  # Each client's rounding error is below one unit 2^-f per coordinate, so the weighted mean
  # of the errors, Σ n_k·e_k / Σ n_k, is too: |decoded - exact| < 2^-f.
  clip, weights = 1.0, [30, 1, 200, 57]
  params = he.choose_params(clip, max(weights), len(weights))
  rng = np.random.default_rng(3)
  updates = [(rng.normal(size=3000) * scale).astype(np.float32)
             for scale in (0.005, 0.05, 0.01, 0.1)]  # Norms ≈ 0.3, 2.7, 0.5, 5.5.
  encoded = [he.encode(u, clip, w, params.fraction_bits, rng)
             for u, w in zip(updates, weights, strict=True)]
  norms = [np.linalg.norm(u.astype(np.float64)) for u in updates]
  assert [clipped for _, clipped in encoded] == [n > clip for n in norms] == [0, 1, 0, 1]
  ints = [e for e, _ in encoded]
  sums, total_weight = holder.decrypt(aggregate(public, list(zip(ints, weights, strict=True))))
  mean = he.decode(sums, total_weight, params.fraction_bits)
  clipped = [u.astype(np.float64) * min(1.0, clip / n) for u, n in zip(updates, norms, strict=True)]
  expected = np.average(clipped, axis=0, weights=weights)
  assert np.abs(mean - expected).max() < 2.0**-params.fraction_bits


def test_stochastic_rounding_is_unbiased():
  # 0.3 at f = 4 is 4.8 units: 4 or 5, 5 with probability 0.8. Rounding to nearest would give
  # 0.3125, 160 standard errors of the sample mean away.
  size, fraction_bits, value = 200_000, 4, 0.3
  ints, clipped = he.encode(np.full(size, value, np.float32), 1e3, 1, fraction_bits,
                            np.random.default_rng(4))
  assert not clipped and set(np.unique(ints)) == {4, 5}
  standard_error = math.sqrt(0.8 * 0.2 / size) / 2**fraction_bits
  assert abs(ints.mean() / 2**fraction_bits - float(np.float32(value))) < 5 * standard_error


@pytest.mark.parametrize('sign', [1, -1])
def test_extreme_sums_decode(holder, public, sign):
  clip, max_weight, max_clients = 0.7, 1000, 20
  params = he.choose_params(clip, max_weight, max_clients)
  # One more fraction bit would wrap: the chosen format is the tightest.
  assert (max_clients * max_weight * he.coordinate_bound(clip, params.fraction_bits + 1)
          > params.max_centered)
  # Every client at ±clip on one coordinate, rounding away from zero there.
  rng = ConstantRng(0.0 if sign > 0 else np.nextafter(1.0, 0.0))
  update = np.array([0.0, sign * clip, 0.0], np.float32)
  ints, clipped = he.encode(update, clip, max_weight, params.fraction_bits, rng)
  assert not clipped and abs(ints[1]) == max_weight * he.coordinate_bound(clip,
                                                                        params.fraction_bits)
  sums, total_weight = holder.decrypt(aggregate(public, [(ints, max_weight)] * max_clients))
  assert sums[1] == max_clients * ints[1] and abs(sums[1]) > params.max_centered // 2
  mean = he.decode(sums, total_weight, params.fraction_bits)
  assert abs(mean[1] - sign * clip) < 2.0**-params.fraction_bits and mean[0] == mean[2] == 0


def test_choose_params_refuses_without_headroom():
  with pytest.raises(ValueError) as error:
    he.choose_params(10.0, 2000, 200)
  message = str(error.value)
  assert '\n' not in message and message.startswith('--aggregator=he:') and 't ≈ 2^30' in message
  with pytest.raises(ValueError, match='noise budget'):
    he.choose_params(1.0, 1, 1000, max_multiplier=100)
  assert he.choose_params(1.0, 1, 10).fraction_bits == 25


def test_foreign_key_is_refused(holder, public):
  other = he.KeyHolder(holder.params)
  values = np.arange(-50, 50)
  foreign = he.Encryptor(other.public_context_bytes(), other.params).encrypt(values, 1)
  with pytest.raises(ValueError) as error:
    holder.decrypt_sum(foreign.ciphertexts, foreign.key_id)
  assert '\n' not in str(error.value)
  with pytest.raises(ValueError, match='cannot be added'):
    he.Aggregator(public).add(foreign)
  # Why the check is needed: without it, the foreign ciphertext decrypts to garbage silently.
  garbage = ts.bfv_vector_from(holder._context, foreign.ciphertexts[0]).decrypt()
  assert not np.array_equal(he.from_residues(garbage)[:100], values)


def test_aggregator_holds_no_secret_key(holder, public):
  aggregator = he.Aggregator(public)
  assert not aggregator.context.has_secret_key()
  assert not aggregator.context.has_relin_keys() and not aggregator.context.has_galois_keys()
  aggregator.add(he.Encryptor(public, holder.params).encrypt(np.arange(10), 1))
  result = aggregator.result()
  with pytest.raises(ValueError, match='secret_key'):
    ts.bfv_vector_from(aggregator.context, result.ciphertexts[0]).decrypt()
  assert not aggregator.holds_secret_key()
  with pytest.raises(ValueError, match='secret key'):
    he.Aggregator(holder._context.serialize(save_secret_key=True))


def test_aggregator_process_sums_and_leaves_no_child(holder, public):
  rng = np.random.default_rng(5)
  values = [rng.integers(-10**6, 10**6, size=N + 7) for _ in range(3)]
  encryptor = he.Encryptor(public, holder.params)
  with he_process.AggregatorProcess(public) as process:
    pid = process.pid
    assert pid_alive(pid) and not process.holds_secret_key()
    for multiplier, v in enumerate(values, start=1):
      process.add(encryptor.encrypt(v, 1), multiplier)
    sums, total_weight = holder.decrypt(process.result())
    process.reset()
    process.add(encryptor.encrypt(values[0], 2))
    assert holder.decrypt(process.result())[1] == 2
  np.testing.assert_array_equal(sums, values[0] + 2 * values[1] + 3 * values[2])
  assert total_weight == 6
  assert not pid_alive(pid)
  process.close()  # Idempotent.
  with pytest.raises(ValueError, match='closed'):
    process.result()


def test_aggregator_process_errors_and_cleanup(holder, public):
  foreign = he.KeyHolder(holder.params)
  update = he.Encryptor(foreign.public_context_bytes(), holder.params).encrypt(np.ones(3), 1)
  with pytest.raises(ValueError, match='cannot be added'):
    with he_process.AggregatorProcess(public) as process:
      pid = process.pid
      process.add(update)
  assert not pid_alive(pid)
  # Without `with` or `close`, the child goes when its handle does.
  process = he_process.AggregatorProcess(public)
  pid = process.pid
  del process
  assert not pid_alive(pid)
  # A child that dies is reported, and reaped.
  process = he_process.AggregatorProcess(public)
  process._process.kill()
  with pytest.raises(RuntimeError, match='exited'):
    process.reset()
  assert not pid_alive(process.pid)


def test_aggregator_process_dies_with_its_parent(public):
  # The parent exits without running any cleanup (os._exit): the child must not outlive it.
  script = ('import os, sys\n'
            'from tff_gan.secure import he_process\n'
            'process = he_process.AggregatorProcess(sys.stdin.buffer.read())\n'
            'print(process.pid, flush=True)\n'
            'os._exit(1)\n')
  parent = subprocess.run([sys.executable, '-c', script], input=public, capture_output=True,
                          timeout=60, check=False)
  pid = int(parent.stdout)
  deadline = time.monotonic() + 10
  while pid_alive(pid) and time.monotonic() < deadline:
    time.sleep(0.05)
  assert not pid_alive(pid)
