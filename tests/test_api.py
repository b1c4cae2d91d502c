"""Bring your own target: terse_tf.api runs TERSE against a small Keras classifier defined here, on cut-outs
and photos from folders, with no flagfile."""

import contextlib
import io
import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from terse_tf import api, export
from terse_tf.data import cutouts, photos
from terse_tf.errors import ConfigError
from terse_tf.tasks import CommonSettings
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


def test_terse_trains_a_users_own_classifier_from_python_and_exports_its_synthesizer(user_data, tmp_path,
                                                                                    caplog):
  root, real, test = user_data
  options = dict(cycles=1, baseline_epochs=2, batch_size=32, synth_batch_size=32, hard_per_class=24,
                 synth_max_steps=15, finetune_steps=30, checkpoint_every_steps=5, eval_batch_size=100,
                 hard_threshold=0.5)
  results = api.train_classifier(users_classifier, str(root / "cutouts"), str(root / "photos"), real, test,
                                 str(tmp_path / "run"), **options)
  # The API reports progress as the command line does, with no logging set-up by the user.
  log = caplog.text
  assert "eval after baseline" in log and "phase ETA" in log and "test_accuracy:" in log
  caplog.clear()
  assert results["headline"] == "test_accuracy" and results["cycles_completed"] == 1
  assert results["hard_examples"] > 0
  # The user's network is the one that was trained: T's export classifies the user's images, and the
  # accuracy reported after the last cycle is its accuracy on the test images (within one image).
  served = tf.saved_model.load(export.saved_model_path(str(tmp_path / "run" / "export" / export.TARGET_DIR)))
  probabilities = served.signatures[export.SERVING_DEFAULT](images=tf.constant(test[0] / 255, tf.float32))
  assert probabilities["probabilities"].shape == (len(test[0]), 2)
  accuracy = np.mean(np.argmax(probabilities["probabilities"], axis=1) == test[1])
  assert results["test_accuracy_after"] == pytest.approx(accuracy, abs=1.01 / len(test[0]))
  assert results["test_accuracy_before"] == results["history"][0]["test_accuracy"]
  synthesizer = tf.saved_model.load(export.saved_model_path(str(tmp_path / "run" / "export" /
                                                                 export.SYNTHESIZER_DIR)))
  inputs = synthesizer.signatures[export.GENERATE].structured_input_signature[1]
  assert inputs["foreground"].shape.as_list() == [None, SIZE, SIZE, 4]
  # Called again, it resumes the finished run instead of training anew.
  again = api.train_classifier(users_classifier, str(root / "cutouts"), str(root / "photos"), real, test,
                               str(tmp_path / "run"), verbose=False, **options)
  assert again["test_accuracy_after"] == results["test_accuracy_after"]
  assert "eval after" not in caplog.text  # verbose=False: warnings and errors only.
  # Errors speak of keyword arguments, not of flags.
  with pytest.raises(ConfigError, match=r"holds a run on other data .*test: 200 there, 100 now.*fresh=True") as e:
    api.train_classifier(users_classifier, str(root / "cutouts"), str(root / "photos"), real,
                         (test[0][:100], test[1][:100]), str(tmp_path / "run"), **options)
  assert "--" not in str(e.value)
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


