"""`secure` and `compressed` against the exact weighted mean, within error bounds derived here.

Each aggregator's process runs on its own (no model training), on client values shaped like a
model update: one tensor large enough to be quantized and one small enough to be sent as is.

Bounds, for client values x_k with weights w_k, S = Σ w_k x_k and W = Σ w_k:

* `compressed` (uniform quantization to b bits between a tensor's min and max, stochastic
  rounding): each element of w_k x_k moves by less than one quantization step,
  w_k (max x_k − min x_k) / (2^b − 1), so each element of the mean moves by at most
  Σ_k w_k range(x_k) / ((2^b − 1) W).
* `compressed` with Hadamard rotation: the rotation is orthogonal up to a scale that decoding
  undoes, so the L2 error of a client's decoded vector is at most that of its rotated one. A
  rotated coordinate is a ±1 combination of the d (padded to d₂, a power of 2) coordinates,
  scaled by 1/√d₂: its magnitude is at most ‖x‖₂, so its range is at most 2‖x‖₂, a step at
  most 2‖x‖₂ / (2^b − 1), and the L2 error at most √d₂ times that. The mean's L2 error is then
  at most Σ_k w_k 2√d₂ ‖x_k‖₂ / ((2^b − 1) W).
* `secure` (values clipped to [−B, B], quantized to 32 bits, summed as integers; weights in
  [0, 2^20 − 1]): TFF documents float32 accuracy of about 7 significant digits relative to the
  range. Taking ε = 2^-22 per client per element, the sums move by at most e_S = n 2B ε and
  e_W = n (2^20 − 1) ε, and the mean by at most (e_S + |S/W| e_W) / (W − e_W).
"""

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_gan.algorithms import aggregators, communication

BIG, SMALL = 1000, 5  # Elements per tensor: BIG ≥ MIN_QUANTIZED_ELEMENTS > SMALL.
WEIGHTS = [3.0, 11.0, 7.0, 25.0]
VALUE_TYPE = tff.to_type(collections.OrderedDict(
    kernel=tff.TensorType(np.float32, [BIG]), bias=tff.TensorType(np.float32, [SMALL])))


def client_values(seed=0, scale=0.01):
  """Update-like values: small, with an outlier coordinate, L2 norm below robust's clip 1."""
  rng = np.random.default_rng(seed)
  values = []
  for _ in WEIGHTS:
    kernel = (rng.normal(size=BIG) * scale).astype(np.float32)
    kernel[rng.integers(BIG)] = 5 * scale
    values.append(collections.OrderedDict(
        kernel=kernel, bias=(rng.normal(size=SMALL) * scale).astype(np.float32)))
  return values


def exact_mean(values, weights=WEIGHTS):
  total = sum(weights)
  pairs = list(zip(weights, values, strict=True))
  return {name: sum(w * v[name].astype(np.float64) for w, v in pairs) / total
          for name in values[0]}


def run(aggregator, values, weights=WEIGHTS):
  process = aggregator.create(VALUE_TYPE, tff.TensorType(np.float32))
  output = process.next(process.initialize(), values, weights)
  return output.result, output.measurements


@pytest.mark.parametrize('bits', [2, 8])
def test_compressed_is_the_mean_within_the_quantization_step(tff_context, bits):
  values = client_values()
  result, _ = run(aggregators.build_aggregator('compressed', bits=bits), values)
  exact = exact_mean(values)
  total = sum(WEIGHTS)
  bound = sum(w * np.ptp(v['kernel']) for w, v in zip(WEIGHTS, values, strict=True)) / (
      (2**bits - 1) * total)
  error = np.abs(result['kernel'] - exact['kernel'])
  assert error.max() <= bound * (1 + 1e-5)
  # Quantization really happened (not a plain sum that passes any bound).
  assert error.max() > 1e-3 * bound
  # The small tensor travels as float32: exact up to float32 rounding.
  np.testing.assert_allclose(result['bias'], exact['bias'], rtol=1e-5, atol=1e-8)


