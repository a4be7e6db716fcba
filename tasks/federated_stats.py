"""Per-column mean and standard deviation of clients' rows, computed federatedly.

Every client keeps its rows: what leaves a client is its row count and two length-d vectors of
sums, and the server uses them only added up over all clients. Two passes, each one
`tff.federated_sum`:

1. each client sends its row count n_k and its column sums S_k = Σ_rows x; the server forms
   the pooled mean m = Σ_k S_k / Σ_k n_k and broadcasts it;
2. each client sends its sums of squares about that mean, Q_k = Σ_rows (x − m)²; the server
   forms the pooled (population, ddof = 0) variance Σ_k Q_k / Σ_k n_k and its square root.

Type signature:
`({float64[?, d]}@CLIENTS -> <count=int64, mean=float64[d], std=float64[d]>@SERVER)`.

Numerical stability: the sums are float64, and the squares are taken about the pooled mean
(a shifted sum of squares, numpy's own two-pass algorithm) rather than as raw Σ x² from which
n·m² is subtracted. The one-pass form loses about log10((m / std)²) of float64's 16 digits
to cancellation: for a column of Unix timestamps (m ≈ 1.7e9) spread over an hour
(std ≈ 1e3) that is 12 digits, and its std would keep about 4. The second pass costs one
more round trip of `d` floats, and releases nothing beyond the pooled mean, which the result
releases anyway.

A constant column has std 0 (up to round-off); dividing by it would blow up.
`normalization_scale` replaces such a std by 1, so the column normalizes to zeros.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_gan.runtime import contexts

# A std at most this fraction of the column's |mean| (or exactly 0) is round-off of a
# constant column: summing n equal float64 values (a tree reduction) leaves deviations of a
# few 1e-16·|mean|, far below this.
CONSTANT_COLUMN_RELATIVE_STD = 1e-9


@functools.cache
def build_column_moments_computation(num_columns: int) -> tff.Computation:
  """The federated computation of the module docstring for rows of `num_columns` columns.

  Returns:
    A `tff.Computation` of type
    `({float64[?, num_columns]}@CLIENTS -> <count=int64, mean=float64[d], std=float64[d]>@SERVER)`.
  """
  rows_type = tff.TensorType(np.float64, [None, num_columns])
  mean_type = tff.TensorType(np.float64, [num_columns])

  @tff.tensorflow.computation(rows_type)
  def count_and_sums(rows):
    return tf.shape(rows, out_type=tf.int64)[0], tf.reduce_sum(rows, axis=0)

  @tff.tensorflow.computation(tff.TensorType(np.int64), mean_type)
  def divide(count, sums):
    return sums / tf.cast(count, tf.float64)

  @tff.tensorflow.computation(rows_type, mean_type)
  def squares_about(rows, mean):
    return tf.reduce_sum(tf.square(rows - mean), axis=0)

  @tff.tensorflow.computation(tff.TensorType(np.int64), mean_type)
  def root_mean(count, squares):
    return tf.sqrt(squares / tf.cast(count, tf.float64))

  @tff.federated_computation(tff.FederatedType(rows_type, tff.CLIENTS))
  def column_moments_computation(client_rows):
    count, sums = tff.federated_sum(tff.federated_map(count_and_sums, client_rows))
    mean = tff.federated_map(divide, tff.federated_zip((count, sums)))
    squares = tff.federated_sum(tff.federated_map(
        squares_about, tff.federated_zip((client_rows, tff.federated_broadcast(mean)))))
    std = tff.federated_map(root_mean, tff.federated_zip((count, squares)))
    return tff.federated_zip(dict(count=count, mean=mean, std=std))

  return column_moments_computation


def column_moments(client_rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """The pooled per-column mean and std (ddof = 0) of every client's rows, computed in TFF.

  Runs `build_column_moments_computation` in the current TFF execution context; when none is
  installed, inside a `tff_gan.runtime.contexts.local_cpp_context()` of its own (a worker started
  and stopped for this one call).

  Args:
    client_rows: One float array `[n_k, d]` per client, every n_k >= 1, the same d >= 1, all
      values finite.

  Returns:
    `(mean, std)`, float64 `[d]` each. A constant column's std is 0 up to round-off; see
    `normalization_scale`.

  Raises:
    ValueError: If there are no clients, or a client's rows are empty, of another width, or
      not finite.
  """
  if not client_rows:
    raise ValueError('column_moments needs at least one client; pass a list of [n, d] arrays.')
  arrays = [np.asarray(rows, np.float64) for rows in client_rows]
  num_columns = arrays[0].shape[-1] if arrays[0].ndim == 2 else 0
  for k, rows in enumerate(arrays):
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] != num_columns or not num_columns:
      raise ValueError(f'client {k} holds rows of shape {rows.shape}; every client needs a '
                       f'non-empty [n, {num_columns or "d"}] array with d >= 1.')
    if not np.all(np.isfinite(rows)):
      raise ValueError(f'client {k} holds NaN or infinite values; drop or fix those rows.')
  computation = build_column_moments_computation(num_columns)
  if contexts.execution_context_installed():
    result = computation(arrays)
  else:
    with contexts.local_cpp_context(parallel_clients=1):
      result = computation(arrays)
  return np.asarray(result['mean'], np.float64), np.asarray(result['std'], np.float64)


def normalization_scale(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """`std`, with 1 in place of every constant column's std, for dividing by.

  A column is constant when its std is 0 or at most `CONSTANT_COLUMN_RELATIVE_STD` times its
  |mean| (round-off of the float64 sums). Its values then normalize to (x − mean) / 1 = 0,
  and de-normalizing maps any generator output v back to mean + v: in the column's own units,
  so gaps measured against this scale are absolute for constant columns.
  """
  mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
  constant = std <= CONSTANT_COLUMN_RELATIVE_STD * np.abs(mean)
  return np.where(constant, 1.0, std)
