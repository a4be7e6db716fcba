"""GS-WGAN (`--scheme=gs_wgan`): the sanitizer against numpy, what a client sends, per-client
ε against dp_accounting, and a run that resumes exactly."""

from __future__ import annotations

import dataclasses
import math

import dp_accounting
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_mlp_gan_models
from test_multi_d import BATCH, build, client_dataset, uplink_shapes
from test_train_binary import TINY, run_whole_and_resumed

from tff_gan.algorithms import multi_d, optimizers
from tff_gan.core import feedback, seeds
from tff_gan.core.losses import WASSERSTEIN_GP
from tff_gan.core.state import DiscriminatorState, GanWeights, ServerBroadcast
from tff_gan.run import ledgers, schemes
from tff_gan.run.config import ConfigError, TrainConfig


def test_each_per_sample_gradient_is_clipped_as_numpy_clips_it():
  rng = np.random.default_rng(0)
  gradients = rng.standard_normal((3, 16, 4, 2)).astype(np.float32)
  gradients[0, :4] *= 1e-3  # Some already inside the bound: left as they are.
  sanitizer = feedback.GsSanitizer(clip=0.5, noise_multiplier=0.0, noise_key=(1, 2))
  got = feedback.sanitize(tf.constant(gradients), sanitizer, tf.constant([3, 4], tf.int64))
  norms = np.linalg.norm(gradients.reshape(3, 16, -1), axis=-1)[..., None, None]
  np.testing.assert_allclose(got, gradients * np.minimum(1.0, 0.5 / norms), rtol=1e-5, atol=1e-7)


def test_the_noise_on_each_clipped_gradient_has_standard_deviation_sigma_c():
  sanitizer = feedback.GsSanitizer(clip=0.5, noise_multiplier=1.5, noise_key=(1, 2))
  zeros = tf.zeros([4, 64, 64, 2])  # 32,768 coordinates: the sample std is within ~0.4 %.
  noise = feedback.sanitize(zeros, sanitizer, tf.constant([3, 4], tf.int64)).numpy()
  assert np.std(noise) == pytest.approx(0.75, rel=0.02)
  assert abs(np.mean(noise)) < 5 * 0.75 / math.sqrt(noise.size)


def test_a_client_sends_sanitized_sample_gradients_a_count_of_one_and_no_metrics():
  models = tiny_mlp_gan_models()
  generator, discriminator = models.generator_fn(), models.discriminator_fn()
  sanitizer = feedback.GsSanitizer(clip=0.01, noise_multiplier=0.0, noise_key=(1, 2))
  broadcast = ServerBroadcast(
      weights=GanWeights(generator=[v.numpy() for v in generator.trainable_variables],
                         discriminator=()),
      round_seed=tf.constant([5, 6], tf.int64))
  optimizer = optimizers.build_optimizer('sgd', 0.1)
  state = DiscriminatorState(
      weights=[v.numpy() for v in discriminator.trainable_variables],
      optimizer_state=optimizer.initialize(
          [tf.TensorSpec(v.shape, v.dtype) for v in discriminator.trainable_variables]))
  update = tf.function(lambda data, s: feedback.client_feedback_update(
      data, broadcast, s, generator=generator, discriminator=discriminator,
      loss=WASSERSTEIN_GP, optimizer=optimizer, noise_dim=models.noise_dim, generator_steps=2,
      batch_size=BATCH, mixture='mean', sanitizer=sanitizer))
  sent, num_examples, metrics, _ = update(client_dataset(np.array([1.0, 0.0]), 0), state)
  assert sent.weighted_gradient.shape == (2, BATCH, 2)  # The generated samples' shape.
  np.testing.assert_array_equal(sent.weight, np.ones((2, BATCH)))
  norms = np.linalg.norm(sent.weighted_gradient.numpy(), axis=-1)
  assert np.all(norms <= 0.01 * (1 + 1e-5)) and np.any(norms > 0.005)
  assert float(num_examples) == 1.0  # Not the client's 32 examples.
  assert all(float(value) == 0.0 for value in metrics.values())


