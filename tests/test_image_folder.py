"""Reading `root/<client_id>/*.png|jpg` folders: shapes, pixel values, clients, clear errors."""

import numpy as np
import pytest
from PIL import Image

from tff_gan.image_folder import ImageFolderError, load_image_folder


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


def test_image_size_must_be_usable(tmp_path):
  with pytest.raises(ImageFolderError, match='at least 4'):
    load_image_folder(str(tmp_path), image_size=2)
