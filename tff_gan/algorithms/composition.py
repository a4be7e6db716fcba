"""Builds a `GanProcess` (a typed `tff.templates.IterativeProcess`) from a scheme's TF pieces.

A scheme (`fedgan`, `dp_fedavg_gan`, `fedsgd`) supplies three TensorFlow bodies in a
`SchemeFns`; this module is the only place that wraps them as `tff.tensorflow.computation`s
and composes the federated round:

    broadcast → federated_map(client_update) → aggregator (tff.aggregators) → server_update

Type signatures of the resulting process:

* `initialize: ( -> ServerState@SERVER)`
* `next: (<ServerState@SERVER, {float32[?,...]*}@CLIENTS> -> <ServerState@SERVER, M@SERVER>)`

where `M` is an `OrderedDict` with

* `client`: the clients' metrics (e.g. `discriminator_loss`), means weighted by the number of
  examples each client trained on, `num_examples`, their sum, and `non_finite_clients` —
  all omitted when `release_client_metrics=False` (under differential privacy they would be
  un-noised releases of client data);

A client output holding a NaN or Inf is zeroed before aggregation (weight 0, delta 0) and
counted in `non_finite_clients`, whatever the aggregator.
* `server`: the metrics the server update reports (e.g. the server generator's loss);
* `aggregator`: the aggregator's measurements.

The process also holds the round split in halves for asynchronous training
(`GanProcess.client_work`, `GanProcess.server_step`), and `GanProcess.with_client_data` turns
the client datasets into int64 keys the worker builds them from.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_gan.core import client_work as client_work_lib
from tff_gan.core import seeds, tf_fns
from tff_gan.core.state import ClientOutput, ServerBroadcast, ServerState

AggregationFactory = (
    tff.aggregators.WeightedAggregationFactory | tff.aggregators.UnweightedAggregationFactory
)


@dataclasses.dataclass(frozen=True)
class SchemeFns:
  """The TensorFlow bodies that define a training scheme.

  Attributes:
    initial_state: `() -> ServerState` with `aggregator_state=()`; builds the models in the
      calling graph. `build_process` fills in the aggregator state.
    client_update: `(dataset, ServerBroadcast) -> ClientOutput`; runs inside a
      `tff.tensorflow.computation` (build models there, iterate the dataset in a
      `tf.function`).
    server_update: `(ServerState, aggregated_delta, new_aggregator_state) ->
      (ServerState, OrderedDict of server metrics)`.
  """

  initial_state: Callable[[], ServerState]
  client_update: Callable[[tf.data.Dataset, ServerBroadcast], ClientOutput]
  server_update: Callable[..., tuple[ServerState, collections.OrderedDict]]


def default_aggregator() -> tff.aggregators.WeightedAggregationFactory:
  """Weighted mean (FedAvg) that yields zeros, not NaNs, when every weight is 0."""
  return tff.aggregators.MeanFactory(no_nan_division=True)


@dataclasses.dataclass(frozen=True)
class _Round:
  """The TFF building blocks of a round, shared by the synchronous process and the
  asynchronous computations."""

  initialize: tff.Computation
  make_broadcast: tff.Computation
  client_update: tff.Computation
  server_update: tff.Computation
  aggregation_process: tff.templates.AggregationProcess
  weighted: bool
  state_type: tff.Type
  data_type: tff.Type
  client_output_type: tff.Type


def _build_round(scheme: SchemeFns, data_spec: tf.TensorSpec,
                 aggregator: AggregationFactory | None, generator_ema_decay: float) -> _Round:
  aggregator = aggregator or default_aggregator()
  data_type = tff.SequenceType(tf.nest.map_structure(
      lambda spec: tff.TensorType(spec.dtype.as_numpy_dtype, spec.shape), data_spec))

  initial_model_state = tff.tensorflow.computation(scheme.initial_state)
  model_state_type = initial_model_state.type_signature.result
  weights_type = model_state_type.weights
  broadcast_type = ServerBroadcast(
      weights=weights_type, round_seed=tff.TensorType(np.int64, [2])
  )

  def guarded_client_update(dataset, broadcast):
    return client_work_lib.discard_non_finite(scheme.client_update(dataset, broadcast))

  client_update = tff.tensorflow.computation(guarded_client_update, data_type, broadcast_type)
  client_output_type = client_update.type_signature.result[0]
  delta_type = client_output_type.delta

  weighted = isinstance(aggregator, tff.aggregators.WeightedAggregationFactory)
  if weighted:
    aggregation_process = aggregator.create(delta_type, client_output_type.num_examples)
  else:
    aggregation_process = aggregator.create(delta_type)
  aggregator_state_type = aggregation_process.state_type.member
  state_type, initialize = with_aggregator_state(initial_model_state, aggregation_process)

  @tff.tensorflow.computation(state_type)
  def make_broadcast(state):
    return ServerBroadcast(
        weights=state.weights, round_seed=seeds.round_seed(state.seed, state.round_num)
    )

  def server_update_with_average(state, aggregated_delta, aggregator_state):
    new_state, metrics = scheme.server_update(state, aggregated_delta, aggregator_state)
    return tf_fns.with_generator_ema(new_state, generator_ema_decay), metrics

  server_update = tff.tensorflow.computation(
      server_update_with_average, state_type, delta_type, aggregator_state_type
  )

  return _Round(initialize=initialize, make_broadcast=make_broadcast,
                client_update=client_update, server_update=server_update,
                aggregation_process=aggregation_process, weighted=weighted,
                state_type=state_type, data_type=data_type,
                client_output_type=client_output_type)


def with_aggregator_state(initial_model_state: tff.Computation,
                          aggregation_process: tff.templates.AggregationProcess):
  """`(state_type, initialize)`: the server state with the aggregator's state filled in.

  Args:
    initial_model_state: `( -> ServerState)` with `aggregator_state=()`.
    aggregation_process: The process that aggregates the clients' outputs.

  Returns:
    The `ServerState` type holding the aggregator's state, and `initialize:
    ( -> ServerState@SERVER)`.
  """

  @tff.tensorflow.computation(initial_model_state.type_signature.result,
                              aggregation_process.state_type.member)
  def attach_aggregator_state(model_state, aggregator_state):
    return model_state._replace(aggregator_state=aggregator_state)

  @tff.federated_computation
  def initialize():
    return tff.federated_map(
        attach_aggregator_state,
        (tff.federated_eval(initial_model_state, tff.SERVER), aggregation_process.initialize()),
    )

  return attach_aggregator_state.type_signature.result, initialize


def round_metrics(outputs, discarded, server_metrics, aggregator_measurements,
                  release_client_metrics: bool):
  """A round's `M@SERVER` (module docstring) from the clients' outputs and the server's."""
  metrics = collections.OrderedDict()
  if release_client_metrics:
    metrics['client'] = tff.federated_mean(outputs.metrics, weight=outputs.num_examples)
    metrics['num_examples'] = tff.federated_sum(outputs.num_examples)
    metrics['non_finite_clients'] = tff.federated_sum(discarded)
  metrics['server'] = server_metrics
  metrics['aggregator'] = aggregator_measurements
  return tff.federated_zip(metrics)


def _aggregate_and_update(parts: _Round, state, outputs, discarded,
                          release_client_metrics: bool):
  """The server half of a round, in a federated computation: aggregate, update, metrics."""
  if parts.weighted:
    aggregate = parts.aggregation_process.next(
        state.aggregator_state, outputs.delta, outputs.num_examples
    )
  else:
    aggregate = parts.aggregation_process.next(state.aggregator_state, outputs.delta)
  server_output = tff.federated_map(
      parts.server_update, (state, aggregate.result, aggregate.state)
  )
  return server_output[0], round_metrics(outputs, discarded, server_output[1],
                                         aggregate.measurements, release_client_metrics)


def stateful_next(*, state_type, data_type, client_state_type, make_broadcast, client_update,
                  aggregation_process, server_update, release_client_metrics: bool):
  """`next: (<S@SERVER, {D}@CLIENTS, C@CLIENTS> -> <S@SERVER, C@CLIENTS, M@SERVER>)` of a
  process whose clients keep state (`GanProcess.initial_client_state`): broadcast, each
  client's `(output, discarded, new state)`, the weighted mean of the outputs' deltas, and
  `server_update(state, mean, aggregator state) -> S`, which reports no metrics of its own.
  """

  @tff.federated_computation(tff.FederatedType(state_type, tff.SERVER),
                             tff.FederatedType(data_type, tff.CLIENTS),
                             tff.FederatedType(client_state_type, tff.CLIENTS))
  def next_fn(state, client_data, client_states):
    broadcast = tff.federated_broadcast(tff.federated_map(make_broadcast, state))
    outputs, discarded, new_client_states = tff.federated_map(
        client_update, (client_data, client_states, broadcast))
    aggregate = aggregation_process.next(state.aggregator_state, outputs.delta,
                                         outputs.num_examples)
    new_state = tff.federated_map(server_update, (state, aggregate.result, aggregate.state))
    metrics = round_metrics(
        outputs, discarded, tff.federated_value(collections.OrderedDict(), tff.SERVER),
        aggregate.measurements, release_client_metrics)
    return new_state, new_client_states, metrics

  return next_fn


class GanProcess(tff.templates.IterativeProcess):
  """A GAN training process: TFF's `IterativeProcess` plus the round's two halves.

  Type signatures (`S` the `ServerState`, `D` a client's data: a dataset, or after
  `with_client_data` an int64 `[2]` key):

  * `initialize: ( -> S@SERVER)`;
  * `next: (<S@SERVER, {D}@CLIENTS> -> <S@SERVER, M@SERVER>)`, `M` as in the module
    docstring;
  * `client_work: (<S@SERVER, {D}@CLIENTS> -> <ClientOutput, int32>@CLIENTS)`: each client's
    local work from the state's weights and round seed, and whether its output was discarded
    as non-finite; the outputs come back to the caller per client;
  * `server_step: (<S@SERVER, ClientOutput@CLIENTS, int32@CLIENTS, float32@CLIENTS> ->
    <S@SERVER, M@SERVER>)`: aggregates the given client outputs, each delta first multiplied
    by its float32 scale (e.g. a staleness weight), with the process's aggregator, applies
    the server update and returns the same metrics as `next`. With every scale 1 and the
    outputs of `client_work` on the same state, `server_step` after `client_work` is `next`;
  * `warm_start: (<S@SERVER, {D}@CLIENTS, C@CLIENTS> -> C@CLIENTS)`, for a process whose
    clients keep state and can pretrain it on their data before the first round (e.g.
    `algorithms.multi_d`'s discriminators), else None.
  """

  def __init__(self, initialize_fn: tff.Computation, next_fn: tff.Computation, *,
               client_work: tff.Computation | None = None,
               server_step: tff.Computation | None = None,
               initial_client_state: tff.Computation | None = None,
               warm_start: tff.Computation | None = None):
    super().__init__(initialize_fn=initialize_fn, next_fn=next_fn)
    self._client_work = client_work
    self._server_step = server_step
    self._initial_client_state = initial_client_state
    self._warm_start = warm_start

  @property
  def client_work(self) -> tff.Computation | None:
    """The round's client half, or None for a process that cannot run asynchronously."""
    return self._client_work

  @property
  def server_step(self) -> tff.Computation | None:
    """The round's server half, or None (as `client_work`)."""
    return self._server_step

  @property
  def initial_client_state(self) -> tff.Computation | None:
    """`(S -> C)` for a process whose clients keep state between rounds, else None.

    Such a process's `next` takes each client's state `C@CLIENTS` after its data and returns
    the new ones, `<S@SERVER, C@CLIENTS, M@SERVER>`; the caller keeps them (e.g.
    `algorithms.multi_d`).
    """
    return self._initial_client_state

  @property
  def warm_start(self) -> tff.Computation | None:
    """The clients' pretraining of their state before round 1 (class docstring), or None."""
    return self._warm_start

  @staticmethod
  def generator_weights(state: ServerState):
    """The generator's weights to sample from, in Keras variable order: the average of its
    weights over rounds where the state keeps one (`generator_ema`), else the weights."""
    if tf.nest.flatten(state.generator_ema):
      return state.generator_ema
    return state.weights.generator

  def with_client_data(self, client_data, work) -> GanProcess:
    """This process with each client's dataset built on the executor from a key.

    The returned process's `next` and `client_work` take one element of
    `tff_gan.clients.populations.round_keys` per client (its id and its round's shuffle
    seed) instead of a dataset. Through TFF's
    `tff.simulation.compose_dataset_computation_with_*`, the worker runs
    `client_data.dataset(key, work)` for each key, so no client's examples are built or
    serialized by the controller and round time does not grow with the population.

    Args:
      client_data: A `tff_gan.clients.populations.ClientData`.
      work: The clients' `tff_gan.clients.populations.LocalWork`.
    """
    dataset_computation = keyed_dataset_computation(client_data, work)
    keyed = tff.simulation.compose_dataset_computation_with_iterative_process(
        dataset_computation, self)
    compose = tff.simulation.compose_dataset_computation_with_computation
    client_work = self.client_work and compose(dataset_computation, self.client_work)
    warm_start = self.warm_start and compose(dataset_computation, self.warm_start)
    return GanProcess(self.initialize, keyed.next, client_work=client_work,
                      server_step=self.server_step,
                      initial_client_state=self.initial_client_state, warm_start=warm_start)


def build_process(
    scheme: SchemeFns,
    *,
    data_spec: tf.TensorSpec,
    aggregator: AggregationFactory | None = None,
    release_client_metrics: bool = True,
    generator_ema_decay: float = 0.0,
) -> GanProcess:
  """Composes a scheme's TF bodies into a federated training process.

  Args:
    scheme: The scheme's `SchemeFns`.
    data_spec: Spec of one client batch, e.g. `float32[None, 2]`; or of a `(batch, step
      seed)` pair (`core.dp_sgd.poisson_batches`).
    aggregator: A `tff.aggregators` factory for the client deltas. A weighted factory is
      given each client's `num_examples` as weight. Defaults to `default_aggregator()`.
    release_client_metrics: Whether the round's metrics include the clients' aggregated
      metrics and example count (turn off under differential privacy).
    generator_ema_decay: The decay of the generator's weight average, applied after every
      server update when the scheme's state carries one (`ServerState.generator_ema`).

  Returns:
    A `GanProcess` with the signatures in its docstring.
  """
  parts = _build_round(scheme, data_spec, aggregator, generator_ema_decay)
  state_at_server = tff.FederatedType(parts.state_type, tff.SERVER)
  data_at_clients = tff.FederatedType(parts.data_type, tff.CLIENTS)

  @tff.federated_computation(state_at_server, data_at_clients)
  def next_fn(state, client_data):
    broadcast = tff.federated_broadcast(tff.federated_map(parts.make_broadcast, state))
    guarded = tff.federated_map(parts.client_update, (client_data, broadcast))
    return _aggregate_and_update(parts, state, guarded[0], guarded[1], release_client_metrics)

  @tff.federated_computation(state_at_server, data_at_clients)
  def client_work(state, client_data):
    broadcast = tff.federated_broadcast(tff.federated_map(parts.make_broadcast, state))
    return tff.federated_map(parts.client_update, (client_data, broadcast))

  @tff.tensorflow.computation(parts.client_output_type, tff.TensorType(np.float32))
  def scale_delta(output, scale):
    return output._replace(delta=tf.nest.map_structure(lambda d: d * scale, output.delta))

  @tff.federated_computation(
      state_at_server,
      tff.FederatedType(parts.client_output_type, tff.CLIENTS),
      tff.FederatedType(tff.TensorType(np.int32), tff.CLIENTS),
      tff.FederatedType(tff.TensorType(np.float32), tff.CLIENTS),
  )
  def server_step(state, outputs, discarded, scales):
    scaled = tff.federated_map(scale_delta, (outputs, scales))
    return _aggregate_and_update(parts, state, scaled, discarded, release_client_metrics)

  return GanProcess(parts.initialize, next_fn, client_work=client_work,
                    server_step=server_step)


def keyed_dataset_computation(client_data, work) -> tff.Computation:
  """`(int64[2] -> {data}*)`: a client's round dataset built on the executor from its key."""
  return tff.tensorflow.computation(
      lambda key: client_data.dataset(key, work), tff.TensorType(np.int64, [2]))
