"""Additively homomorphic aggregation with BFV (TenSEAL): the primitives of `--aggregator=he`.

Roles and threat model. Simulated: every role runs on this machine; the aggregator runs in a
separate process (`he_process.AggregatorProcess`) so that it provably holds no secret key.

* The key holder (`KeyHolder`) creates the BFV keys. The secret key never leaves it; it
  publishes the public context (parameters and public key, no secret, relinearization or
  Galois keys) and a key id, and decrypts only sums. It sees the sum of the weighted updates
  and the sum of the weights, nothing per client. For DP it is the trusted curator: it adds
  the noise before it releases the mean.
* A client (`Encryptor`) holds the public context. It clips its update to a public L2 bound,
  encodes it in fixed point with stochastic rounding, multiplies it by its integer weight
  n_k and encrypts it, n_k in a spare slot after the vector, so that the sum carries Σ n_k.
* The aggregator (`Aggregator`) holds the public context and the ciphertexts. It adds them,
  each multiplied by a plaintext integer if asked (asynchronous staleness weights). Semi-
  honest, it learns nothing of an update beyond its length (BFV ciphertexts are IND-CPA under
  the RLWE assumption). A malicious one could drop, repeat, rescale or forge updates (anyone
  can encrypt under the public key): nothing here verifies the sum, and the weight slot only
  catches gross errors. One that colludes with the key holder sees every update.

The key id only tags which key a ciphertext is under: a ciphertext under another key (after a
key rotation, or from a stale client) decrypts to garbage without any error, so the key holder
and the aggregator refuse a foreign tag. It is not an authentication of the sender.

Parameters (`HeParams`): ring dimension N = 8192 with a coefficient modulus of two 60-bit
primes, 120 bits; the HomomorphicEncryption.org standard (Albrecht et al. 2018, table for
128-bit classical security, ternary secret) allows at most 218 bits at N = 8192, and SEAL
refuses more at context creation. The plaintext modulus t = 1073692673 (≈ 2^30) is a prime
with t ≡ 1 (mod 2N), so each ciphertext packs N integers mod t (batching). Signed values are
kept in the centered range |v| ≤ (t - 1)/2; `choose_params` picks the fixed-point fraction bits
so that no sum can leave it. Of the two primes, one carries data and one serves key switching:
a ciphertext times 2^22 still decrypts and times 2^23 does not (measured), so a sum may add up
`MAX_MULTIPLIER_SUM` = 2^16 ciphertext multipliers in all, 64 times below that.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence

import numpy as np
import tenseal as ts

from tff_gan.secure import fixed_point
from tff_gan.secure.fixed_point import check_count as _check_count
from tff_gan.secure.fixed_point import coordinate_bound as coordinate_bound  # he's API too.
from tff_gan.secure.fixed_point import decode as decode  # he's API too.

POLY_MODULUS_DEGREE = 8192
COEFF_MOD_BIT_SIZES = (60, 60)
PLAIN_MODULUS = 1073692673
# The HE standard's largest coefficient modulus (bits) for 128-bit security, by ring dimension.
MAX_COEFF_MODULUS_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
# The wide format, for sums with multipliers (asynchronous staleness weights): a third 60-bit
# prime (180 bits, still within the standard's 218) and a 50-bit batching prime t. Every
# ciphertext is then twice the size, and a single multiplier up to 2^39 still decrypts
# (measured), so MAX_MULTIPLIER_SUM holds with room to spare.
WIDE_COEFF_MOD_BIT_SIZES = (60, 60, 60)
WIDE_PLAIN_MODULUS = 1125899906826241  # ≡ 1 (mod 2·8192), prime: tests check both.
MAX_MULTIPLIER_SUM = 2**16  # Σ multipliers of one sum: the noise budget, with 6 bits to spare.
MIN_FRACTION_BITS = fixed_point.MIN_FRACTION_BITS
_MAX_FRACTION_BITS = fixed_point.MAX_FRACTION_BITS


@dataclasses.dataclass(frozen=True)
class HeParams:
  """BFV parameters and the fixed-point format of `--aggregator=he`.

  Attributes:
    fraction_bits: f: a value x is sent as an integer near x·2^f (`choose_params`).
    poly_modulus_degree: N, the ring dimension and the slots per ciphertext.
    coeff_mod_bit_sizes: Bits of each prime of the ciphertext modulus q; their sum may not
      pass the HE standard's bound for 128-bit security at N.
    plain_modulus: t, a prime ≡ 1 (mod 2N) so that batching applies.
  """
  fraction_bits: int
  poly_modulus_degree: int = POLY_MODULUS_DEGREE
  coeff_mod_bit_sizes: tuple[int, ...] = COEFF_MOD_BIT_SIZES
  plain_modulus: int = PLAIN_MODULUS

  def __post_init__(self):
    limit = MAX_COEFF_MODULUS_BITS_128.get(self.poly_modulus_degree)
    if limit is None:
      raise ValueError(f'poly_modulus_degree must be one of {sorted(MAX_COEFF_MODULUS_BITS_128)}'
                       f', got {self.poly_modulus_degree}.')
    if sum(self.coeff_mod_bit_sizes) > limit:
      raise ValueError(f'a {sum(self.coeff_mod_bit_sizes)}-bit coefficient modulus at N = '
                       f'{self.poly_modulus_degree} is below 128-bit security (at most {limit}).')
    if self.plain_modulus % (2 * self.poly_modulus_degree) != 1:
      raise ValueError(f'plain_modulus {self.plain_modulus} is not 1 mod 2N: no batching.')
    if not 0 <= self.fraction_bits <= _MAX_FRACTION_BITS:
      raise ValueError(f'fraction_bits must be in [0, {_MAX_FRACTION_BITS}], got '
                       f'{self.fraction_bits}.')

  @property
  def max_centered(self) -> int:
    """The largest |v| a signed value or sum may reach: (t - 1)/2."""
    return (self.plain_modulus - 1) // 2


def choose_params(clip: float, max_weight: int, max_clients: int, *, max_multiplier: int = 1,
                  min_fraction_bits: int = MIN_FRACTION_BITS, wide: bool = False) -> HeParams:
  """The most fraction bits with which no sum can wrap modulo t.

  The worst coordinate of a sum is Σ_k m_k·n_k·coordinate_bound(clip, f) ≤ K·n·m·bound, with
  K `max_clients`, n `max_weight` and m `max_multiplier`; it and the weight slot Σ m_k·n_k
  must stay within ±(t - 1)/2. The decoded mean is then within 2^-f of the exact weighted
  mean of the clipped updates, per coordinate.

  Args:
    clip: The L2 bound every update is clipped to.
    max_weight: The largest client weight n_k (an integer ≥ 1, e.g. examples per client).
    max_clients: The most updates one sum adds.
    max_multiplier: The largest plaintext multiplier of an update (staleness weight).
    min_fraction_bits: Refuse a configuration that would need fewer.
    wide: Use the wide format (`WIDE_PLAIN_MODULUS`, t ≈ 2^50, ciphertexts twice the size).

  Raises:
    ValueError: With one line naming the limit, when even `min_fraction_bits` wraps or the
      multipliers pass the noise budget.
  """
  for name, value in [('max_weight', max_weight), ('max_clients', max_clients),
                      ('max_multiplier', max_multiplier)]:
    _check_count(name, value)
  fixed_point.check_clip(clip)
  if max_clients * max_multiplier > MAX_MULTIPLIER_SUM:
    raise ValueError(f'--aggregator=he: {max_clients} clients × multipliers up to '
                     f'{max_multiplier} pass the BFV noise budget of {MAX_MULTIPLIER_SUM} '
                     'multipliers per sum; lower --clients_per_round or the staleness weights.')
  scale = max_clients * max_weight * max_multiplier
  modulus = (dict(coeff_mod_bit_sizes=WIDE_COEFF_MOD_BIT_SIZES, plain_modulus=WIDE_PLAIN_MODULUS)
             if wide else {})
  limit = HeParams(0, **modulus).max_centered
  fraction_bits = fixed_point.most_fraction_bits(clip, scale, limit, min_fraction_bits)
  if fraction_bits is not None:
    return HeParams(fraction_bits, **modulus)
  needed = scale * coordinate_bound(clip, min_fraction_bits)
  multiplier = f' × multipliers up to {max_multiplier}' if max_multiplier > 1 else ''
  raise ValueError(
      f'--aggregator=he: clip {clip:g} × weights up to {max_weight} × {max_clients} clients'
      f'{multiplier} at {min_fraction_bits} fraction bits needs sums up to 2^'
      f'{math.log2(needed):.1f}, but the plaintext modulus t ≈ 2^{math.log2(2 * limit):.0f} '
      'holds only ±2^'
      f'{math.log2(limit):.1f}; lower --dp_clip, --clients_per_round or the client weights.')


def to_residues(values: np.ndarray, plain_modulus: int = PLAIN_MODULUS) -> np.ndarray:
  """Signed integers as residues in [0, t)."""
  return np.mod(np.asarray(values, np.int64), plain_modulus)


def from_residues(residues: np.ndarray, plain_modulus: int = PLAIN_MODULUS) -> np.ndarray:
  """The centered lift: residues mod t as signed integers in [-(t - 1)/2, (t - 1)/2]."""
  residues = np.mod(np.asarray(residues, np.int64), plain_modulus)
  return np.where(residues > (plain_modulus - 1) // 2, residues - plain_modulus, residues)


def encode(update: np.ndarray, clip: float, weight: int, fraction_bits: int,
           rng: np.random.Generator | None = None) -> tuple[np.ndarray, bool]:
  """`fixed_point.encode` (weighted fixed point, stochastic rounding), its errors naming he.

  Returns:
    The signed int64 vector round(clip_to_norm(x, clip)·2^f)·n_k, and whether it was clipped.
  """
  return fixed_point.encode(update, clip, weight, fraction_bits, rng, aggregator='he')


def key_id(public_context: bytes) -> str:
  """The id of a key: SHA-256 (hex) of its serialized public context."""
  return hashlib.sha256(public_context).hexdigest()


@dataclasses.dataclass(frozen=True)
class EncryptedUpdate:
  """What travels: `length` values and one weight slot, in ciphertexts of at most N slots."""
  key_id: str
  ciphertexts: tuple[bytes, ...]
  length: int

  @property
  def nbytes(self) -> int:
    """Bytes on the wire: the serialized ciphertexts."""
    return sum(len(c) for c in self.ciphertexts)


def _chunk_sizes(length: int, slots: int) -> list[int]:
  """Slots used by each ciphertext of `length` values plus the weight slot."""
  full, rest = divmod(length + 1, slots)
  return [slots] * full + ([rest] if rest else [])


def _public_context(public_context: bytes, role: str) -> ts.Context:
  context = ts.context_from(public_context)
  if context.has_secret_key():
    raise ValueError(f'the {role} was handed a context with the secret key; pass '
                     'KeyHolder.public_context_bytes().')
  return context


class KeyHolder:
  """Holds the secret key; publishes the public context; decrypts only sums."""

  def __init__(self, params: HeParams):
    self.params = params
    self._context = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=params.poly_modulus_degree,
                               plain_modulus=params.plain_modulus,
                               coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes))
    # Additions and plaintext multiplications need neither relinearization nor Galois keys.
    self._public_context = self._context.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False,
        save_relin_keys=False)
    self.key_id = key_id(self._public_context)

  def public_context_bytes(self) -> bytes:
    """The public context every client and the aggregator download."""
    return self._public_context

  def decrypt_sum(self, ciphertexts: Sequence[bytes], key_id: str) -> np.ndarray:
    """The signed int64 sums in the ciphertexts, the weight slot last.

    Raises:
      ValueError: If `key_id` is not this key's.
    """
    if key_id != self.key_id:
      raise ValueError(f'--aggregator=he: ciphertexts under key {key_id[:12]}… cannot be '
                       f'decrypted with key {self.key_id[:12]}… (stale or foreign key).')
    parts = [ts.bfv_vector_from(self._context, c).decrypt() for c in ciphertexts]
    return from_residues(np.concatenate([np.asarray(p, np.int64) for p in parts]),
                         self.params.plain_modulus)

  def decrypt(self, update: EncryptedUpdate) -> tuple[np.ndarray, int]:
    """The integer sums and the total weight Σ m_k·n_k of an aggregate."""
    values = self.decrypt_sum(update.ciphertexts, update.key_id)
    if values.size != update.length + 1 or values[-1] < 1:
      raise ValueError(f'--aggregator=he: the aggregate decrypts to {values.size} values and '
                       f'weight {values[-1] if values.size else None}: it wrapped or is corrupt.')
    return values[:-1], int(values[-1])


class Encryptor:
  """A client's side: encrypts its encoded update under the public key."""

  def __init__(self, public_context: bytes, params: HeParams):
    self.context = _public_context(public_context, 'client')
    self.key_id = key_id(public_context)
    self.params = params

  def encrypt(self, values: np.ndarray, weight: int) -> EncryptedUpdate:
    """Encrypts `encode`'s signed integers and the weight n_k in the slot after them."""
    _check_count('weight', weight)
    values = np.asarray(values, np.int64).ravel()
    limit = self.params.max_centered
    if weight > limit or (values.size and np.abs(values).max() > limit):
      raise ValueError(f'--aggregator=he: values and weight must be within ±{limit}.')
    slots = to_residues(np.append(values, np.int64(weight)), self.params.plain_modulus)
    ciphertexts, start = [], 0
    for size in _chunk_sizes(values.size, self.params.poly_modulus_degree):
      ciphertexts.append(ts.bfv_vector(self.context, slots[start:start + size]).serialize())
      start += size
    return EncryptedUpdate(self.key_id, tuple(ciphertexts), int(values.size))


