"""The parties of one SecAgg+ round, `SecAggClient` and `SecAggServer` (see `secagg`).

Every message between clients goes through the server, and the server records all it receives
in a `ServerView`. Steps, with U1 ⊇ U2 ⊇ U3 the clients still present at each:

0. Advertise keys: a client sends two X25519 public keys, c_u (share encryption) and s_u
   (mask agreement); U1 is the clients that did.
1. Share keys: it Shamir-shares its self-mask seed b_u and its mask private key among its
   neighbours, threshold t, each neighbour's shares sealed for it; U2 is those that sent.
2. Masked input: y_u = x_u + PRG(b_u) + Σ_{v ∈ N(u) ∩ U2} ±PRG(s_uv) mod 2^32, + when u < v;
   U3 (the survivors) is those whose y_u arrived, U2 \\ U3 the dropped.
3. Unmasking: each survivor still online opens the shares its neighbours sealed for it: of
   b_v for a surviving v, of v's mask key for a dropped v, never both for one v. The server
   rebuilds each secret from t shares and takes the masks out of Σ_{u ∈ U3} y_u.

Bytes are counted as payload, without transport framing: a client id is 4 bytes, a public key
32, a sealed share message `SHARES_CIPHERTEXT_BYTES` (94), an opened share `UNMASK_SHARE_BYTES`
(39), a masked vector 4 bytes per value.
"""

from __future__ import annotations

import dataclasses
import secrets
import struct
from collections.abc import Collection, Mapping, Sequence

import numpy as np
from cryptography.exceptions import InvalidTag

from tff_gan.secure import secagg_crypto as crypto

KEYS_BYTES = 2 * crypto.PUBLIC_KEY_BYTES
ID_BYTES = crypto.ID_BYTES
_UNMASK_SHARE = struct.Struct(f'>IBH{crypto.SECRET_BYTES}s')  # owner, kind, index, share.
UNMASK_SHARE_BYTES = _UNMASK_SHARE.size
SEED, KEY = 0, 1  # What an opened share is a share of: b_v, or v's mask private key.
_KIND_NAMES = {SEED: 'self-mask seed', KEY: 'mask key'}


class SecAggAborted(RuntimeError):
  """The round cannot finish (too few shares, or a party refused); the message is one line."""


@dataclasses.dataclass(frozen=True)
class UnmaskShare:
  """One opened share: of `owner`'s seed b_v (`SEED`) or mask key (`KEY`), at `index`."""
  owner: int
  kind: int
  index: int
  share: bytes


def pack_unmask_shares(shares: Sequence[UnmaskShare]) -> bytes:
  return b''.join(_UNMASK_SHARE.pack(s.owner, s.kind, s.index, s.share) for s in shares)


def unpack_unmask_shares(message: bytes) -> list[UnmaskShare]:
  if len(message) % UNMASK_SHARE_BYTES:
    raise ValueError(f'an unmasking message of {len(message)} bytes is malformed.')
  return [UnmaskShare(*fields) for fields in _UNMASK_SHARE.iter_unpack(message)]


@dataclasses.dataclass
class ServerView:
  """All the server received in one round, as it received it, and the bytes each way.

  Attributes:
    public_keys: Step 0, client -> c_u ‖ s_u (64 bytes).
    encrypted_shares: Step 1, (sender, recipient) -> sealed shares.
    masked_inputs: Step 2, client -> y_u (uint32).
    unmask_responses: Step 3, client -> its opened shares (`unpack_unmask_shares`).
    survivors: U3, whose inputs are in the sum.
    dropped: U2 \\ U3, whose masks were taken out with their rebuilt keys.
    bytes_up: Client -> payload bytes it sent.
    bytes_down: Client -> payload bytes the server sent it.
  """
  public_keys: dict[int, bytes] = dataclasses.field(default_factory=dict)
  encrypted_shares: dict[tuple[int, int], bytes] = dataclasses.field(default_factory=dict)
  masked_inputs: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
  unmask_responses: dict[int, bytes] = dataclasses.field(default_factory=dict)
  survivors: frozenset[int] = frozenset()
  dropped: frozenset[int] = frozenset()
  bytes_up: dict[int, int] = dataclasses.field(default_factory=dict)
  bytes_down: dict[int, int] = dataclasses.field(default_factory=dict)


def _count(table: dict[int, int], client_id: int, size: int) -> None:
  table[client_id] = table.get(client_id, 0) + size


def _vector(values: np.ndarray) -> np.ndarray:
  values = np.asarray(values)
  if values.dtype != np.uint32 or values.ndim != 1:
    raise ValueError(f'secagg sums 1-D uint32 vectors, got {values.dtype} of shape '
                     f'{values.shape}; encode floats with secagg.encode.')
  return values


