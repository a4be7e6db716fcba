"""Reading `root/<client_id>/*.png|jpg` folders: shapes, pixel values, clients, clear errors;
the `image_folder` task: natural clients, networks, metrics, bin/train."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT
from PIL import Image

import tasks
from tasks import evaluation
from tasks.image_folder import ImageFolderTask, image_folder_metrics, pooled
from tasks.readers.image_folder import ImageFolderError, load_image_folder


def save(path, mode, size, color, format_=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new(mode, size, color).save(path, format=format_)
  return path


def test_grayscale_clients_in_folder_order(tmp_path):
  save(tmp_path / 'b' / 'one.jpg', 'L', (12, 10), 0)
  save(tmp_path / 'a' / 'white.png', 'L', (10, 12), 255)
  save(tmp_path / 'a' / 'black.png', 'L', (7, 7), 0)
  (tmp_path / 'a' / '.hidden.png').write_bytes(b'ignored')
  (tmp_path / 'a' / 'notes.txt').write_text('ignored')
  (tmp_path / 'stray.png').write_bytes(b'ignored: not in a client folder')
  folder = load_image_folder(str(tmp_path), image_size=8)
  assert folder.client_ids == ('a', 'b') and folder.channels == 1
  assert folder.examples.shape == (3, 8, 8, 1) and folder.examples.dtype == np.float32
  assert [list(i) for i in folder.client_indices] == [[0, 1], [2]]
  np.testing.assert_array_equal(folder.examples[0], -1.0)  # a/black.png, files sorted.
  np.testing.assert_array_equal(folder.examples[1], 1.0)   # a/white.png
  np.testing.assert_allclose(folder.examples[2], -1.0, atol=0.02)  # JPEG rounding.


def test_colour_images_keep_three_channels(tmp_path):
  save(tmp_path / 'x' / 'red.png', 'RGB', (5, 5), (255, 0, 0))
  (tmp_path / 'x' / 'blue_palette.png').parent.mkdir(exist_ok=True)
  Image.new('RGB', (5, 5), (0, 0, 255)).convert('P').save(tmp_path / 'x' / 'blue_palette.png')
  folder = load_image_folder(str(tmp_path), image_size=4)
  assert folder.channels == 3 and folder.examples.shape == (2, 4, 4, 3)
  np.testing.assert_array_equal(folder.examples[0][0, 0], [-1.0, -1.0, 1.0])  # blue, sorted
  np.testing.assert_array_equal(folder.examples[1][0, 0], [1.0, -1.0, -1.0])  # red.png


def test_a_palette_of_greys_is_grayscale(tmp_path):
  save(tmp_path / 'x' / 'grey.png', 'L', (5, 5), 51)
  (tmp_path / 'x' / 'grey').mkdir()  # A folder inside a client folder is not an image.
  Image.new('L', (5, 5), 204).convert('P').save(tmp_path / 'x' / 'grey_palette.png')
  folder = load_image_folder(str(tmp_path), image_size=4)
  assert folder.channels == 1
  np.testing.assert_allclose(folder.examples[:, 0, 0, 0], [51 / 127.5 - 1, 204 / 127.5 - 1])


@pytest.mark.parametrize('layout, message', [
    ('missing', 'is not a folder'),
    ('no_clients', 'holds no client folders'),
    ('empty_client', 'client folder .*empty_one holds no .png'),
    ('corrupt', 'broken.png is not a readable PNG or JPEG'),
    ('mixed', 'mixes grayscale and colour images .*grey.png is grayscale, .*colour.png is colour'),
])
def test_bad_folders_get_one_clear_error(tmp_path, layout, message):
  root = tmp_path / 'data'
  if layout != 'missing':
    root.mkdir()
  if layout == 'empty_client':
    save(root / 'full' / 'a.png', 'L', (4, 4), 9)
    (root / 'empty_one').mkdir()
  if layout == 'corrupt':
    (root / 'c').mkdir()
    (root / 'c' / 'broken.png').write_bytes(b'not an image')
  if layout == 'mixed':
    save(root / 'a' / 'grey.png', 'L', (4, 4), 9)
    save(root / 'b' / 'colour.png', 'RGB', (4, 4), (1, 2, 3))
  with pytest.raises(ImageFolderError, match=message) as error:
    load_image_folder(str(root), image_size=8)
  assert '\n' not in str(error.value)


def test_sixteen_bit_grey_reads_on_the_eight_bit_scale(tmp_path):
  # A 16-bit PNG used to become all white (Pillow's convert('L') clips above 255).
  ramp = (np.arange(16 * 16).reshape(16, 16) * 257).astype(np.uint16)  # 0..65535.
  (tmp_path / 'deep').mkdir()
  (tmp_path / 'shallow').mkdir()
  Image.fromarray(ramp).save(tmp_path / 'deep' / 'x.png')
  Image.fromarray((ramp // 257).astype(np.uint8)).save(tmp_path / 'shallow' / 'x.png')
  assert Image.open(tmp_path / 'deep' / 'x.png').mode.startswith('I;16')
  folder = load_image_folder(str(tmp_path), 16)
  deep, shallow = (folder.examples[indices] for indices in folder.client_indices)
  assert folder.channels == 1
  np.testing.assert_allclose(deep, shallow, atol=1e-5)
  assert deep.min() == -1 and deep.max() == 1


def test_image_size_must_be_usable(tmp_path):
  with pytest.raises(ImageFolderError, match='at least 4'):
    load_image_folder(str(tmp_path), image_size=2)


# The task on top of the reader: natural clients, networks sized to the images, metrics,
# and bin/train end to end.

def write_hospitals(root, *, sizes=(5, 7, 6), side=12, seed=0):
  """Colour images: hospital k's are noise around gray level 60 + 40 k."""
  rng = np.random.default_rng(seed)
  for k, size in enumerate(sizes):
    for i in range(size):
      pixels = np.clip(60 + 40 * k + rng.normal(0, 20, (side, side, 3)), 0, 255)
      save_array(root / f'hospital_{k}' / f'{i:02d}.png', pixels.astype(np.uint8))
  return root


