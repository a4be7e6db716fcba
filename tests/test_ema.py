"""The server's average of the generator's weights (`--generator_ema`)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import as_numpy, linear_gan_models
from test_fedgan import client_arrays, client_datasets

from tff_gan.algorithms import fedgan, optimizers
from tff_gan.algorithms.composition import GanProcess
from tff_gan.run.config import ConfigError, TrainConfig

DECAY = 0.75


def build(decay):
  return fedgan.build_fedgan_process(
      linear_gan_models(), client_optimizer=optimizers.build_optimizer('sgd', 0.05),
      generator_ema_decay=decay)


def test_average_follows_the_recurrence_and_is_what_samples_use(tff_context):
  process = build(DECAY)
  state = process.initialize()
  expected = as_numpy(state.weights.generator)
  for _ in range(3):
    state, _ = process.next(state, client_datasets(client_arrays()))
    expected = [DECAY * e + (1 - DECAY) * w for e, w in
                zip(expected, as_numpy(state.weights.generator), strict=True)]
  for got, want in zip(as_numpy(process.generator_weights(state)), expected, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert not np.allclose(expected[0], as_numpy(state.weights.generator)[0])


def test_without_average_the_weights_are_sampled_and_training_is_unchanged(tff_context):
  plain, averaged = build(0.0), build(DECAY)
  state, averaged_state = plain.initialize(), averaged.initialize()
  assert state.generator_ema == ()
  for _ in range(2):
    state, _ = plain.next(state, client_datasets(client_arrays()))
    averaged_state, _ = averaged.next(averaged_state, client_datasets(client_arrays()))
  # The average only watches: the trained weights are the same with and without it.
  for got, want in zip(as_numpy(averaged_state.weights), as_numpy(state.weights), strict=True):
    for g, w in zip(got, want, strict=True):
      np.testing.assert_array_equal(g, w)
  assert GanProcess.generator_weights(state) is state.weights.generator


@pytest.mark.parametrize('decay, message', [(-0.1, 'in'), (1.0, 'in'),
                                            (float('nan'), 'a finite number')])
def test_decay_out_of_range_is_refused(decay, message):
  with pytest.raises(ConfigError, match=f'--generator_ema must be {message}'):
    TrainConfig(generator_ema=decay).validate()
