"""Detection: the photo_digits task, the SSD target's hardness, which player each step moves, the detection
exports under saved_model_cli, photos on disk, and a smoke run killed and resumed."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import DETECTION_SMOKE_FLAGFILE, REPO_ROOT, run_cli, smoke_config, synth_batches
from terse_tf import boxes, compositor, export, trainer as trainer_lib
from terse_tf.data import photos
from terse_tf.errors import DataError
from terse_tf.networks import synthesizer
from terse_tf.targets.ssd import SSDTarget
from terse_tf.tasks import detection
from test_export import saved_model_cli_run


def detection_config(run_dir, **overrides):
  return smoke_config(str(run_dir), flagfile=DETECTION_SMOKE_FLAGFILE, **overrides)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
  """A photo_digits smoke trainer (S, SSD T, D), nothing trained yet."""
  return trainer_lib.Trainer(detection_config(tmp_path_factory.mktemp("detection"), export=False))


def values(variables):
  return [v.numpy().copy() for v in variables]


def test_compact_labels_put_the_visible_objects_first_and_zero_the_padding():
  boxes_in = tf.constant([[[0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.4, 0.4], [0.5, 0.5, 0.6, 0.6]]])
  labels = detection.compact_labels(boxes_in, tf.constant([[4, 7, 9]]), tf.constant([[False, True, True]]))
  assert labels["count"].numpy().tolist() == [2]
  np.testing.assert_allclose(labels["boxes"].numpy()[0], [[0.3, 0.3, 0.4, 0.4], [0.5, 0.5, 0.6, 0.6], [0] * 4])
  assert labels["classes"].numpy().tolist() == [[7, 9, 0]]


def test_real_and_test_scenes_have_their_objects_boxed(trainer):
  task = trainer.task
  images, labels = task.real_examples()
  assert images.dtype == np.uint8 and images.shape[1:] == task.image_shape
  count = labels["count"]
  assert count.min() >= 0 and count.max() <= task.settings.max_objects and count.mean() > 1
  for image_boxes, n in zip(labels["boxes"], count):
    real, padding = image_boxes[:n], image_boxes[n:]
    assert np.all((real >= 0) & (real <= 1)) and np.all(real[:, 2:] > real[:, :2])
    assert not padding.any()
  # Upright digits at the canonical size: boxes about 20 px tall (MNIST's digit box) in every real scene.
  heights = np.concatenate([b[:n, 2] - b[:n, 0] for b, n in zip(labels["boxes"], count)]) * task.image_shape[0]
  assert 14 <= np.median(heights) <= 22
  # The wide test range spreads the sizes.
  test_heights = np.concatenate([t.boxes[:, 2] - t.boxes[:, 0] for t in task.test_truth]) * task.image_shape[0]
  assert np.percentile(test_heights, 90) > 1.4 * np.median(heights)


def test_the_test_scenes_use_held_out_photos():
  assert not set(photos.SKIMAGE_PHOTOS["train"]) & set(photos.SKIMAGE_PHOTOS["test"])
  assert not set(photos.MATPLOTLIB_PHOTOS["train"]) & set(photos.MATPLOTLIB_PHOTOS["test"])


def test_ssd_hardness_is_the_confidence_for_the_hardest_objects_class():
  """With a class head that ignores its input and favours class 1, every default box gives class 1 the
  same high probability and class 0 a low one: a scene's hardness is the probability of its hardest
  object's class, and it counts towards that class's quota."""
  spec = boxes.DefaultBoxSpec(feature_sizes=(8, 4, 2))
  target = SSDTarget.build("compact", 64, num_classes=2, spec=spec)
  bias = np.array([0.0, 1.0, 3.0], np.float32)  # background, class 0, class 1
  for k in range(3):
    head = target.model.get_layer(f"class_head_{k}")
    head.kernel.assign(tf.zeros_like(head.kernel))
    head.bias.assign(np.tile(bias, spec.boxes_per_cell()))
  probabilities = np.exp(bias) / np.exp(bias).sum()
  labels = {"boxes": tf.constant([[[0.1, 0.1, 0.4, 0.3], [0.5, 0.5, 0.9, 0.8]]] * 3),
            "classes": tf.constant([[1, 0], [1, 1], [0, 0]]), "count": tf.constant([2, 1, 0])}
  judgement = target.judge(target.model(tf.zeros([3, 64, 64, 3]), training=False), labels)
  np.testing.assert_allclose(judgement.hardness.numpy(), [probabilities[1], probabilities[2], 1.0], rtol=1e-5)
  assert judgement.quota_class.numpy()[:2].tolist() == [0, 1]


def test_cut_paste_blend_modes_soften_the_edge_and_keep_the_alpha_mass():
  cutout = np.zeros([4, 40, 40, 4], np.float32)
  cutout[:, 10:30, 15:25] = 1.0
  blended = detection.blur_alpha(tf.constant(cutout), tf.constant([0, 1, 2, 3])).numpy()
  np.testing.assert_array_equal(blended[0], cutout[0])  # "none"
  for mode in (1, 2, 3):
    assert np.abs(blended[mode, ..., 3] - cutout[mode, ..., 3]).max() > 0.1  # The edge is softened...
    assert blended[mode, ..., 3].sum() == pytest.approx(200.0, rel=1e-5)     # ...no ink lost.


def test_each_players_step_moves_only_its_own_variables(trainer):
  """S's step leaves T and D alone, D's leaves S and T, T's leaves S and D. (What S's step learns from T's
  loss and D's verdict: test_steps.py, against one tape.)"""
  players = {"synthesizer": trainer.synthesizer, "target": trainer.target.model,
             "discriminator": trainer.discriminator}
  synth_batch, real = next(iter(synth_batches(trainer, 0)))

  def step_moves(step):
    before = {name: values(model.variables) for name, model in players.items()}
    result = step()
    moved = {name for name, model in players.items()
             if any(not np.array_equal(a, b) for a, b in zip(before[name], values(model.variables)))}
    return moved, result

  moved, (outputs, composites) = step_moves(lambda: trainer._synth_step(synth_batch))
  assert moved == {"synthesizer"}
  # The step says which parameter rows are objects: the hard-parameter histograms leave empty slots out.
  np.testing.assert_array_equal(outputs.pasted.numpy() > 0, synth_batch["valid"].numpy())
  assert not synth_batch["valid"].numpy().all()
  moved, _ = step_moves(lambda: trainer._discriminator_step(real, composites))
  assert moved == {"discriminator"}
  images, labels = trainer.task.real_examples()
  batch = (tf.constant(images[:16], tf.float32) / 255.0, {k: tf.constant(v[:16]) for k, v in labels.items()})
  moved, _ = step_moves(lambda: trainer._target_step(batch))
  assert moved == {"target"}


