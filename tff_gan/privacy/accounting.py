"""Privacy accounting for DP-FedAvg with `dp_accounting` (RDP by default, PLD on request).

A round of DP-FedAvg is the aggregator's Gaussian mechanism (for adaptive clipping, the
composition of the value noise and the clipped-count noise, as TFF's DP aggregator records it
in its state) applied to a random sample of clients. How clients are sampled decides the
amplification and the neighbouring relation:

* `poisson`: each client joins independently with probability q = clients_per_round /
  num_clients. Neighbouring datasets differ by adding or removing one client's data
  (`PoissonSampledDpEvent`, add-or-remove-one).
* `fixed`: exactly clients_per_round clients, drawn without replacement. Neighbouring datasets
  differ by replacing one client's data (`SampledWithoutReplacementDpEvent`, replace-one); the
  RDP accountant supports it, the PLD accountant does not.

The accountants take a noise multiplier relative to the mechanism's sensitivity under their
relation. A sum of contributions each clipped to C (DP-FedAvg's clients, DP-SGD's examples)
moves by at most C when one is added or removed, but by 2C when one is replaced: under
replace-one, noise z·C is a Gaussian mechanism of noise multiplier z/2 (`clipped_sum_event`).

ε after t rounds is the accountant's ε at δ for t self-compositions of the round's event.
The ledger lives in the server state: the round count (`ServerState.round_num`) and the
round's DP event (`ServerState.aggregator_state.dp_event`), so a resumed run resumes the ε.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import attr
import dp_accounting
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant

from tff_gan.choices import CLIENT_SAMPLING, DP_ACCOUNTANTS


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How clients are sampled each round.

  Attributes:
    method: `poisson` or `fixed` (see the module docstring).
    num_clients: Size of the client population.
    clients_per_round: Expected (poisson) or exact (fixed) clients per round.
  """

  method: str
  num_clients: int
  clients_per_round: int

  def __post_init__(self):
    if self.method not in CLIENT_SAMPLING:
      raise ValueError(f"unknown client sampling '{self.method}'; choose one of: "
                       f"{', '.join(CLIENT_SAMPLING)}.")
    if not 0 < self.clients_per_round <= self.num_clients:
      raise ValueError(f'clients_per_round must be in [1, num_clients={self.num_clients}], '
                       f'got {self.clients_per_round}.')

  @property
  def rate(self) -> float:
    return self.clients_per_round / self.num_clients

  @property
  def neighboring_relation(self) -> dp_accounting.NeighboringRelation:
    if self.method == 'poisson':
      return dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    return dp_accounting.NeighboringRelation.REPLACE_ONE

  def sampled(self, event: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
    """The round's event `event` applied to a sample of clients drawn this way."""
    if self.method == 'poisson':
      return dp_accounting.PoissonSampledDpEvent(self.rate, event)
    return dp_accounting.SampledWithoutReplacementDpEvent(
        self.num_clients, self.clients_per_round, event)


def clipped_sum_event(event: dp_accounting.DpEvent, sampling: Sampling) -> dp_accounting.DpEvent:
  """`event`, the Gaussian mechanism(s) of a round on a sum of contributions clipped to C with
  noise multipliers relative to C, as `sampling`'s neighbouring relation sees it: unchanged
  under add-or-remove-one; under replace-one (sensitivity 2C) every noise multiplier halved.

  Raises:
    ValueError: For an event other than Gaussian ones and their compositions.
  """
  if sampling.neighboring_relation == dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE:
    return event
  if isinstance(event, dp_accounting.GaussianDpEvent):
    return dp_accounting.GaussianDpEvent(event.noise_multiplier / 2)
  if isinstance(event, dp_accounting.SelfComposedDpEvent):
    return dp_accounting.SelfComposedDpEvent(clipped_sum_event(event.event, sampling),
                                             event.count)
  if isinstance(event, dp_accounting.ComposedDpEvent):
    return dp_accounting.ComposedDpEvent([clipped_sum_event(e, sampling) for e in event.events])
  raise ValueError(f'cannot rescale a {type(event).__name__} to replace-one sensitivity.')


def make_accountant(name: str, sampling: Sampling) -> dp_accounting.PrivacyAccountant:
  """A fresh `dp_accounting` accountant for `sampling`'s neighbouring relation."""
  if name == 'rdp':
    return dp_accounting.rdp.RdpAccountant(neighboring_relation=sampling.neighboring_relation)
  if name == 'pld':
    if sampling.method != 'poisson':
      raise ValueError('the PLD accountant does not support fixed-size sampling without '
                       'replacement; use Poisson sampling or the RDP accountant.')
    return dp_accounting.pld.PLDAccountant(neighboring_relation=sampling.neighboring_relation)
  raise ValueError(f"unknown accountant '{name}'; choose one of: {', '.join(DP_ACCOUNTANTS)}.")


def epsilon(
    round_event: dp_accounting.DpEvent,
    sampling: Sampling,
    rounds: int,
    delta: float,
    accountant: str = 'rdp',
) -> float:
  """ε at `delta` after `rounds` rounds, each `round_event` on a sample drawn by `sampling`
  (infinite once a round without noise has run)."""
  check_delta(delta)
  if rounds == 0:
    return 0.0
  if _noiseless(round_event):
    return math.inf
  ledger = make_accountant(accountant, sampling)
  with _pld_memory_error(accountant):
    ledger.compose(dp_accounting.SelfComposedDpEvent(sampling.sampled(round_event), rounds))
    return float(ledger.get_epsilon(delta))


class EpsilonCurve:
  """ε at `delta` after any number of rounds of one mechanism, cheaply for every round.

  With the RDP accountant, the Rényi divergences of one round are computed once and scaled by
  the round count (RDP adds up over compositions), so each call costs microseconds instead of
  the 0.3-0.8 s a fresh accountant spends on a subsampled Gaussian; the values equal
  `epsilon(...)`'s (a test checks). The PLD accountant has no such shortcut: each call
  composes afresh.
  """

  def __init__(self, round_event: dp_accounting.DpEvent, sampling: Sampling, delta: float,
               accountant: str = 'rdp'):
    check_delta(delta)
    self._args = (round_event, sampling)
    self._delta = delta
    self._accountant = accountant
    self._one_round = None
    if accountant == 'rdp' and not _noiseless(round_event):
      one_round = make_accountant(accountant, sampling)
      one_round.compose(sampling.sampled(round_event))
      # dp_accounting (pinned in pyproject.toml) keeps the orders and their RDP privately.
      self._orders, self._one_round = one_round._orders, one_round._rdp.copy()  # noqa: SLF001

  def __call__(self, rounds: int) -> float:
    if rounds == 0:
      return 0.0
    if self._one_round is None:
      return epsilon(*self._args, rounds, self._delta, self._accountant)
    return float(rdp_privacy_accountant.compute_epsilon(
        self._orders, rounds * self._one_round, self._delta)[0])


def _noiseless(event: dp_accounting.DpEvent) -> bool:
  """Whether `event` is, or composes, a Gaussian mechanism without noise (ε infinite; the
  accountant's sampled-without-replacement bound divides by the noise)."""
  if isinstance(event, dp_accounting.GaussianDpEvent):
    return event.noise_multiplier == 0
  if isinstance(event, dp_accounting.SelfComposedDpEvent):
    return _noiseless(event.event)
  if isinstance(event, dp_accounting.ComposedDpEvent):
    return any(_noiseless(e) for e in event.events)
  return False


def noise_multiplier_for_epsilon(
    target_epsilon: float,
    sampling: Sampling,
    rounds: int,
    delta: float,
    accountant: str = 'rdp',
) -> float:
  """The smallest noise multiplier z (relative to the clip C of a sum of clipped
  contributions, `clipped_sum_event`) whose `rounds` rounds spend at most `target_epsilon`."""
  check_delta(delta)
  if not target_epsilon > 0:
    raise ValueError(f'target epsilon must be positive, got {target_epsilon}.')
  if rounds <= 0:
    raise ValueError(f'rounds must be positive, got {rounds}.')
  bracket = dp_accounting.LowerEndpointAndGuess(1e-3, 1.0)
  if accountant == 'pld':
    # PLD is the tighter accountant, so its answer lies below RDP's. Searching up from z =
    # 1e-3 would discretize loss distributions too wide for memory; start near RDP's answer.
    rdp_z = noise_multiplier_for_epsilon(target_epsilon, sampling, rounds, delta)
    bracket = dp_accounting.LowerEndpointAndGuess(rdp_z / 2, rdp_z)
  with _pld_memory_error(accountant):
    return float(dp_accounting.calibrate_dp_mechanism(
        make_fresh_accountant=lambda: make_accountant(accountant, sampling),
        make_event_from_param=lambda z: dp_accounting.SelfComposedDpEvent(
            sampling.sampled(clipped_sum_event(dp_accounting.GaussianDpEvent(z), sampling)),
            rounds),
        target_epsilon=target_epsilon,
        target_delta=delta,
        bracket_interval=bracket,
        tol=1e-4,
    ))


@contextlib.contextmanager
def _pld_memory_error(accountant: str):
  """Turns the PLD accountant's running out of memory into a ValueError naming the fix."""
  try:
    yield
  except MemoryError as e:
    if accountant != 'pld':
      raise
    raise ValueError('the PLD accountant ran out of memory (its loss distribution is too wide '
                     'at this little noise over this many rounds); use the RDP accountant '
                     '(--accountant=rdp, --dp_accountant=rdp).') from e


def example_sampling(num_examples: int, batch_size: int) -> Sampling:
  """A client's Poisson sampling of its own examples for DP-SGD: rate min(1, B / n).

  Example-level DP (`--dp_unit=example`): the units are one client's examples, so the
  accountant's add-or-remove-one relation is about one example of that client.
  """
  if num_examples < 1 or batch_size < 1:
    raise ValueError(f'example-level accounting needs examples >= 1 and batch size >= 1, got '
                     f'{num_examples} and {batch_size}.')
  return Sampling('poisson', num_examples, min(batch_size, num_examples))


def example_epsilon(num_examples: int, batch_size: int, noise_multiplier: float, steps: int,
                    delta: float, accountant: str = 'rdp') -> float:
  """ε at `delta` of one client's examples after `steps` DP-SGD steps (`example_sampling`)."""
  return epsilon(dp_accounting.GaussianDpEvent(noise_multiplier),
                 example_sampling(int(num_examples), int(batch_size)), int(steps), delta,
                 accountant)


def check_delta(delta: float, flag: str = '--dp_delta') -> None:
  if not 0 < delta < 1:
    raise ValueError(f'{flag} must be in (0, 1), got {delta}.')


def delta_warning(delta: float, num_units: int, units: str = 'num_clients',
                  unit: str = "client's data", flag: str = '--dp_delta') -> str | None:
  """A warning to show when δ ≥ 1/num_units (which permits leaking one unit), else None.

  The units are clients under client-level DP, one client's examples under example-level DP;
  `flag` names the δ's flag in the message.
  """
  if delta >= 1 / num_units:
    return (f'{flag}={delta:g} is at least 1/{units} = {1 / num_units:g}: a '
            f'mechanism that publishes one random {unit} outright meets such a δ. '
            f'Use δ well below 1/{units}.')
  return None


def round_event_from_aggregator_state(aggregator_state) -> dp_accounting.DpEvent:
  """The DP event of one round, as TFF's DP aggregator records it in its state.

  The state stores the event's parameters as numpy float32 scalars; they are converted to
  Python floats, because `dp_accounting`'s RDP arithmetic on float32 parameters is far off
  (ε 2.77 instead of 3.25 for z = 0.8, q = 0.1, one round, δ = 1e-5).
  """
  from tensorflow_federated.python.aggregators import (  # noqa: PLC0415 (heavy import)
      differential_privacy,
  )

  return _with_python_numbers(differential_privacy.extract_dp_event_from_state(aggregator_state))


def _with_python_numbers(value):
  if isinstance(value, np.floating):
    return float(value)
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, list | tuple):
    return type(value)(_with_python_numbers(v) for v in value)
  if isinstance(value, dp_accounting.DpEvent) and attr.has(type(value)):
    return attr.evolve(value, **{
        field.name: _with_python_numbers(getattr(value, field.name))
        for field in attr.fields(type(value)) if field.init
    })
  return value


