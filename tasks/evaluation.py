"""Image-quality metrics for GAN image tasks: Fréchet distance and classifier score.

In the style of TF-GAN, the metrics take activations and logits, not models:
`frechet_distance` compares Gaussians fitted to two activation sets and `classifier_score`
(the Inception Score of Salimans et al., 2016, with any classifier) rates a set of logits.
For small image tasks the classifier is `ImageClassifier`, a small conv net trained once on
the task's labelled data and cached on disk by `load_or_train_classifier`; its penultimate
layer gives the activations (the Fréchet *classifier* distance) and its last layer the logits.

Both metrics depend on the sample size (the Fréchet distance is biased upwards for small
sets), so compare values computed on sets of equal size; `real_data_reference` gives the
values of real held-out data, the best a generator can hope for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile

import numpy as np
import scipy.special
import tensorflow as tf
from absl import logging

from tff_gan import files

__all__ = [
    'ImageClassifier',
    'build_model',
    'cache_key',
    'classifier_score',
    'frechet_distance',
    'frechet_distance_from_moments',
    'forward',
    'image_metrics',
    'load_or_train_classifier',
    'real_data_reference',
]

# Part of the cache key: change it whenever the architecture or the training procedure changes.
ARCHITECTURE = (
    'v1: Conv 32 3x3 same -> ReLU -> Conv 64 3x3 stride 2 same -> ReLU -> Flatten -> '
    'Dense 128 -> ReLU -> Dense num_classes; Adam, softmax cross-entropy, epoch shuffling'
)
ACTIVATION_SIZE = 128
_PREDICT_BATCH = 1024
_KEY_ENTRY = 'cache_key'


def frechet_distance(real_activations, generated_activations) -> float:
  """Fréchet distance between Gaussians fitted to two activation sets.

  d² = ‖μ₁ − μ₂‖² + tr(Σ₁) + tr(Σ₂) − 2 tr((Σ₁ Σ₂)^½), with sample means and covariances
  (ddof=1) in float64. The trace term is computed as the sum of the square roots of the
  eigenvalues of the symmetric positive semi-definite Σ₁^½ Σ₂ Σ₁^½, which has the same
  eigenvalues as Σ₁ Σ₂; tiny negative eigenvalues from rounding are clipped to 0. Unlike a
  general `scipy.linalg.sqrtm` this stays real and accurate for singular covariances (fewer
  rows than columns, dead units).

  Args:
    real_activations: `[N1, D]` array, N1 >= 2.
    generated_activations: `[N2, D]` array, N2 >= 2.

  Returns:
    The squared Fréchet distance (>= 0), as TF-GAN's `frechet_classifier_distance` reports it.
  """
  real = _check_matrix(real_activations, 'real_activations', min_rows=2)
  return frechet_distance_from_moments(real.mean(axis=0), _covariance(real),
                                       generated_activations)


def frechet_distance_from_moments(real_mean, real_covariance, generated_activations) -> float:
  """`frechet_distance` with the real side given by its mean `[D]` and covariance `[D, D]`.

  What federated evaluation uses: the real activations' moments are aggregated from client
  sums (`tasks.federated_eval.feature_moments`), never pooled in one place.
  """
  real_mean = np.asarray(real_mean, np.float64)
  cov_real = np.asarray(real_covariance, np.float64)
  generated = _check_matrix(generated_activations, 'generated_activations', min_rows=2)
  if real_mean.ndim != 1 or cov_real.shape != (len(real_mean),) * 2:
    raise ValueError(f'real moments must be a mean [D] and a covariance [D, D], got shapes '
                     f'{real_mean.shape} and {cov_real.shape}.')
  if len(real_mean) != generated.shape[1]:
    raise ValueError(f'activation sizes differ: the real activations have {len(real_mean)} '
                     f'columns, generated_activations {generated.shape[1]}.')
  mean_gap = real_mean - generated.mean(axis=0)
  cov_generated = _covariance(generated)
  sqrt_real = _psd_sqrt(cov_real)
  product = sqrt_real @ cov_generated @ sqrt_real
  trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0, None)).sum()
  distance = mean_gap @ mean_gap + np.trace(cov_real) + np.trace(cov_generated) - 2 * trace_sqrt
  return float(max(distance, 0.0))


def _covariance(activations: np.ndarray) -> np.ndarray:
  columns = activations.shape[1]
  return np.cov(activations, rowvar=False, ddof=1).reshape(columns, columns)


def classifier_score(logits) -> float:
  """exp(E_x KL(p(y|x) ‖ p(y))) with p(y|x) = softmax(logits), p(y) its mean over the set.

  Computed in float64 from log-softmax, so confident logits do not overflow. Ranges from 1
  (every prediction equal, or uniform) to the number of classes (confident predictions spread
  evenly over all classes).

  Args:
    logits: `[N, K]` array of unnormalized log-probabilities, N >= 1.
  """
  logits = _check_matrix(logits, 'logits', min_rows=1)
  log_conditional = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
  log_marginal = scipy.special.logsumexp(log_conditional, axis=0) - np.log(len(logits))
  kl = np.sum(np.exp(log_conditional) * (log_conditional - log_marginal), axis=1)
  return float(np.exp(np.mean(kl)))


@dataclasses.dataclass(frozen=True, eq=False)
class ImageClassifier:
  """A trained classifier of images `[N, H, W, C]` in [-1, 1].

  Attributes:
    model: Keras model mapping images to `(activations [N, 128], logits [N, num_classes])`.
    cache_path: The weights file it was loaded from or saved to.
    loaded_from_cache: True if the weights came from `cache_path` without training.
  """

  model: tf.keras.Model
  cache_path: str
  loaded_from_cache: bool

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.model.input_shape[1:])

  @property
  def num_classes(self) -> int:
    return int(self.model.output_shape[1][-1])

  def activations_and_logits(self, images) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate activations `[N, 128]` and logits `[N, num_classes]`, float32."""
    images = _check_images(images, 'images', self.image_shape)
    outputs = [self.model(images[start:start + _PREDICT_BATCH], training=False)
               for start in range(0, len(images), _PREDICT_BATCH)]
    return tuple(np.concatenate([np.asarray(batch[i]) for batch in outputs]) for i in (0, 1))

  def activations(self, images) -> np.ndarray:
    """Penultimate (Dense 128, post-ReLU) activations `[N, 128]`, for `frechet_distance`."""
    return self.activations_and_logits(images)[0]

  def logits(self, images) -> np.ndarray:
    """Logits `[N, num_classes]`, for `classifier_score`."""
    return self.activations_and_logits(images)[1]


