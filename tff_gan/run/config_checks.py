"""Checks of a run's settings that span several flags, without TensorFlow.

Each function returns the first problem it finds as one line naming it and the fix, or None;
`TrainConfig.validate` raises it as a `ConfigError`.
"""

from __future__ import annotations

import math
import os

from tff_gan import choices
from tff_gan.runtime.addresses import parse_address

# The trainer's TLS and token files for --executor=remote (`tff_gan.runtime.tls`).
TLS_FILES = ('tls_ca', 'tls_client_cert', 'tls_client_key', 'auth_token_file')


def secure_aggregation_problem(config) -> str | None:
  """The first thing wrong with `--aggregator=he` or `secagg`'s settings, or None.

  Under DP, `he`'s key holder adds DP-FedAvg's noise to the decrypted sum, and `secagg`, which
  has no key holder, is refused. `--scheme=gs_wgan` is the exception: its clients clip and
  noise their feedback before it leaves (`core.feedback.GsSanitizer`), so either sum only adds
  messages that are already private, `--secure_clip` bounds those, and ε is as with `mean`.
  """
  for name in ('secagg_neighbours', 'secagg_threshold'):
    if getattr(config, name) is not None and config.aggregator != 'secagg':
      return f'--{name} applies only to --aggregator=secagg; set that, or drop --{name}.'
  if config.aggregator not in choices.SECURE_AGGREGATORS:
    if config.secure_clip is not None:
      return ('--secure_clip applies only to --aggregator=he or secagg; set one, or drop '
              '--secure_clip.')
    return None
  if not (math.isfinite(config.effective_secure_clip) and config.effective_secure_clip > 0):
    return f'--secure_clip must be a positive number, got {config.secure_clip}.'
  if config.discriminator_mixture == 'universal':
    return (f'--aggregator={config.aggregator} with --discriminator_mixture=universal is not '
            'built: its odds span e^-40 to e^40, beyond a fixed-point sum; use the mean mixture '
            'or --aggregator=mean.')
  if config.mode == 'async' and config.aggregator == 'secagg':
    return ('--aggregator=secagg runs synchronous rounds only (its masks cancel within one '
            "round's clients); drop --mode=async, or use --aggregator=he.")
  if config.aggregator == 'secagg':
    return _secagg_problem(config)
  if config.scheme == 'gs_wgan':  # Its noise is added on the clients: the sum only adds.
    return None
  if config.dp_enabled and config.secure_clip is not None:
    return ('--secure_clip has no effect under differential privacy: the clients clip to '
            '--dp_clip; drop --secure_clip.')
  if config.example_dp:
    return ('--aggregator=he with --dp_unit=example is not built yet; use --dp_unit=client '
            '(the key holder adds the noise) or --aggregator=mean.')
  if config.dp_adaptive_clip_quantile is not None:
    return ('--aggregator=he clips on the clients to a fixed bound; drop '
            '--dp_adaptive_clip_quantile.')
  return None


def _secagg_problem(config) -> str | None:
  # gs_wgan's clients noise their feedback before it leaves, so the server may see the sum.
  if config.dp_enabled and config.scheme != 'gs_wgan':
    return ('--aggregator=secagg with differential privacy is not built yet (the server sees '
            'the sum; the noise would have to come from the clients); use --aggregator=he, '
            'whose key holder adds it, or drop --dp_noise_multiplier.')
  if config.client_sampling != 'fixed':
    return ('--aggregator=secagg needs --client_sampling=fixed (its neighbour count is set for '
            'a round of --clients_per_round clients).')
  from tff_gan.secure import secagg  # noqa: PLC0415  (numpy and cryptography only)
  try:
    secagg.check_params(config.clients_per_round, config.secagg_neighbours,
                        config.secagg_threshold)
  except ValueError as e:
    return str(e)
  return None