def test_compressed_with_hadamard_is_the_mean_within_the_rotated_bound(tff_context):
  bits = 4
  values = client_values()
  result, _ = run(aggregators.build_aggregator('compressed', bits=bits, hadamard=True), values)
  exact = exact_mean(values)
  padded = 2 ** int(np.ceil(np.log2(BIG)))
  bound = sum(w * 2 * np.sqrt(padded) * np.linalg.norm(v['kernel'])
              for w, v in zip(WEIGHTS, values, strict=True)) / ((2**bits - 1) * sum(WEIGHTS))
  error = np.linalg.norm(result['kernel'] - exact['kernel'])
  assert 0 < error <= bound


def test_hadamard_rotation_narrows_the_error_for_an_outlier(tff_context):
  """One huge coordinate sets a wide range for plain quantization; rotation spreads it."""
  values = client_values()
  for value in values:
    value['kernel'][0] = 0.5
  exact = exact_mean(values)['kernel']

  def error(hadamard):
    result, _ = run(aggregators.build_aggregator('compressed', bits=4, hadamard=hadamard),
                    values)
    return np.linalg.norm(result['kernel'] - exact)

  assert error(hadamard=True) < 0.5 * error(hadamard=False)


def test_secure_is_the_mean_within_the_32_bit_bound(tff_context):
  values = client_values()
  result, measurements = run(aggregators.build_aggregator('secure'), values)
  secure = measurements['zeroing']['clipping']['mean_value']
  assert secure['secure_upper_clipped_count'] == secure['secure_lower_clipped_count'] == 0
  assert measurements['zeroing']['clipped_count'] == 0  # The L2 clip did not act.
  bound_b = float(secure['secure_upper_threshold'])
  n, total, eps = len(WEIGHTS), sum(WEIGHTS), 2.0**-22
  error_sum, error_weight = n * 2 * bound_b * eps, n * (2**20 - 1) * eps
  for name, exact in exact_mean(values).items():
    bound = (error_sum + np.abs(exact) * error_weight) / (total - error_weight)
    assert np.all(np.abs(result[name] - exact) <= bound), name


def test_secure_clips_values_beyond_its_range(tff_context):
  """A value far beyond the secure range is clipped to it, and the clip is reported."""
  values = client_values()
  values[0]['kernel'][0] = 0.9  # Norm still below the L2 clip; weighted value 2.7.
  aggregator = aggregators.build_aggregator('secure')
  process = aggregator.create(VALUE_TYPE, tff.TensorType(np.float32))
  weights = [200.0, 1.0, 1.0, 1.0]  # 200 * 0.9 = 180 exceeds the initial range of ±100.
  output = process.next(process.initialize(), values, weights)
  secure = output.measurements['zeroing']['clipping']['mean_value']
  assert secure['secure_upper_clipped_count'] >= 1
  upper = float(secure['secure_upper_threshold'])
  others = sum(w * v['kernel'][0] for w, v in zip(weights[1:], values[1:], strict=True))
  expected = (upper + others) / sum(weights)
  np.testing.assert_allclose(output.result['kernel'][0], expected, rtol=1e-5)


def test_bits_out_of_range_are_refused():
  for bits in (0, 17, 2.5, True):
    with pytest.raises(ValueError, match='--bits must be an integer from 1 to 16'):
      aggregators.build_aggregator('compressed', bits=bits)


