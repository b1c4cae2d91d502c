"""The detection protocol's invariants (issue: detection evidence that holds): photo splits disjoint by content,
evaluation sets that no training setting changes, every arm's backgrounds given the same §3.1 regions, default
boxes that fit the objects, and the hardness filter's control arm."""

import os

import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from terse_tf import boxes as boxes_lib
from terse_tf import config as config_lib
from terse_tf import evaluation
from terse_tf import pipelines
from terse_tf.data import photos
from terse_tf.errors import ConfigError
from terse_tf.tasks import detection, registry
from terse_tf.tasks.photo_digits import PhotoDigitsConfig, PhotoDigitsSettings
from terse_tf.trainer import Trainer
from conftest import REPO_ROOT, smoke_config

# Colour thumbnails this small keep a photo's layout and colours and nothing finer: a stereo partner or a
# crop of a photo correlates above this with it, different photos below (measured: bundled photos <= 0.50
# across splits, Debian's <= 0.86; motorcycle_left/right 0.95).
THUMBNAIL, SAME_CONTENT = 8, 0.9


def thumbnail(photo: np.ndarray) -> np.ndarray:
  small = tf.image.resize(photo.astype(np.float32) / 255, [THUMBNAIL, THUMBNAIL], antialias=True).numpy().ravel()
  small -= small.mean()
  return small / np.linalg.norm(small)


def most_alike_across_splits(bank: str) -> float:
  split_thumbnails = {split: [thumbnail(p) for p in photos.load_photos(split, min_side=64, bank=bank)]
                      for split in photos.SPLITS}
  return max(float(a @ b) for one, other in (("train", "val"), ("train", "test"), ("val", "test"))
             for a in split_thumbnails[one] for b in split_thumbnails[other])


def test_the_content_check_finds_a_stereo_pair_and_a_crop():
  skimage_dir = os.path.dirname(photos._bundled_paths("train")[0])  # pylint: disable=protected-access
  left, right = photos.read_photos([os.path.join(skimage_dir, f"motorcycle_{side}.png") for side in
                                    ("left", "right")], "the stereo pair")
  assert thumbnail(left) @ thumbnail(right) > SAME_CONTENT
  assert thumbnail(left) @ thumbnail(left[20:-20, 30:-30]) > SAME_CONTENT


@pytest.mark.parametrize("bank", photos.BANKS)
def test_train_val_and_test_photos_share_no_content(bank):
  if bank == "debian" and not all(os.path.exists(p) for split in photos.SPLITS
                                  for p in photos._debian_paths(split)):  # pylint: disable=protected-access
    pytest.skip(f"Debian's wallpapers are not installed ({photos.DEBIAN_INSTALL})")
  assert most_alike_across_splits(bank) < SAME_CONTENT


def test_a_missing_photo_bank_or_split_folder_is_one_clear_error(tmp_path, monkeypatch):
  monkeypatch.setattr(photos, "DEBIAN_BACKGROUNDS", str(tmp_path / "nowhere"))
  with pytest.raises(photos.DataError, match="--photo_bank=debian.*apt-get install plasma-workspace-wallpapers"):
    photos.load_photos("train", bank="debian")
  (tmp_path / "mine" / "train").mkdir(parents=True)
  with pytest.raises(photos.DataError, match=r"--photo_dir=.*mine.*expected a folder .*val"):
    photos.load_photos("val", str(tmp_path / "mine"))
  # The task's settings say so before any photo is read.
  with pytest.raises(ConfigError, match=r"--photo_dir=.*mine: expected the subfolders train, val, test .*"
                                        r"missing: val, test"):
    PhotoDigitsConfig(photo_dir=str(tmp_path / "mine"))


def small_task(**changes):
  settings = dict(num_real=16, num_test=24, num_val=12, num_backgrounds=16)
  settings.update(changes)
  config = config_lib.TrainConfig(run_dir="unused", task="photo_digits", task_settings=PhotoDigitsSettings(
      photo_digits=PhotoDigitsConfig(**settings)))
  return registry.build(config.task, config.task_settings, config_lib.common_settings(config))


def test_no_training_setting_changes_the_evaluation_sets():
  task = small_task()
  other = small_task(num_real=40, num_backgrounds=7, max_objects=2, background_artifact_fraction=0.9,
                     augment="none")
  assert not np.array_equal(task.real_images[:16], other.real_images[:16])
  for name, (images, truth) in task.evaluation_sets().items():
    other_images, other_truth = other.evaluation_sets()[name]
    if name == "val_upright":  # Made like the real set: its objects per scene follow max_objects.
      continue
    np.testing.assert_array_equal(images, other_images, err_msg=name)
    assert all(np.array_equal(a.boxes, b.boxes) for a, b in zip(truth, other_truth)), name