def dp_problem(config) -> str | None:
  """The first thing wrong with `config`'s differential-privacy settings, or None."""
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
    if config.dp_noise != 'entropy':
      return f'--dp_noise={config.dp_noise} has no effect without --dp_noise_multiplier; drop it.'
    return None
  if config.aggregator not in ('mean',) + choices.SECURE_AGGREGATORS:
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
  if config.scheme == 'gs_wgan':
    if config.dp_unit == 'example' and config.discriminator_shards < 2:
      return ('--scheme=gs_wgan --dp_unit=example amplifies by the chance 1/K that an '
              "example's shard answers: set --discriminator_shards=K >= 2 (with one "
              "discriminator per client it protects the client's whole data: "
              '--dp_unit=client).')
    if config.dp_accountant != 'rdp':
      return ("--scheme=gs_wgan's rounds are accounted with RDP (PLD does not cover drawing "
              'one discriminator of K); drop --dp_accountant.')
    return None
  if config.dp_unit == 'example':
    return _example_problem(config)
  if config.dp_noise == 'reproducible' and quantile is not None:
    return ('--dp_noise=reproducible cannot seed adaptive clipping (TFF draws its noise from '
            "TF's own generator); drop one.")
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


def timing_problem(config) -> str | None:
  """Simulated client timing and the asynchronous mode's settings."""
  config.latency  # noqa: B018 (parses it, raising ConfigError if malformed)
  if not 0 <= config.straggler_fraction < 1:
    return f'--straggler_fraction must be in [0, 1), got {config.straggler_fraction}.'
  if not config.straggler_slowdown >= 1:
    return f'--straggler_slowdown must be >= 1, got {config.straggler_slowdown}.'
  if not config.client_timeout >= 0:
    return f'--client_timeout must be >= 0 (0: automatic), got {config.client_timeout}.'
  if not config.client_latency and (config.straggler_fraction or config.client_timeout):
    return ('--straggler_fraction and --client_timeout need --client_latency (or '
            '--mode=async, which defaults it).')
  if config.mode == 'sync':
    async_only = {'async_rule': 'fedbuff', 'buffer_size': 0, 'max_concurrent_clients': 0,
                  'staleness_exponent': 0.5, 'fedasync_mixing': 0.5}
    for name, neutral in async_only.items():
      if getattr(config, name) != neutral:
        return f'--{name} applies to --mode=async; set that, or drop --{name}.'
    return None
  if config.scheme == 'centralized':
    return '--mode=async needs clients; --scheme=centralized has none.'
  if config.scheme in ('multi_d', 'gs_wgan', 'scaffold'):
    return f'--mode=async is not built for --scheme={config.scheme}; use --mode=sync.'
  if config.client_sampling != 'fixed':
    return ('--client_sampling has no meaning in --mode=async, where a client is drawn '
            'whenever one finishes; drop it.')
  if not config.clients_per_round:  # Resolved once the data is read; so are the next two.
    return None
  if config.buffer_size < 1 or config.max_concurrent_clients < 1:
    return '--buffer_size and --max_concurrent_clients must be positive.'
  if config.async_rule == 'fedbuff' and config.max_concurrent_clients < config.buffer_size:
    return (f'--max_concurrent_clients={config.max_concurrent_clients} is below '
            f'--buffer_size={config.buffer_size}: the buffer could never fill.')
  if config.num_clients and config.max_concurrent_clients > config.num_clients:
    return (f'--max_concurrent_clients={config.max_concurrent_clients} exceeds '
            f'--num_clients={config.num_clients}; lower it.')
  if not config.staleness_exponent >= 0:
    return (f'--staleness_exponent must be >= 0 (0: no staleness discount), got '
            f'{config.staleness_exponent}.')
  if not 0 < config.fedasync_mixing <= 1:
    return f'--fedasync_mixing must be in (0, 1], got {config.fedasync_mixing}.'
  return None


def executor_problem(config) -> str | None:
  """Where the computations run: the local worker, or the listed remote ones."""
  if not config.worker_timeout > 0:
    return f'--worker_timeout must be positive (seconds), got {config.worker_timeout}.'
  secure = {name: getattr(config, name) for name in TLS_FILES if getattr(config, name)}
  if config.executor == 'local':
    if config.workers:
      return '--workers needs --executor=remote; drop it to train on a local worker.'
    if secure:
      return (f'--{next(iter(secure))} applies to --executor=remote (a local worker is '
              'reached only by this process); drop it.')
    return None
  if bool(config.tls_client_cert) != bool(config.tls_client_key):
    return '--tls_client_cert and --tls_client_key go together; give both or neither.'
  if secure and not config.tls_ca:
    return (f'--{next(iter(secure))} needs --tls_ca (the CA that signed the workers\' '
            'certificates): gRPC sends tokens and client certificates only over TLS.')
  for name, path in secure.items():
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
      return f'--{name}={path} is not a readable file; check the path.'

  if not config.worker_addresses:
    return ('--executor=remote needs --workers=host:port[,host:port...] (start each with '
            'bin/worker.py).')
  for address in config.worker_addresses:
    try:
      parse_address(address)
    except ValueError as e:
      return f'--workers: {e}'
  if len(set(config.worker_addresses)) < len(config.worker_addresses):
    return f'--workers lists a worker twice ({config.workers}); list each once.'
  return None


