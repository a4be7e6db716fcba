"""The DP-FedAvg-GAN bug-finding scenario: writers, inversion, selection, the two runs, the grid."""

import json
import os
import subprocess
import sys

import dp_accounting
import numpy as np
import pytest
import scipy.linalg
from conftest import REPO_ROOT
from PIL import Image

from experiments import bug_finding
from experiments.bug_finding_config import BugFindingConfig
from tasks.digits import DigitsTask
from tff_gan.privacy import accounting as privacy
from tff_gan.run import config as config_lib


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
  task = DigitsTask()
  task.prepare_evaluation(str(tmp_path_factory.mktemp('classifier')))
  return task


def reference_frechet_distance(a, b):
  """The textbook formula with scipy's general matrix square root: the independent check."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  root = scipy.linalg.sqrtm(cov_a @ cov_b).real
  gap = a.mean(axis=0) - b.mean(axis=0)
  return float(gap @ gap + np.trace(cov_a + cov_b - 2 * root))


def deployed_features(task, images):
  """The digits task's own feature extractor for its `frechet_distance` (its classifier)."""
  return task._classifier.activations(np.asarray(images, np.float32))


def test_the_update_inverts_exactly_the_chosen_writers(digits):
  writers = bug_finding.make_writers(digits, num_writers=50, inverted_fraction=0.3, seed=4)
  assert writers.inverted.sum() == 15
  assert sorted(np.concatenate(writers.client_indices)) == list(range(len(digits.examples)))
  for writer, indices in enumerate(writers.client_indices):
    sign = -1 if writers.inverted[writer] else 1
    np.testing.assert_array_equal(writers.examples[indices], sign * digits.examples[indices])
  np.testing.assert_array_equal(writers.labels, digits.labels)


def test_lowest_accuracy_writers_are_the_inverted_ones(digits):
  writers = bug_finding.make_writers(digits, num_writers=40, inverted_fraction=0.5, seed=0)
  accuracies = bug_finding.writer_accuracies(digits, writers)
  # Independent reference: the classifier's predictions, writer by writer.
  for writer in (0, 7, 39):
    indices = writers.client_indices[writer]
    expected = np.mean(digits.predict_labels(writers.examples[indices]) == writers.labels[indices])
    assert accuracies[writer] == pytest.approx(expected)
  selected = bug_finding.select_populations(accuracies, 10)
  assert writers.inverted[selected['lowest_accuracy']].all()
  assert not writers.inverted[selected['highest_accuracy']].any()


def test_selection_breaks_ties_by_writer_id():
  selected = bug_finding.select_populations(np.array([0.5, 0.0, 0.5, 1.0, 0.5]), 2)
  np.testing.assert_array_equal(selected['lowest_accuracy'], [0, 1])
  np.testing.assert_array_equal(selected['highest_accuracy'], [3, 4])


def test_bright_background_fraction():
  dark = -np.ones((3, 8, 8, 1))
  bright = np.ones((2, 8, 8, 1))
  bright[:, 2:6, 2:6] = -1  # Dark strokes inside: the border is what counts.
  assert bug_finding.bright_background_fraction(np.concatenate([dark, bright])) == 0.4


def test_population_task_holds_the_selected_writers_as_clients(digits):
  writers = bug_finding.make_writers(digits, num_writers=20, inverted_fraction=0.5, seed=1)
  task = bug_finding.WriterPopulationTask(writers, np.array([3, 11]))
  assert task.client_ids == ['writer_3', 'writer_11']
  for k, writer in enumerate((3, 11)):
    np.testing.assert_array_equal(task.examples[task.client_indices[k]],
                                  writers.examples[writers.client_indices[writer]])
  np.testing.assert_array_equal(task.reference_images, digits.examples)  # Scored vs clean.


def test_frechet_distances_use_the_digits_metric_features_and_reference(digits, tmp_path):
  deployed = bug_finding.DeployedDigitsTask()
  deployed.prepare_evaluation(str(tmp_path))
  references = deployed.reference_digits()
  clean = digits.reference_images[digits.classifier_indices]  # What the metric compares with.
  np.testing.assert_array_equal(references['clean'], clean)
  np.testing.assert_array_equal(references['inverted'], -clean)
  np.testing.assert_allclose(deployed.features(clean[:50]), deployed_features(digits, clean[:50]),
                             rtol=1e-5, atol=1e-5)
  features = {kind: deployed.features(images) for kind, images in references.items()}
  to_clean = bug_finding.frechet_distances(deployed, clean, features)
  assert to_clean['clean'] == pytest.approx(0, abs=1e-3)  # The reference against itself.
  expected = reference_frechet_distance(features['clean'], features['inverted'])
  assert to_clean['inverted'] == pytest.approx(expected, rel=1e-3)
  assert to_clean['inverted'] > 100  # The inversion is far, on the deployed features.
  # A sample of clean digits matches clean digits, and digits the update inverted the others.
  assert digits.evaluate(clean[::3])['frechet_distance'] == pytest.approx(
      bug_finding.frechet_distances(deployed, clean[::3], features)['clean'], rel=1e-4)
  to_inverted = bug_finding.frechet_distances(deployed, -clean[::3], features)
  assert to_inverted['inverted'] < 10 < 100 < to_inverted['clean']


