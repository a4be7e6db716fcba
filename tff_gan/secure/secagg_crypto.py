"""The cryptographic building blocks of SecAgg+ (`secagg`), each taken from a kept library.

Nothing here is a new primitive: X25519, HKDF-SHA256, the ChaCha20 stream cipher and the
ChaCha20-Poly1305 AEAD come from `cryptography` (OpenSSL); Shamir secret sharing over
GF(2^128) comes from pycryptodome. This module fixes how they are combined and what each key
is bound to:

* `KeyPair`: an X25519 key pair; its public key travels as 32 raw bytes.
* `agree`: 32 bytes of HKDF-SHA256 over an X25519 shared secret, whose `info` names the
  purpose, the round and the two client ids, so no derived key serves two purposes, two rounds
  or two pairs. Mask seeds take the ids in increasing order (both ends derive the same seed);
  share-encryption keys take them as sender then recipient (one key per direction).
* `expand`: a mask, `length` uint32 read from the ChaCha20 keystream under a 32-byte seed.
  The nonce is zero: every seed is fresh for one round and expands to one mask.
* `encrypt_shares` / `decrypt_shares`: ChaCha20-Poly1305 under a share-encryption key, with a
  random 96-bit nonce in front and associated data binding round, sender and recipient, so the
  server relaying them can neither read them nor pass them off as another pair's or round's.
* `split` / `combine`: a 32-byte secret (a seed or an X25519 private key) Shamir-shared as two
  16-byte halves (pycryptodome shares 16-byte secrets), both halves at the same indices.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Sequence

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

RandomBytes = Callable[[int], bytes]

SECRET_BYTES = 32  # Seeds, X25519 private keys and derived keys alike.
PUBLIC_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_HALF = SECRET_BYTES // 2
_ID = struct.Struct('>I')  # Client ids on the wire and in derivations: uint32.
ID_BYTES = _ID.size
_SHARES = struct.Struct(f'>H{SECRET_BYTES}s{SECRET_BYTES}s')  # index, seed share, key share.
SHARES_CIPHERTEXT_BYTES = NONCE_BYTES + _SHARES.size + TAG_BYTES
MAX_CLIENT_ID = 2**32 - 1
MAX_SHARES = 2**16 - 1  # Share indices travel as uint16.

# What a derived key is for: its HKDF `info` starts with one of these.
MASK_SEED = b'tff_gan secagg v1 pairwise mask seed'
SHARE_KEY = b'tff_gan secagg v1 share encryption key'
SHARES_AD = b'tff_gan secagg v1 shares'


def check_client_id(client_id) -> int:
  """`client_id` as an int, or a one-line ValueError unless it fits in a uint32."""
  if isinstance(client_id, bool) or not isinstance(client_id, int | np.integer) or not (
      0 <= client_id <= MAX_CLIENT_ID):
    raise ValueError(f'secagg client ids must be integers in [0, 2^32), got {client_id!r}.')
  return int(client_id)


def _ids(*client_ids: int) -> bytes:
  return b''.join(_ID.pack(i) for i in client_ids)


@dataclasses.dataclass(frozen=True)
class KeyPair:
  """An X25519 key pair."""
  private: X25519PrivateKey
  public_bytes: bytes

  @classmethod
  def generate(cls, random_bytes: RandomBytes) -> KeyPair:
    """A fresh pair from 32 random bytes (X25519 clamps them: any 32 bytes are a key)."""
    return cls.from_private_bytes(random_bytes(SECRET_BYTES))

  @classmethod
  def from_private_bytes(cls, private_bytes: bytes) -> KeyPair:
    private = X25519PrivateKey.from_private_bytes(private_bytes)
    return cls(private, private.public_key().public_bytes_raw())

  def private_bytes(self) -> bytes:
    return self.private.private_bytes_raw()


def agree(private: X25519PrivateKey, peer_public: bytes, purpose: bytes, round_id: int,
          first_id: int, second_id: int) -> bytes:
  """A 32-byte key both ends derive: HKDF-SHA256(X25519(private, peer), info=purpose‖ids).

  Raises:
    ValueError: From `cryptography`, if the peer's key is malformed or of small order.
  """
  shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
  info = purpose + struct.pack('>Q', round_id) + _ids(first_id, second_id)
  return HKDF(hashes.SHA256(), SECRET_BYTES, salt=None, info=info).derive(shared)


def mask_seed(private: X25519PrivateKey, peer_public: bytes, round_id: int, client_id: int,
              peer_id: int) -> bytes:
  """s_uv: the seed of the mask u and v share, the same from either end."""
  low, high = sorted((client_id, peer_id))
  return agree(private, peer_public, MASK_SEED, round_id, low, high)


def expand(seed: bytes, length: int) -> np.ndarray:
  """The mask PRG(seed): `length` uint32 (little-endian) of the ChaCha20 keystream."""
  encryptor = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
  return np.frombuffer(encryptor.update(bytes(4 * length)), '<u4').astype(np.uint32, copy=False)


def split(secret: bytes, threshold: int, count: int) -> list[tuple[int, bytes]]:
  """`count` Shamir shares (index 1..count, 32 bytes each) of a 32-byte secret; any
  `threshold` of them rebuild it, fewer reveal nothing of it."""
  if len(secret) != SECRET_BYTES:
    raise ValueError(f'a shared secret has {SECRET_BYTES} bytes, got {len(secret)}.')
  halves = [Shamir.split(threshold, count, secret[i:i + _HALF]) for i in (0, _HALF)]
  return [(index, first + second)
          for (index, first), (_, second) in zip(*halves, strict=True)]


def combine(shares: Sequence[tuple[int, bytes]], threshold: int) -> bytes:
  """The secret from `threshold` distinct shares (the first `threshold` are used).

  Shamir's combination returns garbage, without error, from too few shares: the caller
  counts them first (`secagg` raises `SecAggAborted`).
  """
  if len(shares) < threshold:
    raise ValueError(f'{threshold} shares are needed, got {len(shares)}.')
  used = list(shares)[:threshold]
  return b''.join(Shamir.combine([(index, share[i:i + _HALF]) for index, share in used])
                  for i in (0, _HALF))


def _shares_key(private: X25519PrivateKey, peer_public: bytes, round_id: int, sender: int,
                recipient: int) -> ChaCha20Poly1305:
  return ChaCha20Poly1305(agree(private, peer_public, SHARE_KEY, round_id, sender, recipient))


def _shares_ad(round_id: int, sender: int, recipient: int) -> bytes:
  return SHARES_AD + struct.pack('>Q', round_id) + _ids(sender, recipient)


def encrypt_shares(private: X25519PrivateKey, recipient_public: bytes, round_id: int,
                   sender: int, recipient: int, index: int, seed_share: bytes,
                   key_share: bytes, random_bytes: RandomBytes) -> bytes:
  """The sender's shares for one recipient, sealed for it: nonce ‖ AEAD ciphertext ‖ tag."""
  nonce = random_bytes(NONCE_BYTES)
  plaintext = _SHARES.pack(index, seed_share, key_share)
  key = _shares_key(private, recipient_public, round_id, sender, recipient)
  return nonce + key.encrypt(nonce, plaintext, _shares_ad(round_id, sender, recipient))


def decrypt_shares(private: X25519PrivateKey, sender_public: bytes, round_id: int,
                   sender: int, recipient: int, ciphertext: bytes) -> tuple[int, bytes, bytes]:
  """The (index, seed share, key share) a sender sealed for this recipient.

  Raises:
    cryptography.exceptions.InvalidTag: If the ciphertext was altered, or was sealed for
      another recipient, by another sender or in another round.
  """
  key = _shares_key(private, sender_public, round_id, sender, recipient)
  nonce, sealed = ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:]
  index, seed_share, key_share = _SHARES.unpack(
      key.decrypt(nonce, sealed, _shares_ad(round_id, sender, recipient)))
  return index, seed_share, key_share
