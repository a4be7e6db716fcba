"""Your own table, one CSV file per client: `DATA_DIR/<client_id>.csv`, numeric columns.

    root/
      hospital_a.csv    age,weight,systolic      <- a header row of column names
                        54,81.5,130              <- numbers only, one row per record
      hospital_b.csv    age,weight,systolic      <- the same header in every file
                        ...

Every `*.csv` file in `root` is one client, named by the file's stem (hidden files are
ignored). Columns are normalized to zero mean and unit standard deviation with statistics
that a TFF computation forms from per-client sums (`tasks.federated_stats`): no client's
rows are pooled to compute them. The generator then learns the normalized table.

The files are read by `tasks.readers.csv_folder`: every problem with them is a `TabularError`
whose one-line message names the file (and the line and column) and the fix.
"""

from __future__ import annotations

import csv
import functools
import math

import numpy as np

from tasks import base, federated_stats
from tasks.readers.csv_folder import TabularError, load_csv_clients

__all__ = ['TabularError', 'TabularTask', 'correlation_matrix', 'tabular_metrics']

_HELDOUT_FRACTION = 0.2
_SPLIT_SEED = 0  # Fixed: the reference values do not change with --seed.
# In normalized units (real column stds): a column of samples varying less than this is
# constant, and its correlations are taken as 0 (Pearson's are undefined).
_CONSTANT_STD = 1e-6
_MAX_HISTOGRAMS = 8
_HISTOGRAM_COLUMNS = 4
_HISTOGRAM_BINS = 30
_HISTOGRAM_PADDING = 0.25  # Of the real values' range, on each side.
_DPI = 80


def correlation_matrix(values: np.ndarray) -> np.ndarray:
  """Pearson correlations `[d, d]` of the columns of `values` `[n, d]`, n >= 1.

  1 on the diagonal; 0 between a constant column (population std at most 1e-6, in the
  normalized units of this task) and any other, where Pearson's is undefined.
  """
  values = np.asarray(values, np.float64)
  centered = values - values.mean(axis=0)
  std = np.sqrt(np.mean(np.square(centered), axis=0))
  constant = std <= _CONSTANT_STD
  scaled = np.where(constant, 0.0, centered / np.where(constant, 1.0, std))
  correlations = np.clip(scaled.T @ scaled / len(values), -1.0, 1.0)
  np.fill_diagonal(correlations, 1.0)
  if not np.all(np.isfinite(values)):
    correlations[:] = np.nan
  return correlations


def tabular_metrics(real: np.ndarray, samples: np.ndarray) -> dict[str, float]:
  """How far `samples` `[m, d]` are from `real` `[n, d]`, both in the task's normalized units.

  With mean_j, std_j (population, ddof = 0) the column statistics and C the
  `correlation_matrix`es:

  - `mean_gap` = (1/d) Σ_j |mean_j(samples) − mean_j(real)|;
  - `std_gap` = (1/d) Σ_j |std_j(samples) − std_j(real)|;
  - `correlation_distance` = sqrt(Σ_{i≠j} (C_ij(samples) − C_ij(real))² / (d (d − 1))): the
    root-mean-square difference of the off-diagonal correlations, in [0, 2].

  One normalized unit is one standard deviation of the column over all real rows (the
  federated statistics), so the gaps are in units of the real columns' stds (of their
  absolute units for constant columns, see `federated_stats.normalization_scale`). All three
  are 0 for samples with the real rows' statistics, and lower is better. Non-finite samples
  make all three NaN.
  """
  real = np.asarray(real, np.float64)
  samples = np.asarray(samples, np.float64)
  num_columns = real.shape[1]
  off_diagonal = ~np.eye(num_columns, dtype=bool)
  correlation_difference = (correlation_matrix(samples) - correlation_matrix(real))[off_diagonal]
  return {
      'mean_gap': float(np.mean(np.abs(samples.mean(axis=0) - real.mean(axis=0)))),
      'std_gap': float(np.mean(np.abs(samples.std(axis=0) - real.std(axis=0)))),
      'correlation_distance': float(np.sqrt(np.mean(np.square(correlation_difference)))),
  }