@pytest.mark.parametrize('changes, message', [
    (dict(selection_fraction=0.6), 'at most 0.5'),
    (dict(inverted_fraction=1.0), 'in (0, 1)'),
    (dict(num_writers=20, clients_per_round=10), 'fewer than --clients_per_round'),
])
def test_bad_settings_are_refused(changes, message):
  with pytest.raises(config_lib.ConfigError, match=message.replace('(', r'\(').replace(')', r'\)')):
    BugFindingConfig(**changes).validate()


def test_bin_bug_finding_refuses_bad_flags_before_training(tmp_path):
  result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, 'bin', 'bug_finding.py'),
                           '--selection_fraction=0.7', f'--output_dir={tmp_path}'],
                          capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
  assert result.returncode == 2 and 'at most 0.5' in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1 and not os.listdir(tmp_path)


def test_bin_bug_finding_writes_the_grid_the_budget_and_the_distances(tmp_path, digits):
  args = ['--num_writers=40', '--clients_per_round=4', '--rounds=3', '--eval_every=3',
          '--model_width=0.0625', '--discriminator_width=0.03125', '--local_steps=2',
          '--generator_ema=0.5', '--client_optimizer=adam', '--client_sampling=poisson',
          '--dp_noise_multiplier=1.5', '--noprogress', f'--output_dir={tmp_path}']
  result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, 'bin', 'bug_finding.py'),
                           *args], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
  assert result.returncode == 0, result.stderr
  summary = json.loads((tmp_path / 'summary.json').read_text())
  expected_epsilon = privacy.epsilon(
      dp_accounting.GaussianDpEvent(1.5), privacy.Sampling('poisson', 10, 4), 3, 1e-3)
  # The deployed classifier the run cached, loaded the digits task's way.
  deployed = DigitsTask()
  deployed.prepare_evaluation(str(tmp_path / 'classifier'))
  clean = deployed.reference_images[deployed.classifier_indices]
  references = {'clean': deployed_features(deployed, clean),
                'inverted': deployed_features(deployed, -clean)}
  for name in bug_finding.POPULATIONS:
    population = summary['populations'][name]
    assert len(population['writers']) == 10
    assert population['epsilon'] == pytest.approx(expected_epsilon, rel=1e-6)
    assert population['delta'] == 1e-3
    samples = np.load(tmp_path / bug_finding.samples_file(name))
    assert samples.shape == (bug_finding.NUM_SAMPLES, 8, 8, 1)
    assert population['bright_background_fraction'] == bug_finding.bright_background_fraction(
        samples)
    features = deployed_features(deployed, samples)
    for kind in bug_finding.DIGIT_KINDS:
      assert population['frechet_distance'][kind] == pytest.approx(
          reference_frechet_distance(references[kind], features), rel=1e-3, abs=1e-2)
    config = json.loads((tmp_path / name / 'config.json').read_text())
    assert {key: config[key] for key in (
        'local_steps', 'generator_ema', 'client_optimizer', 'client_sampling',
        'discriminator_width', 'model', 'scheme')} == {
            'local_steps': 2, 'generator_ema': 0.5, 'client_optimizer': 'adam',
            'client_sampling': 'poisson', 'discriminator_width': 0.03125, 'model': 'mlp',
            'scheme': 'dp_fedavg_gan'}
  real = summary['real_frechet_distance']  # Held-out real digits: the scale to read them by.
  for kind in bug_finding.DIGIT_KINDS:
    heldout = deployed.reference_images[deployed.heldout_indices] * (1 if kind == 'clean' else -1)
    for reference in bug_finding.DIGIT_KINDS:
      assert real[kind][reference] == pytest.approx(reference_frechet_distance(
          references[reference], deployed_features(deployed, heldout)), rel=1e-3, abs=1e-2)
    other = 'inverted' if kind == 'clean' else 'clean'
    assert real[kind][kind] < 10 < 100 < real[kind][other]
  assert summary['populations']['lowest_accuracy']['inverted_writers'] == 10
  assert summary['populations']['highest_accuracy']['inverted_writers'] == 0
  with Image.open(tmp_path / 'bug_finding.png') as grid:
    assert grid.size[0] > grid.size[1] > 100
  assert 'epsilon=' in result.stdout and 'Frechet distance to clean digits' in result.stdout