def test_digits_below_min_visible_are_crowd_regions_in_evaluation():
  """A detection on a digit in view but below --min_visible (T's ignore band) is neither a true nor a false
  positive: detecting every object and every such digit scores AP 1, and without the regions it would not."""
  task = small_task(num_test=60, ten_classes=True, min_visible=0.95)  # Overlapping digits fall below it.
  images, truth = task.evaluation_sets()["test"]
  with_regions = [t for t in truth if len(t.ignore_boxes)]
  assert with_regions, "no test scene has a partly visible digit: the case is not covered"
  for t in with_regions:  # One region per class for each digit, whose class the labels do not keep.
    assert len(t.ignore_boxes) % task.num_classes == 0
    assert sorted(t.ignore_classes[:task.num_classes]) == list(range(task.num_classes))
  found = []
  for t in truth:
    regions = t.ignore_boxes[::task.num_classes]
    found.append(evaluation.ImageBoxes(
        boxes=np.concatenate([t.boxes, regions]),
        scores=np.r_[np.ones(len(t.boxes)), np.full(len(regions), 2.0)],
        classes=np.r_[t.classes, np.full(len(regions), 3)].astype(np.int32)))
  assert evaluation.evaluate_detections(truth, found, images.shape[1:3], task.class_names)["ap50"] == 1.0
  plain = [evaluation.ImageBoxes(t.boxes, t.classes) for t in truth]
  assert evaluation.evaluate_detections(plain, found, images.shape[1:3], task.class_names)["ap50"] < 1.0


def test_each_evaluation_scene_names_the_photo_it_was_cropped_from():
  """Per-photo AP is keyed by the photos' names in their source: every scene of a set names a photo of that
  set's split (that scenes are crops of their split's photos: test_detection)."""
  task = small_task()
  for name, split in (("test", "test"), ("val", "val"), ("val_upright", "val")):
    split_photos = photos.load_photos(split, min_side=64)
    named = task.scene_photos[name]
    assert len(named) == len(task.evaluation_sets()[name][0])
    assert set(named) <= set(split_photos.names), name
  assert len(set(task.scene_photos["test"])) > 1  # Scenes come from several photos, each named.
  bundled = photos.SKIMAGE_PHOTOS["test"] + photos.MATPLOTLIB_PHOTOS["test"]
  assert photos.load_photos("test").names == list(bundled)


def test_wide_range_sets_have_feathered_edges_and_the_training_scenes_hard_ones():
  cutout = np.zeros([1, 1, 40, 40, 4], np.float32)
  cutout[..., 10:30, 15:25, :] = 1.0
  feathered = detection.feather_alpha(cutout, 0.6)[0, 0, ..., 3]
  # A 5x5 Gaussian of sigma 0.6, zero outside: scipy's with its radius cut at 2 pixels.
  expected = scipy.ndimage.gaussian_filter(cutout[0, 0, ..., 3], 0.6, mode="constant", truncate=2 / 0.6)
  np.testing.assert_allclose(feathered, expected, atol=1e-6)
  assert 0 < feathered[10, 14] < 0.5 and feathered[20, 20] == pytest.approx(1.0)
  # The feather reaches the wide-range sets only: the real scenes and val_upright stay hard-edged.
  task, sharper = small_task(), small_task(test_edge_sigma=0.3)
  np.testing.assert_array_equal(task.real_images, sharper.real_images)
  for name, (images, _) in task.evaluation_sets().items():
    assert np.array_equal(images, sharper.evaluation_sets()[name][0]) == (name == "val_upright"), name


@pytest.mark.parametrize("source", [detection.CUT_PASTE, detection.CUT_PASTE_BLEND_MODES])
def test_random_arms_paste_on_backgrounds_with_the_same_regions_as_s(source):
  """With no object in the scene, what a random arm pastes on is its background: with every background
  given a §3.1 region none equals a plain crop; with none, each is one."""
  count, slots = 12, 3
  rng = np.random.default_rng(0)
  for fraction, regions in ((0.0, False), (1.0, True)):
    task = small_task(background_artifact_fraction=fraction)
    objects = np.ones([count, slots, 40, 40, 4], np.float32)
    images, labels = task._cut_paste(  # pylint: disable=protected-access
        objects, np.zeros([count, slots], np.int32), np.zeros([count, slots], bool), rng, source)
    assert np.all(labels["count"] == 0)
    stored = photos.to_uint8(images)
    plain = [any(np.array_equal(image, b) for b in task.backgrounds) for image in stored]
    assert not any(plain) if regions else all(plain), (fraction, plain)