def test_labels_outside_the_classes_and_a_model_of_variable_input_size_are_refused(user_data, tmp_path):
  root, real, test = user_data
  for labels, split in ((real[1] + 1, "real"), (-test[1], "test")):
    bad_real = (real[0], labels) if split == "real" else real
    bad_test = (test[0], labels) if split == "test" else test
    with pytest.raises(ConfigError, match=rf"{split} labels must lie in \[0, 2\), the cut-out classes"):
      api.train_classifier(users_classifier, str(root / "cutouts"), str(root / "photos"), bad_real, bad_test,
                           str(tmp_path / "run"))
  any_size = lambda: keras.Sequential([keras.Input((None, None, 3)), keras.layers.GlobalAveragePooling2D(),
                                       keras.layers.Dense(2)])
  with pytest.raises(ConfigError, match=r"fixed size \[B, H, W, C\].*\(None, None, None, 3\)"):
    api.train_classifier(any_size, str(root / "cutouts"), str(root / "photos"), real, test, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_cutouts_of_another_size_are_fitted_to_the_classifier_without_fringes(user_data):
  root, real, test = user_data
  rng = np.random.default_rng(3)
  objects, labels = shapes(4, rng)
  small = cutouts.Cutouts(np.stack([tf.image.resize(o, (20, 30)).numpy() for o in objects]), labels,
                          ["disc", "cross"])
  task = CustomClassificationTask(CustomTaskConfig(num_backgrounds=4), CommonSettings(target="yours"),
                                  model_fn=users_classifier, cutouts=small,
                                  backgrounds=photos.load_photos("train")[:2], real=real, test=test)
  assert task.cutouts.shape == (4, SIZE, SIZE, 4)
  # Each object keeps its one colour wherever it is visible (premultiplied resampling: no dark edge).
  for fitted, original in zip(task.cutouts, objects):
    visible = fitted[..., 3] > 0.05
    np.testing.assert_allclose(fitted[visible][:, :3], np.broadcast_to(original[0, 0, :3], (visible.sum(), 3)),
                               atol=1e-4)


# ----------------------------------------------------------------------------------------- a detector
SCENE = 64
GRID = 8


def users_anchors() -> np.ndarray:
  """The user's default boxes [A, 4] (cy, cx, h, w): two squares per cell of an 8x8 grid."""
  centres = (np.arange(GRID) + 0.5) / GRID
  cy, cx = np.meshgrid(centres, centres, indexing="ij")
  return np.stack([np.stack([cy, cx, np.full_like(cy, side), np.full_like(cy, side)], -1).reshape(-1, 4)
                   for side in (0.25, 0.45)], axis=1).reshape(-1, 4).astype(np.float32)


def users_detector(num_classes: int = 2) -> keras.Model:
  """Not one of terse_tf's networks: a small single-shot detector with two boxes per cell of an 8x8 map."""
  images = keras.Input((SCENE, SCENE, 3))
  x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(images)
  x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
  x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
  class_logits = keras.layers.Reshape((-1, num_classes + 1))(keras.layers.Conv2D(2 * (num_classes + 1), 3,
                                                                                 padding="same")(x))
  box_regression = keras.layers.Reshape((-1, 4))(keras.layers.Conv2D(2 * 4, 3, padding="same")(x))
  return keras.Model(images, {"class_logits": class_logits, "box_regression": box_regression},
                     name="users_detector")


def detection_scenes(objects: np.ndarray, classes: np.ndarray, backgrounds: np.ndarray,
                     side_range: tuple[int, int], rng: np.random.Generator):
  """One cut-out per photo crop, resized to a side in `side_range` and pasted at a random place (numpy):
  (uint8 images, boxes per image [1, 4] from the pasted alpha, classes per image [1])."""
  images, boxes = [], []
  for cutout, background in zip(objects, backgrounds):
    side = int(rng.integers(*side_range))
    small = tf.image.resize(cutout, (side, side)).numpy()
    top, left = rng.integers(0, SCENE - side + 1, size=2)
    canvas = background.astype(np.float32) / 255
    patch = canvas[top:top + side, left:left + side]
    canvas[top:top + side, left:left + side] = small[..., :3] * small[..., 3:] + patch * (1 - small[..., 3:])
    images.append(np.clip(np.rint(canvas * 255), 0, 255).astype(np.uint8))
    rows, cols = np.nonzero(small[..., 3] > 0.5)
    boxes.append(np.array([[(top + rows.min()) / SCENE, (left + cols.min()) / SCENE,
                            (top + rows.max() + 1) / SCENE, (left + cols.max() + 1) / SCENE]], np.float32))
  return np.stack(images), boxes, [np.array([c]) for c in classes]


@pytest.fixture(scope="module")
def detection_data(user_data):
  root, _, _ = user_data
  rng = np.random.default_rng(1)
  crops = photos.random_crops(photos.load_photos("train"), 300, SCENE, rng)
  real_objects, real_classes = shapes(200, rng)
  test_objects, test_classes = shapes(100, rng)
  # Real scenes show mid-sized objects; the test set small and large ones too.
  real = detection_scenes(real_objects, real_classes, crops[:200], (20, 28), rng)
  test = detection_scenes(test_objects, test_classes, crops[200:], (12, 40), rng)
  return root, real, test


def coco_stats(truth_boxes, truth_classes, detections, image_hw, num_classes):
  """pycocotools' 12 summary figures (AP@[.5:.95], AP@0.5, AP@0.75, ...) of served detections ({"boxes",
  "scores", "classes", "num_detections"}, normalised ymin, xmin, ymax, xmax, 0-based classes) against the
  truth (per image: boxes [n, 4] in the same form, classes [n])."""
  height, width = image_hw

  def xywh(box):
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    return [xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height]

  annotations, found = [], []
  for image_id, (image_boxes, image_classes) in enumerate(zip(truth_boxes, truth_classes), start=1):
    for box, label in zip(image_boxes, image_classes):
      x, y, w, h = xywh(box)
      annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                          "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
  for image_id, n in enumerate(detections["num_detections"], start=1):
    for box, label, score in zip(*(detections[k][image_id - 1, :n] for k in ("boxes", "classes", "scores"))):
      found.append({"image_id": image_id, "category_id": int(label) + 1, "bbox": xywh(box),
                    "score": float(score)})
  truth = COCO()
  truth.dataset = {"images": [{"id": i + 1, "height": height, "width": width} for i in range(len(truth_boxes))],
                   "categories": [{"id": k + 1} for k in range(num_classes)], "annotations": annotations}
  with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress.
    truth.createIndex()
    evaluator = COCOeval(truth, truth.loadRes(found), iouType="bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return evaluator.stats


def test_terse_trains_a_users_own_detector_from_python(detection_data, tmp_path):
  root, real, test = detection_data
  options = dict(cycles=1, baseline_epochs=3, batch_size=16, synth_batch_size=8, hard_per_class=6,
                 synth_max_steps=12, finetune_steps=15, checkpoint_every_steps=4, eval_batch_size=50,
                 hard_threshold=0.5)
  run_dir = str(tmp_path / "run")
  results = api.train_detector(users_detector, users_anchors(), str(root / "cutouts"), str(root / "photos"),
                               real, test, run_dir, max_objects=2, **options)
  assert results["headline"] == "test_ap50" and results["cycles_completed"] == 1
  assert results["hard_examples"] > 0
  with open(os.path.join(run_dir, "results.json")) as f:
    assert json.load(f)["task"] == "custom_detection"
  # The user's network is T: its export detects on the user's images, and the AP figures reported after the
  # last cycle are pycocotools' for those detections of the test scenes.
  served = tf.saved_model.load(export.saved_model_path(os.path.join(run_dir, "export", export.TARGET_DIR)))
  detections = served.signatures[export.SERVING_DEFAULT](images=tf.constant(test[0] / 255, tf.float32))
  assert detections["boxes"].shape[0] == len(test[0]) and detections["num_detections"].shape == (len(test[0]),)
  stats = coco_stats(test[1], test[2], {k: v.numpy() for k, v in detections.items()}, (SCENE, SCENE), 2)
  assert results["test_ap_after"] == pytest.approx(stats[0], abs=2e-3)
  assert results["test_ap50_after"] == pytest.approx(stats[1], abs=2e-3)
  assert results["test_ap75_after"] == pytest.approx(stats[2], abs=2e-3)
  assert [(h["after"], h["cycle"]) for h in results["history"]] == [("baseline", 0), ("cycle 1", 1)]
  assert results["test_ap50_before"] == results["history"][0]["test_ap50"]
  # S's export places 2 cut-outs of a third of the scene (21 px) each.
  synthesizer = tf.saved_model.load(export.saved_model_path(os.path.join(run_dir, "export",
                                                                         export.SYNTHESIZER_DIR)))
  inputs = synthesizer.signatures[export.GENERATE].structured_input_signature[1]
  assert inputs["foreground"].shape.as_list() == [None, 2, SCENE // 3, SCENE // 3, 4]
  opaque = np.ones([1, 2, SCENE // 3, SCENE // 3, 4], np.float32)  # A solid white square in each slot.
  outputs = synthesizer.signatures[export.SERVING_DEFAULT](
      foreground=tf.constant(opaque), background=tf.zeros([1, SCENE, SCENE, 3]), classes=tf.constant([[1, -1]]))
  assert outputs["num_objects"].numpy().tolist() == [1] and outputs["classes"].numpy()[0, 0] == 1


def test_a_detector_that_breaks_the_contract_is_refused(detection_data, tmp_path):
  root, real, test = detection_data
  call = lambda model, anchors=users_anchors(), data=real: api.train_detector(
      model, anchors, str(root / "cutouts"), str(root / "photos"), data, test, str(tmp_path / "run"))
  with pytest.raises(ConfigError, match="2 classes.*scores 3"):
    call(lambda: users_detector(num_classes=3))
  with pytest.raises(ConfigError, match="with A = 64.*returns"):
    call(users_detector, anchors=users_anchors()[:64])
  with pytest.raises(ConfigError, match="real image 0: expected boxes"):
    call(users_detector, data=(real[0], [np.array([[0.5, 0.5, 0.4, 0.9]])] + real[1][1:], real[2]))
