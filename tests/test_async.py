"""Asynchronous training: FedBuff equals FedAvg in the limit, staleness weights, the server
rule in numpy, the event loop's staleness by hand, lost clients, flags."""

import csv
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT, as_numpy, linear_gan_models

import tasks
from tff_gan import choices
from tff_gan.algorithms import fedgan, optimizers
from tff_gan.clients import sampling
from tff_gan.clients.clock import ClientClock
from tff_gan.core.state import ClientOutput, GanWeights
from tff_gan.run import async_training, training
from tff_gan.run import config as config_lib

TINY = dict(task='ring', model_width=0.0625, local_steps=2, batch_size=16, eval_every=3,
            num_eval_samples=200)


def read_rows(output_dir):
  with open(os.path.join(output_dir, 'metrics.csv'), newline='') as f:
    return list(csv.DictReader(f))


def train(tmp_path_factory, name, **settings):
  config = config_lib.TrainConfig(**{**TINY, **settings},
                                  output_dir=str(tmp_path_factory.mktemp(name)))
  task = tasks.task_from_config(config)
  result = training.train(config, task, show_progress=False)
  return result, read_rows(config.output_dir)


def test_staleness_weights_follow_the_formula():
  taus = np.array([0, 1, 3, 10])
  np.testing.assert_allclose(async_training.staleness_weight(taus, 0.5),
                             [1, 1 / math.sqrt(2), 0.5, 1 / math.sqrt(11)])
  np.testing.assert_array_equal(async_training.staleness_weight(taus, 0.0), np.ones(4))
  assert async_training.staleness_weight(4, 1.0) == pytest.approx(0.2)


@pytest.fixture(scope='module')
def sync_and_fedbuff(tmp_path_factory):
  common = dict(num_clients=4, clients_per_round=4, rounds=3)
  sync = train(tmp_path_factory, 'sync', **common)
  fedbuff = train(tmp_path_factory, 'fedbuff', **common, mode='async', buffer_size=4,
                  max_concurrent_clients=4, staleness_exponent=0.0,
                  client_latency='lognormal:0.5,0')
  return sync, fedbuff


def test_fedbuff_without_latency_variance_is_synchronous_fedavg(sync_and_fedbuff):
  (sync, sync_rows), (fedbuff, fedbuff_rows) = sync_and_fedbuff
  for ours, theirs in zip(tf.nest.flatten(as_numpy(fedbuff.state.weights)),
                          tf.nest.flatten(as_numpy(sync.state.weights)), strict=True):
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
  for column in ('d_loss', 'g_loss', 'num_examples', 'modes_captured'):
    assert [float(r[column] or 'nan') for r in fedbuff_rows] == pytest.approx(
        [float(r[column] or 'nan') for r in sync_rows], rel=1e-5, nan_ok=True)
  # Every client takes e^0.5 s and none is stale.
  assert [float(r['simulated_time']) for r in fedbuff_rows] == pytest.approx(
      [k * math.exp(0.5) for k in (1, 2, 3)])
  assert {r['max_staleness'] for r in fedbuff_rows} == {'0'}


def random_delta(rng, weights: GanWeights) -> GanWeights:
  """A delta of `weights`' shapes, standard normal."""
  return GanWeights(*[[rng.normal(size=w.shape).astype(np.float32) for w in part]
                      for part in weights])


def client_output(delta: GanWeights, num_examples: float) -> ClientOutput:
  """A client's report of `delta` over `num_examples` examples (losses 1)."""
  return ClientOutput(delta=delta, num_examples=np.float32(num_examples),
                      metrics={'discriminator_loss': np.float32(1),
                               'generator_loss': np.float32(1)})


def build_linear_process(**kwargs):
  return fedgan.build_fedgan_process(
      linear_gan_models(), client_optimizer=optimizers.build_optimizer('sgd', 0.05), seed=2,
      **kwargs)


@pytest.fixture(scope='module')
def linear_process():
  return build_linear_process()


