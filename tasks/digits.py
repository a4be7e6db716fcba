"""Handwritten digits: scikit-learn's 8x8 `load_digits`, small enough for CPU-only tests.

The 1797 images ship inside scikit-learn, so nothing is downloaded. Labels are the digit
classes, which `tff_gan.clients.partition` can skew clients by.
"""

from __future__ import annotations

import functools

import numpy as np
from sklearn.datasets import load_digits

from tasks import base, evaluation, federated_eval

_IMAGE_SIDE = 8
_MAX_PIXEL = 16.0  # load_digits pixels are integers in [0, 16].
_UPSCALE = 4
_HELDOUT_FRACTION = 0.2  # Of the images, kept from the classifier to calibrate the metrics.
_SPLIT_SEED = 0  # Fixed: the classifier and the reference values do not change with --seed.


class DigitsTask(base.Task):
  """scikit-learn's 1797 8x8 digits, as float32 `[N, 8, 8, 1]` in [-1, 1].

  Architectures (`model`):
    - `'mlp'`: G = Dense 256 -> ReLU -> Dense 512 -> ReLU -> Dense 64 -> tanh -> 8x8x1;
      D = Flatten -> Dense 512 -> LeakyReLU(0.2) -> Dense 256 -> LeakyReLU(0.2) -> Dense 1.
    - `'dcgan'`: a small convolutional pair without batch norm. G = Dense 2*2*128 ->
      LeakyReLU(0.2) -> 2x2x128 -> ConvT 64 (4x4, stride 2) -> LeakyReLU(0.2) -> ConvT 1 (4x4,
      stride 2) -> tanh; D = Conv 64 (3x3, stride 2) -> LeakyReLU(0.2) -> Conv 128 (3x3,
      stride 2) -> LeakyReLU(0.2) -> Flatten -> Dense 1.
  Hidden sizes and filter counts are multiplied by `width`.

  Metrics (`tasks.evaluation`), from a small conv classifier trained on a fixed 80% split of
  the images (cached by `prepare_evaluation`): `frechet_distance` between the classifier's
  penultimate activations of the samples and of that split (lower is better), and
  `classifier_score` exp(E KL(p(y|x) || p(y))) of the samples (higher is better, at most 10).
  `prepare_evaluation` returns the same two metrics for the held-out 20% of real images.
  """

  name = 'digits'
  model_choices = ('mlp', 'dcgan')
  metric_names = ('frechet_distance', 'classifier_score')

  def __init__(
      self, *, noise_dim: int = 32, seed: int = 0, model: str = 'mlp', width: float = 1.0,
      discriminator_width: float | None = None,
  ):
    """Loads the dataset (in scikit-learn's order; `seed` does not change the data).

    Args:
      noise_dim: Length of the generator's noise vector.
      seed: Kept for the common task interface.
      model: `'mlp'` or `'dcgan'`.
      width: Multiplier of hidden units and filters.
      discriminator_width: The discriminator's own multiplier (None: `width`).
    """
    super().__init__(seed=seed, model=model, width=width,
                     discriminator_width=discriminator_width)
    if isinstance(noise_dim, bool) or not isinstance(noise_dim, int | np.integer) or noise_dim < 1:
      raise ValueError(f'noise_dim must be a positive int, got {noise_dim!r}.')
    self.noise_dim = int(noise_dim)
    digits = load_digits()
    pixels = digits.images.reshape(-1, _IMAGE_SIDE, _IMAGE_SIDE, 1)
    self.examples = (pixels / (_MAX_PIXEL / 2) - 1).astype(np.float32)
    self.labels = digits.target.astype(np.int64)
    # The real images evaluation compares with, kept apart from the training `examples` that
    # a subclass may change (e.g. a population of writers in `experiments.bug_finding`).
    self.reference_images, self.reference_labels = self.examples, self.labels
    self.num_labels = 10
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(self.examples))
    num_heldout = round(_HELDOUT_FRACTION * len(order))
    # Indices into `reference_images`: the 20 % kept from the classifier, and the 80 % it is
    # trained on and that `frechet_distance` compares with.
    self.heldout_indices, self.classifier_indices = order[:num_heldout], order[num_heldout:]
    self._classifier = None
    self._federated = None  # A `federated_eval.FederatedEvaluation` when prepared so.

  def networks(self, generator_input_dim: int, discriminator_input_shape: tuple[int, ...]):
    """The generator and discriminator of the architecture `model`, scaled by `width`."""
    data_shape = (_IMAGE_SIDE, _IMAGE_SIDE, 1)
    if self.model == 'mlp':
      return (
          functools.partial(base.mlp_generator, generator_input_dim,
                            (self.scaled(256), self.scaled(512)), data_shape),
          functools.partial(base.mlp_discriminator, discriminator_input_shape,
                            (self.scaled_d(512), self.scaled_d(256))),
      )
    return (
        functools.partial(base.dcgan_generator, generator_input_dim, data_shape,
                          self.scaled(128), self.scaled(64)),
        functools.partial(base.dcgan_discriminator, discriminator_input_shape, self.scaled_d(64),
                          self.scaled_d(128)),
    )

  def prepare_evaluation(self, cache_dir: str, clients=None) -> dict[str, float]:
    """Trains (or loads from `cache_dir`) the classifier; returns the held-out real metrics.

    With `clients`, builds the evaluation on them instead (`tasks.federated_eval`); there is
    no pooled held-out set then, and nothing is returned.
    """
    if clients is not None:
      self._federated = federated_eval.prepare(
          clients, image_shape=self.data_shape, num_classes=self.num_labels, seed=_SPLIT_SEED)
      self._classifier = self._federated.classifier
      return {}
    self._federated = None
    self._classifier = evaluation.load_or_train_classifier(
        self.reference_images[self.classifier_indices],
        self.reference_labels[self.classifier_indices],
        cache_dir=cache_dir, num_classes=self.num_labels)
    return evaluation.real_data_reference(
        self._classifier, self.reference_images[self.classifier_indices],
        self.reference_images[self.heldout_indices])

  def evaluate(self, samples: np.ndarray) -> dict[str, float]:
    """`frechet_distance` and `classifier_score` of `samples` (see the class docstring).

    Uses the classifier of `prepare_evaluation`; if it was not called, prepares with a cache
    under the system's temporary directory.
    """
    samples = self._as_images(samples)
    classifier = self._prepared_classifier()
    if self._federated is not None:
      return self._federated.metrics(samples)
    return evaluation.image_metrics(
        classifier, self.reference_images[self.classifier_indices], samples)

  def predict_labels(self, samples: np.ndarray) -> np.ndarray:
    """The evaluation classifier's digit for each sample."""
    return self._prepared_classifier().logits(self._as_images(samples)).argmax(axis=-1)

  def features(self, samples: np.ndarray) -> np.ndarray:
    """The evaluation classifier's penultimate activations `[N, 128]` of `samples`: what
    `frechet_distance` compares."""
    return self._prepared_classifier().activations(self._as_images(samples))

  def _as_images(self, samples: np.ndarray) -> np.ndarray:
    return self._check_samples(samples).astype(np.float32)

  def _prepared_classifier(self):
    """The classifier of `prepare_evaluation`; if it was not called, prepares with a cache
    under the system's temporary directory."""
    if self._classifier is None:
      self.prepare_evaluation(evaluation.default_cache_dir())
    return self._classifier

  def render(self, samples: np.ndarray, path: str) -> None:
    """Writes the first 64 samples as a grid of up to 8 columns to the PNG `path`.

    Pixels map linearly from [-1, 1] to gray levels [0, 255] (clipped), so the background of
    real digits is black and strokes are white. Each digit is upscaled 4x (nearest
    neighbour); cells are separated by 2 mid-gray pixels.
    """
    base.write_image_grid(self._check_samples(samples), path, upscale=_UPSCALE)
