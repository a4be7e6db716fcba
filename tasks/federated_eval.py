"""Image metrics computed without pooling real data (`--eval=federated`).

The simulation default (`--eval=pooled`) trains the evaluation classifier on real images held
in one place and fits the real side of the Fréchet distance to all of them. A deployment has
no such pool. Here both come from the clients, through two TFF computations that send each
client only its id and release only what FedAvg and sums release:

1. **The classifier** (`tasks.evaluation`'s architecture) is trained by FedAvg
   (`tff.learning.algorithms.build_weighted_fed_avg`: Adam on the clients, the weighted mean
   of their updates applied with server learning rate 1) on the clients' labelled images,
   `rounds` rounds of up to `clients_per_round` clients drawn without replacement.
2. **The real activations' mean and covariance** are aggregated from client sums in two
   passes, as `tasks.federated_stats` does for columns: every client sends its count n_k and
   the sum of its activations Σa; the server forms the pooled mean m and broadcasts it; every
   client sends its scatter about that mean Σ(a − m)(a − m)ᵀ; the server divides by N − 1.
   Sums are float64 and the scatter is taken about the pooled mean (no Σa² − N·m²
   cancellation), so the moments equal the pooled `np.mean` / `np.cov` to float error
   (`tests/test_federated_eval.py`).

The generated side needs no client: samples come from the generator the server holds.

What stays simulated: clients' data sit where the run's population keeps them (this process,
or the worker that reads the files), and each client's part runs on TFF's executor as every
client computation of a round does. The classifier is not cached: it is trained at the start of
every run from that run's clients (seconds on `digits`).
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tasks import evaluation
from tff_gan.core import seeds
from tff_gan.runtime import contexts

__all__ = ['FederatedEvaluation', 'feature_moments', 'prepare', 'train_classifier']

# Activations computed per client in batches of this many images (bounds a client's memory).
_BATCH = 1024


@dataclasses.dataclass(frozen=True, eq=False)
class FederatedEvaluation:
  """A classifier trained by FedAvg and the moments of the clients' real activations.

  Attributes:
    classifier: The evaluation classifier (`classifier.cache_path` is empty: not cached).
    real_count: How many real images the moments summarize.
    real_mean: float64 `[D]`.
    real_covariance: float64 `[D, D]` (ddof = 1).
  """

  classifier: evaluation.ImageClassifier
  real_count: int
  real_mean: np.ndarray
  real_covariance: np.ndarray

  def metrics(self, samples) -> dict[str, float]:
    """`frechet_distance` against the clients' real moments and `classifier_score`."""
    activations, logits = self.classifier.activations_and_logits(samples)
    return {'frechet_distance': evaluation.frechet_distance_from_moments(
                self.real_mean, self.real_covariance, activations),
            'classifier_score': evaluation.classifier_score(logits)}


def prepare(population, *, image_shape: tuple[int, ...], num_classes: int, seed: int = 0,
            rounds: int = 20, clients_per_round: int = 10, local_epochs: int = 2,
            batch_size: int = 32, learning_rate: float = 1e-3) -> FederatedEvaluation:
  """`train_classifier`, then `feature_moments` over every client, in one TFF context.

  Runs in the current TFF execution context (the run's, so remote workers compute their
  clients' parts); when none is installed, in a local one of its own.

  Args:
    population: The run's clients (`tff_gan.clients.populations.ClientData`) whose
      `client_labels_tensor` gives each client's labels.
    image_shape: `(H, W, C)` of the images; packed conditional examples carry label planes
      after the first C channels, which are dropped.
    num_classes: Number of labels.
    seed: Seed of the classifier's initial weights, client draws and shuffles.
    rounds, clients_per_round, local_epochs, batch_size, learning_rate: FedAvg's settings.
  """
  with _context(population.num_clients):
    classifier = train_classifier(
        population, image_shape=image_shape, num_classes=num_classes, seed=seed, rounds=rounds,
        clients_per_round=clients_per_round, local_epochs=local_epochs, batch_size=batch_size,
        learning_rate=learning_rate)
    count, mean, covariance = feature_moments(classifier, population)
  return FederatedEvaluation(classifier, count, mean, covariance)


