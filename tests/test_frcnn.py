"""Faster R-CNN from Model Garden as T (targets/frcnn.py): its loss trains, the label conversion Model Garden
fails silently without, a frozen T in S's step, hardness, a mirrored step, export and serving, and a run."""

import copy
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import DETECTION_SMOKE_FLAGFILE, REPO_ROOT, run_cli
from terse_tf import export
from terse_tf.errors import ConfigError
from terse_tf.targets import frcnn, registry
from terse_tf.targets.base import DetectorTarget
from test_export import saved_model_cli_run

SIDE = 64  # The smallest side Model Garden's FPN takes (a multiple of 32), for speed.


def fixture_scenes(count: int = 8, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Dark noisy images, every other one with a bright square of class 1 (of 2) and the rest empty; two label
  rows each (one padding)."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(0.0, 0.2, (count, SIDE, SIDE, 3)).astype(np.float32)
  boxes = np.zeros([count, 2, 4], np.float32)
  for index in range(0, count, 2):
    top, left = rng.integers(4, SIDE - 28, size=2)
    images[index, top:top + 24, left:left + 24] = [0.9, 0.8, 0.1]
    boxes[index, 0] = np.array([top, left, top + 24, left + 24]) / SIDE
  return images, {"boxes": boxes, "classes": np.array([[1, 0]] * count, np.int32),
                  "count": (np.arange(count) % 2 == 0).astype(np.int32)}


def slim_target() -> frcnn.FasterRCNNTarget:
  """frcnn_resnet18 for 2 classes at 64 px, its BatchNorm averages quick to follow a short training."""
  settings = dataclasses.replace(frcnn.PRESETS["frcnn_resnet18"], norm_momentum=0.9)
  return frcnn.FasterRCNNTarget.build("frcnn_resnet18", settings, (SIDE, SIDE, 3), 2, "image_size")


@pytest.fixture(scope="module")
def trained():
  """slim_target and its losses over 80 SGD steps on the fixture."""
  target = slim_target()
  images, labels = fixture_scenes()
  images, labels = tf.constant(images), {k: tf.constant(v) for k, v in labels.items()}
  optimizer = keras.optimizers.SGD(0.02, momentum=0.9)
  variables = target.model.trainable_variables
  optimizer.build(variables)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = target.loss(images, labels, training=True)
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss

  losses = [float(step()) for _ in range(80)]
  return target, images, labels, losses


@pytest.mark.slow
def test_the_loss_falls_and_hardness_is_high_on_a_drawn_object_and_zero_where_none_is(trained):
  target, images, labels, losses = trained
  assert isinstance(target, DetectorTarget) and registry.names()[:3] == tuple(frcnn.PRESETS)
  assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5]), losses
  drawn, objects = images[0::2], {k: v[0::2] for k, v in labels.items()}
  judgement = target.verdict(drawn, objects)
  assert judgement.hardness.numpy().min() > 0.5, judgement.hardness.numpy()
  np.testing.assert_array_equal(judgement.quota_class.numpy(), 1)
  # The same boxes on images where nothing is drawn: T finds nothing there.
  np.testing.assert_allclose(target.verdict(images[1::2], objects).hardness.numpy(), 0.0, atol=0.05)
  # Detections are normalised, 0-based and zero past num_detections.
  found = target.detections(drawn)
  assert found.num_detections.numpy().min() >= 1
  best = tf.argmax(found.scores, axis=1)
  np.testing.assert_array_equal(tf.gather(found.classes, best, batch_dims=1).numpy(), 1.0)
  np.testing.assert_allclose(tf.gather(found.boxes, best, batch_dims=1).numpy(), objects["boxes"][:, 0],
                             atol=0.1)
  past = np.arange(found.scores.shape[1])[None, :] >= found.num_detections.numpy()[:, None]
  assert not found.scores.numpy()[past].any() and not found.classes.numpy()[past].any()