class SecAggClient:
  """One client in one round: its id, its neighbours, its two key pairs and its seed b_u.

  Keys and seed are fresh for the round; `random_bytes` draws them (the OS's CSPRNG by
  default; a seeded source only in tests). Methods are the steps, called once each, in order.
  """

  def __init__(self, client_id: int, neighbours: Sequence[int], threshold: int, *,
               round_id: int = 0, random_bytes: crypto.RandomBytes = secrets.token_bytes):
    self.client_id = crypto.check_client_id(client_id)
    self.neighbours = tuple(sorted({crypto.check_client_id(v) for v in neighbours}))
    if self.client_id in self.neighbours or not 1 <= threshold <= len(self.neighbours):
      raise ValueError(f'client {client_id} needs 1 <= threshold <= its {len(self.neighbours)}'
                       f' neighbours (itself not among them), got threshold {threshold}.')
    self.threshold, self.round_id = threshold, round_id
    self._random_bytes = random_bytes
    self._share_keys = crypto.KeyPair.generate(random_bytes)  # c_u.
    self._mask_keys = crypto.KeyPair.generate(random_bytes)  # s_u.
    self._seed = random_bytes(crypto.SECRET_BYTES)  # b_u.
    self._peer_keys: dict[int, tuple[bytes, bytes]] = {}
    self._inbox: dict[int, bytes] | None = None
    self._unmasked = False

  def _abort(self, reason: str) -> SecAggAborted:
    return SecAggAborted(f'secagg: client {self.client_id} aborts the round: {reason}.')

  def _check_senders(self, received: Mapping[int, bytes], allowed, strangers: str,
                     sent: str) -> None:
    """Raises ValueError if a message came from outside `allowed` (`strangers` names
    them), or aborts the round if fewer than t neighbours `sent` one."""
    unknown = sorted(set(received) - set(allowed))
    if unknown:
      raise ValueError(f'client {self.client_id} was sent {strangers} {unknown}.')
    if len(received) < self.threshold:
      raise self._abort(f'{len(received)} of its neighbours {sent}, fewer than the threshold '
                        f'{self.threshold}')

  def advertise_keys(self) -> bytes:
    """Step 0: c_u ‖ s_u, 64 bytes."""
    return self._share_keys.public_bytes + self._mask_keys.public_bytes

  def share_keys(self, public_keys: Mapping[int, bytes]) -> dict[int, bytes]:
    """Step 1: shares of b_u and of the mask private key, sealed for each neighbour.

    Args:
      public_keys: Neighbour -> its step-0 message, for the neighbours that sent one.

    Returns:
      Neighbour -> sealed (index, share of b_u, share of the mask key).
    """
    self._check_senders(public_keys, self.neighbours, 'keys of non-neighbours',
                        'advertised keys')
    keys = {v: (m[:crypto.PUBLIC_KEY_BYTES], m[crypto.PUBLIC_KEY_BYTES:])
            for v, m in public_keys.items() if len(m) == KEYS_BYTES}
    every_key = [key for pair in keys.values() for key in pair] + [
        self._share_keys.public_bytes, self._mask_keys.public_bytes]
    if len(keys) != len(public_keys) or len(set(every_key)) != len(every_key):
      raise self._abort('a neighbour advertised malformed or repeated public keys')
    self._peer_keys = keys
    count = len(self.neighbours)
    seed_shares = crypto.split(self._seed, self.threshold, count)
    key_shares = crypto.split(self._mask_keys.private_bytes(), self.threshold, count)
    return {v: crypto.encrypt_shares(self._share_keys.private, keys[v][0], self.round_id,
                                     self.client_id, v, index, seed_share, key_share,
                                     self._random_bytes)
            for v, (index, seed_share), (_, key_share)
            in zip(self.neighbours, seed_shares, key_shares, strict=True) if v in keys}

  def masked_input(self, vector: np.ndarray, encrypted_shares: Mapping[int, bytes]) -> np.ndarray:
    """Step 2: y_u = x_u + PRG(b_u) + Σ ±PRG(s_uv) mod 2^32 over the neighbours that shared.

    Args:
      vector: x_u, uint32.
      encrypted_shares: Sender -> the shares it sealed for this client (kept for step 3).

    Raises:
      SecAggAborted: On a second call (two inputs under the same masks would reveal their
        difference), or if fewer than t neighbours shared.
    """
    vector = _vector(vector)
    if self._inbox is not None:
      raise self._abort('a second masked input is asked for')
    self._check_senders(encrypted_shares, self._peer_keys,
                        'shares from clients whose keys it never got:', 'shared their keys')
    self._inbox = dict(encrypted_shares)
    masked = vector + crypto.expand(self._seed, vector.size)
    for v in sorted(self._inbox):
      mask = crypto.expand(crypto.mask_seed(self._mask_keys.private, self._peer_keys[v][1],
                                            self.round_id, self.client_id, v), vector.size)
      if self.client_id < v:
        masked += mask
      else:
        masked -= mask
    return masked

  def unmask(self, survivors: Collection[int], dropped: Collection[int]) -> bytes:
    """Step 3: opens, per neighbour that shared, its b_v share if it survived, else its key's.

    Ids this client holds no shares of are ignored. Answers once per round, so a server can
    never get both shares of one neighbour from it.

    Raises:
      SecAggAborted: On a second request, a client named both survivor and dropped, or shares
        that fail to decrypt (altered, or not sealed for this client in this round).
    """
    if self._unmasked or self._inbox is None:
      raise self._abort('unmasking is asked twice or before the masked input')
    self._unmasked = True
    survivors, dropped = set(survivors), set(dropped)
    if survivors & dropped:
      raise self._abort(f'the server names {sorted(survivors & dropped)} both survivors and '
                        'dropped')
    opened = []
    for v in sorted((survivors | dropped) & set(self._inbox)):
      try:
        index, seed_share, key_share = crypto.decrypt_shares(
            self._share_keys.private, self._peer_keys[v][0], self.round_id, v, self.client_id,
            self._inbox[v])
      except InvalidTag:
        raise self._abort(f'the shares from client {v} fail to decrypt') from None
      opened.append(UnmaskShare(v, SEED, index, seed_share) if v in survivors
                    else UnmaskShare(v, KEY, index, key_share))
    return pack_unmask_shares(opened)


