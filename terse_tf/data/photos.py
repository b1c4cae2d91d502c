"""Offline photographs for backgrounds: the sample photos that ship inside installed packages
(scikit-image's `skimage/data`, matplotlib's `sample_data`), Debian's wallpaper photographs, or a user's own
folders of images.

Train, validation and test backgrounds come from photos disjoint by content, so a detector tested on held-out
photos has never seen them; a second bank of photos gives a test on a source no training scene came from.
Backgrounds are random square crops (of random size, resized), so a few photos give many scenes.
"""

from __future__ import annotations

import glob
import os
from typing import Callable

import numpy as np
import tensorflow as tf
from absl import logging

from terse_tf.errors import DataError

SPLITS = ("train", "val", "test")

# Natural photographs only (no text pages, no silhouettes, no synthetic patterns), split by photo so that no
# content is on two sides: motorcycle_right.png, the stereo partner of motorcycle_left.png, is left out.
SKIMAGE_PHOTOS = {
    "train": ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coins.png", "grass.png",
              "motorcycle_left.png", "rocket.jpg", "ihc.png"),
    "val": ("gravel.png", "cell.png", "clock_motion.png"),
    "test": ("coffee.png", "moon.png", "hubble_deep_field.jpg", "retina.jpg"),
}
MATPLOTLIB_PHOTOS = {"train": ("grace_hopper.jpg",), "val": (), "test": ()}

# The natural photographs among Debian's desktop wallpapers (the abstract, rendered and drawn ones are left
# out; MATE files "Waves.png" under abstract/, but it is a photograph of a water drop), one file per photo (a
# wallpaper ships several sizes of one picture). Install them with
DEBIAN_INSTALL = ("apt-get install plasma-workspace-wallpapers mate-backgrounds lomiri-wallpapers-16.04 "
                  "lomiri-wallpapers-20.04")
_MATE, _PLASMA = "mate/nature/", "/usr/share/wallpapers/"
DEBIAN_PHOTOS = {
    "train": (
        "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Kleiber_by_Lukas_Baubkus.jpg",
        "Picture_0B_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg",
        "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg", "life_by_Aitzol_Berasategi.jpg",
        "mate/abstract/Waves.png", _MATE + "Aqua.jpg", _MATE + "Blinds.jpg", _MATE + "Dune.jpg",
        _MATE + "FreshFlower.jpg", _MATE + "GreenMeadow.jpg", _MATE + "LadyBird.jpg", _MATE + "Storm.jpg",
        _MATE + "TwoWings.jpg", _MATE + "YellowFlower.jpg", "seeding_by_Clements_Engelhardt.jpg",
        _PLASMA + "BytheWater/contents/images/2560x1600.jpg",
        _PLASMA + "ColdRipple/contents/images/2560x1600.jpg",
        _PLASMA + "EveningGlow/contents/images/2560x1600.jpg", _PLASMA + "Grey/contents/images/2560x1600.jpg",
        _PLASMA + "Kite/contents/images/2560x1600.jpg", _PLASMA + "OneStandsOut/contents/images/2560x1600.jpg",
        _PLASMA + "Volna/contents/images/5120x2880.jpg"),
    "val": ("Picture_1A_by_freespace.jpg", "greentock_by_Peter_Nerlich.jpg", _MATE + "RainDrops.jpg",
            _PLASMA + "DarkestHour/contents/images/2560x1600.jpg", "picosdeeuropa_by_Aitzol_Berasategi.jpg"),
    "test": ("analogpattern_by_Peter_Nerlich.jpg", _MATE + "Garden.jpg", _MATE + "Wood.jpg",
             "sunset_by_Aitzol_Berasategi.jpg", _PLASMA + "FallenLeaf/contents/images/2560x1600.jpg",
             _PLASMA + "Path/contents/images/2560x1600.jpg",
             _PLASMA + "summer_1am/contents/images/2560x1600.jpg"),
}
DEBIAN_BACKGROUNDS = "/usr/share/backgrounds"
# Where photos come from: the ones bundled with installed Python packages (offline, always there), or
# Debian's wallpaper photographs (more of them; DEBIAN_INSTALL).
BANKS = ("bundled", "debian")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def _bundled_paths(split: str) -> list[str]:
  import matplotlib  # Imported here: only this offline source needs the packages' locations.
  import skimage
  skimage_dir = os.path.join(os.path.dirname(skimage.__file__), "data")
  matplotlib_dir = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data")
  return ([os.path.join(skimage_dir, name) for name in SKIMAGE_PHOTOS[split]] +
          [os.path.join(matplotlib_dir, name) for name in MATPLOTLIB_PHOTOS[split]])


def _debian_paths(split: str) -> list[str]:
  return [os.path.join(DEBIAN_BACKGROUNDS, name) for name in DEBIAN_PHOTOS[split]]


