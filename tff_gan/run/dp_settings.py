"""What a run's differential-privacy flags mean together, checked without TensorFlow.

`TrainConfig.validate` raises the first problem `problem` finds as a `ConfigError`.
"""

from __future__ import annotations

from tff_gan import choices


def problem(config) -> str | None:
  """The first thing wrong with `config`'s DP settings, as one line with its fix; or None."""
  if not config.dp_enabled:
    for name in ('dp_clip', 'dp_adaptive_clip_quantile', 'dp_delta'):
      if getattr(config, name) is not None:
        return (f'--{name} has no effect without --dp_noise_multiplier; set it to turn '
                f'differential privacy on, or drop --{name}.')
    if config.dp_accountant != 'rdp':
      return '--dp_accountant has no effect without --dp_noise_multiplier.'
    if config.dp_unit != 'client':
      return ('--dp_unit=example needs --dp_noise_multiplier (the DP-SGD noise on each '
              "client's discriminator steps).")
    if config.dp_reproducible:
      return '--dp_reproducible has no effect without --dp_noise_multiplier; drop it.'

    return None
  if config.aggregator != 'mean':
    return (f'--aggregator={config.aggregator} cannot be combined with differential privacy, '
            'which brings its own aggregator (clip, sum, noise); drop one.')
  if config.dp_noise_multiplier < 0:
    return f'--dp_noise_multiplier must be >= 0, got {config.dp_noise_multiplier}.'
  if not config.effective_dp_clip > 0:
    return f'--dp_clip must be positive, got {config.dp_clip}.'
  if not 0 < config.effective_dp_delta < 1:
    return f'--dp_delta must be in (0, 1), got {config.dp_delta}.'
  quantile = config.dp_adaptive_clip_quantile
  if quantile is not None and not 0 < quantile < 1:
    return f'--dp_adaptive_clip_quantile must be in (0, 1), got {quantile}.'
  if config.dp_unit == 'example':
    return _example_problem(config)
  if config.dp_reproducible:
    return ('--dp_reproducible applies to --dp_unit=example (DP-FedAvg\'s noise comes from '
            'TFF\'s aggregator); drop it.')
  if config.dp_accountant == 'pld' and config.client_sampling != 'poisson':
    return ('--dp_accountant=pld needs --client_sampling=poisson (PLD does not account for '
            'fixed-size sampling without replacement).')
  return None


def _example_problem(config) -> str | None:
  if config.scheme not in choices.EXAMPLE_DP_SCHEMES:
    return (f'--dp_unit=example trains client discriminators with DP-SGD in '
            f'{" and ".join(choices.EXAMPLE_DP_SCHEMES)}, not --scheme={config.scheme}.')
  if config.loss != 'non_saturating':
    return ('--dp_unit=example clips each real example\'s loss gradient, and the '
            'wasserstein_gp penalty mixes real and generated examples; use '
            '--loss=non_saturating.')
  if config.mode != 'sync':
    return '--dp_unit=example accounts for synchronous rounds; drop --mode=async.'
  if config.dp_adaptive_clip_quantile is not None:
    return ('--dp_adaptive_clip_quantile adapts the clip of whole client updates '
            '(--dp_unit=client); DP-SGD here clips each example to --dp_clip.')
  return None
