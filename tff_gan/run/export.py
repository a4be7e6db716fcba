"""Generators out of a run: samples (`SampleGenerator`), Keras models, saved states.

`bin/generate.py` and `bin/evaluate.py` use this to turn `<output_dir>/checkpoints/round_<N>`
(written by `bin/train.py`) into samples, metrics and a standalone Keras generator; the
checks on the run directory that need no TensorFlow are in `rundir`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tff_gan.core import conditional, seeds
from tff_gan.run import persistence, schemes
from tff_gan.run.client_states import ClientStates, load_run_state
from tff_gan.run.config import TrainConfig
from tff_gan.run.rundir import RunError
from tff_gan.runtime import contexts


def conditional_samples(generator, task, num_samples: int, seed: int,
                        label: int | None):
  """`(examples, labels)` numpy arrays from a conditional generator: class `label`, or all
  classes in turn.

  The noise is `tf.random.stateless_normal([num_samples, task.noise_dim],
  seed=seeds.evaluation_noise_seed(seed))`, as `SampleGenerator`'s.

  Raises:
    RunError: If `label` is not one of the task's classes.
  """
  if label is not None and label >= task.num_labels:
    raise RunError(f'--label must be below the task\'s {task.num_labels} classes, got {label}.')
  labels = (np.full(num_samples, label) if label is not None
            else np.arange(num_samples) % task.num_labels)
  noise = tf.random.stateless_normal([num_samples, task.noise_dim],
                                     seed=seeds.evaluation_noise_seed(seed))
  inputs = conditional.generator_input(noise.numpy(), labels, task.num_labels)
  examples, _ = conditional.unpack(generator(inputs, training=False).numpy(), task.num_labels)
  return examples, labels.astype(np.int64)


def load_state(output_dir: str, config: TrainConfig, models, round_num: int,
               num_clients: int = 0):
  """The `ServerState` saved at `round_num` in `output_dir`.

  The template the checkpoint is read into is the initial state of the process `config`
  trains with, computed on a TFF worker that is stopped before this returns. Unlike
  `persistence.Checkpoints`, this never deletes anything in the run directory, so it is safe while
  `bin/train.py` is still writing checkpoints there.

  Args:
    output_dir: The run's directory.
    config: The run's `TrainConfig` (see `rundir.read_config`).
    models: `task.gan_models(config.conditional)` of the run's task.
    round_num: A saved round (see `rundir.resolve_round`).
    num_clients: The population's size, for a scheme whose clients keep state (their states
      are saved with the server's); unused otherwise.

  Raises:
    persistence.CheckpointError: With one line, if the checkpoint is missing or damaged.
    workers.WorkerError: If the TFF worker cannot be started.
  """
  process = schemes.build_process(config, models)
  with contexts.local_cpp_context():
    template = process.initialize()
    client_states = None
    if process.initial_client_state is not None:
      client_states = ClientStates(process.initial_client_state(template), num_clients)
  return load_run_state(persistence.Checkpoints(output_dir, read_only=True), round_num,
                        template, client_states)


def build_generator(models, generator_weights):
  """A fresh generator from `models.generator_fn()` holding `generator_weights`.

  Args:
    models: The run's `GanModels`.
    generator_weights: `ServerState.weights.generator`: the trainable weights in Keras
      variable order.
  """
  generator = models.generator_fn()
  assign_generator_weights(generator, generator_weights)
  return generator


def assign_generator_weights(generator, generator_weights) -> None:
  """Assigns `generator_weights` (Keras variable order) to `generator`'s variables."""
  for variable, value in zip(generator.trainable_variables, generator_weights, strict=True):
    variable.assign(value)


class SampleGenerator:
  """Draws samples from a generator given its weights, in the calling (eager) process."""

  def __init__(self, models):
    self._models = models
    self._generator = models.generator_fn()

  def __call__(self, generator_weights, num_samples: int, seed: int) -> np.ndarray:
    assign_generator_weights(self._generator, generator_weights)
    noise = tf.random.stateless_normal([num_samples, self._models.noise_dim],
                                       seed=seeds.evaluation_noise_seed(seed))
    return self._generator(noise, training=False).numpy()
