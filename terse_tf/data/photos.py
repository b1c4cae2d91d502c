"""Offline photographs for backgrounds: the sample photos that ship inside installed packages
(scikit-image's `skimage/data`, matplotlib's `sample_data`), or a user's own folders of images.

Train and test backgrounds come from disjoint photos, so a detector tested on held-out photos has never seen
them. Backgrounds are random square crops (of random size, resized), so a few photos give many scenes.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import tensorflow as tf
from absl import logging

from terse_tf.errors import DataError

# Natural photographs only (no text pages, no silhouettes, no synthetic patterns), split by photo.
SKIMAGE_PHOTOS = {
    "train": ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coins.png", "grass.png",
              "motorcycle_left.png", "rocket.jpg"),
    "test": ("coffee.png", "gravel.png", "moon.png", "motorcycle_right.png", "hubble_deep_field.jpg"),
}
MATPLOTLIB_PHOTOS = {"train": ("grace_hopper.jpg",), "test": ()}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def _bundled_paths(split: str) -> list[str]:
  import matplotlib  # Imported here: only this offline source needs the packages' locations.
  import skimage
  skimage_dir = os.path.join(os.path.dirname(skimage.__file__), "data")
  matplotlib_dir = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data")
  return ([os.path.join(skimage_dir, name) for name in SKIMAGE_PHOTOS[split]] +
          [os.path.join(matplotlib_dir, name) for name in MATPLOTLIB_PHOTOS[split]])


# ITU-R BT.601 luma weights: RGB -> one grey channel wherever a grey image is made from a colour one.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def luminance(rgb: np.ndarray) -> np.ndarray:
  """Float RGB [..., 3] -> grey [..., 1]."""
  return (rgb @ LUMA)[..., None]


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Float images in [0, 1] -> uint8 (rounded to the nearest of the 256 levels)."""
  return np.clip(np.rint(np.asarray(images) * 255), 0, 255).astype(np.uint8)


def read_rgb(path: str) -> np.ndarray:
  """uint8 [H, W, 3] of an image file (grey replicated, alpha dropped); DataError naming a file that cannot
  be read or decoded."""
  try:
    with open(path, "rb") as f:
      encoded = f.read()
    image = tf.io.decode_image(encoded, expand_animations=False).numpy()
  except (OSError, tf.errors.OpError) as e:
    raise DataError(f"{path}: cannot read this image ({type(e).__name__}); expected a PNG, JPEG, BMP or "
                    "GIF file") from e
  if image.dtype != np.uint8:
    image = (image.astype(np.float32) / np.iinfo(image.dtype).max * 255).round().astype(np.uint8)
  if image.shape[-1] in (1, 2):
    image = np.repeat(image[..., :1], 3, axis=-1)
  return image[..., :3]


def image_paths(folder: str) -> list[str]:
  """The image files directly inside `folder`, sorted."""
  return sorted(p for p in glob.glob(os.path.join(folder, "*")) if p.lower().endswith(IMAGE_EXTENSIONS))


def read_photos(paths: list[str], source: str, min_side: int = 64, strict: bool = False) -> list[np.ndarray]:
  """uint8 photos [H, W, 3] from `paths`. A file that cannot be decoded, or is smaller than `min_side`, is
  skipped with a warning naming it and the count is logged (with `strict`, an undecodable file is an error).
  `source` names where the paths came from (the flag and its folder) in the messages; no usable photo at
  all is a DataError naming it."""
  photos, skipped = [], 0
  for path in paths:
    try:
      photo = read_rgb(path)
    except DataError as e:
      if strict:
        raise
      logging.warning("skipping %s", e)
      skipped += 1
      continue
    if min(photo.shape[:2]) < min_side:
      logging.warning("skipping %s: %dx%d pixels, smaller than the %d-pixel crops taken from photos", path,
                      photo.shape[1], photo.shape[0], min_side)
      skipped += 1
      continue
    photos.append(photo)
  if skipped:
    logging.warning("%d of %d photos in %s skipped (see the warnings above)", skipped, len(paths), source)
  if not photos:
    raise DataError(f"{source}: no usable photo; expected PNG, JPEG, BMP or GIF files of at least "
                    f"{min_side}x{min_side} pixels")
  return photos


def load_photos(split: str, photo_dir: str = "", min_side: int = 64) -> list[np.ndarray]:
  """The photos of `split` ("train" or "test"): from `photo_dir`/`split`/ when given, else the bundled ones
  (see `read_photos` for what is skipped)."""
  if photo_dir:
    folder = os.path.join(photo_dir, split)
    return read_photos(image_paths(folder), f"--photo_dir={photo_dir} ({split} photos in {folder})", min_side)
  return read_photos(_bundled_paths(split), f"the {split} photos bundled with scikit-image and matplotlib",
                     min_side, strict=True)


def random_crops(photos: list[np.ndarray], count: int, size: int, rng: np.random.Generator) -> np.ndarray:
  """uint8 [count, size, size, 3]: square crops of random photos, each of a random side between `size` and
  the photo's shorter side, resized to `size`.

  All crops of one photo are cut in one `crop_and_resize` call at twice the size, then halved with an
  antialiasing filter, so a large crop does not alias.
  """
  picks = rng.integers(len(photos), size=count)
  crops = np.empty([count, size, size, 3], np.uint8)
  for index, photo in enumerate(photos):
    chosen = np.flatnonzero(picks == index)
    if not len(chosen):
      continue
    height, width = photo.shape[:2]
    sides = rng.integers(min(size, height, width), min(height, width) + 1, size=len(chosen))
    tops, lefts = rng.integers(height - sides + 1), rng.integers(width - sides + 1)
    boxes = np.stack([tops / (height - 1), lefts / (width - 1), (tops + sides - 1) / (height - 1),
                      (lefts + sides - 1) / (width - 1)], axis=-1).astype(np.float32)
    doubled = tf.image.crop_and_resize(tf.constant(photo[None], tf.float32), boxes,
                                       tf.zeros(len(chosen), tf.int32), [2 * size, 2 * size])
    resized = tf.image.resize(doubled, [size, size], antialias=True)
    crops[chosen] = np.clip(np.rint(resized.numpy()), 0, 255).astype(np.uint8)
  return crops


def random_backgrounds(photos: list[np.ndarray], count: int, shape: tuple[int, int, int],
                       rng: np.random.Generator) -> np.ndarray:
  """float32 [count, H, W, C] in [0, 1] for `shape` (H, W, C): random square crops of `photos`
  (random_crops at the longer side) resized to H x W, grey when C is 1."""
  height, width, channels = shape
  crops = random_crops(photos, count, max(height, width), rng).astype(np.float32) / 255
  if height != width:
    crops = tf.image.resize(crops, [height, width], antialias=True).numpy()
  return luminance(crops) if channels == 1 else crops
