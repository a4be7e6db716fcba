"""The DP-FedAvg-GAN bug-finding scenario: writers, inversion, selection, the two runs, the grid."""

import json
import os
import subprocess
import sys

import dp_accounting
import numpy as np
import pytest
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


def test_bin_bug_finding_writes_the_grid_and_the_budget(tmp_path):
  args = ['--num_writers=40', '--clients_per_round=4', '--rounds=3', '--eval_every=3',
          '--model_width=0.0625', '--noprogress', f'--output_dir={tmp_path}']
  result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, 'bin', 'bug_finding.py'),
                           *args], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
  assert result.returncode == 0, result.stderr
  summary = json.loads((tmp_path / 'summary.json').read_text())
  expected_epsilon = privacy.epsilon(
      dp_accounting.GaussianDpEvent(1.0), privacy.Sampling('fixed', 10, 4), 3, 1e-3)
  for name in bug_finding.POPULATIONS:
    population = summary['populations'][name]
    assert len(population['writers']) == 10
    assert population['epsilon'] == pytest.approx(expected_epsilon, rel=1e-6)
    assert 0 <= population['bright_background_fraction'] <= 1
  assert summary['populations']['lowest_accuracy']['inverted_writers'] == 10
  assert summary['populations']['highest_accuracy']['inverted_writers'] == 0
  with Image.open(tmp_path / 'bug_finding.png') as grid:
    assert grid.size[0] > grid.size[1] > 100
  assert 'epsilon=' in result.stdout