@pytest.mark.slow
def test_classes_go_in_1_based_and_boxes_in_pixels(trained):
  """Model Garden takes classes 1-based (0 its background) and boxes in pixels: either mistake makes every
  object background without an error (a zero box loss, a class loss that looks normal)."""
  target, images, labels, _ = trained
  gt_boxes, gt_classes = target.model_garden_labels(labels)
  np.testing.assert_allclose(gt_boxes[0::2, 0].numpy(), labels["boxes"][0::2, 0].numpy() * SIDE)
  np.testing.assert_array_equal(gt_classes.numpy(), [[2, -1], [-1, -1]] * (len(images) // 2))
  np.testing.assert_array_equal(gt_boxes[:, 1].numpy(), -1.0)
  assert float(target.model_garden_losses(images, labels, training=False)["frcnn_box_loss"]) > 0

  def roi_classes(boxes, classes):
    """[B, ROIs] the classes of the ROIs Model Garden's sampler trains the box head on, 0 its background."""
    inputs = target._model_inputs(images)  # pylint: disable=protected-access
    return target.model.call(images, **inputs, gt_boxes=boxes, gt_classes=classes, training=True
                             )["class_targets"].numpy()

  right = roi_classes(gt_boxes, gt_classes)
  assert set(np.unique(right)) == {0, 2} and (right > 0).sum(axis=1).max() > 5
  # Classes passed 0-based: the object trains as another class (class 0 as the background).
  assert set(np.unique(roi_classes(gt_boxes, tf.maximum(gt_classes - 1, -1)))) == {0, 1}
  # Boxes passed normalised: no proposal overlaps a box of under a pixel; only the true box itself, which the
  # sampler adds to the proposals, is an object.
  assert (roi_classes(tf.where(gt_boxes < 0, -1.0, gt_boxes / SIDE), gt_classes) > 0).sum(axis=1).max() <= 1


@pytest.mark.slow
def test_rpn_anchors_on_an_ignore_box_are_neither_object_nor_background(trained):
  """An object mostly out of view (an ignore box) must not teach the RPN background where it lies: no anchor
  on it is a sampled negative, while the images without one keep theirs. Model Garden samples 256 of an
  image's ~1,000 anchors at random: without the band about a quarter of the ~50 on the box are negatives (all
  left out: chance 0.75^50 < 1e-6)."""
  target, images, labels, _ = trained
  gt_boxes, gt_classes = target.model_garden_labels(labels)
  ignore = np.zeros([len(images), 1, 4], np.float32)
  ignore[1, 0] = [2, 2, 50, 62]  # Pixels: most of an image without objects.

  def negatives_on_the_box(ignore_boxes) -> tuple[int, int]:
    """(sampled negatives on the ignore box in image 1, sampled negatives in image 3, which has none)."""
    scores, _ = target._rpn_targets(gt_boxes, gt_classes, labels["count"],  # pylint: disable=protected-access
                                    tf.constant(ignore_boxes))
    on_box = elsewhere = 0
    for level, anchors in target._anchors.items():  # pylint: disable=protected-access
      overlap = target_iou(anchors.numpy().reshape(-1, 4), ignore[1, 0]).reshape(scores[level].shape[1:])
      on_box += int(np.sum((scores[level][1].numpy() == 0) & (overlap >= 0.3)))
      elsewhere += int(np.sum(scores[level][3].numpy() == 0))
    return on_box, elsewhere

  without_band, elsewhere = negatives_on_the_box(np.zeros([len(images), 0, 4], np.float32))
  assert without_band > 0 and elsewhere > 100
  with_band, elsewhere = negatives_on_the_box(ignore)
  assert with_band == 0 and elsewhere > 100


def target_iou(anchors: np.ndarray, box: np.ndarray) -> np.ndarray:
  """IoU of yxyx anchors [N, 4] with one box [4]."""
  height = np.clip(np.minimum(anchors[:, 2], box[2]) - np.maximum(anchors[:, 0], box[0]), 0, None)
  width = np.clip(np.minimum(anchors[:, 3], box[3]) - np.maximum(anchors[:, 1], box[1]), 0, None)
  intersection = height * width
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  return intersection / (area(anchors) + area(box) - intersection)


@pytest.mark.slow
def test_s_gets_gradients_through_the_frozen_faster_rcnn_which_does_not_move(trained):
  target, images, labels, _ = trained
  synthesizer = keras.layers.Conv2D(3, 1)  # A Keras 3 stand-in for S: composites from images.
  synthesizer.build(images.shape)
  before = [v.numpy().copy() for v in target.model.variables]
  statistics = [v for v in target.model.variables if "moving" in v.name]
  assert statistics

  @tf.function
  def s_step():
    with tf.GradientTape() as tape:
      loss, judgement = target.frozen_loss_and_verdict(tf.sigmoid(synthesizer(images)), labels)
    return tape.gradient(loss, synthesizer.trainable_variables), judgement

  gradients, judgement = s_step()
  assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in gradients)
  assert judgement.hardness.shape == [len(images)]
  for a, b in zip(before, target.model.variables):
    np.testing.assert_array_equal(a, b.numpy(), err_msg=b.name)
  # T's own step, in training mode, moves its BatchNorm statistics: the check above can fail.
  tf.function(lambda: target.loss(images, labels, training=True))()
  assert any(not np.array_equal(a, b.numpy()) for a, b in zip(before, target.model.variables)
             if "moving" in b.name)


def test_image_sides_and_flags_are_checked():
  settings = frcnn.PRESETS["frcnn_resnet18"]
  assert frcnn.input_side(settings, (96, 96, 3), "photo_image_size") == 96
  with pytest.raises(ConfigError, match="--photo_image_size to a multiple of 32"):
    frcnn.input_side(settings, (100, 100, 3), "photo_image_size")
  with pytest.raises(ConfigError, match="--frcnn_input_size must be a multiple of 32"):
    frcnn.input_side(frcnn.FasterRCNNSettings(input_size=300), (128, 128, 3), "photo_image_size")
  with pytest.raises(ConfigError, match="--frcnn_backbone must be one of"):
    frcnn.FasterRCNNSettings(backbone="vgg16")
  with pytest.raises(ConfigError, match="--frcnn_init_checkpoint=/nowhere"):
    frcnn.FasterRCNNSettings(init_checkpoint="/nowhere")
  from terse_tf import train
  flag_values = copy.deepcopy(train.FLAGS)
  flag_values(["test", "--task=photo_digits", "--target=frcnn_mobilenetv2", "--frcnn_anchor_size=2",
               "--frcnn_aspect_ratios=0.5,1"])
  config = train.config_from_flags(flag_values)
  assert config.task_settings.detector == dataclasses.replace(frcnn.PRESETS["frcnn_mobilenetv2"], anchor_size=2.0,
                                                              aspect_ratios=(0.5, 1.0))
  flag_values(["test", "--task=photo_digits", "--target=frcnn_resnet18", "--frcnn_aspect_ratios=wide"])
  with pytest.raises(ConfigError, match="--frcnn_aspect_ratios expects"):
    train.config_from_flags(flag_values)
  # A Faster R-CNN flag with an SSD target would change nothing: an error, not silence.
  flag_values = copy.deepcopy(train.FLAGS)
  flag_values(["test", "--task=photo_digits", "--target=ssd_compact", "--frcnn_anchor_size=2"])
  with pytest.raises(ConfigError, match=r"--frcnn_anchor_size sets up frcnn_.*not --target=ssd_compact"):
    train.config_from_flags(flag_values)


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import keras
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, "tests")
    from terse_tf import steps
    from test_frcnn import fixture_scenes, slim_target

    def players(strategy):
      with strategy.scope():
        target = slim_target()
        optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
        optimizer.build(target.model.trainable_variables)
      return steps.Players(None, target, None, None, optimizer, None)

    settings = steps.StepSettings(coupled_decay=True, target_weight_decay=5e-4, synth_weight_decay=0.0,
                                  diversity_weight=0.0, diversity_per_class=False, discriminator_weight=0.0,
                                  num_classes=2)
    single_strategy = tf.distribute.get_strategy()
    mirrored_strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    single, mirrored = players(single_strategy), players(mirrored_strategy)
    for a, b in zip(mirrored.target.model.variables, single.target.model.variables):
      a.assign(b)
    before = [v.numpy() for v in single.target.model.trainable_variables]
    images, labels = fixture_scenes(8)
    batch = (images, labels)
    dataset = tf.data.Dataset.from_tensor_slices(batch).batch(8)
    report = {"replicas": mirrored_strategy.num_replicas_in_sync}
    step = lambda p, s: tf.function(lambda b: steps.target_step(p, s, settings, b))
    report["loss"] = [float(step(single, single_strategy)(next(iter(dataset)))),
                      float(step(mirrored, mirrored_strategy)(
                          next(iter(mirrored_strategy.experimental_distribute_dataset(dataset)))))]
    moved = [float(np.abs(a.numpy() - b.numpy()).max()) for a, b in zip(
        single.target.model.trainable_variables, mirrored.target.model.trainable_variables)]
    report["weights"] = max(moved)
    report["update"] = max(float(np.abs(a - b.numpy()).max()) for a, b in zip(
        before, single.target.model.trainable_variables))
    print(json.dumps(report))
