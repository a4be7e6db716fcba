"""Small containers for the state that crosses TFF placement boundaries.

TFF maps `NamedTuple`s to named structs and back, so these types appear in type signatures
(e.g. `ServerState` in `initialize: ( -> ServerState@SERVER)`) and in the values a process
returns.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class GanWeights(NamedTuple):
  """Trainable weights of both networks, each a list of tensors in Keras variable order."""

  generator: Any
  discriminator: Any


class ServerState(NamedTuple):
  """Everything the server keeps between rounds.

  Attributes:
    weights: The global `GanWeights`.
    generator_optimizer_state: State of the server optimizer for the generator.
    discriminator_optimizer_state: State of the server optimizer for the discriminator.
    aggregator_state: State of the `tff.aggregators` process that combines client updates.
    round_num: Number of rounds completed (int64 scalar).
    seed: The run's stateless-RNG seed, int64 `[2]`; each round's randomness is derived
      from it and `round_num`, so the same seed gives the same numbers run after run.
    generator_ema: An exponential moving average of the generator's weights over rounds
      (Yazıcı et al. 2019), which samples, evaluation and export use; `()` when off.
    control: SCAFFOLD's server control variate c (`GanWeights`, `algorithms.scaffold`): the
      clients' mean gradient estimate; `()` in the other schemes.
  """

  weights: GanWeights
  generator_optimizer_state: Any
  discriminator_optimizer_state: Any
  aggregator_state: Any
  round_num: Any
  seed: Any
  generator_ema: Any = ()
  control: Any = ()


class ServerBroadcast(NamedTuple):
  """What the server sends to every sampled client at the start of a round.

  Attributes:
    weights: The global `GanWeights` the clients start from.
    round_seed: int64 `[2]` stateless seed for this round's generator noise.
  """

  weights: GanWeights
  round_seed: Any


class ClientOutput(NamedTuple):
  """What one client returns at the end of its local work.

  Attributes:
    delta: Local-minus-broadcast weights of the networks the client trains: `GanWeights` in
      FedGAN, the discriminator's list of tensors in DP-FedAvg-GAN.
    num_examples: float32 number of real examples the client trained on; the FedAvg weight.
    metrics: `OrderedDict` of float32 means over the local steps (e.g. `discriminator_loss`).
  """

  delta: Any
  num_examples: Any
  metrics: Any


class DiscriminatorState(NamedTuple):
  """A client-resident discriminator: kept by its client between rounds, never sent.

  Attributes:
    weights: The discriminator's trainable weights, in Keras variable order.
    optimizer_state: Its optimizer's state, carried across the client's rounds.
  """

  weights: Any
  optimizer_state: Any


class Feedback(NamedTuple):
  """What a client-resident discriminator tells the server about generated samples.

  For every sample x of the round's generator batches (`[steps, batch, *data_shape]`), a
  weight w(x) `[steps, batch]` and a weighted gradient w(x)·v(x) of the same shape as the
  samples. Averaged over clients (weights n_k), their ratio is what the server's generator
  steps need (`core.feedback`): the mean per-sample gradient of the generator loss
  (`mean` mixture, w = 1), or the gradient of the mixture's logit (`universal`, w = odds).
  """

  weight: Any
  weighted_gradient: Any
