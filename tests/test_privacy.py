"""Privacy accounting against published values and direct `dp_accounting` computations."""

import math
import os
import subprocess
import sys

import dp_accounting
import pytest
from conftest import REPO_ROOT

from tff_gan.privacy import accounting as privacy

PRIVACY = os.path.join(REPO_ROOT, 'bin', 'privacy.py')


def run_privacy(*args):
  return subprocess.run([sys.executable, PRIVACY, *args], capture_output=True, text=True,
                        timeout=120)


def test_known_answer_dp_sgd_mnist_rdp_poisson():
  # tensorflow/privacy's DP-SGD MNIST example: N = 60000, batch 150, z = 1.3, 15 epochs,
  # δ = 1e-5 gives ε = 0.7242234026 with the RDP accountant and Poisson sampling.
  sampling = privacy.Sampling('poisson', num_clients=60000, clients_per_round=150)
  rounds = 15 * 60000 // 150
  eps = privacy.epsilon(dp_accounting.GaussianDpEvent(1.3), sampling, rounds, 1e-5)
  assert eps == pytest.approx(0.7242234026, abs=1e-9)


def test_dp_accounting_version_is_pinned():
  # The known answer above depends on the accountant's default RDP orders.
  from importlib.metadata import version
  assert version('dp-accounting') == '0.4.3'


def test_pld_is_tighter_than_rdp_and_close():
  sampling = privacy.Sampling('poisson', 60000, 150)
  event = dp_accounting.GaussianDpEvent(1.3)
  rdp = privacy.epsilon(event, sampling, 6000, 1e-5, 'rdp')
  pld = privacy.epsilon(event, sampling, 6000, 1e-5, 'pld')
  assert 0.5 * rdp < pld < rdp


def test_fixed_sampling_uses_replace_one_without_replacement():
  sampling = privacy.Sampling('fixed', 1000, 10)
  event = dp_accounting.GaussianDpEvent(1.0)
  reference = dp_accounting.rdp.RdpAccountant(
      neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
  reference.compose(dp_accounting.SampledWithoutReplacementDpEvent(1000, 10, event), 100)
  assert privacy.epsilon(event, sampling, 100, 1e-5) == pytest.approx(
      reference.get_epsilon(1e-5), rel=1e-12)
  with pytest.raises(ValueError, match='PLD'):
    privacy.epsilon(event, sampling, 100, 1e-5, 'pld')


def _exact_gaussian_epsilon(mu: float, delta: float) -> float:
  """ε at δ of a Gaussian mechanism with sensitivity / noise std `mu`: the tight curve
  δ(ε) = Φ(μ/2 − ε/μ) − e^ε Φ(−μ/2 − ε/μ) (Balle & Wang 2018), solved by bisection."""
  phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
  curve = lambda e: phi(mu / 2 - e / mu) - math.exp(e) * phi(-mu / 2 - e / mu)  # noqa: E731
  low, high = 0.0, 500.0
  for _ in range(200):
    middle = (low + high) / 2
    low, high = (middle, high) if curve(middle) > delta else (low, middle)
  return high


@pytest.mark.parametrize('z', [1.0, 3.0])
def test_replace_one_charges_twice_the_clip(z):
  # Every client each round (fixed sampling of all N): T rounds of noise z·C on a sum of
  # updates clipped to C. Replacing one client's data moves the sum by up to 2C, so the
  # mechanism is exactly a Gaussian of sensitivity/std 2√T / z, whose tight ε no sound
  # accountant may undercut.
  rounds, delta = 20, 1e-5
  sampling = privacy.Sampling('fixed', 10, 10)
  exact = _exact_gaussian_epsilon(2 * math.sqrt(rounds) / z, delta)
  charged = privacy.epsilon(privacy.clipped_sum_event(dp_accounting.GaussianDpEvent(z), sampling),
                            sampling, rounds, delta)
  assert exact <= charged <= 1.5 * exact
  # Charging noise z against sensitivity C (the add-or-remove figure) would understate it.
  assert privacy.epsilon(dp_accounting.GaussianDpEvent(z), sampling, rounds, delta) < exact
  out = run_privacy('--num_clients=10', '--clients_per_round=10', f'--rounds={rounds}',
                    f'--noise_multiplier={z}', '--sampling=fixed')
  assert out.returncode == 0, out.stderr
  assert float(out.stdout.split()[0].split('=')[1]) == pytest.approx(charged, rel=1e-5)
  # And the inverse: the noise bin/privacy.py gives for that ε is z again.
  assert privacy.noise_multiplier_for_epsilon(charged, sampling, rounds, delta) == \
      pytest.approx(z, rel=1e-3)


def test_clipped_sum_event_halves_every_gaussian_under_replace_one_only():
  composed = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(2.0),
                                            dp_accounting.SelfComposedDpEvent(
                                                dp_accounting.GaussianDpEvent(4.0), 3)])
  poisson, fixed = privacy.Sampling('poisson', 100, 10), privacy.Sampling('fixed', 100, 10)
  assert privacy.clipped_sum_event(composed, poisson) == composed
  assert privacy.clipped_sum_event(composed, fixed) == dp_accounting.ComposedDpEvent([
      dp_accounting.GaussianDpEvent(1.0),
      dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(2.0), 3)])
  with pytest.raises(ValueError, match='replace-one'):
    privacy.clipped_sum_event(dp_accounting.LaplaceDpEvent(1.0), fixed)