def cache_key(images, labels, *, num_classes: int, seed: int, epochs: int, batch_size: int,
              learning_rate: float) -> str:
  """sha256 hex digest of the training data, labels, architecture, hyper-parameters and seed."""
  images = np.ascontiguousarray(images, np.float32)
  labels = np.ascontiguousarray(labels, np.int64)
  settings = {'architecture': ARCHITECTURE, 'num_classes': num_classes, 'seed': seed,
              'epochs': epochs, 'batch_size': batch_size, 'learning_rate': learning_rate,
              'images_shape': images.shape, 'labels_shape': labels.shape}
  digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
  digest.update(images.tobytes())
  digest.update(labels.tobytes())
  return digest.hexdigest()


def default_cache_dir() -> str:
  """Where a task caches its evaluation classifier when `evaluate` runs before
  `prepare_evaluation` was called: a directory under the system's temporary directory."""
  return os.path.join(tempfile.gettempdir(), 'tff_gan_classifiers')


def load_or_train_classifier(images, labels, *, cache_dir: str, num_classes: int | None = None,
                             seed: int = 0, epochs: int = 10, batch_size: int = 32,
                             learning_rate: float = 1e-3) -> ImageClassifier:
  """The classifier trained on `(images, labels)`, loaded from `cache_dir` if trained before.

  Training is deterministic for a given seed: seeded initializers and a numpy shuffle, no
  global random state. The weights are saved atomically (temporary file, then `os.replace`)
  as `cache_dir/image_classifier_<cache_key>.npz`; an unreadable or mismatched cache file is
  logged as a warning and replaced by retraining.

  Args:
    images: float `[N, H, W, C]` in [-1, 1].
    labels: int `[N]` in `[0, num_classes)`.
    cache_dir: Directory of cached weights; created if missing.
    num_classes: Number of classes; defaults to `max(labels) + 1`.
    seed: Seed of the initial weights and the batch order.
    epochs: Passes over the data.
    batch_size: Examples per Adam step.
    learning_rate: Adam's learning rate.
  """
  images = _check_images(images, 'images', None)
  labels = np.asarray(labels)
  if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be integers of shape ({len(images)},), got {labels.dtype} '
                     f'{labels.shape}.')
  num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
  if num_classes < 2 or labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f'labels must lie in [0, num_classes) with num_classes >= 2; got '
                     f'num_classes={num_classes}, labels in [{labels.min()}, {labels.max()}].')
  for name, value in (('epochs', epochs), ('batch_size', batch_size)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f'{name} must be a positive int, got {value!r}.')
  key = cache_key(images, labels, num_classes=num_classes, seed=seed, epochs=epochs,
                  batch_size=batch_size, learning_rate=learning_rate)
  path = os.path.join(cache_dir, f'image_classifier_{key}.npz')
  model = build_model(images.shape[1:], num_classes, seed)
  if os.path.exists(path):
    try:
      with np.load(path, allow_pickle=False) as cached:
        if str(cached[_KEY_ENTRY]) != key:
          raise ValueError('the stored cache key does not match the file name')
        weights = [cached[f'w{i}'] for i in range(len(model.weights))]
      model.set_weights(weights)
      return ImageClassifier(model, path, loaded_from_cache=True)
    except Exception as error:  # Any unreadable or mismatched cache means retraining.
      logging.warning('Ignoring the corrupt classifier cache %s (%s: %s); retraining.', path,
                      type(error).__name__, error)
      model = build_model(images.shape[1:], num_classes, seed)
  _train(model, images, labels.astype(np.int64), seed=seed, epochs=epochs,
         batch_size=batch_size, learning_rate=learning_rate)
  _save_atomically(path, {_KEY_ENTRY: np.array(key)}
                   | {f'w{i}': w for i, w in enumerate(model.get_weights())})
  return ImageClassifier(model, path, loaded_from_cache=False)