# ITU-R BT.601 luma weights: RGB -> one grey channel wherever a grey image is made from a colour one.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def luminance(rgb: np.ndarray) -> np.ndarray:
  """Float RGB [..., 3] -> grey [..., 1]."""
  return (rgb @ LUMA)[..., None]


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Float images in [0, 1] -> uint8 (rounded to the nearest of the 256 levels)."""
  return np.clip(np.rint(np.asarray(images) * 255), 0, 255).astype(np.uint8)


def resized(photo: np.ndarray, height: int, width: int) -> np.ndarray:
  """A uint8 photo [h, w, 3] resized to height x width (antialiased, aspect not kept), uint8."""
  return tf.image.resize(photo, [height, width], antialias=True).numpy().round().astype(np.uint8)


def read_rgb(path: str) -> np.ndarray:
  """uint8 [H, W, 3] of an image file (decode_rgb); DataError naming a file that cannot be read or decoded."""
  try:
    with open(path, "rb") as f:
      encoded = f.read()
  except OSError as e:
    raise DataError(f"{path}: cannot read this image ({type(e).__name__}); expected a PNG, JPEG, BMP or "
                    "GIF file") from e
  return decode_rgb(encoded, path)


def decode_rgb(encoded: bytes, where: str) -> np.ndarray:
  """uint8 [H, W, 3] of an encoded image (grey replicated, alpha dropped); DataError naming `where` (its file,
  or the dataset example it came from) when it cannot be decoded."""
  try:
    image = tf.io.decode_image(encoded, expand_animations=False).numpy()
  except tf.errors.OpError as e:
    raise DataError(f"{where}: cannot read this image ({type(e).__name__}); expected a PNG, JPEG, BMP or "
                    "GIF file") from e
  if image.dtype != np.uint8:
    image = (image.astype(np.float32) / np.iinfo(image.dtype).max * 255).round().astype(np.uint8)
  if image.shape[-1] in (1, 2):
    image = np.repeat(image[..., :1], 3, axis=-1)
  return image[..., :3]


def image_paths(folder: str) -> list[str]:
  """The image files directly inside `folder`, sorted."""
  return sorted(p for p in glob.glob(os.path.join(folder, "*")) if p.lower().endswith(IMAGE_EXTENSIONS))


class Photos(list):
  """uint8 photos [H, W, 3], a list, with `names`: each one's name in its source, in the same order (for
  figures per photo)."""

  def __init__(self, images=(), names=()):
    super().__init__(images)
    self.names = list(names)


def read_photos(paths: list[str], source: str, min_side: int = 64, strict: bool = False,
                names: list[str] | None = None, read: Callable[[str], np.ndarray] = read_rgb) -> Photos:
  """uint8 photos [H, W, 3] from `paths`, named `names` (default: the files' names), each read by `read`
  (read_rgb; a caller whose images are in memory passes its own, raising DataError as read_rgb does). A file
  that cannot be decoded, or is smaller than `min_side`, is skipped with a warning naming it and the count is
  logged (with `strict`, an undecodable file is an error). `source` names where the paths came from (the flag
  and its folder) in the messages; no usable photo at all is a DataError naming it."""
  photos, skipped = Photos(), 0
  for path, name in zip(paths, names or [os.path.basename(path) for path in paths]):
    try:
      photo = read(path)
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
    photos.names.append(name)
  if skipped:
    logging.warning("%d of %d photos in %s skipped (see the warnings above)", skipped, len(paths), source)
  if not photos:
    raise DataError(f"{source}: no usable photo; expected PNG, JPEG, BMP or GIF files of at least "
                    f"{min_side}x{min_side} pixels")
  return photos


def load_photos(split: str, photo_dir: str = "", min_side: int = 64, bank: str = "bundled") -> Photos:
  """The photos of `split` (one of SPLITS): from `photo_dir`/`split`/ when given, else from `bank` (see
  `read_photos` for what is skipped)."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if photo_dir:
    folder = os.path.join(photo_dir, split)
    if not os.path.isdir(folder):
      raise DataError(f"--photo_dir={photo_dir}: expected a folder {folder} of {split} photos (the train, val "
                      f"and test photos are three folders, {', '.join(s + '/' for s in SPLITS)} disjoint by "
                      "content)")
    return read_photos(image_paths(folder), f"--photo_dir={photo_dir} ({split} photos in {folder})", min_side)
  if bank == "debian":
    paths = _debian_paths(split)
    missing = [path for path in paths if not os.path.exists(path)]
    if missing:
      raise DataError(f"--photo_bank=debian: {len(missing)} of its {split} photos are missing (first: "
                      f"{missing[0]}); install the wallpaper packages: {DEBIAN_INSTALL}")
    return read_photos(paths, f"the {split} photos of Debian's wallpapers", min_side, strict=True,
                       names=list(DEBIAN_PHOTOS[split]))
  if bank != "bundled":
    raise DataError(f"--photo_bank must be one of {BANKS}, got {bank!r}")
  return read_photos(_bundled_paths(split), f"the {split} photos bundled with scikit-image and matplotlib",
                     min_side, strict=True)


# The widest crop of a photo, in scene sizes (random_crops).
MAX_ZOOM_OUT = 4


def random_crops(photos: list[np.ndarray], count: int, size: int, rng: np.random.Generator,
                 picks: np.ndarray | None = None) -> np.ndarray:
  """uint8 [count, size, size, 3]: square crops of random photos (or of photos[picks[i]] for crop i), each
  of a random side between `size` and the photo's shorter side, resized to `size`.

  A photo whose shorter side is over MAX_ZOOM_OUT x `size` is first shrunk (antialiased) to that, so a crop
  shows at most that much of a photo's width whatever its resolution: photos of 500 and of 2,500 pixels give
  scenes of the same range of scales. All crops of one photo are cut in one `crop_and_resize` call at twice
  the size, then halved with an antialiasing filter, so a large crop does not alias.
  """
  if picks is None:
    picks = rng.integers(len(photos), size=count)
  crops = np.empty([count, size, size, 3], np.uint8)
  for index, photo in enumerate(photos):
    chosen = np.flatnonzero(picks == index)
    if not len(chosen):
      continue
    height, width = photo.shape[:2]
    if min(height, width) > MAX_ZOOM_OUT * size:
      shrink = MAX_ZOOM_OUT * size / min(height, width)
      height, width = round(height * shrink), round(width * shrink)
      photo = tf.image.resize(photo, [height, width], antialias=True).numpy()
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
