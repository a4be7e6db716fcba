"""Validated, frozen configuration of a training run (no TensorFlow import).

`bin/train.py` turns its absl flags into a `TrainConfig`; the library never reads flags.
`validate()` raises `ConfigError` with one line naming the problem and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

from tff_gan import choices
from tff_gan.clients import partition as partition_lib
from tff_gan.run import config_checks


class ConfigError(ValueError):
  """A configuration value is invalid; the message says which and how to fix it."""


# A key `to_json` adds to `config.json` (not a setting) when a DP run makes no privacy claim.
PRIVACY_CLAIM_NOTE = 'privacy_claim'


# The flags whose default depends on the scheme: {name: (default by scheme, otherwise)}.
_PER_SCHEME_DEFAULTS = {
    'local_steps': (choices.DEFAULT_LOCAL_STEPS, 0),
    'client_learning_rate': (choices.DEFAULT_CLIENT_LEARNING_RATE,
                             choices.DEFAULT_CLIENT_LEARNING_RATE['']),
    'client_lr_half_life': (choices.DEFAULT_CLIENT_LR_HALF_LIFE, 0.0),
    'generator_ema': (choices.DEFAULT_GENERATOR_EMA, 0.0),
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that defines a training run (and is written to `config.json`).

  Attributes mirror the flags of `bin/train.py`; see `--help` there for their meaning.
  `local_steps = 0` means no cap on the batches per round. An empty `model` becomes the
  task's default (`choices.DEFAULT_MODELS`, else `mlp`); an empty `partition` becomes
  `natural` for tasks read from files (`choices.FILE_TASKS`) and `iid` otherwise; `num_clients = 0`
  becomes every client of the data under the natural partition and `choices.DEFAULT_NUM_CLIENTS`
  otherwise (the count is then known only once the data is read: `builders.build_population`
  checks it). Differential privacy is on when
  `dp_noise_multiplier` is set; the other `dp_*` fields are then read (unset ones take
  `choices.DEFAULT_DP_CLIP` and `choices.DEFAULT_DP_DELTA`), and setting them without it is
  an error.
  """

  task: str = 'ring'
  data_dir: str = ''
  image_size: int | None = None
  only_digits: bool = True
  conditional: bool = False
  scheme: str = 'fedgan'
  model: str = ''
  model_width: float = 1.0
  discriminator_width: float = 0.0  # 0: model_width.
  num_clients: int = 0
  clients_per_round: int = 0
  rounds: int = 300
  partition: str = ''
  dirichlet_alpha: float = 0.5
  labels_per_client: int = 2
  examples_per_client: int = 0
  local_epochs: int = 1
  local_steps: int | None = None
  batch_size: int = 128
  client_optimizer: str = 'adam'
  client_learning_rate: float | None = None
  client_generator_learning_rate: float | None = None
  client_lr_half_life: float | None = None
  server_optimizer: str = 'sgd'
  server_learning_rate: float = 1.0
  server_lr_half_life: float = 0.0
  loss: str = ''
  proximal_mu: float = 0.0
  proximal_networks: str = 'both'
  aggregator: str = 'mean'
  bits: int | None = None
  hadamard: bool = False
  secure_clip: float | None = None
  secagg_neighbours: int | None = None
  secagg_threshold: int | None = None
  dropout_rate: float = 0.0
  server_gen_steps: int = 0
  generator_learning_rate: float = 1e-3
  discriminator_mixture: str = 'mean'
  sample_anchor: float | None = None
  generator_ema: float | None = None
  discriminator_shards: int = 1
  warm_start_steps: int = 0
  client_sampling: str = 'fixed'
  dp_noise_multiplier: float | None = None
  dp_clip: float | None = None
  dp_adaptive_clip_quantile: float | None = None
  dp_delta: float | None = None
  dp_accountant: str = 'rdp'
  dp_unit: str = 'client'
  dp_noise: str = 'entropy'
  eval: str = 'pooled'
  eval_every: int = 10
  checkpoint_every: int = 10
  num_eval_samples: int = 2500
  seed: int = 0
  output_dir: str = 'runs/demo'
  executor: str = 'local'
  workers: str = ''
  worker_timeout: float = 30.0
  tls_ca: str = ''
  tls_client_cert: str = ''
  tls_client_key: str = ''
  auth_token_file: str = ''
  mode: str = 'sync'
  async_rule: str = 'fedbuff'
  buffer_size: int = 0
  max_concurrent_clients: int = 0
  staleness_exponent: float = 0.5
  fedasync_mixing: float = 0.5
  client_latency: str = ''
  straggler_fraction: float = 0.0
  straggler_slowdown: float = 10.0
  client_timeout: float = 0.0

  def __post_init__(self):
    if self.data_dir.startswith('~'):  # --data_dir=~/x reaches us unexpanded by the shell.
      object.__setattr__(self, 'data_dir', os.path.expanduser(self.data_dir))
    if not self.model:
      object.__setattr__(self, 'model', choices.DEFAULT_MODELS.get(self.task, 'mlp'))
    if not self.partition:
      object.__setattr__(self, 'partition',
                         'natural' if self.task in choices.FILE_TASKS else 'iid')
    if not self.loss:  # GS-WGAN's own loss for gs_wgan.
      object.__setattr__(self, 'loss',
                         'wasserstein_gp' if self.scheme == 'gs_wgan' else 'non_saturating')
    if self.sample_anchor is None:  # Unset: the client-resident schemes' default, else neutral.
      object.__setattr__(self, 'sample_anchor', choices.DEFAULT_SAMPLE_ANCHOR
                         if self.scheme in choices.CLIENT_RESIDENT_SCHEMES else 0.0)
    for name, (by_scheme, otherwise) in _PER_SCHEME_DEFAULTS.items():  # Unset: the scheme's.
      if getattr(self, name) is None:
        object.__setattr__(self, name, by_scheme.get(self.scheme, otherwise))
    if not self.server_gen_steps:
      object.__setattr__(self, 'server_gen_steps',
                         choices.DEFAULT_SERVER_GEN_STEPS.get(self.scheme, 1))
    if not self.num_clients and self.partition != 'natural':
      object.__setattr__(self, 'num_clients', choices.DEFAULT_NUM_CLIENTS)
    if not self.clients_per_round and self.num_clients:  # Else once the data is read.
      object.__setattr__(self, 'clients_per_round',
                         min(choices.DEFAULT_CLIENTS_PER_ROUND, self.num_clients))
    if self.mode == 'async':
      if not self.client_latency:
        object.__setattr__(self, 'client_latency', choices.DEFAULT_ASYNC_LATENCY)
      if not self.buffer_size:
        object.__setattr__(self, 'buffer_size', self.clients_per_round)
      if not self.max_concurrent_clients:  # Twice the buffer, so stragglers do not stall it.
        concurrent = 2 * self.buffer_size
        object.__setattr__(self, 'max_concurrent_clients',
                           min(concurrent, self.num_clients) if self.num_clients else concurrent)

  def with_population(self, num_clients: int) -> TrainConfig:
    """This configuration with `clients_per_round` resolved for `num_clients` clients."""
    if self.clients_per_round:
      return self
    return dataclasses.replace(
        self, clients_per_round=min(choices.DEFAULT_CLIENTS_PER_ROUND, num_clients))

  @property
  def clients_per_aggregation(self) -> int:
    """Client updates each server update aggregates: a round's clients, a FedBuff buffer's,
    or one (FedAsync). The DP aggregator divides by it, and ε is accounted over it."""
    if self.mode == 'sync':
      return self.clients_per_round
    return self.buffer_size if self.async_rule == 'fedbuff' else 1

  @property
  def reads_files(self) -> bool:
    return self.task in choices.FILE_TASKS

  @property
  def effective_image_size(self) -> int:
    return choices.DEFAULT_IMAGE_SIZE if self.image_size is None else self.image_size

  def validate(self) -> TrainConfig:
    """Returns `self` if valid; raises `ConfigError` otherwise."""
    for field in dataclasses.fields(self):  # No setting is NaN or infinite.
      value = getattr(self, field.name)
      if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f'--{field.name} must be a finite number, got {value}.')
    if self.num_clients < 0 or (self.num_clients == 0 and self.partition != 'natural'):
      raise ConfigError(f'--num_clients must be positive (or 0: every client of the data, '
                        f'with --partition=natural), got {self.num_clients}.')
    if self.clients_per_round < 0 or (self.clients_per_round == 0 and self.num_clients):
      raise ConfigError(f'--clients_per_round must be positive (or 0: '
                        f'{choices.DEFAULT_CLIENTS_PER_ROUND}, or every client when the data has '
                        f'fewer), got {self.clients_per_round}.')
    positive = ('rounds', 'local_epochs', 'batch_size',
                'eval_every', 'checkpoint_every', 'num_eval_samples', 'labels_per_client',
                'server_gen_steps')
    for name in positive:
      if getattr(self, name) <= 0:
        raise ConfigError(f'--{name} must be positive, got {getattr(self, name)}.')
    for name in ('client_learning_rate', 'server_learning_rate', 'generator_learning_rate',
                 'model_width'):
      if not getattr(self, name) > 0:
        raise ConfigError(f'--{name} must be positive, got {getattr(self, name)}.')
    rate = self.client_generator_learning_rate
    if rate is not None and not rate > 0:
      raise ConfigError(f'--client_generator_learning_rate must be positive (or unset: '
                        f'--client_learning_rate), got {rate}.')
    if not self.discriminator_width >= 0:
      raise ConfigError(f'--discriminator_width must be positive (or 0: --model_width), got '
                        f'{self.discriminator_width}.')
    if not self.dirichlet_alpha >= choices.MIN_DIRICHLET_ALPHA:
      raise ConfigError(partition_lib.alpha_problem(self.dirichlet_alpha))
    if not 0 <= self.generator_ema < 1:
      raise ConfigError(f'--generator_ema must be in [0, 1) (0: off), got {self.generator_ema}.')
    if not 0 <= self.dropout_rate < 1:
      raise ConfigError(f'--dropout_rate must be in [0, 1), got {self.dropout_rate}.')
    if not self.proximal_mu >= 0:
      raise ConfigError(f'--proximal_mu must be >= 0 (0 is FedAvg), got {self.proximal_mu}.')
    problem = config_checks.scheme_problem(self)
    if problem:
      raise ConfigError(problem)
    if self.scheme == 'fedsgd' and self.proximal_mu:
      raise ConfigError('--proximal_mu needs local training; fedsgd takes no local steps.')
    if self.local_steps < 0:
      raise ConfigError(f'--local_steps must be 0 (no cap) or positive, got {self.local_steps}.')
    if self.examples_per_client < 0:
      raise ConfigError('--examples_per_client must be 0 (split the task\'s dataset) or '
                        f'positive, got {self.examples_per_client}.')
    if self.num_clients and self.clients_per_round > self.num_clients:
      raise ConfigError(f'--clients_per_round={self.clients_per_round} exceeds '
                        f'--num_clients={self.num_clients}; lower it or add clients.')
    allowed_values = {
        'task': choices.TASKS,
        'scheme': choices.SCHEMES,
        'partition': choices.PARTITIONS,
        'client_optimizer': choices.CLIENT_OPTIMIZERS,
        'server_optimizer': choices.SERVER_OPTIMIZERS,
        'loss': choices.LOSSES,
        'client_sampling': choices.CLIENT_SAMPLING,
        'aggregator': choices.AGGREGATORS + choices.SECURE_AGGREGATORS,
        'dp_accountant': choices.DP_ACCOUNTANTS,
        'executor': choices.EXECUTORS,
        'mode': choices.MODES,
        'async_rule': choices.ASYNC_RULES,
        'discriminator_mixture': choices.DISCRIMINATOR_MIXTURES,
        'eval': choices.EVAL_MODES,
        'dp_unit': choices.DP_UNITS,
        'dp_noise': choices.DP_NOISE,
        'proximal_networks': choices.PROXIMAL_NETWORKS,
    }
    for name, allowed in allowed_values.items():
      if getattr(self, name) not in allowed:
        raise ConfigError(f"unknown --{name} '{getattr(self, name)}'; choose one of: "
                          f"{', '.join(allowed)}.")
    if self.proximal_networks != 'both' and not (self.scheme == 'fedgan' and self.proximal_mu):
      raise ConfigError('--proximal_networks chooses which of fedgan\'s client networks '
                        '--proximal_mu pulls back; set --scheme=fedgan and --proximal_mu > 0.')
    if not self.output_dir:
      raise ConfigError('--output_dir must not be empty.')
    self._validate_data()
    self._validate_compression()
    for check in (config_checks.secure_aggregation_problem, config_checks.dp_problem,
                  config_checks.executor_problem, config_checks.timing_problem):
      problem = check(self)
      if problem:
        raise ConfigError(problem)
    return self

  @property
  def latency(self) -> tuple[float, float] | None:
    """`(mu, sigma)` of `client_latency` ('lognormal:MU,SIGMA'), or None if unset."""
    if not self.client_latency:
      return None
    kind, _, parameters = self.client_latency.partition(':')
    values = parameters.split(',')
    try:
      mu, sigma = (float(v) for v in values) if kind == 'lognormal' else (None, None)
    except ValueError:
      mu = sigma = None
    if mu is None or len(values) != 2 or not (math.isfinite(mu) and math.isfinite(sigma)
                                              and sigma >= 0):
      raise ConfigError(f"--client_latency must be 'lognormal:MU,SIGMA' (the log of seconds "
                        "is normal with mean MU and std SIGMA >= 0, e.g. "
                        f"{choices.DEFAULT_ASYNC_LATENCY}),"
                        f" got '{self.client_latency}'.")
    return mu, sigma

  def _validate_data(self) -> None:
    if self.reads_files and not self.data_dir:
      raise ConfigError(f'--task={self.task} reads your files: set --data_dir to the folder '
                        'that holds them (see README, Real data).')
    if not self.reads_files and self.data_dir:
      raise ConfigError('--data_dir applies to tasks read from files '
                        f'({", ".join(choices.FILE_TASKS)}); '
                        f'task {self.task} is embedded: drop --data_dir.')
    if self.image_size is not None:
      if self.task != 'image_folder':
        raise ConfigError('--image_size applies only to --task=image_folder; drop it.')
      if self.image_size < 8 or self.image_size % 4:
        raise ConfigError(f'--image_size must be a multiple of 4, at least 8 (the networks '
                          f'upsample twice by 2), got {self.image_size}.')
    if not self.only_digits and self.task != 'emnist':
      raise ConfigError('--noonly_digits applies only to --task=emnist; drop it.')
    if self.task == 'emnist' and self.partition != 'natural':
      raise ConfigError('--task=emnist is split by writer, read client by client from the '
                        f'file: use --partition=natural, not {self.partition}.')
    if self.task == 'emnist' and self.scheme == 'centralized':
      raise ConfigError('--scheme=centralized pools all examples in memory, which --task=emnist '
                        'does not (it reads each writer on the worker); use a federated scheme.')
    if self.reads_files and self.partition in ('dirichlet', 'pathological') and (
        self.task not in choices.LABELLED_TASKS):
      raise ConfigError(f'--partition={self.partition} skews clients by class, and task '
                        f'{self.task} has no classes; use natural or iid.')
    if self.eval == 'federated' and self.task not in choices.FEDERATED_EVAL_TASKS:
      raise ConfigError(f'--eval=federated trains a classifier on the clients\' labelled images '
                        f'({", ".join(choices.FEDERATED_EVAL_TASKS)}); use --eval=pooled here.')
    if self.conditional and self.task not in choices.LABELLED_TASKS:
      raise ConfigError('--conditional needs a task with classes '
                        f'({", ".join(choices.LABELLED_TASKS)}); '
                        f'task {self.task} has none.')

  @property
  def worker_addresses(self) -> list[str]:
    """`workers` as a list of `host:port` strings."""
    return [address.strip() for address in self.workers.split(',') if address.strip()]

  @property
  def dp_enabled(self) -> bool:
    return self.dp_noise_multiplier is not None

  @property
  def effective_bits(self) -> int:
    return choices.DEFAULT_BITS if self.bits is None else self.bits

  def _validate_compression(self) -> None:
    if self.aggregator != 'compressed':
      for name in ('bits', 'hadamard'):
        if getattr(self, name) not in (None, False):
          raise ConfigError(f'--{name} applies only to --aggregator=compressed; set that, or '
                            f'drop --{name}.')
    elif not 1 <= self.effective_bits <= choices.MAX_BITS:
      raise ConfigError(f'--bits must be from 1 to {choices.MAX_BITS}, got {self.bits}.')

  @property
  def effective_secure_clip(self) -> float:
    return choices.DEFAULT_SECURE_CLIP if self.secure_clip is None else self.secure_clip

  @property
  def effective_dp_clip(self) -> float:
    return choices.DEFAULT_DP_CLIP if self.dp_clip is None else self.dp_clip

  @property
  def effective_dp_delta(self) -> float:
    return choices.DEFAULT_DP_DELTA if self.dp_delta is None else self.dp_delta

  @property
  def client_dp(self) -> bool:
    """DP-FedAvg: each client's whole update clipped and noised (user-level DP)."""
    return self.dp_enabled and self.dp_unit == 'client'

  @property
  def example_dp(self) -> bool:
    """DP-SGD inside each client: each example's gradient clipped and noised."""
    return self.dp_enabled and self.dp_unit == 'example'

  def to_json(self) -> str:
    values = dataclasses.asdict(self)
    if self.dp_enabled and self.dp_noise == 'reproducible':
      values[PRIVACY_CLAIM_NOTE] = ('none: --dp_noise=reproducible derives every DP draw from '
                                    '--seed, so whoever knows the seed can remove the noise')
    return json.dumps(values, indent=2, sort_keys=True)
