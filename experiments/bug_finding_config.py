"""Settings of the bug-finding scenario (no TensorFlow import: checked before it loads)."""

from __future__ import annotations

import dataclasses
import os

from tff_gan.run.config import ConfigError, TrainConfig


@dataclasses.dataclass(frozen=True)
class BugFindingConfig:
  """Settings of the bug-finding scenario (`experiments.bug_finding`, `bin/bug_finding.py`).

  Attributes:
    output_dir: Where `summary.json`, `bug_finding.png` and one training run per population
      (`lowest_accuracy/`, `highest_accuracy/`) are written.
    num_writers: Simulated writers the digits are spread over.
    inverted_fraction: Fraction of writers whose pixels the app update inverts.
    selection_fraction: Fraction of writers in each selected population.
    rounds, clients_per_round, dp_noise_multiplier, dp_clip, dp_delta, batch_size,
    local_epochs, client_learning_rate, server_gen_steps, generator_learning_rate, model,
    model_width, seed: The DP-FedAvg-GAN runs' settings
      (see `bin/train.py --help`); `clients_per_round` writers of a population per round.
  """

  output_dir: str = 'runs/bug_finding'
  num_writers: int = 300
  inverted_fraction: float = 0.5
  selection_fraction: float = 0.25
  rounds: int = 200
  clients_per_round: int = 10
  dp_noise_multiplier: float = 1.0
  dp_clip: float = 0.1
  dp_delta: float = 1e-3
  batch_size: int = 32
  local_epochs: int = 5
  client_learning_rate: float = 1e-2
  server_gen_steps: int = 2
  generator_learning_rate: float = 1e-3
  model: str = 'dcgan'
  model_width: float = 0.125
  eval_every: int = 50
  seed: int = 0

  def validate(self) -> BugFindingConfig:
    """Returns `self` if valid; raises `ConfigError` with one line otherwise."""
    if self.num_writers < 2:
      raise ConfigError(f'--num_writers must be at least 2, got {self.num_writers}.')
    for name in ('inverted_fraction', 'selection_fraction'):
      if not 0 < getattr(self, name) < 1:
        raise ConfigError(f'--{name} must be in (0, 1), got {getattr(self, name)}.')
    if self.selection_fraction > 0.5:
      raise ConfigError('--selection_fraction must be at most 0.5: the two '
                                   f'populations do not overlap; got {self.selection_fraction}.')
    if self.population_size < self.clients_per_round:
      raise ConfigError(
          f'each population has {self.population_size} writers, fewer than '
          f'--clients_per_round={self.clients_per_round}; lower it or raise --num_writers or '
          '--selection_fraction.')
    self.train_config('lowest_accuracy').validate()
    return self

  @property
  def population_size(self) -> int:
    return max(1, round(self.selection_fraction * self.num_writers))

  def train_config(self, population: str) -> TrainConfig:
    """The `TrainConfig` of the DP-FedAvg-GAN run on one population."""
    return TrainConfig(
        task='digits', scheme='dp_fedavg_gan', partition='natural', num_clients=0,
        clients_per_round=self.clients_per_round, rounds=self.rounds,
        dp_noise_multiplier=self.dp_noise_multiplier, dp_clip=self.dp_clip,
        dp_delta=self.dp_delta, batch_size=self.batch_size, local_epochs=self.local_epochs,
        client_learning_rate=self.client_learning_rate,
        server_gen_steps=self.server_gen_steps,
        generator_learning_rate=self.generator_learning_rate, model=self.model,
        model_width=self.model_width,
        eval_every=self.eval_every, checkpoint_every=self.eval_every,
        num_eval_samples=500, seed=self.seed,
        output_dir=os.path.join(self.output_dir, population))