@pytest.mark.parametrize('epochs', [1, 2])
def test_only_the_drawn_shards_discriminator_trains_and_only_on_its_shard(tff_context, epochs):
  # With `epochs` passes over its shard (`--local_epochs`), the shard's examples repeated.
  sanitizer = feedback.GsSanitizer(clip=1.0, noise_multiplier=0.0, noise_key=(1, 2), shards=3)

  def process(shards):
    return multi_d.build_multi_d_process(
        tiny_mlp_gan_models(), client_optimizer=optimizers.build_optimizer('sgd', 0.1),
        generator_steps=1, batch_size=BATCH, loss=WASSERSTEIN_GP,
        sanitizer=dataclasses.replace(sanitizer, shards=shards), shard_epochs=epochs)

  sharded = process(3)
  state = sharded.initialize()
  data = client_dataset(np.array([1.0, 0.0]), 0)
  _, (client_state,), _ = sharded.next(state, [data], [sharded.initial_client_state(state)])
  initial = process(1).initial_client_state(state)
  changed = [k for k in range(3) if not np.allclose(client_state.weights[0][k],
                                                    initial.weights[0])]
  assert len(changed) == 1, changed  # One discriminator answered; the others wait.
  shard = changed[0]
  # Reference: one discriminator trained on just that shard's examples, in their order.
  examples = np.concatenate(list(data.as_numpy_iterator()))
  mine = np.array([int(feedback.shard_of(tf.constant(x), 3)) == shard for x in examples])
  assert 0 < mine.sum() < len(examples)
  single = process(1)
  _, (expected,), _ = single.next(
      state, [tf.data.Dataset.from_tensor_slices(np.tile(examples[mine], (epochs, 1))).batch(
          BATCH)], [initial])
  for got, want in zip(client_state.weights, expected.weights, strict=True):
    np.testing.assert_allclose(got[shard], want, rtol=1e-6, atol=1e-7)


def test_the_server_never_receives_discriminator_weights():
  sanitized = multi_d.build_multi_d_process(
      tiny_mlp_gan_models(), client_optimizer=optimizers.build_optimizer('sgd', 0.1),
      generator_steps=3, batch_size=BATCH, loss=WASSERSTEIN_GP,
      sanitizer=feedback.GsSanitizer(clip=1.0, noise_multiplier=1.0, noise_key=(1, 2)))
  shapes = uplink_shapes(sanitized.next)
  weight_shapes = {tuple(v.shape) for v in
                   tiny_mlp_gan_models().discriminator_fn().trainable_variables}
  assert (3, BATCH, 2) in shapes and not weight_shapes & set(shapes), shapes
  assert len(uplink_shapes(build('mean', generator_steps=3).next)) > len(shapes)  # No metrics.
  with pytest.raises(ValueError, match='mean mixture'):
    multi_d.build_multi_d_process(tiny_mlp_gan_models(), mixture='universal',
                                  sanitizer=feedback.GsSanitizer(1.0, 1.0, (1, 2)))


@pytest.mark.parametrize('sigma, shards', [(200.0, 100), (5.0, 4)])
def test_shards_amplify_example_level_epsilon_by_drawing_one_of_k(sigma, shards):
  config = TrainConfig(scheme='gs_wgan', dp_noise_multiplier=sigma, batch_size=16,
                       dp_unit='example', discriminator_shards=shards, num_clients=2,
                       clients_per_round=1).validate()
  ledger = ledgers.epsilon_ledger(config, [500, 500], lambda r: [r % 2])
  z = sigma / (2 * math.sqrt(16))

  def reference(event, rounds):
    accountant = dp_accounting.rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    accountant.compose(event, rounds)
    return accountant.get_epsilon(1e-5)

  gaussian = dp_accounting.GaussianDpEvent(z)
  amplified = reference(dp_accounting.SampledWithoutReplacementDpEvent(shards, 1, gaussian), 5)
  expected = min(amplified, reference(gaussian, 5))  # Both bounds hold: the tighter one.
  assert ledger.client_epsilons(10).tolist() == pytest.approx([expected] * 2, rel=1e-9)
  if sigma == 200.0:  # Much noise, many shards: amplification is what the ledger uses.
    assert amplified < reference(gaussian, 5) / 10


@pytest.mark.parametrize('unit, shards, rounds, target', [
    ('example', 100, 400, 6.0), ('example', 2, 1, 80.0), ('client', 1, 20, 6.0)])
def test_the_calibrated_sigma_spends_the_target_epsilon_in_the_ledger(unit, shards, rounds,
                                                                      target):
  # (100 shards, 400 rounds): the sampled bound decides; (2, 1) at ε 80: the unamplified one.
  sigma = ledgers.gs_wgan_noise_multiplier(target, shards, rounds, generator_steps=2,
                                           batch_size=16, delta=1e-5)

  def spent(noise):
    config = TrainConfig(scheme='gs_wgan', dp_noise_multiplier=noise, batch_size=16,
                         server_gen_steps=2, dp_unit=unit, discriminator_shards=shards,
                         num_clients=1, clients_per_round=1).validate()
    return ledgers.epsilon_ledger(config, [500], lambda r: [0]).client_epsilons(rounds)[0]

  assert spent(sigma) <= target < spent(sigma * 0.99)
  assert spent(sigma) == pytest.approx(target, rel=2e-3)