""")


@pytest.mark.slow
def test_one_mirrored_step_matches_the_single_device_step():
  """Two logical CPUs, the same global batch and weights: T's step (Model Garden's losses in the replicas,
  BatchNorm synchronised, the coupled decay shared out) agrees with one device's to 0.5% in the loss, and
  the weights after it differ by under a fifth of the step's largest update (measured: 2e-4 relative in the
  loss, 3e-4 in the weights against an update of 7e-3). Not to float32 rounding: Model Garden's RPN and ROI
  samplers are unseeded, so the two steps train on other samples of anchors and ROIs."""
  result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["replicas"] == 2
  np.testing.assert_allclose(*report["loss"], rtol=5e-3)
  assert report["weights"] < 0.2 * report["update"], report


@pytest.mark.slow
def test_the_target_exports_and_serves_in_a_fresh_process(trained, tmp_path):
  target, images, labels, _ = trained
  path = export.write(export.target_archive(target, (SIDE, SIDE, 3)), str(tmp_path / "target"), ["a", "b"])
  served = saved_model_cli_run(path, export.SERVING_DEFAULT, {"images": images.numpy()}, str(tmp_path / "d"))
  found = target.detections(images)
  assert set(served) == {"boxes", "scores", "classes", "num_detections"}
  assert served["classes"].dtype == np.int32
  np.testing.assert_array_equal(served["num_detections"], found.num_detections.numpy())
  np.testing.assert_allclose(served["scores"], found.scores.numpy(), atol=1e-4)
  np.testing.assert_allclose(served["boxes"], found.boxes.numpy(), atol=1e-4)
  judged = saved_model_cli_run(path, export.HARDNESS, {"images": images.numpy(), **{
      k: labels[k].numpy() for k in ("boxes", "classes", "count")}}, str(tmp_path / "h"))
  np.testing.assert_allclose(judged["hardness"], target.verdict(images, labels).hardness.numpy(), atol=1e-4)


@pytest.mark.slow
def test_a_short_photo_digits_run_trains_faster_rcnn_end_to_end(tmp_path):
  run_dir = tmp_path / "run"
  # The lighter preset and no D: the test is about the run, not about either's cost (~1 min instead of 2.5).
  run_cli(f"--flagfile={DETECTION_SMOKE_FLAGFILE}", f"--run_dir={run_dir}", "--target=frcnn_mobilenetv2",
          "--nodiscriminator", "--cycles=1", timeout=900)
  with open(os.path.join(run_dir, "config.json")) as f:
    config = json.load(f)["config"]
  assert (config["target"] == "frcnn_mobilenetv2" and
          config["task_settings"]["detector"]["backbone"] == "mobilenetv2")
  with open(os.path.join(run_dir, "results.json")) as f:
    results = json.load(f)
  assert results["cycles_completed"] == 1 and results["hard_examples"] > 0
  assert all(np.isfinite(results[f"test_ap50_{when}"]) for when in ("before", "after"))
  assert os.path.exists(os.path.join(run_dir, "export", "target", "1", "saved_model.pb"))


@pytest.mark.slow
def test_a_model_garden_checkpoint_gives_its_backbone_and_decoder_only_where_they_fit(trained, tmp_path):
  source = trained[0].model
  prefix = tf.train.Checkpoint(backbone=source.backbone, decoder=source.decoder).write(str(tmp_path / "mg"))
  settings = dataclasses.replace(frcnn.PRESETS["frcnn_resnet18"], norm_momentum=0.9, init_checkpoint=prefix)
  loaded = frcnn.FasterRCNNTarget.build("frcnn_resnet18", settings, (SIDE, SIDE, 3), 2, "image_size").model
  for name in ("backbone", "decoder"):
    for a, b in zip(getattr(source, name).variables, getattr(loaded, name).variables):
      np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=b.name)
  # The box head is not read: it starts afresh.
  assert any(not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(
      source.detection_head[0].variables, loaded.detection_head[0].variables))
  with pytest.raises(ConfigError, match="--frcnn_init_checkpoint=.*do not fit this model"):
    frcnn.FasterRCNNTarget.build("frcnn_resnet18", dataclasses.replace(settings, fpn_filters=32),
                                 (SIDE, SIDE, 3), 2, "image_size")