def test_server_step_applies_the_weighted_scaled_mean(tff_context, linear_process):
  """FedBuff's rule in numpy: w ← w + Σ n_i s_i Δ_i / Σ n_i (SGD at learning rate 1)."""
  del tff_context
  state = linear_process.initialize()
  rng = np.random.default_rng(0)
  weights = as_numpy(state.weights)
  deltas = [random_delta(rng, weights) for _ in range(3)]
  examples = [np.float32(n) for n in (10, 30, 60)]
  scales = async_training.staleness_weight([0, 2, 5], 0.5).astype(np.float32)
  outputs = [client_output(d, n) for d, n in zip(deltas, examples, strict=True)]
  new_state, metrics = linear_process.server_step(
      state, outputs, [np.int32(0)] * 3, list(scales))
  total = sum(examples)
  for part in ('generator', 'discriminator'):
    for index, before in enumerate(getattr(weights, part)):
      expected = before + sum(n * s * getattr(d, part)[index] for d, n, s in
                              zip(deltas, examples, scales, strict=True)) / total
      np.testing.assert_allclose(getattr(new_state.weights, part)[index], expected, rtol=1e-5,
                                 atol=1e-6)
  assert int(new_state.round_num) == 1 and metrics['num_examples'] == total


def test_server_learning_rate_halves_with_the_model_versions(tff_context):
  """--server_lr_half_life under --mode=async counts server steps (model versions): with SGD
  at learning rate 1 and a half-life of one step, step t applies 2^-t times the mean."""
  del tff_context
  process = build_linear_process(
      server_optimizer=optimizers.build_optimizer('sgd', 1.0, half_life=1.0))
  state = process.initialize()
  delta = random_delta(np.random.default_rng(1), as_numpy(state.weights))
  output = client_output(delta, 8)
  for step in range(3):
    before = as_numpy(state.weights)
    state, _ = process.server_step(state, [output], [np.int32(0)], [np.float32(1)])
    for part in ('generator', 'discriminator'):
      for index, weight in enumerate(getattr(before, part)):
        np.testing.assert_allclose(getattr(state.weights, part)[index],
                                   weight + 0.5**step * getattr(delta, part)[index],
                                   rtol=1e-5, atol=1e-6)


def fast_and_slow_seed():
  """A seed under which, of 2 clients with straggler fraction 0.5, exactly client 1 is slow."""
  for seed in range(100):
    clock = ClientClock(0.0, 0.0, 0.5, 3.0, 100.0, seed)
    if list(clock.is_straggler([0, 1])) == [False, True]:
      return seed
  raise AssertionError('no such seed below 100')


def test_event_loop_staleness_by_hand(tmp_path_factory):
  """Client 0 takes 1 s, client 1 takes 3 s; K = 1, both always at work.

  t=1: 0 reports (from v0, at v0): τ=0 → v1, 0 sent v1.  t=2: 0 reports (v1 at v1): τ=0 → v2.
  t=3: 1 reports (from v0, at v2): τ=2 → v3; then 0 (from v2, at v3): τ=1 → v4.
  """
  _, rows = train(tmp_path_factory, 'by_hand', num_clients=2, clients_per_round=2, rounds=4,
                  mode='async', buffer_size=1, max_concurrent_clients=2,
                  client_latency='lognormal:0,0', straggler_fraction=0.5,
                  straggler_slowdown=3.0, seed=fast_and_slow_seed())
  assert [int(r['max_staleness']) for r in rows] == [0, 0, 2, 1]
  assert [float(r['simulated_time']) for r in rows] == pytest.approx([1, 2, 3, 3])


def test_clients_that_never_report_do_not_stall_the_server(tmp_path_factory):
  _, rows = train(tmp_path_factory, 'lost', num_clients=8, clients_per_round=4, rounds=6,
                  mode='async', dropout_rate=0.5, client_latency='lognormal:0,0.2',
                  client_timeout=5.0)
  assert [int(r['round']) for r in rows] == [1, 2, 3, 4, 5, 6]
  # Half the clients never report, so the buffer fills only after timeouts freed their slots.
  times = [float(r['simulated_time']) for r in rows]
  assert times == sorted(times) and times[-1] > 5.0