def test_each_clients_epsilon_composes_its_rounds_unamplified():
  config = TrainConfig(scheme='gs_wgan', dp_noise_multiplier=30.0, batch_size=16,
                       server_gen_steps=2, num_clients=3, clients_per_round=2).validate()
  sampled = {1: [0, 1], 2: [0, 2], 3: [0, 1]}
  ledger = ledgers.epsilon_ledger(config, [100, 50, 7], lambda r: sampled[r])
  assert isinstance(ledger, ledgers.GsWganLedger)
  z = 30.0 / (2 * math.sqrt(2 * 16))  # Sensitivity 2C per clipped sample, 32 of them.
  for client, rounds in enumerate([3, 2, 1]):
    reference = dp_accounting.rdp.RdpAccountant()
    reference.compose(dp_accounting.GaussianDpEvent(z), rounds)
    assert ledger.client_epsilons(3)[client] == pytest.approx(reference.get_epsilon(1e-5),
                                                              rel=1e-9)
  assert ledger.client_epsilons(0).tolist() == [0.0, 0.0, 0.0]


GS_WGAN = ['--scheme=gs_wgan', '--dp_noise_multiplier=50', '--batch_size=16',
           '--checkpoint_every=1', '--dp_noise=reproducible', '--dp_unit=example',
           '--discriminator_shards=2', '--examples_per_client=64']


def test_a_reproducible_sharded_run_resumes_exactly_and_reports_each_clients_epsilon(tmp_path):
  # Each client keeps 2 discriminators (stacked in its state, checkpointed, restored), warm
  # started before round 1 (the run cut after round 2 must not warm start again on resuming).
  flags = [f for f in TINY if not f.startswith(('--rounds', '--batch_size'))] + [
      *GS_WGAN, '--warm_start_steps=4']
  rows = run_whole_and_resumed(tmp_path, *flags)
  assert rows('resumed') == rows('whole')
  table = (tmp_path / 'whole' / 'client_epsilon.csv').read_text().splitlines()
  epsilons = [float(line.split(',')[-1]) for line in table[1:]]
  assert max(epsilons) == pytest.approx(float(rows('whole')[-1]['epsilon']), rel=1e-5)
  assert all(row['d_loss'] == row['g_loss'] == '' for row in rows('whole'))  # Not released.
  # Down: G's weights and the seed; up per client: [1, 16, 2] gradients, [1, 16] weights, 1.
  assert int(rows('whole')[0]['bytes_up']) == 3 * 4 * (1 * 16 * 2 + 1 * 16 + 1)


@pytest.mark.parametrize('settings, message', [
    (dict(), 'set --dp_noise_multiplier'),
    (dict(dp_noise_multiplier=1.0, dp_unit='example'), 'set --discriminator_shards=K >= 2'),
    (dict(dp_noise_multiplier=1.0, dp_accountant='pld'), 'accounted with RDP'),
    (dict(dp_noise_multiplier=1.0, discriminator_mixture='universal'),
     '--discriminator_mixture has no meaning for --scheme=gs_wgan'),
    (dict(dp_noise_multiplier=1.0, mode='async'), 'not built for --scheme=gs_wgan'),
])
def test_settings_gs_wgan_cannot_serve_are_refused(settings, message):
  with pytest.raises(ConfigError, match=message):
    TrainConfig(scheme='gs_wgan', **settings).validate()


def test_shards_need_gs_wgan():
  with pytest.raises(ConfigError, match='--discriminator_shards must be >= 1 and applies to'):
    TrainConfig(discriminator_shards=2).validate()
  with pytest.raises(ConfigError, match='--discriminator_shards must be >= 1'):
    TrainConfig(scheme='gs_wgan', dp_noise_multiplier=1.0, discriminator_shards=0).validate()


def test_gs_wgan_defaults_are_the_papers():
  config = TrainConfig(scheme='gs_wgan', dp_noise_multiplier=1.0).validate()
  assert config.loss == 'wasserstein_gp' and config.server_gen_steps == 1
  assert TrainConfig().loss == 'non_saturating'
  assert seeds.noise_key(config.dp_noise, 0) == seeds.entropy_noise_key()


def test_shards_that_would_not_fit_in_memory_are_refused():
  import tasks
  config = TrainConfig(scheme='gs_wgan', dp_noise_multiplier=1.0, dp_unit='example',
                       discriminator_shards=100).validate()
  models = tasks.get_task('ring').gan_models()
  # 10 clients × 100 discriminators × (weights + Adam's two moments) × float32.
  expected = 10 * 100 * 3 * 4 * models.discriminator_fn().count_params() / 2**20
  with pytest.raises(ConfigError, match=f'would keep {expected:.0f} MiB of discriminator state'):
    schemes.build_process(config, models)
  narrow = dataclasses.replace(config, model_width=0.25)
  schemes.build_process(narrow, tasks.get_task('ring', width=0.25).gan_models())
