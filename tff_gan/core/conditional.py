"""Class-conditional GANs (Mirza & Osindero, 2014) behind the unconditional interface.

A conditional generator maps noise z and a class y to an example of that class; a
conditional discriminator judges an (example, class) pair. The library's training code
(`tf_fns`, `client_work`, the schemes) knows only a generator of noise and a discriminator
of examples, so a conditional GAN is expressed in those terms, exactly:

* **Examples carry their class.** An example x of shape `data_shape` becomes x ⊕ onehot(y):
  for images `[H, W, C]`, K constant planes are appended as channels (`[H, W, C + K]`, the
  usual way a convolutional discriminator is conditioned); for vectors `[d]`, K entries
  (`[d + K]`). `pack` and `unpack` convert.
* **The generator's noise carries the class.** Its input is `noise_dim + K` standard normals
  (z, e), and the class is y = argmax(e): the K entries are i.i.d., so y is uniform over the K
  classes. The network sees z ⊕ onehot(y) and its output is packed with onehot(y), so the
  discriminator sees the class the sample was generated for. Because argmax(onehot(k)) = k,
  feeding e = onehot(k) generates class k: `generator_input(z, labels)`.

Fake classes are uniform, whatever a client's own class mix; with the Wasserstein gradient
penalty, interpolates mix the class planes of the real and the fake example too.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tff_gan.core.models import GanModels

# Builds (generator_fn, discriminator_fn) for a generator input length and a discriminator
# input shape; the generator outputs the task's `data_shape`.
NetworksFn = Callable[[int, tuple[int, ...]], tuple[Callable[[], tf.keras.Model],
                                                     Callable[[], tf.keras.Model]]]


def packed_shape(data_shape: tuple[int, ...], num_labels: int) -> tuple[int, ...]:
  """The shape of an example packed with its class: one more channel or entry per class."""
  return (*data_shape[:-1], data_shape[-1] + num_labels)


def _label_planes(one_hot, data_shape: tuple[int, ...]):
  """One-hot rows `[B, K]` broadcast to `[B, *data_shape[:-1], K]`."""
  one_hot = tf.convert_to_tensor(one_hot, tf.float32)
  spatial = data_shape[:-1]
  planes = tf.reshape(one_hot, [-1] + [1] * len(spatial) + [one_hot.shape[-1]])
  return tf.tile(planes, [1, *spatial, 1])


def pack(examples, labels, num_labels: int):
  """Examples `[N, *data_shape]` and int labels `[N]` as packed examples (float32, TF or numpy).

  Numpy in, numpy out; a tensor in (as inside a `tf.data` pipeline) gives a tensor.
  """
  is_numpy = isinstance(examples, np.ndarray)
  examples = tf.convert_to_tensor(examples, tf.float32)
  one_hot = tf.one_hot(tf.cast(labels, tf.int64), num_labels)
  packed = tf.concat([examples, _label_planes(one_hot, tuple(examples.shape[1:]))], axis=-1)
  return packed.numpy() if is_numpy else packed


def unpack(samples: np.ndarray, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
  """Packed samples as (examples `[M, *data_shape]`, labels `[M]`).

  The class is read from the planes (their mean over the spatial positions), so a packed
  real example returns its own label.
  """
  samples = np.asarray(samples)
  examples, planes = samples[..., :-num_labels], samples[..., -num_labels:]
  per_class = planes.reshape(len(samples), -1, num_labels).mean(axis=1)
  return examples, per_class.argmax(axis=-1).astype(np.int64)


def generator_input(noise, labels, num_labels: int) -> np.ndarray:
  """The generator input that generates class `labels[i]` from `noise[i]` `[M, noise_dim]`."""
  noise = np.asarray(noise, np.float32)
  one_hot = np.eye(num_labels, dtype=np.float32)[np.asarray(labels, np.int64)]
  return np.concatenate([noise, one_hot], axis=-1)


def conditional_models(networks: NetworksFn, noise_dim: int, data_shape: tuple[int, ...],
                       num_labels: int) -> GanModels:
  """The `GanModels` of a class-conditional GAN built from a task's unconditional networks.

  Args:
    networks: `networks(generator_input_dim, discriminator_input_shape)` returns the task's
      generator and discriminator factories; here they are asked for a generator of
      `noise_dim + num_labels` inputs (z ⊕ onehot(y)) and a discriminator of packed examples.
    noise_dim: Length of z.
    data_shape: Shape of one (unpacked) example.
    num_labels: Number of classes K, at least 2.

  Returns:
    `GanModels` whose generator takes `noise_dim + num_labels` noise and emits packed samples
    `packed_shape(data_shape, num_labels)`, and whose discriminator takes packed examples.
  """
  if num_labels < 2:
    raise ValueError(f'a conditional GAN needs at least 2 classes, got {num_labels}.')
  shape = packed_shape(data_shape, num_labels)
  inner_generator_fn, discriminator_fn = networks(noise_dim + num_labels, shape)

  def generator_fn() -> tf.keras.Model:
    inner = inner_generator_fn()
    inputs = tf.keras.Input(shape=(noise_dim + num_labels,))
    one_hot = tf.one_hot(tf.argmax(inputs[:, noise_dim:], axis=-1), num_labels)
    examples = inner(tf.concat([inputs[:, :noise_dim], one_hot], axis=-1))
    outputs = tf.concat([examples, _label_planes(one_hot, data_shape)], axis=-1)
    return tf.keras.Model(inputs, outputs, name='conditional_generator')

  return GanModels(generator_fn=generator_fn, discriminator_fn=discriminator_fn,
                   noise_dim=noise_dim + num_labels, data_shape=shape)


def labelled_generator(generator: tf.keras.Model, noise_dim: int,
                       num_labels: int) -> tf.keras.Model:
  """A standalone generator G(noise, one_hot_labels) -> examples, from a trained conditional one.

  Args:
    generator: A generator built by `conditional_models(...).generator_fn`, holding trained
      weights.
    noise_dim: Length of z (the `noise_dim` given to `conditional_models`).
    num_labels: Number of classes K.

  Returns:
    A Keras model with inputs noise `[B, noise_dim]` and one-hot labels `[B, K]` and output
    examples `[B, *data_shape]`, sharing `generator`'s weights.
  """
  inner = next(layer for layer in generator.layers if isinstance(layer, tf.keras.Model))
  noise = tf.keras.Input(shape=(noise_dim,), name='noise')
  labels = tf.keras.Input(shape=(num_labels,), name='one_hot_labels')
  examples = inner(tf.keras.layers.Concatenate()([noise, labels]))
  return tf.keras.Model([noise, labels], examples, name='labelled_generator')