def test_synthesized_boxes_follow_the_pasted_objects(trainer):
  """Every box S's composite reports is the tight box of what that object shows in the image."""
  batch = next(iter(synth_batches(trainer, 1)))[0]
  params = trainer.task._place(
      lambda fg, bg: synthesizer.raw_params(trainer.synthesizer, fg, bg, training=False),
      batch["foreground"], batch["background"])
  result = compositor.composite_objects(batch["foreground"], batch["background"], params, batch["valid"],
                                        trainer.task.compositor, trainer.task.settings.min_visible)
  labels = detection.compact_labels(result.boxes, batch["classes"], result.box_valid)
  for i in range(len(params)):
    shown = [box for box, ok in zip(result.boxes.numpy()[i], result.box_valid.numpy()[i]) if ok]
    count = int(labels["count"][i])
    assert count == len(shown)
    np.testing.assert_allclose(labels["boxes"].numpy()[i, :count], np.reshape(shown, [-1, 4]))


def test_detection_exports_serve_under_saved_model_cli(tmp_path):
  # S without noise, so that the served parameters can equal the in-memory S's.
  trainer = trainer_lib.Trainer(detection_config(tmp_path / "run", synth_noise_dim=0, export=False))
  task = trainer.task
  paths = export.export_models(task, trainer.synthesizer, trainer.target, str(tmp_path / "export"))
  batch = next(iter(synth_batches(trainer, 2)))[0]
  classes = np.where(batch["valid"].numpy(), batch["classes"].numpy(), -1).astype(np.int32)
  inputs = {"foreground": batch["foreground"].numpy(), "background": batch["background"].numpy(),
            "classes": classes}
  served = saved_model_cli_run(paths[export.SYNTHESIZER_DIR], export.SERVING_DEFAULT, inputs,
                               str(tmp_path / "s"))
  expected = task.synthesizer_endpoints(trainer.synthesizer)[export.SERVING_DEFAULT][0](
      *(tf.constant(inputs[k]) for k in ("foreground", "background", "classes")))
  assert set(served) == {"params", "composite", "boxes", "classes", "num_objects", "masks"}
  for key, value in expected.items():
    np.testing.assert_allclose(served[key], value.numpy(), atol=1e-5, err_msg=key)

  images = task.test_images[:4].astype(np.float32) / 255.0
  served = saved_model_cli_run(paths[export.TARGET_DIR], export.SERVING_DEFAULT, {"images": images},
                               str(tmp_path / "t"))
  detections = trainer.target.detect(tf.constant(images))
  assert set(served) == {"boxes", "scores", "classes", "num_detections"}
  np.testing.assert_array_equal(served["num_detections"], detections.num_detections.numpy())
  np.testing.assert_allclose(served["boxes"], detections.boxes.numpy(), atol=1e-5)
  np.testing.assert_allclose(served["scores"], detections.scores.numpy(), atol=1e-5)