def test_background_artifacts_hook_pastes_into_its_share_deterministically():
  """Task.background_artifacts (for D's real side): share 0 leaves every image as it was, share 1 changes
  every one, each with a region of another image (on flat images of distinct colours, a region copied from
  the image itself would change nothing); the same seed gives the same images, another seed others."""
  images = tf.broadcast_to(tf.constant(np.random.default_rng(0).uniform(size=(6, 1, 1, 3)), tf.float32),
                           [6, 128, 128, 3])
  seed = tf.constant([3, 4], tf.int64)
  np.testing.assert_array_equal(small_task(background_artifact_fraction=0.0).background_artifacts(images, seed),
                                images)
  task = small_task(background_artifact_fraction=1.0)
  pasted = task.background_artifacts(images, seed).numpy()
  assert np.all(np.abs(pasted - images.numpy()).max(axis=(1, 2, 3)) > 0.1)
  np.testing.assert_array_equal(task.background_artifacts(images, seed), pasted)
  assert not np.array_equal(task.background_artifacts(images, seed + 1), pasted)


def test_background_regions_take_their_shapes_from_training_masks_not_the_scenes_objects():
  """The bank is training digits' alphas; with a bank of empty masks nothing is pasted, in S's batches and
  the Cut-Paste arms' alike, however opaque the scene's own objects are."""
  task = small_task(background_artifact_fraction=1.0)
  train_alphas = {digit.tobytes() for digit in task.splits.train_images}
  assert len(task.artifact_masks) == min(len(task.splits.train_images), detection.ARTIFACT_MASKS)
  assert all(photos.to_uint8(mask[..., 0]).tobytes() in train_alphas for mask in task.artifact_masks)
  task.artifact_masks = np.zeros_like(task.artifact_masks)
  plain = {background.tobytes() for background in task.backgrounds}
  context = tf.distribute.InputContext()
  batch = next(iter(task.synth_dataset(4, 0, context)))
  assert all(photos.to_uint8(b).tobytes() in plain for b in batch["background"].numpy())
  count = 6
  images, _ = task._cut_paste(  # pylint: disable=protected-access
      np.ones([count, 3, 40, 40, 4], np.float32), np.zeros([count, 3], np.int32), np.zeros([count, 3], bool),
      np.random.default_rng(0))
  assert all(image.tobytes() in plain for image in photos.to_uint8(images))


def test_default_boxes_reach_the_objects_of_the_task():
  """>= 95% of test boxes have a default box at IoU >= 0.5 (SSD's matching threshold)."""
  task = small_task(num_test=300)
  anchors = boxes_lib.centres_to_corners(task.build_target().anchors)
  truth = np.concatenate([t.boxes for t in task.test_truth])
  best = np.max(boxes_lib.iou(anchors, tf.constant(truth, tf.float32)).numpy(), axis=0)
  assert len(truth) > 400 and np.mean(best >= 0.5) >= 0.95, np.mean(best >= 0.5)


def filtered_run(run_dir, hard_threshold):
  config = smoke_config(run_dir, os.path.join(REPO_ROOT, "configs", "photo_digits_smoke.flags"),
                        sample_source=config_lib.FILTERED, discriminator=False, cycles=1,
                        hard_threshold=hard_threshold, target_lr_schedule="cosine", export=False)
  trainer = Trainer(config)
  trainer.run()
  return config, trainer


def test_uniform_filter_adds_only_samples_the_target_finds_hard(tmp_path, caplog):
  # No sample is below a threshold of 0: the filter draws its whole budget and keeps none.
  _, strict = filtered_run(str(tmp_path / "strict"), 0.0)
  assert len(strict.cache) == 0
  assert "48 random draws (S's step cap x batch) gave 0/6 hard samples" in caplog.text  # 6 steps x batch 8
  config, trainer = filtered_run(str(tmp_path / "run"), 0.5)
  margins = trainer.cache.margins()
  assert 0 < len(margins) <= 6 and np.all(margins < 0.5), margins
  # The cosine schedule: the last of the fine-tuning's n steps ran at lr (1 + cos(pi (n - 1) / n)) / 2.
  steps = pipelines.target_steps(trainer.task, trainer.cache, config.batch_size, config.finetune_steps)
  assert float(trainer.players.target_optimizer.learning_rate.numpy()) == pytest.approx(
      config.target_lr * (1 + np.cos(np.pi * (steps - 1) / steps)) / 2, rel=1e-5)
