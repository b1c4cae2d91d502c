"""The affNIST test set: the real .mat files when given, otherwise generated with affNIST's own recipe.

affNIST (Tieleman, 2013) is the MNIST test split with random affine transforms on a 40x40 canvas: rotation
up to 20 degrees either way, shear up to 0.2, each axis scaled by 0.8-1.2, then a random translation that
keeps the digit inside the frame; 32 transforms per digit. The generator below follows that recipe on
whatever test digits the data source provides, and caches the result on disk keyed by its inputs and seed.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import zipfile

import numpy as np
import scipy.io
import scipy.ndimage
from absl import logging

from terse_tf import files
from terse_tf.data.mnist import IMAGE_SIZE, NUM_CLASSES
from terse_tf.errors import DataError

# affNIST's documented ranges; the compositor clamps the synthesizer to the same ones.
MAX_ROTATION_DEG = 20.0
MAX_SHEAR = 0.2
MIN_SCALE, MAX_SCALE = 0.8, 1.2
TRANSFORMS_PER_DIGIT = 32


@dataclasses.dataclass(frozen=True)
class AffnistConfig:
  affnist_dir: str = ""      # Real affNIST: a test .mat file or a folder of them.
  # Where generated sets are kept; "" for no cache. (config.SAME_RESULTS: a resume may change it.)
  cache_dir: str = dataclasses.field(default="", metadata={"changes_results": False, "flag": "affnist_cache_dir"})
  # Test digits transformed when generating (0: all of them).
  num_test_digits: int = dataclasses.field(default=1000, metadata={"flag": "affnist_test_digits"})
  transforms_per_digit: int = dataclasses.field(default=TRANSFORMS_PER_DIGIT,
                                                metadata={"flag": "affnist_transforms_per_digit"})
  seed: int = 0


def _linear_part(rotation_deg, shear, scale_x, scale_y):
  """Per-example 2x2 matrices in (x, y), the same composition as the compositor: R @ Shear @ diag(s)."""
  angle = np.deg2rad(rotation_deg)
  cos, sin = np.cos(angle), np.sin(angle)
  return np.stack([np.stack([cos * scale_x, (cos * shear - sin) * scale_y], -1),
                   np.stack([sin * scale_x, (sin * shear + cos) * scale_y], -1)], -2)


def sample_transforms(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Forward transforms [N, 2, 3] in (x, y) pixels: out = A (in - c) + c + t, digit kept in frame.

  The translation is drawn uniformly from the shifts that keep the transformed ink bounding box (pixel
  extents included) inside the 40x40 frame; a digit too large to fit at any shift is centred.
  """
  n = len(digits)
  linear = _linear_part(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG, n),
                        rng.uniform(-MAX_SHEAR, MAX_SHEAR, n),
                        rng.uniform(MIN_SCALE, MAX_SCALE, n), rng.uniform(MIN_SCALE, MAX_SCALE, n))
  translations = np.zeros((n, 2))
  for i, digit in enumerate(digits):
    if not digit.any():
      continue
    low, high = translation_bounds(digit, linear[i])
    translations[i] = np.where(low <= high, rng.uniform(np.minimum(low, high), np.maximum(low, high)), 0.0)
  return np.concatenate([linear, translations[:, :, None]], axis=2)