def image_metrics(classifier: ImageClassifier, real_images, generated_images) -> dict[str, float]:
  """`frechet_distance` of generated vs real activations and `classifier_score` of generated."""
  real_activations = classifier.activations(real_images)
  generated_activations, generated_logits = classifier.activations_and_logits(generated_images)
  return {'frechet_distance': frechet_distance(real_activations, generated_activations),
          'classifier_score': classifier_score(generated_logits)}


def real_data_reference(classifier: ImageClassifier, train_images,
                        heldout_images) -> dict[str, float]:
  """`image_metrics` with held-out real images as the "generated" set: the scale to aim for."""
  return image_metrics(classifier, train_images, heldout_images)


def _check_matrix(values, name: str, *, min_rows: int) -> np.ndarray:
  array = np.asarray(values, dtype=np.float64)
  if array.ndim != 2 or array.shape[0] < min_rows or array.shape[1] < 1:
    raise ValueError(f'{name} must be a 2-D array with at least {min_rows} row(s) and one '
                     f'column, got shape {array.shape}.')
  if not np.all(np.isfinite(array)):
    raise ValueError(f'{name} contains NaN or Inf.')
  return array


def _check_images(images, name: str, image_shape: tuple[int, ...] | None) -> np.ndarray:
  array = np.asarray(images)
  if array.ndim != 4 or len(array) < 1 or not np.issubdtype(array.dtype, np.floating):
    raise ValueError(f'{name} must be a float array [N, H, W, C] with N >= 1, got '
                     f'{array.dtype} {array.shape}.')
  if image_shape is not None and array.shape[1:] != image_shape:
    raise ValueError(f'{name} have shape {array.shape[1:]}, the classifier takes {image_shape}.')
  if not np.all(np.isfinite(array)):
    raise ValueError(f'{name} contain NaN or Inf.')
  return array.astype(np.float32, copy=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric positive semi-definite matrix."""
  eigenvalues, eigenvectors = np.linalg.eigh(matrix)
  return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def build_model(image_shape, num_classes: int, seed: int) -> tf.keras.Model:
  """The classifier network (`ARCHITECTURE`): images to `(activations, logits)`, seeded."""
  layers = tf.keras.layers

  def init(index):
    return tf.keras.initializers.GlorotUniform(seed=seed * 16 + index)

  inputs = tf.keras.Input(image_shape)
  hidden = layers.Conv2D(32, 3, padding='same', activation='relu', kernel_initializer=init(0))(
      inputs)
  hidden = layers.Conv2D(64, 3, strides=2, padding='same', activation='relu',
                         kernel_initializer=init(1))(hidden)
  activations = layers.Dense(ACTIVATION_SIZE, activation='relu', kernel_initializer=init(2))(
      layers.Flatten()(hidden))
  logits = layers.Dense(num_classes, kernel_initializer=init(3))(activations)
  return tf.keras.Model(inputs, [activations, logits])


def forward(weights, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """`build_model`'s network as plain TF ops of its weights (`model.weights` order).

  For TF graphs that receive the weights as values (`tasks.federated_eval`), where a Keras
  model cannot be built; `tests/test_federated_eval.py` checks it against the Keras model.
  """
  kernel_0, bias_0, kernel_1, bias_1, kernel_2, bias_2, kernel_3, bias_3 = weights
  hidden = tf.nn.relu(tf.nn.conv2d(images, kernel_0, 1, 'SAME') + bias_0)
  hidden = tf.nn.relu(tf.nn.conv2d(hidden, kernel_1, 2, 'SAME') + bias_1)
  flat = tf.reshape(hidden, [tf.shape(hidden)[0], -1])
  activations = tf.nn.relu(tf.matmul(flat, kernel_2) + bias_2)
  return activations, tf.matmul(activations, kernel_3) + bias_3


def _train(model: tf.keras.Model, images: np.ndarray, labels: np.ndarray, *, seed: int,
           epochs: int, batch_size: int, learning_rate: float) -> None:
  optimizer = tf.keras.optimizers.Adam(learning_rate)
  loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  @tf.function(reduce_retracing=True)
  def step(batch_images, batch_labels):
    with tf.GradientTape() as tape:
      loss = loss_fn(batch_labels, model(batch_images, training=True)[1])
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                  model.trainable_variables, strict=True))

  rng = np.random.default_rng(seed)
  for _ in range(epochs):
    order = rng.permutation(len(images))
    for start in range(0, len(images), batch_size):
      batch = order[start:start + batch_size]
      step(images[batch], labels[batch])


def _save_atomically(path: str, arrays: dict[str, np.ndarray]) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  files.write_outputs({path: lambda temporary: np.savez(temporary, **arrays)})
