"""MNIST sources, splits, the affNIST loader and generator, and cut-outs, on fixtures the tests write."""

import gzip
import os

import numpy as np
import pytest
import scipy.io

import tensorflow as tf

from terse_tf.data import affnist, cutouts, mnist
from terse_tf.errors import ConfigError, DataError

SHARED_MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")


def write_idx(path: str, array: np.ndarray, compress: bool = True) -> None:
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
  payload = header + array.astype(np.uint8).tobytes()
  with (gzip.open if compress else open)(path, "wb") as f:
    f.write(payload)


@pytest.fixture
def idx_dir(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {"train": (rng.integers(0, 256, (300, 28, 28)), rng.integers(0, 10, 300)),
            "test": (rng.integers(0, 256, (50, 28, 28)), rng.integers(0, 10, 50))}
  prefix = {"train": "train", "test": "t10k"}
  for split, (images, labels) in arrays.items():
    write_idx(str(tmp_path / f"{prefix[split]}-images-idx3-ubyte.gz"), images)
    # Labels uncompressed: both spellings of the standard files are accepted.
    write_idx(str(tmp_path / f"{prefix[split]}-labels-idx1-ubyte"), labels, compress=False)
  return tmp_path, arrays


def test_idx_folder_round_trip(idx_dir):
  directory, arrays = idx_dir
  (train_images, train_labels), (test_images, test_labels) = mnist.load_idx_dir(str(directory))
  np.testing.assert_array_equal(train_images, arrays["train"][0])
  np.testing.assert_array_equal(train_labels, arrays["train"][1])
  np.testing.assert_array_equal(test_images, arrays["test"][0])
  np.testing.assert_array_equal(test_labels, arrays["test"][1])


def test_idx_splits_use_the_test_split_and_are_seeded(idx_dir):
  directory, arrays = idx_dir
  config = mnist.DataConfig(mnist_dir=str(directory), num_val=40, seed=3)
  splits = mnist.load_splits(config)
  assert splits.source == "idx"
  assert splits.sizes() == {"train": 260, "val": 40, "test": 50}
  np.testing.assert_array_equal(splits.test_images[:, 6:34, 6:34], arrays["test"][0])
  again = mnist.load_splits(config)
  np.testing.assert_array_equal(splits.train_images, again.train_images)
  other_seed = mnist.load_splits(mnist.DataConfig(mnist_dir=str(directory), num_val=40, seed=4))
  assert not np.array_equal(splits.val_labels, other_seed.val_labels)


def test_bundled_digits_split_into_disjoint_padded_parts():
  splits = mnist.load_splits(mnist.DataConfig(num_val=1000, num_heldout_test=1000))
  assert splits.source == "bundled"
  assert splits.sizes() == {"train": 8000, "val": 1000, "test": 1000}
  assert splits.train_images.shape[1:] == (40, 40) and splits.train_images.dtype == np.uint8
  # Padding is black and the digit sits in the middle 28x28.
  assert splits.train_images[:, :6].max() == 0 and splits.train_images[:, :, 34:].max() == 0
  flat = lambda a: {x.tobytes() for x in a}
  assert not flat(splits.train_images) & flat(splits.test_images)
  assert not flat(splits.val_images) & flat(splits.test_images)
  counts = np.bincount(splits.train_labels, minlength=10)
  assert counts.min() > 600  # every class present in a seeded shuffle of 10k real digits


@pytest.mark.skipif(not os.path.isdir(SHARED_MNIST), reason="shared MNIST not beside the checkout")
def test_full_real_mnist_from_shared_idx_folder():
  (train_images, train_labels), (test_images, test_labels) = mnist.load_idx_dir(SHARED_MNIST)
  assert train_images.shape == (60000, 28, 28) and test_images.shape == (10000, 28, 28)
  assert np.bincount(test_labels).tolist()[:2] == [980, 1135]  # MNIST's published test class counts


def test_missing_idx_file_names_the_flag_and_the_file(idx_dir):
  directory, _ = idx_dir
  os.remove(directory / "t10k-images-idx3-ubyte.gz")
  with pytest.raises(DataError, match=r"--mnist_dir=.*t10k-images-idx3-ubyte"):
    mnist.load_idx_dir(str(directory))


def test_truncated_idx_file_is_rejected(idx_dir):
  directory, _ = idx_dir
  path = directory / "train-labels-idx1-ubyte"
  path.write_bytes(path.read_bytes()[:-10])
  with pytest.raises(DataError, match="train-labels-idx1-ubyte: header says shape"):
    mnist.load_idx_dir(str(directory))


def test_non_idx_file_is_rejected(tmp_path):
  path = tmp_path / "x.gz"
  with gzip.open(path, "wb") as f:
    f.write(b"PK\x03\x04 not an idx file")
  with pytest.raises(DataError, match="not an IDX file"):
    mnist.read_idx(str(path))


def test_wrong_digit_shape_is_rejected(tmp_path):
  for stem, array in (("train-images-idx3-ubyte", np.zeros((5, 32, 32))), ("train-labels-idx1-ubyte",
                                                                          np.zeros(5)),
                      ("t10k-images-idx3-ubyte", np.zeros((5, 28, 28))), ("t10k-labels-idx1-ubyte",
                                                                         np.zeros(5))):
    write_idx(str(tmp_path / (stem + ".gz")), array)
  with pytest.raises(DataError, match=r"expected digits of shape \[N, 28, 28\], got \[5, 32, 32\]"):
    mnist.load_idx_dir(str(tmp_path))


def test_bad_npz_is_rejected(tmp_path):
  path = tmp_path / "digits.npz"
  np.savez(path, pictures=np.zeros((3, 28, 28), np.uint8))
  with pytest.raises(DataError, match="expected an .npz with arrays 'images'"):
    mnist.load_npz(str(path))


@pytest.mark.parametrize("config,message", [
    (mnist.DataConfig(source="idx"), "--data_source=idx needs --mnist_dir"),
    (mnist.DataConfig(source="bundled", mnist_dir="x"), "--mnist_dir is set but --data_source=bundled"),
    (mnist.DataConfig(source="imagenet"), "--data_source must be one of"),
    (mnist.DataConfig(num_val=6000, num_heldout_test=4000), "leave no training digits"),
    (mnist.DataConfig(mnist_dir="/nonexistent/mnist"), "--mnist_dir=/nonexistent/mnist: not a directory"),
])
def test_bad_data_configs_get_one_clear_error(config, message):
  with pytest.raises((ConfigError, DataError), match=message):
    mnist.load_splits(config)


def test_tfds_source_offline_without_prepared_data_fails_clearly(tmp_path):
  with pytest.raises(DataError, match="--data_source=tfds: could not load TFDS 'mnist'"):
    mnist.load_splits(mnist.DataConfig(source="tfds", tfds_data_dir=str(tmp_path), tfds_download=False))


# ------------------------------------------------------------------------------------------- affNIST
def affnist_fixture_digits(count=6):
  splits = mnist.load_splits(mnist.DataConfig())
  return splits.test_images[:count], splits.test_labels[:count]


def test_generated_affnist_follows_the_recipe():
  digits, labels = affnist_fixture_digits()
  images, out_labels = affnist.generate(digits, labels, transforms_per_digit=32, seed=0)
  assert images.shape == (6 * 32, 40, 40) and images.dtype == np.uint8
  np.testing.assert_array_equal(out_labels, np.repeat(labels, 32))
  # Kept inside the frame: almost all ink survives (bilinear resampling and scale change it a little).
  ink_in = np.repeat(digits.reshape(6, -1).sum(1).astype(float), 32)
  ratio = images.reshape(len(images), -1).sum(1) / ink_in
  assert ratio.min() > 0.6 and ratio.max() < 1.6
  # The 32 versions of a digit differ from each other and from the centred original.
  assert len({im.tobytes() for im in images[:32]}) == 32
  assert not any(np.array_equal(im, digits[0]) for im in images[:32])
  # Translations spread the ink over the frame: centroids vary by several pixels.
  ys = np.arange(40)[None, :, None]
  centroid_y = (images * ys).sum((1, 2)) / images.sum((1, 2))
  assert centroid_y.std() > 2.0


def test_recipe_transforms_stay_in_documented_ranges():
  digits, _ = affnist_fixture_digits(50)
  transforms = affnist.sample_transforms(digits, np.random.default_rng(0))
  linear = transforms[:, :, :2]
  determinants = np.linalg.det(linear)
  assert np.all(determinants > 0.8 ** 2 * 0.99) and np.all(determinants < 1.2 ** 2 * 1.01)
  # Corners of the ink box land inside the frame after the transform.
  centre = 19.5
  for digit, forward in zip(digits, transforms):
    rows, cols = np.nonzero(digit)
    corners = np.array([[x, y] for x in (cols.min(), cols.max()) for y in (rows.min(), rows.max())])
    moved = (corners - centre) @ forward[:, :2].T + centre + forward[:, 2]
    assert moved.min() >= -0.5 - 1e-9 and moved.max() <= 39.5 + 1e-9


def test_generated_set_is_cached_with_its_seed(tmp_path):
  digits, labels = affnist_fixture_digits()
  config = affnist.AffnistConfig(cache_dir=str(tmp_path), num_test_digits=4, transforms_per_digit=3, seed=1)
  first, first_labels, description = affnist.load_test_set(digits, labels, config)
  files = os.listdir(tmp_path)
  assert len(files) == 1 and "seed1" in files[0] and first.shape == (12, 40, 40)
  second, _, cached_description = affnist.load_test_set(digits, labels, config)
  np.testing.assert_array_equal(first, second)
  assert "cached in" in cached_description and "cached in" not in description
  other, _, _ = affnist.load_test_set(digits, labels, affnist.AffnistConfig(
      cache_dir=str(tmp_path), num_test_digits=4, transforms_per_digit=3, seed=2))
  assert not np.array_equal(first, other) and len(os.listdir(tmp_path)) == 2


@pytest.mark.parametrize("damage", ["truncated", "wrong_keys", "wrong_shape"])
def test_a_damaged_cached_set_is_regenerated_with_a_warning(tmp_path, damage, caplog):
  digits, labels = affnist_fixture_digits()
  config = affnist.AffnistConfig(cache_dir=str(tmp_path), num_test_digits=4, transforms_per_digit=3, seed=1)
  expected, expected_labels, _ = affnist.load_test_set(digits, labels, config)
  (path,) = [os.path.join(tmp_path, name) for name in os.listdir(tmp_path)]
  if damage == "truncated":
    with open(path, "rb") as f:
      head = f.read(100)
    with open(path, "wb") as f:
      f.write(head)
  elif damage == "wrong_keys":
    np.savez(path[:-4], pictures=expected)
  else:
    np.savez(path[:-4], images=expected[:5], labels=expected_labels[:5])
  with caplog.at_level("WARNING"):
    images, regenerated_labels, description = affnist.load_test_set(digits, labels, config)
  assert "regenerating it" in caplog.text and path in caplog.text
  np.testing.assert_array_equal(images, expected)
  np.testing.assert_array_equal(regenerated_labels, expected_labels)
  assert "cached in" not in description
  reread, _, description = affnist.load_test_set(digits, labels, config)  # Rewritten whole.
  np.testing.assert_array_equal(reread, expected)
  assert "cached in" in description


def write_affnist_mat(path, images, labels):
  """The real affNIST layout: struct affNISTdata, images as 1600 x N columns, labels 1 x N."""
  flat = images.reshape(len(images), -1).T.astype(np.uint8)
  scipy.io.savemat(path, {"affNISTdata": {"image": flat, "label_int": labels[None, :].astype(np.uint8),
                                          "label_one_of_n": np.eye(10, dtype=np.uint8)[labels].T}})


def test_real_affnist_mat_files_load_in_order(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (7, 40, 40)).astype(np.uint8)
  images[:, :5, :] = 0  # asymmetric, so a transposed reading would not match
  labels = rng.integers(0, 10, 7)
  batches = tmp_path / "test_batches"
  batches.mkdir()
  # Batches are read in numeric order: 1, 2, 10 (not the string order 1, 10, 2).
  write_affnist_mat(str(batches / "10.mat"), images[5:], labels[5:])
  write_affnist_mat(str(batches / "2.mat"), images[3:5], labels[3:5])
  write_affnist_mat(str(batches / "1.mat"), images[:3], labels[:3])
  loaded, loaded_labels, description = affnist.load_test_set(
      images, labels, affnist.AffnistConfig(affnist_dir=str(tmp_path)))
  np.testing.assert_array_equal(loaded, images)
  np.testing.assert_array_equal(loaded_labels, labels)
  assert "affNIST .mat files" in description
  single = tmp_path / "test.mat"
  write_affnist_mat(str(single), images, labels)
  np.testing.assert_array_equal(affnist.load_real(str(tmp_path))[0], images)  # test.mat wins


def test_malformed_affnist_files_get_one_clear_error(tmp_path):
  with pytest.raises(DataError, match="--affnist_dir=.*expected affNIST's test.mat"):
    affnist.load_real(str(tmp_path))
  wrong_key = tmp_path / "a.mat"
  scipy.io.savemat(str(wrong_key), {"mnist": np.zeros((3, 3))})
  with pytest.raises(DataError, match="struct 'affNISTdata'"):
    affnist.load_real(str(wrong_key))
  wrong_size = tmp_path / "b.mat"
  write_affnist_mat(str(wrong_size), np.zeros((2, 28, 28)), np.zeros(2, int))
  with pytest.raises(DataError, match=r"expected 'image' of shape \[1600, N\]"):
    affnist.load_real(str(wrong_size))
  garbage = tmp_path / "c.mat"
  garbage.write_bytes(b"not a mat file at all" * 10)
  with pytest.raises(DataError, match="c.mat: expected an affNIST .mat file"):
    affnist.load_real(str(garbage))


def test_a_fully_transparent_cutout_is_skipped_by_name_and_counted(tmp_path, caplog):
  folder = tmp_path / "cutouts" / "thing"
  folder.mkdir(parents=True)
  rgba = np.zeros((30, 20, 4), np.uint8)
  rgba[5:25, 5:15] = 255
  (folder / "good.png").write_bytes(tf.io.encode_png(rgba).numpy())
  (folder / "invisible.png").write_bytes(tf.io.encode_png(rgba * np.array([1, 1, 1, 0], np.uint8)).numpy())
  (folder / "blank_mask.jpg").write_bytes(tf.io.encode_jpeg(rgba[..., :3]).numpy())
  (folder / "blank_mask.mask.png").write_bytes(tf.io.encode_png(np.zeros((30, 20, 1), np.uint8)).numpy())
  (tmp_path / "cutouts" / "nothing").mkdir()  # A class with no cut-out of its own.
  loaded = cutouts.load_cutouts(str(tmp_path / "cutouts"), (40, 40))
  assert len(loaded.images) == 1
  warnings = "\n".join(r.getMessage() for r in caplog.records)
  for expected in ("invisible.png: fully transparent", "blank_mask.mask.png: fully transparent",
                   "2 of 3 cut-outs", "no usable cut-out of class nothing"):
    assert expected in warnings


def test_written_cutouts_load_back_in_their_class_order(tmp_path):
  """Class ids follow classes.txt, not the folders' sorted names ("one" < "two" < "zero"; "10" < "2")."""
  names = ["zero", "one", "two"] + [str(n) for n in range(3, 12)]
  images = np.zeros((len(names), 8, 8, 4), np.float32)
  images[:, 2:6, 2:6] = 1.0
  images[:, 3, 3, 0] = np.arange(len(names)) / 20  # Tells the cut-outs apart.
  cutouts.write_cutouts(images, np.arange(len(names)), names, str(tmp_path / "cutouts"))
  loaded = cutouts.load_cutouts(str(tmp_path / "cutouts"), (8, 8))
  assert loaded.class_names == names
  np.testing.assert_allclose(loaded.images[:, 3, 3, 0], images[loaded.classes, 3, 3, 0], atol=1 / 255)
  (tmp_path / "cutouts" / "classes.txt").write_text("zero\none\n")  # Names too few of the folders.
  with pytest.raises(DataError, match="classes.txt lists .* but the class folders are"):
    cutouts.load_cutouts(str(tmp_path / "cutouts"), (8, 8))


@pytest.mark.parametrize("class_names", [[str(d) for d in range(10)], ["digit"]])
def test_bundled_digit_cutouts_take_the_synthesizers_classes(class_names):
  white = cutouts.bundled_digits((40, 40), class_names, coloured=False, count=50)
  assert white.images.shape == (50, 40, 40, 4) and white.class_names == class_names
  assert np.all(white.images[..., 3].max(axis=(1, 2)) > 0.9) and np.all(white.images[..., :3] == 1)
  if len(class_names) == 1:
    assert np.all(white.classes == 0)
  else:  # Each cut-out's class is its digit's label: find the digit whose ink is its alpha.
    images, labels = mnist.load_bundled()
    padded = mnist.pad_to(images).reshape(len(images), -1)
    for alpha, label in zip(np.rint(white.images[..., 3] * 255).astype(np.uint8), white.classes):
      assert label in labels[np.all(padded == alpha.reshape(-1), axis=1)]
  coloured = cutouts.bundled_digits((24, 24), class_names, coloured=True, count=50)
  assert coloured.images.shape == (50, 24, 24, 4) and coloured.images[..., :3].std() > 0.1


def test_bundled_digit_cutouts_refuse_a_synthesizer_of_other_classes():
  with pytest.raises(ConfigError, match="--foregrounds=bundled: the bundled digits make 10 classes or one"):
    cutouts.bundled_digits((40, 40), ["cat", "dog"], coloured=True)