def expected_quantized_bytes(num_elements, bits, hadamard=False):
  """Bytes of one tensor as tensor_encoding sends it: 28 bits per int32 word, plus min/max."""
  if num_elements < aggregators.MIN_QUANTIZED_ELEMENTS:
    return 4 * num_elements
  if hadamard:
    num_elements = 2 ** int(np.ceil(np.log2(num_elements)))
  words = -(-num_elements * bits // 28)
  return 4 * words + 8


@pytest.mark.parametrize('bits,hadamard', [(8, False), (4, False), (8, True)])
def test_upload_bytes_of_compressed_follow_the_encoding(bits, hadamard):
  process = aggregators.build_aggregator('compressed', bits=bits, hadamard=hadamard).create(
      VALUE_TYPE, tff.TensorType(np.float32))
  traffic = communication.round_traffic(process.next)
  weight_bytes = 4
  assert traffic.up_per_client == (expected_quantized_bytes(BIG, bits, hadamard)
                                   + expected_quantized_bytes(SMALL, bits) + weight_bytes)
  # The rotation's random signs come from an int64[2] seed the server sends down.
  assert traffic.down_per_client == (16 if hadamard else 0)


def test_upload_bytes_of_mean_and_secure():
  mean = aggregators.build_aggregator('mean').create(VALUE_TYPE, tff.TensorType(np.float32))
  assert communication.round_traffic(mean.next) == communication.RoundTraffic(
      down_per_client=0, up_per_client=4 * (BIG + SMALL) + 4)
  secure = aggregators.build_aggregator('secure').create(VALUE_TYPE, tff.TensorType(np.float32))
  traffic = communication.round_traffic(secure.next)
  # 32 bits per value, 20 bits for the weight, and a few small side sums (norm estimates,
  # clip counts); the server sends clip and range bounds down.
  assert 4 * (BIG + SMALL) + 3 < traffic.up_per_client < 4 * (BIG + SMALL) + 100
  assert 0 < traffic.down_per_client < 200


def test_type_bits_against_numpy_sizes():
  structure = tff.to_type(collections.OrderedDict(
      a=tff.TensorType(np.float32, [3, 4]), b=tff.TensorType(np.int64, [2]),
      c=tff.TensorType(np.float64)))
  expected = 8 * (np.zeros((3, 4), np.float32).nbytes + np.zeros(2, np.int64).nbytes
                  + np.zeros((), np.float64).nbytes)
  assert communication.type_bits(structure) == expected
  # At a declared bit width, each tensor is padded to whole bytes.
  assert communication.type_bits(structure, [20, 20, 20]) == 8 * (30 + 5 + 3)
  with pytest.raises(ValueError, match='partly unknown shape'):
    communication.type_bits(tff.TensorType(np.float32, [None]))


def test_compressed_at_8_bits_sends_about_a_quarter_of_mean_on_ring():
  import tasks
  models = tasks.get_task('ring').gan_models()
  shapes = [w.shape for net in (models.generator_fn(), models.discriminator_fn())
            for w in net.trainable_weights]
  value_type = tff.to_type([tff.TensorType(np.float32, s) for s in shapes])

  def up_bytes(name, **kwargs):
    process = aggregators.build_aggregator(name, **kwargs).create(
        value_type, tff.TensorType(np.float32))
    return communication.round_traffic(process.next).up_per_client

  ratio = up_bytes('compressed', bits=8) / up_bytes('mean')
  assert 0.25 <= ratio <= 0.30  # 8/32, plus tensor_encoding's 28-bit words and min/max.


def test_fedgan_rounds_with_secure_and_compressed_match_the_mean_round(tff_context):
  """Wired into a whole FedGAN round, both land next to the mean's model (same client work)."""
  from conftest import as_numpy, linear_gan_models

  from tff_gan.algorithms import fedgan, optimizers
  from tff_gan.clients import populations as data
  dim = 8  # G's kernel is 8x8 = 64 elements: quantized by `compressed`.
  rng = np.random.default_rng(1)
  arrays = [rng.normal(size=(n, dim)).astype(np.float32) for n in (4, 6, 10)]

  def new_weights(aggregator):
    process = fedgan.build_fedgan_process(
        linear_gan_models(noise_dim=dim, data_dim=dim),
        client_optimizer=optimizers.build_optimizer('sgd', 0.05),
        server_optimizer=optimizers.build_optimizer('sgd', 1.0), aggregator=aggregator)
    state = process.initialize()
    datasets = [data.client_dataset(x, data.LocalWork(batch_size=2), seed=i)
                for i, x in enumerate(arrays)]
    new_state, metrics = process.next(state, datasets)
    assert metrics['non_finite_clients'] == 0
    return as_numpy(state.weights), as_numpy(new_state.weights)

  start, mean = new_weights(aggregators.build_aggregator('mean'))
  _, secure = new_weights(aggregators.build_aggregator('secure'))
  _, compressed = new_weights(aggregators.build_aggregator('compressed', bits=16))
  kernel_step = np.abs(mean.generator[0] - start.generator[0]).max()
  assert kernel_step > 1e-3  # The round moved the model.
  # The exact bounds are checked above on known values; here, a 16-bit quantization error is
  # far below a thousandth of what the round moved the weights.
  for got, tolerance in ((secure, 1e-5), (compressed, kernel_step * 1e-3)):
    for a, b in zip(tf.nest.flatten(got), tf.nest.flatten(mean), strict=True):
      np.testing.assert_allclose(a, b, atol=tolerance, rtol=0)
  assert not np.array_equal(compressed.generator[0], mean.generator[0])
