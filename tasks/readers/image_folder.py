"""Reading a federated image dataset laid out as one folder per client.

    root/
      hospital_a/  scan1.png  scan2.jpg ...
      hospital_b/  ...

Each sub-folder of `root` is one client (one hospital, one device); its PNG and JPEG files
are that client's examples. Images are read with Pillow, converted to one channel
(grayscale) or three (RGB), resized to `image_size` × `image_size`, and scaled to [−1, 1].
A dataset must not mix grayscale and colour images: which one it is decides the networks'
shapes, so a stray file of the other kind is an error naming it, not a silent conversion.

Every problem is an `ImageFolderError` whose message names the folder or file and the fix.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

EXTENSIONS = ('.png', '.jpg', '.jpeg')
# Pillow modes with one grey band (alpha aside). Palette ('P') images are grey when every
# colour they use is; all other modes are colour.
_GRAYSCALE_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'I;16B', 'I;16L', 'F')
_MAX_16_BIT = 65535


class ImageFolderError(ValueError):
  """The folder cannot be read as a federated image dataset; the message says why."""


@dataclasses.dataclass(frozen=True)
class ImageFolder:
  """A federated image dataset read from disk.

  Attributes:
    examples: float32 `[N, image_size, image_size, channels]` in [−1, 1].
    client_ids: The sub-folder names, sorted; client `k` is `client_ids[k]`.
    client_indices: For each client, the indices of its examples in `examples`.
    channels: 1 (grayscale) or 3 (RGB).
  """

  examples: np.ndarray
  client_ids: tuple[str, ...]
  client_indices: tuple[np.ndarray, ...]
  channels: int


def _channels(image: Image.Image) -> int:
  if image.mode in _GRAYSCALE_MODES:
    return 1
  if image.mode == 'P':  # A palette: grey if every palette entry is grey.
    rgb = np.asarray(image.convert('RGB'))
    return 1 if np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2]) else 3
  return 3


def _read(path: str, image_size: int) -> tuple[np.ndarray, int]:
  try:
    with Image.open(path) as image:
      image.load()
      channels = _channels(image)
      if image.mode.startswith('I'):  # 16-bit grey: convert('L') would clip it to white.
        converted = _grey_from_integers(image, path)
      else:
        converted = image.convert('L' if channels == 1 else 'RGB')
  except (UnidentifiedImageError, OSError, SyntaxError) as e:
    raise ImageFolderError(f'{path} is not a readable PNG or JPEG image ({e}); replace or '
                           'remove it.') from e
  resized = converted.resize((image_size, image_size), Image.BILINEAR)
  pixels = np.asarray(resized, np.float32).reshape(image_size, image_size, channels)
  return pixels / 127.5 - 1.0, channels


def _grey_from_integers(image: Image.Image, path: str) -> Image.Image:
  """A 16-bit grey image (Pillow mode `I;16*` or `I`) as a float image on the 8-bit scale."""
  values = np.asarray(image, np.float64)
  if values.size and (values.min() < 0 or values.max() > _MAX_16_BIT):
    raise ImageFolderError(f'{path} holds grey values outside 0..{_MAX_16_BIT} (mode '
                           f'{image.mode}); save it as an 8- or 16-bit PNG.')
  return Image.fromarray((values * (255 / _MAX_16_BIT)).astype(np.float32), mode='F')


def load_image_folder(root: str, image_size: int) -> ImageFolder:
  """Reads `root/<client_id>/*.png|jpg|jpeg` (see the module docstring).

  Args:
    root: The dataset folder: one sub-folder per client. Files directly in `root` and
      hidden entries (starting with '.') are ignored.
    image_size: Side of the square every image is resized to, at least 4.

  Raises:
    ImageFolderError: If `root` is missing or holds no client folder, a client folder holds
      no image, a file cannot be read as an image, or grayscale and colour images are mixed.
  """
  if image_size < 4:
    raise ImageFolderError(f'image_size must be at least 4, got {image_size}.')
  if not os.path.isdir(root):
    raise ImageFolderError(f'{root} is not a folder; pass the folder that holds one '
                           'sub-folder of images per client.')
  client_ids = sorted(name for name in os.listdir(root)
                      if not name.startswith('.') and os.path.isdir(os.path.join(root, name)))
  if not client_ids:
    raise ImageFolderError(f'{root} holds no client folders; put each client\'s images in a '
                           f'sub-folder of its own ({root}/<client_id>/*.png).')
  examples, client_indices = [], []
  channels_seen: dict[int, str] = {}  # Channel count -> the first file that had it.
  for client_id in client_ids:
    folder = os.path.join(root, client_id)
    files = sorted(name for name in os.listdir(folder)
                   if name.lower().endswith(EXTENSIONS) and not name.startswith('.'))
    if not files:
      raise ImageFolderError(f'client folder {folder} holds no .png or .jpg images; add some '
                             'or remove the folder.')
    start = len(examples)
    for name in files:
      path = os.path.join(folder, name)
      pixels, channels = _read(path, image_size)
      channels_seen.setdefault(channels, path)
      if len(channels_seen) > 1:
        grey, colour = channels_seen[1], channels_seen[3]
        raise ImageFolderError(f'{root} mixes grayscale and colour images ({grey} is '
                               f'grayscale, {colour} is colour); convert them all to one kind.')
      examples.append(pixels)
    client_indices.append(np.arange(start, len(examples)))
  return ImageFolder(examples=np.stack(examples), client_ids=tuple(client_ids),
                     client_indices=tuple(client_indices), channels=next(iter(channels_seen)))
