"""Client-resident discriminators (`--scheme=multi_d`): the generator's update against an
autodiff reference of each mixture, what travels, client state across rounds and resumes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from conftest import REPO_ROOT, as_numpy, tiny_mlp_gan_models
from test_train_binary import TINY, run_whole_and_resumed

from tff_gan.algorithms import communication, multi_d, optimizers
from tff_gan.core import feedback, seeds, tf_fns
from tff_gan.core.losses import NON_SATURATING
from tff_gan.run.config import ConfigError, TrainConfig

EVALUATE = os.path.join(REPO_ROOT, 'bin', 'evaluate.py')
BATCH = 8
LEARNING_RATE = 0.05


def build(mixture, generator_steps=1, sample_anchor=0.0):
  return multi_d.build_multi_d_process(
      tiny_mlp_gan_models(), client_optimizer=optimizers.build_optimizer('sgd', 0.1),
      generator_optimizer=optimizers.build_optimizer('sgd', LEARNING_RATE),
      generator_steps=generator_steps, batch_size=BATCH, mixture=mixture,
      sample_anchor=sample_anchor)


def client_dataset(center, seed):
  rng = np.random.default_rng(seed)
  examples = (center + 0.1 * rng.standard_normal((32, 2))).astype(np.float32)
  return tf.data.Dataset.from_tensor_slices(examples).batch(16)


def mixture_loss(discriminators, weights, samples, mixture):
  """The generator loss of a mixture of discriminators, written directly (autodiff reference)."""
  logits = tf.stack([tf.reshape(d(samples), [-1]) for d in discriminators])  # [K, B]
  pi = tf.constant(weights / weights.sum(), tf.float32)[:, None]
  if mixture == 'mean':
    return tf.reduce_sum(pi * tf.nn.softplus(-logits), axis=0)  # Per sample.
  universal = tf.math.log(tf.reduce_sum(pi * tf.exp(logits), axis=0))
  return tf.nn.softplus(-universal)


@pytest.mark.parametrize('mixture', ['mean', 'universal'])
@pytest.mark.parametrize('num_clients', [1, 2])
def test_generator_step_follows_the_mixture_of_client_discriminators(tff_context, mixture,
                                                                     num_clients):
  process = build(mixture)
  state = process.initialize()
  initial = process.initial_client_state(state)
  centers = [np.array([1.0, 0.0]), np.array([-1.0, 0.5])][:num_clients]
  datasets = [client_dataset(c, k) for k, c in enumerate(centers)]
  new_state, client_states, metrics = process.next(state, datasets, [initial] * num_clients)
  assert metrics['num_examples'] == 32 * num_clients

  # Reference: the generator loss of the mixture of the clients' new discriminators, on the
  # round's generated batch, differentiated through G directly; one SGD step.
  models = tiny_mlp_gan_models()
  generator = models.generator_fn()
  tf_fns.assign_weights(generator.trainable_variables, state.weights.generator)
  discriminators = []
  for client_state in client_states:
    discriminator = models.discriminator_fn()
    tf_fns.assign_weights(discriminator.trainable_variables, client_state.weights)
    discriminators.append(discriminator)
  noise = feedback.feedback_noise(seeds.round_seed(state.seed, state.round_num), 0, BATCH,
                                  models.noise_dim)
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(mixture_loss(discriminators, np.full(num_clients, 32.0),
                                       generator(noise), mixture))
  gradients = tape.gradient(loss, generator.trainable_variables)
  expected = [w - LEARNING_RATE * g.numpy() for w, g in
              zip(as_numpy(state.weights.generator), gradients, strict=True)]
  for got, want in zip(as_numpy(new_state.weights.generator), expected, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # The server keeps only the initial discriminator (for new clients): it never trains one.
  for got, want in zip(as_numpy(new_state.weights.discriminator),
                       as_numpy(state.weights.discriminator), strict=True):
    np.testing.assert_array_equal(got, want)
  # Each client's discriminator moved, from its own data.
  assert not np.allclose(as_numpy(client_states[0].weights[0]), as_numpy(initial.weights[0]))


def test_later_steps_backpropagate_stale_feedback_with_the_sample_anchor(tff_context):
  anchor = 5.0
  process = build('mean', generator_steps=2, sample_anchor=anchor)
  state = process.initialize()
  new_state, client_states, _ = process.next(state, [client_dataset(np.array([1.0, 0.0]), 0)],
                                             [process.initial_client_state(state)])
  models = tiny_mlp_gan_models()
  generator, discriminator = models.generator_fn(), models.discriminator_fn()
  tf_fns.assign_weights(generator.trainable_variables, state.weights.generator)
  tf_fns.assign_weights(discriminator.trainable_variables, client_states[0].weights)
  round_seed = seeds.round_seed(state.seed, state.round_num)
  noises = [feedback.feedback_noise(round_seed, j, BATCH, models.noise_dim) for j in range(2)]
  judged = [generator(z).numpy() for z in noises]
  feedbacks = []  # The client's per-sample loss gradients at G0's samples.
  for x in judged:
    x = tf.constant(x)
    with tf.GradientTape() as tape:
      tape.watch(x)
      summed_losses = tf.reduce_sum(tf.nn.softplus(-tf.reshape(discriminator(x), [-1])))
    feedbacks.append(tape.gradient(summed_losses, x))
  for j in range(2):  # SGD on mean_i[g·G(z) + (λ/2)‖G(z) − G0(z)‖²], from the current G.
    with tf.GradientTape() as tape:
      x = generator(noises[j])
      loss = tf.reduce_mean(tf.reduce_sum(feedbacks[j] * x, 1)
                            + 0.5 * anchor * tf.reduce_sum(tf.square(x - judged[j]), 1))
    gradients = tape.gradient(loss, generator.trainable_variables)
    for variable, gradient in zip(generator.trainable_variables, gradients, strict=True):
      variable.assign_sub(LEARNING_RATE * gradient)
  for got, want in zip(as_numpy(new_state.weights.generator), generator.trainable_variables,
                       strict=True):
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-6)


def uplink_shapes(computation):
  """The shapes of every tensor clients send up (client operands of aggregation intrinsics)."""
  shapes = []

  def visit(node):
    if (isinstance(node, tff.framework.Call) and isinstance(node.function, tff.framework.Intrinsic)
        and node.function.uri in communication._UPLINK):  # noqa: SLF001
      operands = node.argument.type_signature
      operands = [operands] if isinstance(operands, tff.FederatedType) else list(operands)
      for operand in operands:
        if isinstance(operand, tff.FederatedType) and operand.placement is tff.CLIENTS:
          tff.types.structure_from_tensor_type_tree(lambda t: shapes.append(tuple(t.shape)),
                                                    operand.member)
    return node, False

  tff.framework.transform_postorder(computation.to_building_block(), visit)
  return shapes


def test_clients_send_feedback_on_samples_never_discriminator_weights():
  process = build('universal', generator_steps=3)
  shapes = uplink_shapes(process.next)
  discriminator = tiny_mlp_gan_models().discriminator_fn()
  weight_shapes = {tuple(v.shape) for v in discriminator.trainable_variables}
  assert (3, BATCH, 2) in shapes and (3, BATCH) in shapes
  assert not weight_shapes & set(shapes), shapes
  # The bytes up are the feedback (weights and gradients) plus a few scalars.
  traffic = communication.round_traffic(process.next)
  assert 4 * 3 * BATCH * 3 <= traffic.up_per_client < 4 * 3 * BATCH * 3 + 64


MULTI_D = ['--scheme=multi_d', '--server_gen_steps=2', '--batch_size=16',
           '--checkpoint_every=1']


def test_resume_continues_every_clients_discriminator(tmp_path):
  flags = [f for f in TINY if not f.startswith('--rounds')] + MULTI_D
  rows = run_whole_and_resumed(tmp_path, *flags)
  assert rows('resumed') == rows('whole')
  assert float(rows('whole')[0]['bytes_up']) < float(rows('whole')[0]['bytes_down'])
  # A reader loads the saved round, client discriminators and all, and scores it again.
  evaluated = subprocess.run([sys.executable, EVALUATE, f'--output_dir={tmp_path / "whole"}',
                              '--num_samples=200', '--seed=4'], capture_output=True, text=True,
                             timeout=300, check=False)
  assert evaluated.returncode == 0, evaluated.stderr
  assert 'modes_captured=' in evaluated.stdout


@pytest.mark.parametrize('settings, message', [
    (dict(dp_noise_multiplier=1.0), 'for differential privacy use --scheme=gs_wgan'),
    (dict(mode='async'), '--mode=async is not built for --scheme=multi_d'),
    (dict(aggregator='robust'), '--aggregator=robust is not built for --scheme=multi_d'),
    (dict(proximal_mu=0.1), '--proximal_mu has no meaning for --scheme=multi_d'),
    (dict(server_lr_half_life=100), '--server_lr_half_life has no meaning for --scheme=multi_d'),
    (dict(loss='wasserstein_gp', discriminator_mixture='universal'), 'odds'),
    (dict(num_clients=2000, clients_per_round=10), 'at most 1000 clients'),
    (dict(sample_anchor=-1.0), '--sample_anchor must be a finite number >= 0'),
])
def test_settings_multi_d_cannot_serve_are_refused(settings, message):
  with pytest.raises(ConfigError, match=message):
    TrainConfig(scheme='multi_d', **settings).validate()


def test_mixture_flag_needs_multi_d_and_steps_default_per_scheme():
  with pytest.raises(ConfigError, match='applies to --scheme=multi_d'):
    TrainConfig(discriminator_mixture='universal').validate()
  assert TrainConfig(scheme='multi_d').server_gen_steps == 16
  assert TrainConfig(scheme='multi_d').sample_anchor == 300.0
  assert TrainConfig().sample_anchor == 0.0
  with pytest.raises(ConfigError, match='--sample_anchor applies to --scheme=multi_d'):
    TrainConfig(sample_anchor=1.0).validate()
  # dp_fedavg_gan's short equal blocks and generator average; explicit values stay.
  dp_fedavg_gan = TrainConfig(scheme='dp_fedavg_gan')
  assert (dp_fedavg_gan.server_gen_steps, dp_fedavg_gan.local_steps,
          dp_fedavg_gan.generator_ema) == (4, 4, 0.98)
  assert (TrainConfig().local_steps, TrainConfig().generator_ema) == (0, 0.0)
  explicit = TrainConfig(scheme='dp_fedavg_gan', local_steps=0, generator_ema=0.0,
                         server_gen_steps=1)
  assert (explicit.server_gen_steps, explicit.local_steps, explicit.generator_ema) == (1, 0, 0.0)
  assert NON_SATURATING.name == TrainConfig().loss