class TabularTask(base.Task):
  """Rows of numeric CSV files in `data_dir`, one file per client, normalized per column.

  `examples` are the rows of all files (in the order of `client_ids`, each file's rows in
  file order) as float32 `(x − mean) / std`, with `mean` and `std` (float64 `[d]`, population
  std, 1 for constant columns) from `federated_stats.column_moments`. There are no classes.

  Architecture (`'mlp'`): G = Dense 256 -> ReLU -> Dense 256 -> ReLU -> Dense d (linear);
  D = Dense 256 -> LeakyReLU(0.2) -> Dense 256 -> LeakyReLU(0.2) -> Dense 1; hidden sizes
  times `width`. The generator's output is linear, not tanh: normalized columns are
  unbounded, and skewed ones (incomes, durations) often hold rows many stds out, which any
  fixed tanh scale would cut off; a scale fitted to the data would need the columns'
  extremes, which are single clients' raw values. A linear layer starts at outputs of about
  one std, the scale of the data.

  Metrics (`tabular_metrics`, lower is better): `mean_gap`, `std_gap` (per-column gaps in
  units of the real column's std, averaged over columns) and `correlation_distance` (RMS
  difference of the off-diagonal correlations). Samples are compared with all real rows
  pooled: the simulation's privilege, since a deployment could not pool them.
  `prepare_evaluation` returns the same metrics for a fixed held-out 20% of the real rows
  against the rest: the values of a perfect generator with that many samples.
  """

  name = 'tabular'
  model_choices = ('mlp',)
  metric_names = ('mean_gap', 'std_gap', 'correlation_distance')
  reads_files = True

  def __init__(self, *, data_dir: str, noise_dim: int = 32, seed: int = 0, model: str = 'mlp',
               width: float = 1.0, discriminator_width: float | None = None):
    """Reads the files and normalizes them with federated column statistics.

    The statistics run in the current TFF execution context, or on a worker started for
    them when there is none (`federated_stats.column_moments`).

    Args:
      data_dir: The folder of `<client_id>.csv` files.
      noise_dim: Length of the generator's noise vector.
      seed: Seed of the run (the data does not depend on it).
      model: Only `'mlp'`.
      width: Multiplier of hidden units.
      discriminator_width: The discriminator's own multiplier (None: `width`).

    Raises:
      TabularError: Naming the file (and line and column) that cannot be used, and the fix.
      ValueError: For invalid arguments.
    """
    super().__init__(seed=seed, model=model, width=width,
                     discriminator_width=discriminator_width)
    if isinstance(noise_dim, bool) or not isinstance(noise_dim, int | np.integer) or noise_dim < 1:
      raise ValueError(f'noise_dim must be a positive int, got {noise_dim!r}.')
    self.noise_dim = int(noise_dim)
    table = load_csv_clients(data_dir)
    mean, std = federated_stats.column_moments(list(table.client_rows))
    self.mean = mean
    self.std = federated_stats.normalization_scale(mean, std)
    self.column_names = list(table.column_names)
    self.client_ids = list(table.client_ids)
    self.examples = ((np.concatenate(table.client_rows) - self.mean) / self.std).astype(np.float32)
    sizes = [len(rows) for rows in table.client_rows]
    self.client_indices = np.split(np.arange(len(self.examples)), np.cumsum(sizes)[:-1])
    self.labels = np.zeros(len(self.examples), np.int64)
    self.num_labels = 0
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(self.examples))
    num_heldout = max(1, round(_HELDOUT_FRACTION * len(order)))
    self._heldout, self._rest = order[:num_heldout], order[num_heldout:]

  def networks(self, generator_input_dim: int, discriminator_input_shape: tuple[int, ...]):
    """The generator and discriminator of the class docstring, scaled by `width`."""
    return (
        functools.partial(base.mlp_generator, generator_input_dim,
                          (self.scaled(256), self.scaled(256)), self.data_shape, bounded=False),
        functools.partial(base.mlp_discriminator, discriminator_input_shape,
                          (self.scaled_d(256), self.scaled_d(256))),
    )

  def denormalize(self, samples: np.ndarray) -> np.ndarray:
    """Normalized rows `[M, d]` back in the columns' own units, float64: mean + std · v."""
    return self.mean + self.std * np.asarray(samples, np.float64)

  def sample_exports(self, samples: np.ndarray) -> dict:
    """`csv`: the samples in the columns' own units, with the real files' header."""
    rows = self.denormalize(self._check_samples(samples))

    def write_csv(path: str) -> None:
      with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(self.column_names)
        writer.writerows([repr(float(value)) for value in row] for row in rows)

    return {'csv': write_csv}

  def prepare_evaluation(self, cache_dir: str, clients=None) -> dict[str, float]:
    """The metrics of the held-out real rows against the rest (nothing to cache; pooled only)."""
    super().prepare_evaluation(cache_dir, clients)  # Refuses federated evaluation.
    return tabular_metrics(self.examples[self._rest], self.examples[self._heldout])

  def evaluate(self, samples: np.ndarray) -> dict[str, float]:
    """`tabular_metrics` of normalized `samples` `[M, d]` against all real rows."""
    return tabular_metrics(self.examples, self._check_samples(samples))

  def render(self, samples: np.ndarray, path: str) -> None:
    """Writes a PNG of real against synthetic rows, in the columns' own units, to `path`.

    Top: histograms of the first 8 columns (filled: real; outline: synthetic), over the real
    values' range widened by a quarter on each side; synthetic values beyond it are piled
    into the edge bins, and the title says what fraction was. Bottom: the real and the
    synthetic `correlation_matrix`es side by side (red +1, blue −1). Rows of samples with a
    NaN or infinite value are left out.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 (slow import)
    from matplotlib.figure import Figure  # noqa: PLC0415

    samples = self._check_samples(samples)
    samples = samples[np.all(np.isfinite(samples), axis=1)]
    real, synthetic = self.denormalize(self.examples), self.denormalize(samples)
    num_histograms = min(_MAX_HISTOGRAMS, len(self.column_names))
    grid_columns = min(_HISTOGRAM_COLUMNS, num_histograms)
    grid_rows = math.ceil(num_histograms / grid_columns)
    figure = Figure(figsize=(max(9.0, 3.0 * grid_columns), 2.4 * grid_rows + 4.2), dpi=_DPI,
                    layout='constrained')
    FigureCanvasAgg(figure)
    histogram_figure, correlation_figure = figure.subfigures(2, 1,
                                                             height_ratios=[grid_rows * 2.4, 4.2])
    axes = np.atleast_1d(histogram_figure.subplots(grid_rows, grid_columns)).ravel()
    for column, ax in enumerate(axes):
      if column >= num_histograms:
        ax.set_axis_off()
        continue
      low, high = real[:, column].min(), real[:, column].max()
      padding = _HISTOGRAM_PADDING * (high - low) if high > low else self.std[column]
      bins = np.linspace(low - padding, high + padding, _HISTOGRAM_BINS + 1)
      clipped = np.clip(synthetic[:, column], bins[0], bins[-1])
      outside = np.mean(clipped != synthetic[:, column]) if len(synthetic) else 0.0
      ax.hist(real[:, column], bins=bins, density=True, color='tab:blue', alpha=0.45,
              label='real')
      if len(clipped):
        ax.hist(clipped, bins=bins, density=True, histtype='step', color='tab:red',
                linewidth=1.5, label='synthetic')
      title = self.column_names[column][:24]
      ax.set_title(f'{title} ({outside:.0%} beyond)' if outside else title, fontsize=9)
      ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    matrices = (('real', correlation_matrix(self.examples)),
                ('synthetic', correlation_matrix(samples) if len(samples) else None))
    for ax, (label, matrix) in zip(correlation_figure.subplots(1, 2), matrices, strict=True):
      if matrix is None:
        matrix = np.full((len(self.column_names),) * 2, np.nan)
        label += ' (no finite samples)'
      image = ax.imshow(matrix, vmin=-1, vmax=1, cmap='RdBu_r')
      ax.set_title(f'{label} correlations', fontsize=9)
      if len(self.column_names) <= 16:
        names = [name[:12] for name in self.column_names]
        ticks = np.arange(len(names))
        ax.set_xticks(ticks, names, rotation=90, fontsize=7)
        ax.set_yticks(ticks, names, fontsize=7)
      else:
        ax.tick_params(labelsize=7)
    correlation_figure.colorbar(image, ax=ax, shrink=0.8)
    base.write_figure(figure, path)
