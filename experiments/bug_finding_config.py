"""Settings of the bug-finding scenario (no TensorFlow import: checked before it loads)."""

from __future__ import annotations

import dataclasses
import os

from tff_gan.run.config import ConfigError, TrainConfig


@dataclasses.dataclass(frozen=True)
class BugFindingConfig:
  """Settings of the bug-finding scenario (`experiments.bug_finding`, `bin/bug_finding.py`).

  The defaults were chosen by measurement (README, "The paper's bug-finding scenario"): the
  smallest ε among the settings tried whose two generators are not collapsed. Each writer
  holds about 6 digits; with batches of 8 over 5 passes it takes 4 discriminator steps, and
  the server answers with 4 generator steps (the short equal blocks dp_fedavg_gan trains
  with) and samples from the generator's average. The small MLP pair trained far better than
  the small DCGAN without noise, and SGD on the writers far better than Adam under noise
  (likely because Adam moves every weight alike, spreading the clipped update thin). The
  noise on the averaged update has norm about z·C·√d / clients_per_round against a signal
  of norm at most C (d: the discriminator's parameters), so quality follows
  clients_per_round / z; Poisson sampling of 20 writers with z = 2 buys a given ratio at a
  smaller ε than 10 writers with z = 1.

  Attributes:
    output_dir: Where `summary.json`, `bug_finding.png`, the samples and one training run
      per population (`lowest_accuracy/`, `highest_accuracy/`) are written.
    num_writers: Simulated writers the digits are spread over.
    inverted_fraction: Fraction of writers whose pixels the app update inverts.
    selection_fraction: Fraction of writers in each selected population.
    rounds, clients_per_round, client_sampling, dp_noise_multiplier, dp_clip, dp_delta,
    batch_size, local_epochs, local_steps, client_optimizer, client_learning_rate,
    server_gen_steps, generator_learning_rate, generator_ema, model, model_width,
    discriminator_width, eval_every, seed: The DP-FedAvg-GAN runs' settings (see
      `bin/train.py --help`), each writer one client: `clients_per_round` writers of a
      population per round (the expected number under Poisson sampling), each taking at
      most `local_steps` discriminator steps (0: no cap) over `local_epochs` passes of its
      data; then the server takes `server_gen_steps` generator steps. Samples come from
      the generator's moving average when `generator_ema` > 0; `discriminator_width` 0
      means `model_width`.
  """

  output_dir: str = 'runs/bug_finding'
  num_writers: int = 300
  inverted_fraction: float = 0.5
  selection_fraction: float = 0.25
  rounds: int = 200
  clients_per_round: int = 20
  client_sampling: str = 'poisson'
  dp_noise_multiplier: float = 2.0
  dp_clip: float = 0.25
  dp_delta: float = 1e-3
  batch_size: int = 8
  local_epochs: int = 5
  local_steps: int = 4
  client_optimizer: str = 'sgd'
  client_learning_rate: float = 0.1
  server_gen_steps: int = 4
  generator_learning_rate: float = 1e-3
  generator_ema: float = 0.98
  model: str = 'mlp'
  model_width: float = 0.125
  discriminator_width: float = 0.0
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
        clients_per_round=self.clients_per_round, client_sampling=self.client_sampling,
        rounds=self.rounds,
        dp_noise_multiplier=self.dp_noise_multiplier, dp_clip=self.dp_clip,
        dp_delta=self.dp_delta, batch_size=self.batch_size, local_epochs=self.local_epochs,
        local_steps=self.local_steps, client_optimizer=self.client_optimizer,
        client_learning_rate=self.client_learning_rate,
        server_gen_steps=self.server_gen_steps,
        generator_learning_rate=self.generator_learning_rate,
        generator_ema=self.generator_ema, model=self.model, model_width=self.model_width,
        discriminator_width=self.discriminator_width,
        eval_every=self.eval_every, checkpoint_every=self.eval_every,
        num_eval_samples=500, seed=self.seed,
        output_dir=os.path.join(self.output_dir, population))
