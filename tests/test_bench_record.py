"""The DP benchmarks' record of finished runs (`bench/procs.recorded_figures`)."""

from __future__ import annotations

import csv
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'bench'))
import procs  # noqa: E402


def metrics_rows(high_quality: str) -> list[dict[str, str]]:
  """Two rounds of a ring run's metrics.csv, the last evaluated at `high_quality`."""
  return [{'round': '1', 'round_seconds': '30', 'epsilon': '1.5', 'modes_captured': '',
           'high_quality_fraction': '', 'reverse_kl': ''},
          {'round': '2', 'round_seconds': '90', 'epsilon': '2.25', 'modes_captured': '7',
           'high_quality_fraction': high_quality, 'reverse_kl': ''}]


def test_a_run_is_trained_once_then_read_from_the_record(tmp_path, monkeypatch):
  trained = []

  def train_or_read(output_dir, flags, rounds):
    trained.append((output_dir, flags, rounds))
    return metrics_rows('0.8125')

  monkeypatch.setattr(procs, 'train_or_read', train_or_read)
  record = str(tmp_path / 'results' / 'dp.csv')
  run_dir = str(tmp_path / 'runs' / 'dp_eps2_s0')
  first = procs.recorded_figures(record, run_dir, ['--seed=0'], 2, private=True)
  expected = {'epsilon': 2.25, 'modes_captured': 7.0, 'high_quality_fraction': 0.8125,
              'reverse_kl': math.nan, 'minutes': 2.0}
  assert first.keys() == expected.keys()
  for key, value in expected.items():
    assert first[key] == pytest.approx(value, nan_ok=True)
  assert trained == [(run_dir, ['--seed=0'], 2)]

  # The run directory may be gone (a new checkout): the record answers, nothing trains.
  again = procs.recorded_figures(record, run_dir + '/', ['--seed=0'], 2, private=True)
  assert len(trained) == 1
  assert {k: v for k, v in again.items() if k != 'reverse_kl'} == {
      k: v for k, v in first.items() if k != 'reverse_kl'}
  assert math.isnan(again['reverse_kl'])

  # Another run appends one line under the one header; a run without DP records ε = inf.
  procs.recorded_figures(record, str(tmp_path / 'runs' / 'dp_no_dp_s0'), [], 2, private=False)
  with open(record, newline='') as f:
    rows = list(csv.DictReader(f))
  assert [row['run'] for row in rows] == ['dp_eps2_s0', 'dp_no_dp_s0']
  assert rows[1]['epsilon'] == 'inf' and rows[1]['source'].startswith('trained ')
  assert len(trained) == 2


def test_runs_judged_by_different_figures_share_a_record(tmp_path, monkeypatch):
  images = [{'round': '3', 'round_seconds': '60', 'epsilon': '4', 'frechet_distance': '118.5',
             'classifier_score': '4.25'}]
  monkeypatch.setattr(procs, 'train_or_read', lambda *args: images)
  record = str(tmp_path / 'dp.csv')
  digits = procs.recorded_figures(record, str(tmp_path / 'digits_s0'), [], 3, True,
                                  procs.IMAGE_FIGURES)
  monkeypatch.setattr(procs, 'train_or_read', lambda *args: metrics_rows('0.5'))
  ring = procs.recorded_figures(record, str(tmp_path / 'ring_s0'), [], 2, True)
  monkeypatch.setattr(procs, 'train_or_read', lambda *args: pytest.fail('trained again'))
  assert procs.recorded_figures(record, str(tmp_path / 'digits_s0'), [], 3, True,
                                procs.IMAGE_FIGURES) == digits == {
      'epsilon': 4.0, 'frechet_distance': 118.5, 'classifier_score': 4.25, 'minutes': 1.0}
  again = procs.recorded_figures(record, str(tmp_path / 'ring_s0'), [], 2, True)
  assert again['high_quality_fraction'] == ring['high_quality_fraction'] == 0.5


def test_a_recorded_run_keeps_every_evaluation_in_the_curves_csv(tmp_path, monkeypatch, capsys):
  import curves  # noqa: PLC0415  (bench/ is on the path above)

  rows = [{'round': str(r), 'round_seconds': '30', 'epsilon': f'{0.5 * r}',
           'modes_captured': str(r + 4) if r % 2 == 0 else '',
           'high_quality_fraction': f'{0.125 * r}' if r % 2 == 0 else '', 'reverse_kl': ''}
          for r in (1, 2, 3, 4)]
  monkeypatch.setattr(procs, 'train_or_read', lambda *args: rows)
  record = str(tmp_path / 'dp.csv')
  for seed in (0, 1):
    procs.recorded_figures(record, str(tmp_path / f'ring_s{seed}'), [], 4, True)
  curves_csv = str(tmp_path / 'dp_curves.csv')
  assert procs.curves_path(record) == curves_csv
  for seed in (0, 1):  # The evaluated rounds (2 and 4) of each run, as metrics.csv has them.
    kept = [r for r in procs.read_rows(curves_csv) if r['run'] == f'ring_s{seed}']
    assert [(r['round'], r['epsilon'], r['modes_captured'], r['high_quality_fraction'])
            for r in kept] == [('2', '1.0', '6', '0.25'), ('4', '2.0', '8', '0.5')]
    assert all(r['source'].startswith('trained ') for r in kept)
  with open(curves_csv) as f:  # One header for both runs.
    assert f.read().count('run,round') == 1

  # The table: a row a run, a column an evaluated round; a run with no curve is left out.
  curves.print_table(curves_csv, {'seed 0': 'ring_s0', 'seed 1': 'ring_s1', 'old': 'gone'},
                     ('modes_captured', 'high_quality_fraction'))
  table = capsys.readouterr().out.splitlines()
  assert table[1:] == ['| run | 2 | 4 |', '|---|---:|---:|', '| seed 0 | 6 / 0.25 | 8 / 0.5 |',
                       '| seed 1 | 6 / 0.25 | 8 / 0.5 |']
  curves.print_table(curves_csv, {'old': 'gone'}, ('modes_captured',))
  assert capsys.readouterr().out == ''
