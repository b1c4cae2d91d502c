"""MNIST foregrounds: the bundled 10k digits, a standard IDX folder, or TFDS; split and padded to 40x40.

Supplementary A.1 pads MNIST's 28x28 digits with black to affNIST's 40x40 so composites and test images
share one size. Arrays stay uint8 [N, 40, 40] (0 background, 255 ink) until the input pipeline.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import os

import numpy as np

from terse_tf.errors import ConfigError, DataError

SOURCES = ("auto", "bundled", "idx", "tfds")
IMAGE_SIZE = 40
MNIST_SIZE = 28
NUM_CLASSES = 10
BUNDLED_FILE = "mnist10k.npz"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_UBYTE = 0x08


@dataclasses.dataclass(frozen=True)
class DataConfig:
  # auto: idx when mnist_dir is set, else the bundled 10k digits. (Field metadata: config.result_settings.)
  source: str = dataclasses.field(default="auto", metadata={"flag": "data_source"})
  mnist_dir: str = ""
  tfds_data_dir: str = ""
  tfds_download: bool = True
  num_val: int = 1000
  num_heldout_test: int = 1000  # Test digits carved from a source without a test split.
  num_train: int = 0            # 0: every remaining training digit.
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class DigitSplits:
  """uint8 digits [N, 40, 40] and int32 labels [N] for each split, and where they came from."""
  train_images: np.ndarray
  train_labels: np.ndarray
  val_images: np.ndarray
  val_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  source: str

  def sizes(self) -> dict[str, int]:
    return {"train": len(self.train_labels), "val": len(self.val_labels), "test": len(self.test_labels)}


def pad_to(images: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
  """Centres [N, h, w] digits in a black [N, size, size] frame."""
  n, height, width = images.shape
  if height > size or width > size:
    raise DataError(f"digits of {height}x{width} do not fit a {size}x{size} frame")
  top, left = (size - height) // 2, (size - width) // 2
  padded = np.zeros((n, size, size), images.dtype)
  padded[:, top:top + height, left:left + width] = images
  return padded


def _check_digits(images: np.ndarray, labels: np.ndarray, where: str) -> None:
  if images.ndim != 3 or images.shape[1:] != (MNIST_SIZE, MNIST_SIZE):
    raise DataError(f"{where}: expected digits of shape [N, 28, 28], got {list(images.shape)}")
  if labels.shape != (images.shape[0],):
    raise DataError(f"{where}: expected {images.shape[0]} labels, got shape {list(labels.shape)}")
  if images.dtype != np.uint8:
    raise DataError(f"{where}: expected uint8 pixels (0-255), got {images.dtype}")
  if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise DataError(f"{where}: expected labels in 0..9, got {labels.min()}..{labels.max()}")


def load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Digits from an .npz holding `images` uint8 [N, 28, 28] and `labels` [N]."""
  try:
    with np.load(path) as archive:
      images, labels = archive["images"], archive["labels"].astype(np.int64)
  except (OSError, ValueError, KeyError) as e:
    raise DataError(f"{path}: expected an .npz with arrays 'images' [N, 28, 28] uint8 and 'labels' [N] "
                    f"({e})") from e
  _check_digits(images, labels, path)
  return images, labels.astype(np.int32)


def load_bundled() -> tuple[np.ndarray, np.ndarray]:
  """The 10,000 real MNIST training digits shipped inside the package (works offline)."""
  resource = importlib.resources.files("terse_tf.data") / BUNDLED_FILE
  with importlib.resources.as_file(resource) as path:
    return load_npz(str(path))


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (gzipped or raw) of unsigned bytes, as MNIST is distributed."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise DataError(f"{path}: cannot read IDX file ({e})") from e
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE:
    raise DataError(f"{path}: not an IDX file of unsigned bytes (expected magic 0x0000 08 NN)")
  ndim = data[3]
  header = 4 + 4 * ndim
  shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
  expected = int(np.prod(shape))
  if len(data) != header + expected:
    raise DataError(f"{path}: header says shape {list(shape)} ({expected} bytes of data), "
                    f"file holds {len(data) - header}")
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _find_idx(directory: str, stem: str) -> str:
  for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
    if os.path.isfile(os.path.join(directory, name)):
      return os.path.join(directory, name)
  raise DataError(f"--mnist_dir={directory}: missing {stem}.gz (or {stem}); expected the four standard "
                  f"MNIST IDX files {', '.join(IDX_FILES.values())}")


