"""FedGAN with SCAFFOLD control variates: the corrected local steps and the control variates
against numpy, equality with FedGAN where the corrections vanish, bytes, resume, refusals."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT, linear_gan_models
from test_fedsgd import numpy_gradients
from test_tf_fns import step_noise
from test_train_binary import TINY, run_train, run_whole_and_resumed

from tff_gan.algorithms import communication, fedgan, optimizers, scaffold
from tff_gan.core import seeds

EVALUATE = os.path.join(REPO_ROOT, 'bin', 'evaluate.py')

LEARNING_RATE = 0.05
CLIENT_SIZES = (3, 5, 8)  # Unequal n_k: the weights are 3/16, 5/16, 8/16.
BATCH = 2


def arguments():
  return dict(client_optimizer=optimizers.build_optimizer('sgd', LEARNING_RATE),
              server_optimizer=optimizers.build_optimizer('sgd', 1.0), seed=3)


CONTROL_BATCHES = 2  # Of the clients' 2, 3 and 4 batches: c_k⁺ reads a part of the data.
# The learning rate halves every 2 rounds: round 2 trains at 2^-1/2 of it.
HALF_LIFE, SCALES = 2.0, (1.0, 0.5 ** 0.5)


@pytest.fixture(scope='module')
def scaffold_process():
  return scaffold.build_scaffold_process(linear_gan_models(), control_batches=CONTROL_BATCHES,
                                         learning_rate_half_life=HALF_LIFE, **arguments())


@pytest.fixture(scope='module')
def constant_rate_process():
  return scaffold.build_scaffold_process(linear_gan_models(), **arguments())


@pytest.fixture(scope='module')
def fedgan_process():
  return fedgan.build_fedgan_process(linear_gan_models(), **arguments())


def client_arrays():
  rng = np.random.default_rng(42)
  return [rng.normal(loc=2.0, size=(n, 2)).astype(np.float32) for n in CLIENT_SIZES]


def client_datasets(arrays):
  # In order, unshuffled: a client's two passes (local steps, then its gradient estimate)
  # see the same batches, which the numpy reference can then name.
  return [tf.data.Dataset.from_tensor_slices(x).batch(BATCH) for x in arrays]


def as_float64(weights):
  return tf.nest.map_structure(lambda x: np.asarray(x, np.float64), weights)


def flat(weights):
  return [*weights.generator, *weights.discriminator]


def numpy_client_round(weights, batches, round_seed, correction, learning_rate):
  """One client's corrected local steps (SGD) and its mean gradient at `weights`, in numpy.

  `batches` are the client's two passes over its data: the local steps walk the first, the
  gradient estimate c_k⁺ the second (its first `CONTROL_BATCHES` batches).
  """
  generator, discriminator = [list(w) for w in weights]
  for step, batch in enumerate(batches[0]):
    noise_d, noise_g = step_noise(round_seed, step, tf.constant(batch), 3)
    batch = batch.astype(np.float64)
    _, grad_d = numpy_gradients(batch, noise_d, type(weights)(generator, discriminator))
    discriminator = [w - learning_rate * (g + c) for w, g, c in
                     zip(discriminator, grad_d, correction.discriminator, strict=True)]
    grad_g, _ = numpy_gradients(batch, noise_g, type(weights)(generator, discriminator))
    generator = [w - learning_rate * (g + c) for w, g, c in
                 zip(generator, grad_g, correction.generator, strict=True)]
  total = sum(len(batch) for batch in batches[1])
  gradient = None
  for step, batch in enumerate(batches[1]):
    noise, _ = step_noise(round_seed, step, tf.constant(batch), 3)
    grad_g, grad_d = numpy_gradients(batch.astype(np.float64), noise, weights)
    part = [len(batch) / total * g for g in grad_g + grad_d]
    gradient = part if gradient is None else [a + b for a, b in zip(gradient, part, strict=True)]
  delta = [new - old for new, old in zip(generator + discriminator, flat(weights), strict=True)]
  return delta, gradient, sum(len(batch) for batch in batches[0])


def test_two_rounds_equal_numpy_scaffold(tff_context, scaffold_process):
  """Round 1 (c = c_k = 0) and round 2 (steps corrected by c − c_k, at the decayed learning
  rate) against numpy."""
  arrays = client_arrays()
  state = scaffold_process.initialize()
  client_states = [scaffold_process.initial_client_state(state)] * len(arrays)
  controls = [None] * len(arrays)
  server_control = None
  for round_num in range(2):
    weights = as_float64(state.weights)
    round_seed = seeds.round_seed(state.seed, state.round_num)
    expected_delta = [np.zeros_like(w) for w in flat(weights)]
    expected_control = [np.zeros_like(w) for w in flat(weights)]
    for k, dataset in enumerate(client_datasets(arrays)):
      batches = [b.numpy() for b in dataset]
      difference = [np.zeros_like(w) for w in flat(weights)] if server_control is None else [
          c - ck for c, ck in zip(server_control, controls[k], strict=True)]
      split = len(weights.generator)
      correction = type(weights)(difference[:split], difference[split:])
      delta, gradient, n_k = numpy_client_round(weights, [batches, batches[:CONTROL_BATCHES]],
                                                round_seed, correction,
                                                LEARNING_RATE * SCALES[round_num])
      share = n_k / sum(CLIENT_SIZES)
      expected_delta = [e + share * d for e, d in zip(expected_delta, delta, strict=True)]
      expected_control = [e + share * g for e, g in zip(expected_control, gradient,
                                                        strict=True)]
      controls[k] = gradient
    state, client_states, metrics = scaffold_process.next(
        state, client_datasets(arrays), client_states)
    server_control = expected_control
    for got, old, delta in zip(flat(state.weights), flat(weights), expected_delta, strict=True):
      np.testing.assert_allclose(got, old + delta, rtol=1e-5, atol=1e-6,
                                 err_msg=f'round {round_num + 1}')
    for got, want in zip(flat(state.control), server_control, strict=True):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for got_state, want in zip(client_states, controls, strict=True):
      for got, value in zip(flat(got_state), want, strict=True):
        np.testing.assert_allclose(got, value, rtol=1e-5, atol=1e-6)
    assert metrics['num_examples'] == sum(CLIENT_SIZES)


def test_one_client_holding_all_data_is_fedgan_round_after_round(tff_context,
                                                                 constant_rate_process,
                                                                 fedgan_process):
  """With one client c = c_k after every round, so the correction is 0 (up to the rounding
  of c + (c_k⁺ − c_k))."""
  array = np.concatenate(client_arrays())
  state = constant_rate_process.initialize()
  client_states = [constant_rate_process.initial_client_state(state)]
  plain = fedgan_process.initialize()
  for _ in range(3):
    state, client_states, _ = constant_rate_process.next(state, client_datasets([array]),
                                                    client_states)
    plain, _ = fedgan_process.next(plain, client_datasets([array]))
    for got, want in zip(flat(state.weights), flat(plain.weights), strict=True):
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    for got, want in zip(flat(state.control), flat(client_states[0]), strict=True):
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_participation_scales_the_server_control_change(tff_context):
  process = scaffold.build_scaffold_process(linear_gan_models(), participation=0.25,
                                            **arguments())
  full = scaffold.build_scaffold_process(linear_gan_models(), **arguments())
  arrays = client_arrays()
  results = []
  for p in (process, full):
    state = p.initialize()
    state, _, _ = p.next(state, client_datasets(arrays),
                         [p.initial_client_state(state)] * len(arrays))
    results.append(state.control)
  for quarter, whole in zip(flat(results[0]), flat(results[1]), strict=True):
    np.testing.assert_allclose(quarter, 0.25 * np.asarray(whole), rtol=1e-6)
  with pytest.raises(ValueError, match='participation'):
    scaffold.build_scaffold_process(linear_gan_models(), participation=0.0)


def test_the_control_variates_double_fedgans_bytes(scaffold_process, fedgan_process):
  mine = communication.round_traffic(scaffold_process.next)
  theirs = communication.round_traffic(fedgan_process.next)
  weights = 4 * (3 * 2 + 2 + 2 + 1)  # Linear G (3→2) and D (2→1), float32.
  # Down: c and the round's learning-rate multiplier; up: the control change.
  assert mine.down_per_client == theirs.down_per_client + weights + 4
  assert mine.up_per_client == theirs.up_per_client + weights


SCAFFOLD = [f for f in TINY if not f.startswith('--rounds')] + [
    '--scheme=scaffold', '--partition=pathological', '--labels_per_client=2',
    '--checkpoint_every=1']


def test_resume_continues_every_clients_control_variate(tmp_path):
  rows = run_whole_and_resumed(tmp_path, *SCAFFOLD)
  assert rows('resumed') == rows('whole')
  assert len(rows('whole')) == 3
  # A reader loads the saved round, the clients' control variates and all, and scores it.
  evaluated = subprocess.run([sys.executable, EVALUATE, f'--output_dir={tmp_path / "whole"}',
                              '--num_samples=200'], capture_output=True, text=True,
                             timeout=300, check=False)
  assert evaluated.returncode == 0, evaluated.stderr
  assert 'modes_captured=' in evaluated.stdout


@pytest.mark.parametrize('flag, message', [
    ('--dp_noise_multiplier=1', '--dp_noise_multiplier has no meaning for --scheme=scaffold'),
    ('--aggregator=he', '--aggregator has no meaning for --scheme=scaffold'),
    ('--proximal_mu=1', '--proximal_mu has no meaning for --scheme=scaffold'),
    ('--mode=async', '--mode=async is not built for --scheme=scaffold'),
])
def test_what_scaffold_does_not_build_is_refused_in_one_line(tmp_path, flag, message):
  result = run_train('--scheme=scaffold', flag, f'--output_dir={tmp_path / "run"}')
  assert result.returncode == 2
  assert message in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
  assert not (tmp_path / 'run').exists()