def test_a_users_photo_folder_skips_and_counts_files_it_cannot_use(tmp_path, caplog):
  for split in ("train", "test"):
    (tmp_path / split).mkdir()
  rng = np.random.default_rng(0)
  good = tf.io.encode_png(rng.integers(0, 255, (80, 90, 3), dtype=np.uint8)).numpy()
  (tmp_path / "train" / "good.png").write_bytes(good)
  (tmp_path / "train" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
  (tmp_path / "train" / "tiny.png").write_bytes(tf.io.encode_png(np.zeros((8, 8, 1), np.uint8)).numpy())
  loaded = photos.load_photos("train", str(tmp_path), min_side=64)
  assert len(loaded) == 1 and loaded[0].shape == (80, 90, 3)
  warnings = "\n".join(r.getMessage() for r in caplog.records)
  assert "broken.jpg" in warnings and "tiny.png" in warnings and "2 of 3 photos in --photo_dir" in warnings
  with pytest.raises(DataError, match="--photo_dir=.*test photos.*no usable photo"):
    photos.load_photos("test", str(tmp_path))


def test_an_unreadable_image_names_its_file(tmp_path):
  path = tmp_path / "photo.png"
  path.write_bytes(b"\x89PNG truncated")
  with pytest.raises(DataError, match="photo.png: cannot read this image"):
    photos.read_rgb(str(path))


def cached_images(run_dir) -> np.ndarray:
  """Every composite of a run's on-disk cache, in shard order."""
  return np.concatenate([np.load(path)["image"] for path in sorted(glob.glob(str(run_dir / "cache" / "*.npz")))])


@pytest.mark.slow
def test_detection_smoke_run_killed_mid_run_resumes_to_the_end(tmp_path):
  run_dir = tmp_path / "run"
  args = [f"--flagfile={DETECTION_SMOKE_FLAGFILE}", f"--run_dir={run_dir}", "--checkpoint_every_steps=1",
          "--hard_per_class=40", "--synth_max_steps=12"]
  process = subprocess.Popen([sys.executable, "-m", "terse_tf.train", *args], cwd=REPO_ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  def shards():
    return len(os.listdir(run_dir / "cache")) if (run_dir / "cache").exists() else 0

  deadline = time.time() + 300
  try:  # Killed once the cache has shards on disk mid-synthesis.
    while time.time() < deadline and process.poll() is None and shards() < 2:
      time.sleep(0.05)
  finally:
    process.send_signal(signal.SIGKILL)
    process.wait()
  assert shards() >= 2 and process.returncode == -signal.SIGKILL, "the run ended before it was killed"

  result = run_cli(*args, timeout=600)
  assert "resumed from" in result.stderr
  with open(run_dir / "results.json") as f:
    results = json.load(f)
  assert results["cycles_completed"] == 2 and results["test_ap50_after"] is not None
  # ...and ends where an uninterrupted run ends: the same cache and the same figures after every phase
  # (the input streams, S's noise and the dropout masks go on from where the checkpoint left them).
  uninterrupted = tmp_path / "uninterrupted"
  run_cli(*args, f"--run_dir={uninterrupted}", timeout=600)
  with open(uninterrupted / "results.json") as f:
    expected = json.load(f)
  for resumed_cycle, expected_cycle in zip(results["history"], expected["history"], strict=True):
    assert resumed_cycle == pytest.approx(expected_cycle, rel=1e-6), (resumed_cycle, expected_cycle)
  np.testing.assert_array_equal(cached_images(run_dir), cached_images(uninterrupted))
  # The cache holds what the checkpoint counts, within each cycle's quota.
  resumed = trainer_lib.Trainer(detection_config(run_dir, hard_per_class=(40,), synth_max_steps=12))
  assert len(os.listdir(run_dir / "cache")) == int(resumed.cache.committed_shards.numpy())
  for cycle in (1, 2):
    assert resumed.cache.class_counts(cycle).max() <= 40
  for name in ("synthesizer", "target"):
    assert os.path.exists(run_dir / "export" / name / "1" / "saved_model.pb")