class SecAggServer:
  """The server of one round: relays, records in `view`, and unmasks the sum.

  Args:
    graph: Client -> its neighbours (symmetric), public to all.
    threshold: t, the shares that rebuild a secret.
    round_id: Bound into every derived key and sealed share.
  """

  def __init__(self, graph: Mapping[int, Sequence[int]], threshold: int, *, round_id: int = 0):
    self.graph = {u: tuple(sorted(vs)) for u, vs in graph.items()}
    if any(u not in self.graph.get(v, ()) for u, vs in self.graph.items() for v in vs):
      raise ValueError('the neighbour graph must be symmetric over the round\'s clients.')
    if not 1 <= threshold <= min((len(vs) for vs in self.graph.values()), default=0):
      raise ValueError(f'threshold {threshold} must be in [1, the fewest neighbours a client '
                       'has].')
    self.threshold, self.round_id = threshold, round_id
    self.view = ServerView()
    self._step, self._length = 0, None
    self._shares: dict[tuple[int, int], list[tuple[int, bytes]]] = {}  # (owner, kind) ->.

  def _enter(self, step: int, what: str, client_id: int) -> None:
    if client_id not in self.graph:
      raise ValueError(f'client {client_id} is not in this round.')
    if self._step > step:
      raise ValueError(f'{what} from client {client_id} came after its step ended.')
    self._step = step

  def receive_keys(self, client_id: int, message: bytes) -> None:
    """Step 0: a client's two public keys."""
    self._enter(0, 'keys', client_id)
    if len(message) != KEYS_BYTES or client_id in self.view.public_keys:
      raise ValueError(f'client {client_id} sent malformed or repeated keys.')
    self.view.public_keys[client_id] = bytes(message)
    _count(self.view.bytes_up, client_id, len(message))

  def keys_for(self, client_id: int) -> dict[int, bytes]:
    """Step 1's input: the keys of the client's neighbours that advertised them."""
    self._enter(1, 'a request for keys', client_id)
    keys = {v: self.view.public_keys[v] for v in self.graph[client_id]
            if v in self.view.public_keys}
    _count(self.view.bytes_down, client_id, len(keys) * (ID_BYTES + KEYS_BYTES))
    return keys

  def receive_shares(self, client_id: int, ciphertexts: Mapping[int, bytes]) -> None:
    """Step 1: a client's sealed shares, recipient -> ciphertext."""
    self._enter(1, 'shares', client_id)
    if client_id not in self.view.public_keys or set(ciphertexts) - set(self.graph[client_id]):
      raise ValueError(f'client {client_id} sent shares without keys or to non-neighbours.')
    for recipient, ciphertext in ciphertexts.items():
      self.view.encrypted_shares[client_id, recipient] = bytes(ciphertext)
      _count(self.view.bytes_up, client_id, ID_BYTES + len(ciphertext))

  def shares_for(self, client_id: int) -> dict[int, bytes]:
    """Step 2's input: the shares sealed for this client, sender -> ciphertext."""
    self._enter(2, 'a request for shares', client_id)
    shares = {sender: c for (sender, recipient), c in self.view.encrypted_shares.items()
              if recipient == client_id}
    _count(self.view.bytes_down, client_id, sum(ID_BYTES + len(c) for c in shares.values()))
    return shares

  def _sharers(self) -> set[int]:
    return {sender for sender, _ in self.view.encrypted_shares}

  def receive_masked_input(self, client_id: int, masked: np.ndarray) -> None:
    """Step 2: a client's masked vector y_u."""
    self._enter(2, 'a masked input', client_id)
    masked = _vector(masked)
    if client_id not in self._sharers() or client_id in self.view.masked_inputs:
      raise ValueError(f'client {client_id} sent a masked input without shares, or twice.')
    if self._length is not None and masked.size != self._length:
      raise ValueError(f'client {client_id} sent {masked.size} values, not {self._length}.')
    self._length = masked.size
    self.view.masked_inputs[client_id] = masked
    _count(self.view.bytes_up, client_id, masked.nbytes)

  def _close_inputs(self) -> None:
    """Ends step 2: the survivors are the clients whose masked inputs arrived."""
    if self._step < 3:
      self.view.survivors = frozenset(self.view.masked_inputs)
      self.view.dropped = frozenset(self._sharers() - self.view.survivors)
      self._step = 3

  def unmask_request(self, client_id: int) -> tuple[frozenset[int], frozenset[int]]:
    """Step 3's input: which of the client's neighbours survived, and which dropped."""
    self._close_inputs()
    self._enter(3, 'a request to unmask', client_id)
    neighbours = set(self.graph[client_id])
    survivors, dropped = self.view.survivors & neighbours, self.view.dropped & neighbours
    _count(self.view.bytes_down, client_id, (ID_BYTES + 1) * (len(survivors) + len(dropped)))
    return survivors, dropped

  def receive_unmask(self, client_id: int, message: bytes) -> None:
    """Step 3: a survivor's opened shares."""
    self._enter(3, 'opened shares', client_id)
    if client_id not in self.view.survivors or client_id in self.view.unmask_responses:
      raise ValueError(f'client {client_id} sent opened shares without surviving, or twice.')
    self.view.unmask_responses[client_id] = bytes(message)
    _count(self.view.bytes_up, client_id, len(message))
    for share in unpack_unmask_shares(message):
      expected = SEED if share.owner in self.view.survivors else KEY
      if share.kind == expected and share.owner in self.graph[client_id]:
        self._shares.setdefault((share.owner, share.kind), []).append((share.index, share.share))

  def result(self) -> np.ndarray:
    """Σ_{u ∈ U3} x_u mod 2^32 (uint32), the masks taken out.

    Raises:
      SecAggAborted: If no input arrived, if a secret needed has fewer than t shares, or if
        a rebuilt mask key does not match its advertised public key (a corrupt share).
    """
    self._close_inputs()
    if self._step != 3:
      raise ValueError('the sum of this round was taken already.')
    if not self.view.survivors:
      raise SecAggAborted('secagg: the round fails: no masked input reached unmasking.')
    survivors, t = self.view.survivors, self.threshold
    needed = [(u, SEED) for u in sorted(survivors)] + [
        (v, KEY) for v in sorted(self.view.dropped) if survivors & set(self.graph[v])]
    short = sorted((len(self._shares.get(s, [])), s) for s in needed
                   if len(self._shares.get(s, [])) < t)
    if short:
      got, (owner, kind) = short[0]
      more = f'; {len(short) - 1} more secrets lack shares too' if len(short) > 1 else ''
      raise SecAggAborted(
          f'secagg: the round fails: client {owner}\'s {_KIND_NAMES[kind]} needs {t} of its '
          f'{len(self.graph[owner])} neighbours\' shares and got {got} (too many dropped out)'
          f'{more}; a larger --secagg_neighbours or a --secagg_threshold nearer half of it '
          'tolerates more dropouts.')
    total = np.zeros(self._length, np.uint32)
    for masked in self.view.masked_inputs.values():
      total += masked
    for owner, kind in needed:
      secret = crypto.combine(self._shares[owner, kind], t)
      if kind == SEED:
        total -= crypto.expand(secret, self._length)
        continue
      keys = crypto.KeyPair.from_private_bytes(secret)
      if keys.public_bytes != self.view.public_keys[owner][crypto.PUBLIC_KEY_BYTES:]:
        raise SecAggAborted(f'secagg: the round fails: client {owner}\'s rebuilt mask key '
                            'does not match its public key (a corrupt share).')
      for u in sorted(survivors & set(self.graph[owner])):
        mask = crypto.expand(crypto.mask_seed(keys.private, self.view.public_keys[u][
            crypto.PUBLIC_KEY_BYTES:], self.round_id, owner, u), self._length)
        if u < owner:  # u added +PRG(s_uv) for a larger v: take it out.
          total -= mask
        else:
          total += mask
    self._step = 4
    return total
