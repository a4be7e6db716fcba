"""Bytes a round moves between the server and each client, read off the computation itself.

The round's `next` computation is walked for its communication intrinsics; each message's
size is computed from its TFF type, so whatever an aggregator actually sends — bit-packed
quantized tensors, secure-sum integers at their declared bit width, side channels such as
clipping-norm estimates, the clients' metrics — is counted as it is, with nothing assumed.

* Down (server → one client): every `federated_broadcast`.
* Up (one client → server): the client-placed operand of every aggregation intrinsic
  (`federated_sum`, `federated_mean` with its weight, `federated_aggregate`, the secure
  sums, …). Values sent through `federated_secure_sum_bitwidth` count at their bit width,
  not at the width of the integer type that carries them in the simulation.

Sizes are payloads: tensor data only, no framing, no gRPC or secure-aggregation protocol
overhead.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow_federated as tff

__all__ = ['RoundTraffic', 'round_traffic', 'type_bits']

_DOWNLINK = frozenset({'federated_broadcast'})
_UPLINK = frozenset({
    'federated_sum', 'federated_mean', 'federated_weighted_mean', 'federated_aggregate',
    'federated_min', 'federated_max', 'federated_secure_sum', 'federated_secure_sum_bitwidth',
    'federated_secure_modular_sum', 'federated_select',
})


@dataclasses.dataclass(frozen=True)
class RoundTraffic:
  """Payload bytes of one round, per participating client.

  Attributes:
    down_per_client: Bytes each sampled client receives.
    up_per_client: Bytes each client that completes its work sends.
  """

  down_per_client: int
  up_per_client: int

  def bytes_down(self, num_clients: int) -> int:
    return self.down_per_client * num_clients

  def bytes_up(self, num_completed: int) -> int:
    return self.up_per_client * num_completed


def round_traffic(computation: tff.Computation) -> RoundTraffic:
  """The `RoundTraffic` of one invocation of `computation` (e.g. a process's `next`)."""
  down_bits = 0
  up_bits = 0

  def visit(node):
    nonlocal down_bits, up_bits
    if isinstance(node, tff.framework.Call) and isinstance(node.function, tff.framework.Intrinsic):
      uri = node.function.uri
      if uri in _DOWNLINK:
        down_bits += type_bits(_member(node.argument.type_signature))
      elif uri in _UPLINK:
        up_bits += _uplink_bits(uri, node.argument)
    return node, False

  tff.framework.transform_postorder(computation.to_building_block(), visit)
  return RoundTraffic(down_per_client=_bytes(down_bits), up_per_client=_bytes(up_bits))


def type_bits(type_spec: tff.Type, bit_widths=None) -> int:
  """Payload bits of a value of `type_spec` (tensors or structures of them, fully defined).

  Args:
    type_spec: An unplaced TFF type.
    bit_widths: Optional bits per element, one int for every tensor or a structure matching
      `type_spec`; defaults to each dtype's own width. Each tensor is padded to whole bytes.
  """
  if isinstance(type_spec, tff.StructType):
    elements = list(type_spec)
    widths = (list(bit_widths) if isinstance(bit_widths, list | tuple)
              else [bit_widths] * len(elements))
    return sum(type_bits(element, width) for element, width in zip(elements, widths, strict=True))
  if isinstance(type_spec, tff.TensorType):
    if type_spec.shape is None or None in type_spec.shape:
      raise ValueError(f'cannot size a tensor of partly unknown shape {type_spec}.')
    num_elements = math.prod(type_spec.shape)
    width = bit_widths if bit_widths is not None else np.dtype(type_spec.dtype).itemsize * 8
    return 8 * _bytes(num_elements * int(width))
  raise TypeError(f'cannot size a value of type {type_spec}: only tensors and structures.')


def _uplink_bits(uri: str, argument) -> int:
  if uri in ('federated_sum', 'federated_min', 'federated_max'):
    return type_bits(_member(argument.type_signature))
  operand_types = list(argument.type_signature)
  if uri == 'federated_secure_sum_bitwidth':
    bit_widths = (_literal_values(argument[1]) if isinstance(argument, tff.framework.Struct)
                  else None)
    return type_bits(_member(operand_types[0]), bit_widths)
  # The value first, then (a weighted mean's weight, a secure sum's bounds, an aggregate's
  # zero and functions, a select's keys) the rest; only client-placed operands travel up.
  return sum(type_bits(operand.member) for operand in operand_types
             if isinstance(operand, tff.FederatedType) and operand.placement is tff.CLIENTS)


def _literal_values(block):
  """The Python value(s) of a literal bit width, a structure of literals, or None."""
  if isinstance(block, tff.framework.Struct):
    return [_literal_values(element) for element in block]
  if isinstance(block, tff.framework.Literal):
    return int(np.asarray(block.value))
  return None


def _member(type_spec: tff.Type) -> tff.Type:
  return type_spec.member if isinstance(type_spec, tff.FederatedType) else type_spec


def _bytes(bits: int) -> int:
  return (bits + 7) // 8