def translation_bounds(digit: np.ndarray, linear: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(low, high) [2] in (x, y): the shifts after `linear` [2, 2] (about the centre) that keep the digit's
  ink bounding box, pixel extents included, inside the frame; low > high where no shift does."""
  centre = (IMAGE_SIZE - 1) / 2
  rows, cols = np.nonzero(digit)
  corners = np.array([[x, y] for x in (cols.min() - 0.5, cols.max() + 0.5)
                      for y in (rows.min() - 0.5, rows.max() + 0.5)]) - centre
  moved = corners @ linear.T
  return -0.5 - centre - moved.min(axis=0), IMAGE_SIZE - 0.5 - centre - moved.max(axis=0)


def apply_transform(digit: np.ndarray, forward: np.ndarray) -> np.ndarray:
  """Bilinear warp of one uint8 digit by a forward (x, y) transform [2, 3]."""
  centre = (IMAGE_SIZE - 1) / 2
  inverse = np.linalg.inv(forward[:, :2])
  offset = centre - inverse @ (centre + forward[:, 2])
  # scipy indexes (row, col) = (y, x).
  matrix = inverse[::-1, ::-1]
  warped = scipy.ndimage.affine_transform(digit.astype(np.float32), matrix, offset[::-1], order=1,
                                          mode="grid-constant")
  return np.clip(np.rint(warped), 0, 255).astype(np.uint8)


def generate(digits: np.ndarray, labels: np.ndarray, transforms_per_digit: int,
             seed: int) -> tuple[np.ndarray, np.ndarray]:
  """affNIST-style set: each 40x40 uint8 digit under `transforms_per_digit` random transforms."""
  rng = np.random.default_rng(seed)
  repeated = np.repeat(digits, transforms_per_digit, axis=0)
  transforms = sample_transforms(repeated, rng)
  images = np.stack([apply_transform(d, t) for d, t in zip(repeated, transforms)])
  return images, np.repeat(labels, transforms_per_digit).astype(np.int32)


def _cache_path(cache_dir: str, digits: np.ndarray, labels: np.ndarray, config: AffnistConfig) -> str:
  key = hashlib.sha1()
  for part in (digits.tobytes(), labels.astype(np.int32).tobytes(),
               repr((config.transforms_per_digit, config.seed, MAX_ROTATION_DEG, MAX_SHEAR, MIN_SCALE,
                     MAX_SCALE)).encode()):
    key.update(part)
  return os.path.join(cache_dir, f"affnist_generated_seed{config.seed}_n{len(labels)}x"
                      f"{config.transforms_per_digit}_{key.hexdigest()[:12]}.npz")


def _read_cached(path: str, expected_count: int) -> tuple[np.ndarray, np.ndarray] | None:
  """A generated set from the disk cache, or None (with a warning) when the file is unreadable or holds
  something else: it is regenerated and rewritten, never trusted."""
  try:
    with np.load(path) as cached:
      images, labels = cached["images"], cached["labels"]
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    logging.warning("%s: unreadable cached affNIST-style test set (%s: %s); regenerating it", path,
                    type(e).__name__, e)
    return None
  if (images.shape != (expected_count, IMAGE_SIZE, IMAGE_SIZE) or images.dtype != np.uint8 or
      labels.shape != (expected_count,)):
    logging.warning("%s: cached affNIST-style test set holds images %s %s and labels %s, expected %d "
                    "uint8 40x40 images and labels; regenerating it", path, images.dtype, list(images.shape),
                    list(labels.shape), expected_count)
    return None
  return images, labels


def _mat_files(path: str) -> list[str]:
  if os.path.isfile(path):
    return [path]
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, "test.mat")):
      return [os.path.join(path, "test.mat")]
    batches = sorted(glob.glob(os.path.join(path, "test_batches", "*.mat")) or
                     glob.glob(os.path.join(path, "*.mat")),
                     key=lambda p: (len(os.path.basename(p)), os.path.basename(p)))
    if batches:
      return batches
  raise DataError(f"--affnist_dir={path}: expected affNIST's test.mat, a test_batches/ folder of "
                  "1.mat..32.mat, or a folder of such .mat files")


def load_mat(path: str) -> tuple[np.ndarray, np.ndarray]:
  """One affNIST .mat file: struct `affNISTdata` with `image` uint8 [1600, N] and `label_int` [1, N]."""
  try:
    contents = scipy.io.loadmat(path)
    record = contents["affNISTdata"]
    flat, labels = record["image"][0, 0], record["label_int"][0, 0]
  except (OSError, ValueError, KeyError, IndexError, NotImplementedError) as e:
    raise DataError(f"{path}: expected an affNIST .mat file with struct 'affNISTdata' holding 'image' "
                    f"[1600, N] and 'label_int' [1, N] ({type(e).__name__}: {e})") from e
  if flat.ndim != 2 or flat.shape[0] != IMAGE_SIZE * IMAGE_SIZE:
    raise DataError(f"{path}: expected 'image' of shape [1600, N] (40x40 images in columns), got "
                    f"{list(flat.shape)}")
  labels = np.asarray(labels).reshape(-1)
  if labels.shape != (flat.shape[1],):
    raise DataError(f"{path}: expected {flat.shape[1]} labels in 'label_int', got {labels.size}")
  if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise DataError(f"{path}: expected labels in 0..9, got {labels.min()}..{labels.max()}")
  images = np.ascontiguousarray(flat.T).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
  return images.astype(np.uint8), labels.astype(np.int32)


def load_real(path: str) -> tuple[np.ndarray, np.ndarray]:
  parts = [load_mat(p) for p in _mat_files(path)]
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_test_set(test_digits: np.ndarray, test_labels: np.ndarray,
                  config: AffnistConfig) -> tuple[np.ndarray, np.ndarray, str]:
  """(images uint8 [N, 40, 40], labels int32 [N], description) of the affNIST test set to report on."""
  if config.affnist_dir:
    images, labels = load_real(config.affnist_dir)
    return images, labels, f"affNIST .mat files from {config.affnist_dir}"
  if config.num_test_digits:
    test_digits, test_labels = test_digits[:config.num_test_digits], test_labels[:config.num_test_digits]
  description = (f"generated with the affNIST recipe: {len(test_labels)} test digits x "
                 f"{config.transforms_per_digit} transforms, seed {config.seed}")
  path = _cache_path(config.cache_dir, test_digits, test_labels, config) if config.cache_dir else ""
  if path and os.path.exists(path):
    cached = _read_cached(path, expected_count=len(test_labels) * config.transforms_per_digit)
    if cached is not None:
      return *cached, description + f" (cached in {path})"
  images, labels = generate(test_digits, test_labels, config.transforms_per_digit, config.seed)
  if path:
    files.savez(path, compressed=True, images=images, labels=labels)
  return images, labels, description