def load_idx_dir(directory: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """((train_images, train_labels), (test_images, test_labels)) from a standard MNIST IDX folder."""
  if not os.path.isdir(directory):
    raise DataError(f"--mnist_dir={directory}: not a directory; expected a folder with the four MNIST IDX "
                    "files")
  arrays = {key: read_idx(_find_idx(directory, stem)) for key, stem in IDX_FILES.items()}
  splits = []
  for split in ("train", "test"):
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"].astype(np.int32)
    _check_digits(images, labels, os.path.join(directory, IDX_FILES[f"{split}_images"]))
    splits.append((images, labels))
  return splits[0], splits[1]


def load_tfds(data_dir: str, download: bool):
  """MNIST train and test splits through tensorflow-datasets (downloads unless --tfds_download=false)."""
  import tensorflow_datasets as tfds  # Imported here: the offline default never needs it.

  try:
    train, test = tfds.load("mnist", split=["train", "test"], batch_size=-1, as_supervised=True,
                            data_dir=data_dir or None, download=download)
  except Exception as e:  # TFDS raises assorted types for "not prepared" and "no network".
    raise DataError(f"--data_source=tfds: could not load TFDS 'mnist' from --tfds_data_dir="
                    f"{data_dir or '(TFDS default)'} with download={download} ({type(e).__name__}: {e})"
                    ) from e
  return tuple((tfds.as_numpy(images)[..., 0], tfds.as_numpy(labels).astype(np.int32))
               for images, labels in (train, test))


def resolve_source(config: DataConfig) -> str:
  if config.source not in SOURCES:
    raise ConfigError(f"--data_source must be one of {SOURCES}, got {config.source!r}")
  if config.source == "auto":
    return "idx" if config.mnist_dir else "bundled"
  if config.source == "idx" and not config.mnist_dir:
    raise ConfigError("--data_source=idx needs --mnist_dir, a folder with the four MNIST IDX files")
  if config.source == "bundled" and config.mnist_dir:
    raise ConfigError("--mnist_dir is set but --data_source=bundled ignores it; use --data_source=idx")
  return config.source


def load_splits(config: DataConfig) -> DigitSplits:
  """Seeded train / val / test split, padded to 40x40.

  Test digits are the source's own test split when it has one; the bundled digits are all MNIST training
  digits, so a seeded held-out part of them stands in.
  """
  source = resolve_source(config)
  if source == "bundled":
    images, labels = load_bundled()
    test = None
  elif source == "idx":
    (images, labels), test = load_idx_dir(config.mnist_dir)
  else:
    (images, labels), test = load_tfds(config.tfds_data_dir, config.tfds_download)

  order = np.random.default_rng(config.seed).permutation(len(labels))
  num_test = 0 if test is not None else config.num_heldout_test
  needed = config.num_val + num_test + 1
  if len(order) < needed:
    raise ConfigError(f"--num_val={config.num_val} and {num_test} held-out test digits leave no training "
                      f"digits out of {len(order)}")
  val_idx, test_idx, train_idx = np.split(order, [config.num_val, config.num_val + num_test])
  if config.num_train:
    train_idx = train_idx[:config.num_train]
  if test is None:
    test = (images[test_idx], labels[test_idx])
  return DigitSplits(
      train_images=pad_to(images[train_idx]), train_labels=labels[train_idx],
      val_images=pad_to(images[val_idx]), val_labels=labels[val_idx],
      test_images=pad_to(test[0]), test_labels=test[1], source=source)