def scheme_problem(config) -> str | None:
  """The first flag the run's scheme has no use for or cannot take, or None."""
  reason, unused = choices.SCHEME_UNUSED_FLAGS.get(config.scheme, ('', {}))
  resident = config.scheme in choices.CLIENT_RESIDENT_SCHEMES  # Its feedback is aggregated.
  if resident and config.aggregator not in ('mean',) + choices.SECURE_AGGREGATORS:
    return (f'--aggregator={config.aggregator} is not built for --scheme={config.scheme}, '
            "whose clients' feedback is averaged with mean or summed securely with he or "
            'secagg; use one of those.')
  for name, neutral in unused.items():
    if getattr(config, name) != neutral and not (resident and name == 'aggregator'):
      return f'--{name} has no meaning for --scheme={config.scheme}, {reason}; drop it.'
  if config.discriminator_shards != 1 and (config.scheme != 'gs_wgan'
                                           or config.discriminator_shards < 1):
    return (f'--discriminator_shards must be >= 1 and applies to --scheme=gs_wgan; got '
            f'{config.discriminator_shards} with --scheme={config.scheme}.')
  if config.warm_start_steps and (config.scheme not in choices.CLIENT_RESIDENT_SCHEMES
                                  or config.warm_start_steps < 0 or config.mode != 'sync'):
    return (f'--warm_start_steps pretrains the discriminators clients keep (--scheme=multi_d '
            f'or gs_wgan, --mode=sync) and must be >= 0; got {config.warm_start_steps} with '
            f'--scheme={config.scheme} --mode={config.mode}.')
  for name, unit in (('client_lr_half_life', 'rounds'), ('server_lr_half_life', 'server steps')):
    value = getattr(config, name)
    if not (math.isfinite(value) and value >= 0):
      return f'--{name} must be a number of {unit} >= 0 (0: constant), got {value}.'
  if config.client_generator_learning_rate is not None and config.scheme not in (
      'fedgan', 'centralized'):
    return (f"--client_generator_learning_rate sets the clients' generator steps of "
            f'--scheme=fedgan or centralized, not of --scheme={config.scheme}; drop it'
            + (' (its server trains the generator: --generator_learning_rate).'
               if config.scheme in choices.DEFAULT_SERVER_GEN_STEPS else '.'))
  if config.client_lr_half_life and config.scheme != 'scaffold':
    return '--client_lr_half_life is built for --scheme=scaffold; use that, or drop it.'
  if config.scheme not in choices.CLIENT_RESIDENT_SCHEMES:
    for name, neutral in (('discriminator_mixture', 'mean'), ('sample_anchor', 0.0)):
      if getattr(config, name) != neutral:
        return f'--{name} applies to --scheme=multi_d or gs_wgan; set one, or drop it.'
    return None
  if not (math.isfinite(config.sample_anchor) and config.sample_anchor >= 0):
    return f'--sample_anchor must be a finite number >= 0, got {config.sample_anchor}.'
  if config.dp_enabled != (config.scheme == 'gs_wgan'):
    return ('--scheme=multi_d sends unsanitized feedback; for differential privacy use '
            '--scheme=gs_wgan, or drop --dp_noise_multiplier.' if config.dp_enabled else
            '--scheme=gs_wgan sanitizes with noise: set --dp_noise_multiplier (sigma), or use '
            '--scheme=multi_d.')
  if config.num_clients > choices.MAX_CLIENT_RESIDENT_DISCRIMINATORS:
    return (f'--scheme={config.scheme} keeps a discriminator per client, for at most '
            f'{choices.MAX_CLIENT_RESIDENT_DISCRIMINATORS} clients; got --num_clients='
            f'{config.num_clients}: use fewer clients or another scheme.')
  if config.discriminator_mixture == 'universal' and config.loss != 'non_saturating':
    return ('--discriminator_mixture=universal reads odds off the discriminators, which a '
            'Wasserstein critic does not estimate; use mean.')
  return None