class Aggregator:
  """Adds encrypted updates, from the public context alone: it cannot decrypt."""

  def __init__(self, public_context: bytes):
    self.context = _public_context(public_context, 'aggregator')
    self.key_id = key_id(public_context)
    self._slots = self.context.seal_context().data.key_context_data().parms().poly_modulus_degree()
    self.reset()

  def reset(self) -> None:
    """Starts a new sum."""
    self._sum: list[ts.BFVVector] | None = None
    self._length = None
    self.multiplier_sum = 0

  def add(self, update: EncryptedUpdate, multiplier: int = 1) -> None:
    """Adds `multiplier` (a plaintext integer ≥ 1) times `update` to the sum."""
    if update.key_id != self.key_id:
      raise ValueError(f'--aggregator=he: an update under key {update.key_id[:12]}… cannot be '
                       f'added to a sum under key {self.key_id[:12]}….')
    _check_count('multiplier', multiplier)
    if self.multiplier_sum + multiplier > MAX_MULTIPLIER_SUM:
      raise ValueError(f'--aggregator=he: the multipliers of one sum may add up to at most '
                       f'{MAX_MULTIPLIER_SUM} (the BFV noise budget).')
    if self._length is not None and update.length != self._length:
      raise ValueError(f'an update of {update.length} values cannot be added to a sum of '
                       f'{self._length}.')
    vectors = [ts.bfv_vector_from(self.context, c) for c in update.ciphertexts]
    expected = _chunk_sizes(update.length, self._slots)
    if [v.size() for v in vectors] != expected:
      raise ValueError(f'an update of {update.length} values has ciphertexts of '
                       f'{[v.size() for v in vectors]} slots, not {expected}.')
    if multiplier != 1:
      for vector in vectors:
        vector.mul_(multiplier)
    if self._sum is None:
      self._sum, self._length = vectors, update.length
    else:
      for total, vector in zip(self._sum, vectors, strict=True):
        total.add_(vector)
    self.multiplier_sum += multiplier

  def result(self) -> EncryptedUpdate:
    """The encrypted sum of every update added since the last `reset`."""
    if self._sum is None:
      raise ValueError('the aggregator has no update to sum.')
    return EncryptedUpdate(self.key_id, tuple(v.serialize() for v in self._sum), self._length)

  def holds_secret_key(self) -> bool:
    """Whether this aggregator could decrypt: it holds a secret key or decryption works."""
    if self.context.has_secret_key():
      return True
    try:
      ts.bfv_vector(self.context, [0]).decrypt()
    except ValueError:
      return False
    return True