def save_array(path, pixels):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).save(path)


def test_task_clients_are_the_folders_and_networks_fit_the_images(tmp_path):
  root = write_hospitals(tmp_path / 'data')
  task = ImageFolderTask(data_dir=str(root), image_size=8, width=0.125)
  assert task.client_ids == ['hospital_0', 'hospital_1', 'hospital_2']
  assert task.data_shape == (8, 8, 3) and not task.labelled
  population = task.natural_population()
  np.testing.assert_array_equal(population.client_sizes, [5, 7, 6])
  np.testing.assert_array_equal(population.client_examples(1),
                                load_image_folder(str(root), 8).examples[5:12])
  for model in ('dcgan', 'mlp'):
    models = tasks.get_task('image_folder', data_dir=str(root), image_size=8, model=model,
                            width=0.125).gan_models()
    samples = models.generator_fn()(np.zeros((2, models.noise_dim), np.float32))
    assert samples.shape == (2, 8, 8, 3)
    assert models.discriminator_fn()(samples).shape == (2, 1)


def test_metrics_against_numpy(tmp_path):
  rng = np.random.default_rng(1)
  images = rng.uniform(-1, 1, size=(40, 12, 12, 1))
  # The largest divisor of 12 that is at most 8 is 6: blocks of 2x2 pixels.
  expected = images.reshape(40, 6, 2, 6, 2, 1).mean(axis=(2, 4)).reshape(40, -1)
  np.testing.assert_allclose(pooled(images), expected)
  same = image_folder_metrics(images, images)
  assert same['pixel_frechet_distance'] == pytest.approx(0, abs=1e-6)
  assert same['mean_image_rmse'] == 0
  shifted = image_folder_metrics(images, images + 0.25)
  assert shifted['mean_image_rmse'] == pytest.approx(0.25)
  # A shift moves only the means: d² = ‖0.25·1‖² over the 36 pooled pixels.
  assert shifted['pixel_frechet_distance'] == pytest.approx(36 * 0.25**2, rel=1e-6)
  other = rng.uniform(-0.5, 0.5, size=(30, 12, 12, 1))
  assert image_folder_metrics(images, other)['pixel_frechet_distance'] == pytest.approx(
      evaluation.frechet_distance(pooled(images), pooled(other)))
  root = write_hospitals(tmp_path / 'data', sizes=(10, 10))
  task = ImageFolderTask(data_dir=str(root), image_size=8)
  reference = task.prepare_evaluation(str(tmp_path / 'cache'))
  assert set(reference) == set(task.metric_names)
  assert task.evaluate(task.examples)['mean_image_rmse'] == 0


@pytest.fixture(scope='module')
def hospitals(tmp_path_factory):
  return write_hospitals(tmp_path_factory.mktemp('hospitals'))


def run_train(*args):
  return subprocess.run([sys.executable, f'{REPO_ROOT}/bin/train.py', '--task=image_folder',
                         '--image_size=8', '--model_width=0.125', '--batch_size=4',
                         '--eval_every=1', '--num_eval_samples=64', '--noprogress', *args],
                        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)


def test_bin_train_trains_on_the_folders(hospitals, tmp_path):
  result = run_train(f'--data_dir={hospitals}', '--rounds=2', '--clients_per_round=2',
                     f'--output_dir={tmp_path}')
  assert result.returncode == 0, result.stderr
  config = json.loads((tmp_path / 'config.json').read_text())
  assert (config['partition'], config['num_clients'], config['model']) == ('natural', 0, 'dcgan')
  with open(tmp_path / 'metrics.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 2
  sampled_sizes = {5, 6, 7}
  for row in rows:  # Two whole folders each round: one pass over each client's images.
    assert int(row['num_examples']) in {a + b for a in sampled_sizes for b in sampled_sizes}
    assert float(row['pixel_frechet_distance']) >= 0
  assert sorted(os.listdir(tmp_path / 'samples')) == ['round_00001.png', 'round_00002.png']


def test_unset_clients_per_round_fits_three_hospitals_and_resumes(hospitals, tmp_path):
  # The default (10) used to stop with an error about a flag the user never set.
  for rounds in (1, 2):  # The second run resumes: the resolved value matches the saved one.
    result = run_train(f'--data_dir={hospitals}', f'--rounds={rounds}', f'--output_dir={tmp_path}')
    assert result.returncode == 0, result.stderr
  assert json.loads((tmp_path / 'config.json').read_text())['clients_per_round'] == 3
  with open(tmp_path / 'metrics.csv', newline='') as f:
    assert [int(row['clients']) for row in csv.DictReader(f)] == [3, 3]


@pytest.mark.parametrize('args, message', [
    (('--num_clients=4',), 'exceeds the 3 clients'),
    (('--partition=dirichlet',), 'has no classes'),
    (('--image_size=10',), 'multiple of 4'),
    (('--data_dir=/nonexistent',), 'is not a folder'),
])
def test_bin_train_usage_errors(hospitals, tmp_path, args, message):
  result = run_train(f'--data_dir={hospitals}', '--rounds=1', '--clients_per_round=2',
                     f'--output_dir={tmp_path}', *args)
  assert result.returncode == 2, result.stderr
  assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