def test_epsilon_grows_with_rounds_and_is_zero_before_any():
  sampling = privacy.Sampling('poisson', 1000, 10)
  event = dp_accounting.GaussianDpEvent(1.0)
  values = [privacy.epsilon(event, sampling, t, 1e-5) for t in (0, 1, 10, 100)]
  assert values[0] == 0.0
  assert values == sorted(values) and values[1] > 0


@pytest.mark.parametrize('method, accountant', [('fixed', 'rdp'), ('poisson', 'rdp'),
                                                ('poisson', 'pld')])
def test_epsilon_curve_equals_a_fresh_accountant_every_round(method, accountant):
  sampling = privacy.Sampling(method, 75, 10)
  event = dp_accounting.GaussianDpEvent(1.1)
  curve = privacy.EpsilonCurve(event, sampling, 1e-3, accountant)
  assert curve(0) == 0.0
  for rounds in (1, 7, 200):
    assert curve(rounds) == pytest.approx(
        privacy.epsilon(event, sampling, rounds, 1e-3, accountant), rel=1e-9)


@pytest.mark.parametrize('method', ['fixed', 'poisson'])
def test_a_round_without_noise_spends_infinite_epsilon(method):
  # dp_accounting's bound for sampling without replacement divides by the noise: a noiseless
  # round (e.g. gs_wgan at sigma = 0, its reference run) must read infinite, not crash.
  sampling = privacy.Sampling(method, 100, 1)
  noiseless = dp_accounting.GaussianDpEvent(0.0)
  curve = privacy.EpsilonCurve(noiseless, sampling, 1e-5)
  assert curve(0) == 0.0 and curve(3) == math.inf
  assert privacy.epsilon(dp_accounting.SelfComposedDpEvent(noiseless, 2), sampling, 1,
                         1e-5) == math.inf


def test_calibration_inverts_epsilon():
  sampling = privacy.Sampling('poisson', 1000, 10)
  target = privacy.epsilon(dp_accounting.GaussianDpEvent(1.1), sampling, 500, 1e-5)
  z = privacy.noise_multiplier_for_epsilon(target, sampling, 500, 1e-5)
  assert z == pytest.approx(1.1, abs=2e-3)
  assert privacy.epsilon(dp_accounting.GaussianDpEvent(z), sampling, 500, 1e-5) <= target + 1e-3


def test_delta_checks_and_warning():
  with pytest.raises(ValueError, match='dp_delta'):
    privacy.epsilon(dp_accounting.GaussianDpEvent(1.0), privacy.Sampling('fixed', 10, 2), 1, 1.0)
  assert '1/num_clients = 0.01' in privacy.delta_warning(0.01, 100)
  assert privacy.delta_warning(1e-5, 100) is None


def test_sampling_rate():
  assert math.isclose(privacy.Sampling('poisson', 200, 10).rate, 0.05)


