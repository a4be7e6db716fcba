"""Federated EMNIST: handwritten digits and letters, one client per writer.

The data is TFF's own federated EMNIST (Caldas et al., 2018, "LEAF"), read with TFF's loader
`tff.simulation.datasets.emnist.load_data` from the file the user provides; nothing is ever
downloaded. That loader reads one SQLite file, `DATA_DIR/emnist_all.sqlite`, and would
otherwise download `DATABASE_URL` and decompress it there; this task checks for the file first
and raises `EmnistError` (one line: which file goes where, and where to get it) instead.

The file (as TFF's `SqlClientData` reads it) holds two tables:

* `examples(split_name, client_id, serialized_example_proto)`: one row per image; the blob is
  a `tf.train.Example` with `pixels` (784 floats, a 28x28 image in row-major order) and
  `label` (one int64: 0-9 digits, 10-35 upper-case, 36-61 lower-case letters);
* `client_metadata(client_id, split_name, num_examples)`: one row per writer and split.

The splits are `digits_only_train`/`digits_only_test` (3,383 writers, 10 classes) and
`all_train`/`all_test` (3,400 writers, 62 classes). Every writer has examples in both.

Pixels: TFF's EMNIST pixels lie in [0, 1] with 1.0 the (white) background and 0.0 the ink,
the inverse of MNIST's convention. This task maps them to `1 - 2 p`, so the background is -1
and strokes +1, as in `tasks.digits` (black background, white strokes) and the DP-FedAvg-GAN
paper's preprocessing.

Memory: only the test split is held in memory (`examples`, 128 MB for the digits, 243 MB for
all 62 classes); it is what generator samples are scored and rendered against. The train
split stays in the file: `natural_population` reads each writer's examples on the TFF worker,
with TFF's own SQL dataset, when a round needs them. Workers therefore need the file at the
same absolute path as the controller (remote workers included).
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf
from absl import logging

from tasks import base, evaluation, federated_eval
from tasks.readers import emnist_sqlite
from tasks.readers.emnist_sqlite import DATABASE_URL, EmnistError
from tff_gan.clients import populations as data
from tff_gan.core import conditional

# A batch size far beyond any writer's dataset, so one batch holds all of it; tf.data reserves
# at most 65,536 slots up front, whatever the batch size.
_ALL_OF_A_WRITER = 1 << 30
# Federated evaluation's FedAvg classifier: rounds, and writers per round (about 15 passes'
# worth of the pooled classifier's examples at ~100 images per writer and 2 local epochs).
_FEDERATED_CLASSIFIER_ROUNDS = 50
_FEDERATED_CLASSIFIER_WRITERS = 50
_HELDOUT_FRACTION = 0.2  # Of the test split, kept from the classifier to calibrate the metrics.
_SPLIT_SEED = 0  # Fixed: the classifier and the reference values do not change with --seed.
# Passes of the evaluation classifier over its ~33k (digits) or ~62k (all classes) examples:
# about 80 s or 150 s on 2 cores, once (the weights are cached). Unlike digits' 1,437 images,
# these are plenty for a few epochs.
_CLASSIFIER_EPOCHS = 3
_UPSCALE = 2


class EmnistTask(base.Task):
  """Federated EMNIST: 28x28x1 images in [-1, 1], one natural client per writer.

  `examples`/`labels` are the test split, in the file's row order; `client_ids` are the train
  split's writers, sorted as TFF gives them; `natural_population` reads a writer's train
  examples on the TFF worker.

  Architectures (`model`), hidden sizes and filter counts multiplied by `width`:
    - `'dcgan'` (default): the DP-FedAvg-GAN paper's EMNIST pair (Augenstein et al., ICLR
      2020, after TF-GAN's MNIST networks) without its batch norm, which does not mix with
      federated averaging or DP (statistics of one client's batch, averaged across clients),
      and without weight decay. G = Dense 1024 -> ReLU -> Dense 7*7*256 -> ReLU -> 7x7x256 ->
      ConvT 64 (4x4, stride 2) -> ReLU -> ConvT 32 (4x4, stride 2) -> ReLU -> Conv 1 (4x4) ->
      tanh; D = Conv 64 (4x4, stride 2) -> LeakyReLU(0.2) -> Conv 128 (4x4, stride 2) ->
      LeakyReLU(0.2) -> Flatten -> Dense 1024 -> LeakyReLU(0.2) -> Dense 1. At full width G
      has 13.2M and D 6.6M weights (most in the two wide Dense layers), all sent to every
      client each round; `width` 0.5 cuts that about fourfold.
    - `'mlp'`: G = Dense 256 -> 512 -> 1024 (ReLU) -> Dense 784 -> tanh -> 28x28x1;
      D = Flatten -> Dense 1024 -> 512 -> 256 (LeakyReLU(0.2)) -> Dense 1.

  Metrics (`tasks.evaluation`), from a small conv classifier trained on a fixed 80% of the
  test split (cached by `prepare_evaluation`): `frechet_distance` between its penultimate
  activations of the samples and of that 80% (lower is better) and `classifier_score` of the
  samples (higher is better, at most `num_labels`). `prepare_evaluation` returns both for
  the held-out 20% of real test images.
  """

  name = 'emnist'
  model_choices = ('dcgan', 'mlp')
  metric_names = ('frechet_distance', 'classifier_score')
  reads_files = True

  def __init__(self, *, data_dir: str, only_digits: bool = True, noise_dim: int = 64,
               seed: int = 0, model: str = 'dcgan', width: float = 1.0,
               discriminator_width: float | None = None):
    """Opens `data_dir/emnist_all.sqlite` with TFF's loader and reads its test split.

    Args:
      data_dir: Folder holding `emnist_all.sqlite` (see the module docstring).
      only_digits: The 10 digit classes (3,383 writers); False for all 62 classes (3,400).
      noise_dim: Length of the generator's noise vector (64 in the paper).
      seed: Kept for the common task interface; the data does not depend on it.
      model: `'dcgan'` or `'mlp'`.
      width: Multiplier of hidden units and filters.
      discriminator_width: The discriminator's own multiplier (None: `width`).

    Raises:
      EmnistError: If the file is missing, unreadable, or not TFF's EMNIST database.
      ValueError: For an invalid `model`, `width` or `noise_dim`.
    """
    super().__init__(seed=seed, model=model, width=width,
                     discriminator_width=discriminator_width)
    if isinstance(noise_dim, bool) or not isinstance(noise_dim, int | np.integer) or noise_dim < 1:
      raise ValueError(f'noise_dim must be a positive int, got {noise_dim!r}.')
    self.noise_dim = int(noise_dim)
    self.only_digits = bool(only_digits)
    self._train_split, self._test_split, self.num_labels = emnist_sqlite.SPLITS[self.only_digits]
    self.database_path = emnist_sqlite.database_path(data_dir)
    train, _ = emnist_sqlite.load_with_tff(self.database_path, self.only_digits)
    self._writer_dataset_fn = train.serializable_dataset_fn
    self.client_ids = list(train.client_ids)
    unsafe = [writer for writer in self.client_ids if "'" in writer]
    if unsafe:  # TFF pastes the id into its SQL query.
      raise EmnistError(f'{self.database_path} has writer ids with a quote ({unsafe[0]!r}), '
                        f'which TFF cannot query; download the file again from {DATABASE_URL}.')
    with emnist_sqlite.connect(self.database_path) as connection:
      self._client_sizes = emnist_sqlite.client_sizes(
          connection, self.database_path, self._train_split, self.client_ids)
      self.examples, self.labels = emnist_sqlite.read_split(
          connection, self.database_path, self._test_split, self.num_labels)
      if not emnist_sqlite.has_client_index(connection):
        logging.warning(
            '%s has no index on examples(client_id): reading a writer scans the whole file. '
            "To speed rounds up, run: sqlite3 %s 'CREATE INDEX examples_client_id ON "
            "examples(client_id, split_name)'", self.database_path, self.database_path)
    logging.info('EMNIST: %d train writers (%d examples), %d test examples in memory.',
                 len(self.client_ids), self._client_sizes.sum(), len(self.examples))
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(self.examples))
    num_heldout = round(_HELDOUT_FRACTION * len(order))
    self._heldout, self._classifier_split = order[:num_heldout], order[num_heldout:]
    self._classifier = None
    self._real_activations = None
    self._federated = None  # A `federated_eval.FederatedEvaluation` when prepared so.

  @property
  def has_natural_clients(self) -> bool:
    """Always: the train split comes split by writer."""
    return True

  @property
  def client_sizes(self) -> np.ndarray:
    """Train examples per writer (`client_ids` order), from the file's metadata."""
    return self._client_sizes.copy()

  def natural_population(self, conditional_gan: bool = False) -> EmnistWriters:
    """The train split's writers, each read from the file on the TFF worker.

    Args:
      conditional_gan: Pack each example with its class (`tff_gan.core.conditional.pack`).
    """
    return EmnistWriters(self._writer_dataset_fn, self.client_ids, self._client_sizes,
                         num_labels=self.num_labels if conditional_gan else 0)

  def networks(self, generator_input_dim: int, discriminator_input_shape: tuple[int, ...]):
    """The generator and discriminator of the architecture `model`, scaled by `width`."""
    data_shape = (emnist_sqlite.IMAGE_SIDE, emnist_sqlite.IMAGE_SIDE, 1)
    if self.model == 'mlp':
      return (
          functools.partial(base.mlp_generator, generator_input_dim,
                            (self.scaled(256), self.scaled(512), self.scaled(1024)), data_shape),
          functools.partial(base.mlp_discriminator, discriminator_input_shape,
                            (self.scaled_d(1024), self.scaled_d(512), self.scaled_d(256))),
      )
    return (
        functools.partial(_dcgan_generator, generator_input_dim, self.scaled(1024),
                          self.scaled(256), (self.scaled(64), self.scaled(32))),
        functools.partial(_dcgan_discriminator, discriminator_input_shape,
                          (self.scaled_d(64), self.scaled_d(128)), self.scaled_d(1024)),
    )

  def prepare_evaluation(self, cache_dir: str, clients=None) -> dict[str, float]:
    """Trains (or loads from `cache_dir`) the classifier; returns the held-out real metrics.

    With `clients` (the run's writers), builds the evaluation on them instead
    (`tasks.federated_eval`: FedAvg, `_FEDERATED_CLASSIFIER_ROUNDS` rounds of
    `_FEDERATED_CLASSIFIER_WRITERS` writers); the test split is then not used, and nothing is
    returned.
    """
    if clients is not None:
      self._federated = federated_eval.prepare(
          clients, image_shape=self.data_shape, num_classes=self.num_labels, seed=_SPLIT_SEED,
          rounds=_FEDERATED_CLASSIFIER_ROUNDS, clients_per_round=_FEDERATED_CLASSIFIER_WRITERS)
      self._classifier = self._federated.classifier
      return {}
    self._federated = None
    self._classifier = evaluation.load_or_train_classifier(
        self.examples[self._classifier_split], self.labels[self._classifier_split],
        cache_dir=cache_dir, num_classes=self.num_labels, epochs=_CLASSIFIER_EPOCHS)
    # The reference set's activations are computed once here, not at every evaluation.
    self._real_activations = self._classifier.activations(self.examples[self._classifier_split])
    return self._scores(self.examples[self._heldout])

  def evaluate(self, samples: np.ndarray) -> dict[str, float]:
    """`frechet_distance` and `classifier_score` of `samples` (see the class docstring).

    Uses the classifier of `prepare_evaluation`; if it was not called, prepares with a cache
    under the system's temporary directory.
    """
    return self._scores(self._check_samples(samples).astype(np.float32))

  def predict_labels(self, samples: np.ndarray) -> np.ndarray:
    """The evaluation classifier's class of each sample."""
    samples = self._check_samples(samples).astype(np.float32)
    self._ensure_classifier()
    return self._classifier.logits(samples).argmax(axis=-1)

  def render(self, samples: np.ndarray, path: str) -> None:
    """Writes the first 64 samples as a grid of up to 8 columns to the PNG `path`.

    Pixels map linearly from [-1, 1] to gray levels [0, 255] (clipped): the background of
    real characters is black and strokes are white. Each image is upscaled 2x (nearest
    neighbour); cells are separated by 2 mid-gray pixels.
    """
    base.write_image_grid(self._check_samples(samples), path, upscale=_UPSCALE)

  def _ensure_classifier(self) -> None:
    if self._classifier is None:
      self.prepare_evaluation(evaluation.default_cache_dir())

  def _scores(self, images: np.ndarray) -> dict[str, float]:
    """`evaluation.image_metrics` of `images` against the cached reference activations."""
    self._ensure_classifier()
    if self._federated is not None:
      return self._federated.metrics(images)
    activations, logits = self._classifier.activations_and_logits(images)
    return {'frechet_distance': evaluation.frechet_distance(self._real_activations, activations),
            'classifier_score': evaluation.classifier_score(logits)}


class EmnistWriters(data.ClientData):
  """EMNIST writers whose examples TF reads from the SQLite file on the executor.

  Client `k` is writer `client_ids[k]`. Its examples are read by TFF's own per-client SQL
  dataset (`SqlClientData.serializable_dataset_fn`, which runs a `tf.data` SQL query and
  parses the protos), so the controller never holds the train split: a round sends each
  client only its key, and the worker reads the writer's rows when it builds the client's
  dataset. The base class then shuffles and batches them.

  Args:
    dataset_fn: TFF's serializable dataset function of the train split: a writer's string id
      to a dataset of `{'label': int32, 'pixels': float32 [28, 28]}`.
    client_ids: The writers, in client order.
    client_sizes: Examples per writer, in client order.
    num_labels: If positive, examples are packed with their class for a conditional GAN.
  """

  def __init__(self, dataset_fn, client_ids, client_sizes, *, num_labels: int = 0):
    if not len(client_ids):
      raise ValueError('a population needs at least one writer.')
    self._dataset_fn = dataset_fn
    self._client_ids = [str(writer) for writer in client_ids]
    self._client_sizes = np.asarray(client_sizes, np.int64)
    self._num_labels = num_labels

  @property
  def num_clients(self) -> int:
    return len(self._client_ids)

  @property
  def client_sizes(self) -> np.ndarray:
    return self._client_sizes.copy()

  def _writer_rows(self, client_id: tf.Tensor) -> dict[str, tf.Tensor]:
    writer = tf.gather(tf.constant(self._client_ids, tf.string), client_id)
    return self._dataset_fn(writer).batch(_ALL_OF_A_WRITER).get_single_element()

  def client_labels_tensor(self, client_id: tf.Tensor) -> tf.Tensor:
    return tf.cast(self._writer_rows(client_id)['label'], tf.int64)

  def client_examples_tensor(self, client_id: tf.Tensor) -> tf.Tensor:
    """Writer `client_id`'s train examples `[n, 28, 28, 1]` (packed `[n, 28, 28, 1 + K]`)."""
    everything = self._writer_rows(client_id)
    examples = emnist_sqlite.to_model_pixels(everything['pixels'])
    if not self._num_labels:
      return examples
    return conditional.pack(examples, everything['label'], self._num_labels)


def _dcgan_generator(noise_dim: int, hidden_units: int, base_filters: int,
                     upsampling_filters: tuple[int, int]) -> tf.keras.Model:
  """Noise -> Dense -> 7x7x`base_filters` -> two stride-2 ConvT -> 28x28x1 tanh (no batch norm)."""
  layers = tf.keras.layers
  return tf.keras.Sequential(
      [
          tf.keras.Input(shape=(noise_dim,)),
          layers.Dense(hidden_units),
          layers.ReLU(),
          layers.Dense(7 * 7 * base_filters),
          layers.ReLU(),
          layers.Reshape((7, 7, base_filters)),
          layers.Conv2DTranspose(upsampling_filters[0], 4, strides=2, padding='same'),
          layers.ReLU(),
          layers.Conv2DTranspose(upsampling_filters[1], 4, strides=2, padding='same'),
          layers.ReLU(),
          layers.Conv2D(1, 4, padding='same'),
          layers.Activation('tanh'),
      ],
      name='generator',
  )


def _dcgan_discriminator(input_shape: tuple[int, ...], filters: tuple[int, int],
                         hidden_units: int) -> tf.keras.Model:
  """Images `[B, 28, 28, C]` -> two stride-2 convolutions -> Dense -> logits `[B, 1]`."""
  layers = tf.keras.layers
  return tf.keras.Sequential(
      [
          tf.keras.Input(shape=input_shape),
          layers.Conv2D(filters[0], 4, strides=2, padding='same'),
          layers.LeakyReLU(0.2),
          layers.Conv2D(filters[1], 4, strides=2, padding='same'),
          layers.LeakyReLU(0.2),
          layers.Flatten(),
          layers.Dense(hidden_units),
          layers.LeakyReLU(0.2),
          layers.Dense(1),
      ],
      name='discriminator',
  )