def test_sync_rounds_report_their_simulated_time(tmp_path_factory):
  config = dict(num_clients=4, clients_per_round=2, rounds=3, client_latency='lognormal:0,0',
                straggler_fraction=0.5, straggler_slowdown=4.0, seed=1)
  _, rows = train(tmp_path_factory, 'sync_time', **config)
  clock = ClientClock.from_config(config_lib.TrainConfig(**config))
  expected, elapsed = [], 0.0
  for round_num in (1, 2, 3):
    sampled = sampling.sample_clients(4, 2, round_num=round_num, seed=1)
    elapsed += 4.0 if clock.is_straggler(sampled).any() else 1.0  # The slowest decides.
    expected.append(elapsed)
  assert [float(r['simulated_time']) for r in rows] == pytest.approx(expected)


@pytest.mark.parametrize('args, message', [
    (('--buffer_size=5',), 'applies to --mode=async'),
    (('--mode=async', '--scheme=centralized'), 'needs clients'),
    (('--mode=async', '--client_latency=normal:1,2'), "'lognormal:MU,SIGMA'"),
    (('--mode=async', '--client_sampling=poisson'), 'no meaning in --mode=async'),
    (('--mode=async', '--buffer_size=8', '--max_concurrent_clients=4'), 'could never fill'),
    (('--straggler_fraction=0.2',), 'need --client_latency'),
])
def test_flag_checks(tmp_path, args, message):
  result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, 'bin', 'train.py'), *args,
                           f'--output_dir={tmp_path}'], capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT)
  assert result.returncode == 2 and message in result.stderr, result.stderr
  assert len(result.stderr.strip().splitlines()) == 1


def test_async_defaults_resolve_from_the_round_settings():
  config = config_lib.TrainConfig(mode='async', num_clients=50, clients_per_round=8)
  assert (config.buffer_size, config.max_concurrent_clients) == (8, 16)
  assert config.client_latency == choices.DEFAULT_ASYNC_LATENCY
  assert config_lib.TrainConfig().client_latency == ''


def test_a_worker_lost_mid_step_keeps_the_last_step_applied(tmp_path, monkeypatch):
  from tff_gan.algorithms import composition  # noqa: PLC0415
  from tff_gan.runtime.workers import WorkerError  # noqa: PLC0415

  real = composition.GanProcess.with_client_data
  steps = []

  def with_client_data(self, *args):
    keyed = real(self, *args)

    def server_step(*step_args):  # The fourth step finds its worker gone.
      steps.append(1)
      if len(steps) == 4:
        raise WorkerError('the TFF worker is gone (a test)')
      return keyed.server_step(*step_args)

    return composition.GanProcess(keyed.initialize, keyed.next,
                                  client_work=keyed.client_work, server_step=server_step,
                                  initial_client_state=keyed.initial_client_state,
                                  warm_start=keyed.warm_start)

  # No periodic checkpoint in 6 steps: the one found after the loss is the one it saved.
  config = config_lib.TrainConfig(**{**TINY, 'eval_every': 6}, mode='async', num_clients=4,
                                  clients_per_round=2, rounds=6, checkpoint_every=10,
                                  output_dir=str(tmp_path))
  task = tasks.task_from_config(config)
  with monkeypatch.context() as patch:
    patch.setattr(composition.GanProcess, 'with_client_data', with_client_data)
    with pytest.raises(WorkerError, match='gone'):
      training.train(config, task, show_progress=False)
  assert [int(row['round']) for row in read_rows(tmp_path)] == [1, 2, 3]
  assert os.listdir(tmp_path / 'checkpoints') == ['round_3']
  training.train(config, task, show_progress=False)  # Resumes there.
  assert [int(row['round']) for row in read_rows(tmp_path)] == list(range(1, 7))