def train_classifier(population, *, image_shape: tuple[int, ...], num_classes: int,
                     seed: int = 0, rounds: int = 20, clients_per_round: int = 10,
                     local_epochs: int = 2, batch_size: int = 32,
                     learning_rate: float = 1e-3) -> evaluation.ImageClassifier:
  """The evaluation classifier trained by FedAvg on the clients (module docstring, step 1).

  Needs a TFF execution context (see `prepare`).
  """
  for name, value in (('rounds', rounds), ('clients_per_round', clients_per_round),
                      ('local_epochs', local_epochs), ('batch_size', batch_size)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f'{name} must be a positive int, got {value!r}.')
  image_shape = tuple(image_shape)
  input_spec = (tf.TensorSpec([None, *image_shape], tf.float32),
                tf.TensorSpec([None], tf.int64))

  def model_fn():
    full = evaluation.build_model(image_shape, num_classes, seed)
    return tff.learning.models.from_keras_model(
        tf.keras.Model(full.input, full.outputs[1]), input_spec=input_spec,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))

  @tff.tensorflow.computation(tff.TensorType(np.int64, [2]))
  def client_batches(key):
    images = _client_images(population, key[0], image_shape)
    labels = population.client_labels_tensor(key[0])
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    dataset = dataset.shuffle(tf.shape(labels, out_type=tf.int64)[0], seed=key[1])
    return dataset.repeat(local_epochs).batch(batch_size)

  fed_avg = tff.learning.algorithms.build_weighted_fed_avg(
      model_fn, client_optimizer_fn=tff.learning.optimizers.build_adam(learning_rate),
      server_optimizer_fn=tff.learning.optimizers.build_sgdm(1.0))
  process = tff.simulation.compose_dataset_computation_with_learning_process(
      client_batches, fed_avg)
  state = process.initialize()
  per_round = min(clients_per_round, population.num_clients)
  for round_num in range(1, rounds + 1):
    rng = np.random.default_rng(seeds.derived_seed(seed, round_num,
                                                   seeds.EVAL_CLASSIFIER_SALT))
    ids = rng.choice(population.num_clients, per_round, replace=False)
    keys = [np.array([k, seeds.shuffle_seed(seed, round_num, k)], np.int64) for k in ids]
    state = process.next(state, keys).state
  model = evaluation.build_model(image_shape, num_classes, seed)
  model.set_weights([np.asarray(w) for w in process.get_model_weights(state).trainable])
  return evaluation.ImageClassifier(model, cache_path='', loaded_from_cache=False)


def feature_moments(classifier: evaluation.ImageClassifier,
                    population) -> tuple[int, np.ndarray, np.ndarray]:
  """`(count, mean [D], covariance [D, D])` of every client's real activations (step 2).

  Needs a TFF execution context (see `prepare`).
  """
  image_shape = classifier.image_shape
  weights = [np.asarray(w, np.float32) for w in classifier.model.get_weights()]
  weights_type = tff.StructWithPythonType(
      [tff.TensorType(np.float32, w.shape) for w in weights], list)
  size = evaluation.ACTIVATION_SIZE
  id_type = tff.TensorType(np.int64)
  count_type, vector_type = tff.TensorType(np.int64), tff.TensorType(np.float64, [size])
  matrix_type = tff.TensorType(np.float64, [size, size])

  def batches(client_id, weights):
    images = _client_images(population, client_id, image_shape)
    return tf.data.Dataset.from_tensor_slices(images).batch(_BATCH).map(
        lambda batch: tf.cast(evaluation.forward(weights, batch)[0], tf.float64))

  @tff.tensorflow.computation(id_type, weights_type)
  def count_and_sum(client_id, weights):
    return batches(client_id, weights).reduce(
        (tf.constant(0, tf.int64), tf.zeros([size], tf.float64)),
        lambda total, a: (total[0] + tf.shape(a, out_type=tf.int64)[0],
                          total[1] + tf.reduce_sum(a, 0)))

  @tff.tensorflow.computation(id_type, weights_type, vector_type)
  def scatter_about(client_id, weights, mean):
    return batches(client_id, weights).reduce(
        tf.zeros([size, size], tf.float64),
        lambda total, a: total + tf.matmul(a - mean, a - mean, transpose_a=True))

  @tff.tensorflow.computation(count_type, vector_type)
  def divide(count, sums):
    return sums / tf.cast(count, tf.float64)

  @tff.tensorflow.computation(count_type, matrix_type)
  def covariance(count, scatter):
    return scatter / tf.cast(count - 1, tf.float64)

  @tff.federated_computation(tff.FederatedType(id_type, tff.CLIENTS),
                             tff.FederatedType(weights_type, tff.SERVER))
  def moments(client_ids, server_weights):
    weights = tff.federated_broadcast(server_weights)
    count, sums = tff.federated_sum(
        tff.federated_map(count_and_sum, tff.federated_zip((client_ids, weights))))
    mean = tff.federated_map(divide, tff.federated_zip((count, sums)))
    scatter = tff.federated_sum(tff.federated_map(scatter_about, tff.federated_zip(
        (client_ids, weights, tff.federated_broadcast(mean)))))
    return count, mean, tff.federated_map(covariance, tff.federated_zip((count, scatter)))

  count, mean, cov = moments(list(range(population.num_clients)), weights)
  if count < 2:
    raise ValueError(f'the clients hold {count} image(s); the Fréchet distance needs at least 2.')
  return int(count), np.asarray(mean, np.float64), np.asarray(cov, np.float64)


def _client_images(population, client_id, image_shape) -> tf.Tensor:
  """A client's images `[n, *image_shape]`, without the label planes of packed examples."""
  return population.client_examples_tensor(client_id)[..., :image_shape[-1]]


def _context(num_clients: int):
  if contexts.execution_context_installed():
    return contextlib.nullcontext()
  return contexts.local_cpp_context(default_num_clients=num_clients)
