"""Bring your own target: terse_tf.api runs TERSE against a small Keras classifier defined here, on cut-outs
and photos from folders, with no flagfile."""

import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from terse_tf import api, export
from terse_tf.data import cutouts, photos
from terse_tf.errors import ConfigError
from terse_tf.tasks.custom import CustomClassificationTask, CustomTaskConfig

SIZE = 32


def users_classifier() -> keras.Model:
  """Not one of terse_tf's networks: what a user might already have."""
  return keras.Sequential([
      keras.Input((SIZE, SIZE, 3)),
      keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.MaxPooling2D(),
      keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
      keras.layers.Dense(2),
  ], name="users_classifier")


def shapes(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """RGBA cut-outs [count, SIZE, SIZE, 4] of two classes, discs (0) and crosses (1), in random colours."""
  y, x = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
  disc = (x ** 2 + y ** 2 <= (SIZE / 2.5) ** 2).astype(np.float32)
  cross = ((np.abs(x) < SIZE / 8) | (np.abs(y) < SIZE / 8)).astype(np.float32) * (np.abs(x) < SIZE / 2.5) * (
      np.abs(y) < SIZE / 2.5)
  labels = rng.integers(0, 2, count)
  alpha = np.where(labels[:, None, None] == 0, disc, cross)[..., None]
  colour = np.broadcast_to(rng.uniform(size=(count, 1, 1, 3)), (count, SIZE, SIZE, 3))
  return np.concatenate([colour, alpha], -1).astype(np.float32), labels


def scenes(objects: np.ndarray, backgrounds: np.ndarray, scale: tuple[float, float],
           rng: np.random.Generator) -> np.ndarray:
  """uint8 images: each cut-out scaled by a factor in `scale` and pasted at a random place on a background
  (numpy only, independent of terse_tf's compositor)."""
  images = []
  for cutout, background in zip(objects, backgrounds):
    side = int(SIZE * rng.uniform(*scale))
    small = tf.image.resize(cutout, (side, side)).numpy()
    top, left = rng.integers(0, SIZE - side + 1, size=2)
    canvas = background.astype(np.float32) / 255
    patch = canvas[top:top + side, left:left + side]
    canvas[top:top + side, left:left + side] = small[..., :3] * small[..., 3:] + patch * (1 - small[..., 3:])
    images.append(np.clip(np.rint(canvas * 255), 0, 255).astype(np.uint8))
  return np.stack(images)


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("user")
  rng = np.random.default_rng(0)
  objects, labels = shapes(60, rng)
  cutouts.write_cutouts(objects, labels, ["disc", "cross"], str(root / "cutouts"))
  os.makedirs(root / "photos")
  for path in photos._bundled_paths("train")[:4]:  # pylint: disable=protected-access
    shutil.copy(path, root / "photos")
  crops = photos.random_crops(photos.load_photos("train"), 600, SIZE, rng)
  # Real images show large, centred-ish objects; the test set small ones anywhere: a gap to close.
  real_objects, real_labels = shapes(400, rng)
  test_objects, test_labels = shapes(200, rng)
  real = (scenes(real_objects, crops[:400], (0.9, 1.0), rng), real_labels)
  test = (scenes(test_objects, crops[400:], (0.4, 0.7), rng), test_labels)
  return root, real, test


def test_terse_trains_a_users_own_classifier_from_python_and_exports_its_synthesizer(user_data, tmp_path):
  root, real, test = user_data
  options = dict(cycles=1, baseline_epochs=2, batch_size=32, synth_batch_size=32, hard_per_class=24,
                 synth_max_steps=15, finetune_steps=30, checkpoint_every_steps=5, eval_batch_size=100,
                 hard_threshold=0.5)
  results = api.train_classifier(users_classifier, str(root / "cutouts"), str(root / "photos"), real, test,
                                 str(tmp_path / "run"), **options)
  assert results["headline"] == "test_accuracy" and results["cycles_completed"] == 1
  assert 0 <= results["test_accuracy_before"] <= 1 and 0 <= results["test_accuracy_after"] <= 1
  assert results["hard_examples"] > 0
  # The user's network is the one that was trained: its layers are in T's export.
  served = tf.saved_model.load(export.saved_model_path(str(tmp_path / "run" / "export" / export.TARGET_DIR)))
  probabilities = served.signatures[export.SERVING_DEFAULT](images=tf.constant(test[0][:4] / 255, tf.float32))
  assert probabilities["probabilities"].shape == (4, 2)
  synthesizer = tf.saved_model.load(export.saved_model_path(str(tmp_path / "run" / "export" /
                                                                 export.SYNTHESIZER_DIR)))
  inputs = synthesizer.signatures[export.GENERATE].structured_input_signature[1]
  assert inputs["foreground"].shape.as_list() == [None, SIZE, SIZE, 4]
  # Called again, it resumes the finished run instead of training anew.
  again = api.train_classifier(users_classifier, str(root / "cutouts"), str(root / "photos"), real, test,
                               str(tmp_path / "run"), **options)
  assert again["test_accuracy_after"] == results["test_accuracy_after"]
  with open(tmp_path / "run" / "results.json") as f:
    assert json.load(f)["task"] == "custom"


def test_a_classifier_whose_classes_disagree_with_the_cutouts_is_refused(user_data, tmp_path):
  root, real, test = user_data
  three_classes = lambda: keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten(),
                                            keras.layers.Dense(3)])
  with pytest.raises(ConfigError, match="2 classes.*3 outputs"):
    api.train_classifier(three_classes, str(root / "cutouts"), str(root / "photos"), real, test,
                         str(tmp_path / "run"))
  with pytest.raises(ConfigError, match="unknown training options.*'cycels'"):
    api.train_classifier(users_classifier, str(root / "cutouts"), str(root / "photos"), real, test,
                         str(tmp_path / "run"), cycels=2)


def test_cutouts_of_another_size_are_fitted_to_the_classifier_without_fringes(user_data):
  root, real, test = user_data
  rng = np.random.default_rng(3)
  objects, labels = shapes(4, rng)
  small = cutouts.Cutouts(np.stack([tf.image.resize(o, (20, 30)).numpy() for o in objects]), labels,
                          ["disc", "cross"])
  task = CustomClassificationTask(users_classifier, small, photos.load_photos("train")[:2], real, test,
                                  CustomTaskConfig(num_backgrounds=4))
  assert task.cutouts.shape == (4, SIZE, SIZE, 4)
  # Each object keeps its one colour wherever it is visible (premultiplied resampling: no dark edge).
  for fitted, original in zip(task.cutouts, objects):
    visible = fitted[..., 3] > 0.05
    np.testing.assert_allclose(fitted[visible][:, :3], np.broadcast_to(original[0, 0, :3], (visible.sum(), 3)),
                               atol=1e-4)