def test_bin_privacy_reports_the_known_answer_and_inverts_it():
  common = ['--num_clients=60000', '--clients_per_round=150', '--rounds=6000', '--delta=1e-5']
  result = run_privacy(*common, '--noise_multiplier=1.3')
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith('epsilon=0.724223 ')
  result = run_privacy(*common, '--target_epsilon=0.7242234026')
  assert result.returncode == 0, result.stderr
  assert float(result.stdout.split()[0].split('=')[1]) == pytest.approx(1.3, abs=1e-3)


def test_bin_privacy_warns_in_one_line_when_delta_is_at_least_one_over_the_units():
  result = run_privacy('--num_clients=1000', '--clients_per_round=10', '--rounds=5',
                       '--noise_multiplier=1', '--delta=1e-3')
  assert result.returncode == 0 and result.stdout.startswith('epsilon=')
  warnings = [line for line in result.stderr.splitlines() if 'privacy.py: warning' in line]
  assert len(warnings) == 1 and '--delta=0.001 is at least 1/clients = 0.001' in warnings[0]
  result = run_privacy('--num_clients=1000', '--clients_per_round=10', '--rounds=5',
                       '--noise_multiplier=1', '--delta=9e-4')
  assert result.returncode == 0 and 'privacy.py: warning' not in result.stderr


@pytest.mark.parametrize('args, message', [
    (['--num_clients=10', '--clients_per_round=20', '--rounds=5', '--noise_multiplier=1'],
     'clients_per_round must be in'),
    (['--num_clients=100', '--clients_per_round=10', '--rounds=5'], 'exactly one of'),
    (['--num_clients=100', '--clients_per_round=10', '--rounds=5', '--noise_multiplier=-1'],
     'noise_multiplier must be >= 0'),
    (['--num_clients=100', '--clients_per_round=10', '--rounds=5', '--noise_multiplier=1',
      '--delta=1.5'], '--delta must be in (0, 1)'),
    (['--num_clients=100', '--clients_per_round=10', '--rounds=5', '--noise_multiplier=1',
      '--sampling=fixed', '--accountant=pld'], 'PLD accountant does not support'),
    (['--num_clients=100', '--clients_per_round=10', '--rounds=0', '--noise_multiplier=1'],
     '--rounds must be a positive integer'),
])
def test_bin_privacy_usage_errors_exit_2_with_one_line(args, message):
  result = run_privacy(*args)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], result.stderr


def test_pld_calibration_starts_below_rdp_and_hits_the_target():
  # Searching up from z = 1e-3 made PLD discretize distributions too wide for memory
  # (38 GiB at 50,000+ clients); the search now starts from RDP's looser answer.
  # A target of ε = 1 (z near 3.7): PLD's loss distributions are narrower than at ε = 4
  # (z near 1.3), so the search takes half the time; the checks are the same, to 0.25 %.
  sampling = privacy.Sampling('poisson', 100, 50)
  z_rdp = privacy.noise_multiplier_for_epsilon(1.0, sampling, 3, 1e-5, 'rdp')
  z_pld = privacy.noise_multiplier_for_epsilon(1.0, sampling, 3, 1e-5, 'pld')
  assert 0.5 * z_rdp < z_pld < z_rdp
  event = privacy.clipped_sum_event(dp_accounting.GaussianDpEvent(z_pld), sampling)
  assert privacy.epsilon(event, sampling, 3, 1e-5, 'pld') == pytest.approx(1.0, abs=0.0025)


def test_pld_out_of_memory_is_one_line_naming_rdp(monkeypatch):
  def exhausted(*args, **kwargs):
    raise MemoryError
  monkeypatch.setattr(dp_accounting.pld.PLDAccountant, 'compose', exhausted)
  sampling = privacy.Sampling('poisson', 60000, 150)
  with pytest.raises(ValueError, match='ran out of memory.*--accountant=rdp'):
    privacy.epsilon(dp_accounting.GaussianDpEvent(1.0), sampling, 100, 1e-5, 'pld')
  with pytest.raises(ValueError, match='ran out of memory.*--accountant=rdp'):
    privacy.noise_multiplier_for_epsilon(2.0, sampling, 100, 1e-5, 'pld')
