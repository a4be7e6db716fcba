"""The states clients keep between rounds, held by the driver on their behalf in simulation.

A scheme whose clients keep state (`GanProcess.initial_client_state`, e.g. the client-resident
discriminators of `algorithms.multi_d`) hands each sampled client its own state in a round
and gets the new one back. In a deployment each client would keep it on its device; here
the driver keeps every client's state, one stacked array per tensor
(`[num_clients, *shape]`), and saves it with the run's checkpoints, so a resumed run
continues every client exactly where it was. Nothing in it is ever aggregated or sent to
the server.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


class ClientStates:
  """Every client's state, starting from `initial` for all of them.

  Args:
    initial: One client's initial state (a structure of tensors).
    num_clients: The population's size.
  """

  def __init__(self, initial, num_clients: int):
    self._structure = initial
    self.stacks = [np.repeat(np.asarray(value)[None], num_clients, axis=0)
                   for value in tf.nest.flatten(initial)]

  def gather(self, client_ids) -> list:
    """The states of `client_ids`, one structure each."""
    return [tf.nest.pack_sequence_as(self._structure, [stack[int(k)] for stack in self.stacks])
            for k in client_ids]

  def scatter(self, client_ids, states) -> None:
    """Stores `states[i]` as the state of client `client_ids[i]`."""
    for k, state in zip(client_ids, states, strict=True):
      for stack, value in zip(self.stacks, tf.nest.flatten(state), strict=True):
        stack[int(k)] = np.asarray(value)

  def restore(self, stacks) -> None:
    """Replaces every client's state by `stacks` (as saved from `self.stacks`)."""
    restored = [np.asarray(stack) for stack in stacks]
    for old, new in zip(self.stacks, restored, strict=True):
      if old.shape != new.shape or old.dtype != new.dtype:
        raise ValueError(f'saved client states are {new.dtype}{list(new.shape)}, this run '
                         f'needs {old.dtype}{list(old.shape)}')
    self.stacks = restored


def run_state(state, client_states: ClientStates | None):
  """What a checkpoint holds: the server state, and every client's state if clients keep one."""
  return state if client_states is None else (state, client_states.stacks)


def load_run_state(checkpoints, round_num: int, state, client_states: ClientStates | None):
  """The server state saved at `round_num` (`state` the template); restores `client_states`."""
  saved = checkpoints.load(round_num, run_state(state, client_states))
  if client_states is None:
    return saved
  client_states.restore(saved[1])
  return saved[0]
