"""Detection: the photo_digits task, the SSD target's hardness, which player each step moves, the detection
exports under saved_model_cli, photos on disk, and a smoke run killed and resumed."""

import dataclasses
import functools
import glob
import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import scipy.fft
import tensorflow as tf

from conftest import DETECTION_SMOKE_FLAGFILE, REPO_ROOT, run_cli, smoke_config, synth_batches
from terse_tf import boxes, compositor, export, pipelines, trainer as trainer_lib
from terse_tf import config as config_lib
from terse_tf.data import photos
from terse_tf.errors import DataError
from terse_tf.networks import synthesizer
from terse_tf.targets.ssd import SSDTarget
from terse_tf.tasks import affnist as affnist_task
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


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_ds_real_scenes_carry_the_artefacts_s_backgrounds_do(trainer, share, monkeypatch):
  """D's real side gets §3.1's regions in the share S's backgrounds do: at share 0 every real image D sees is
  a real scene as stored, at share 1 none is."""
  monkeypatch.setattr(trainer.task, "background_artifact_fraction", share)
  stored = {image.tobytes() for image in trainer.task.real_examples()[0]}
  _, real = next(iter(synth_batches(trainer, 3)))
  seen = [photos.to_uint8(image).tobytes() in stored for image in real.numpy()]
  assert all(seen) if share == 0 else not any(seen)


def test_the_generation_step_moves_no_player_and_is_a_function_of_its_seed(trainer):
  """S frozen (A.2's generation pass, and D's fakes while S is fixed): no variable changes, BatchNorm statistics
  included; the same seed composes the same scenes, another seed others (S's dropout and noise)."""
  synth_batch, _ = next(iter(synth_batches(trainer, 0)))
  seed = tf.constant([0, 5], tf.int64)
  moved, generated = moved_by(trainer, lambda: trainer._generate(synth_batch, seed))
  assert moved == set()
  again = trainer._generate(synth_batch, seed)
  other = trainer._generate(synth_batch, tf.constant([0, 6], tf.int64))
  np.testing.assert_array_equal(generated.composites.numpy(), again.composites.numpy())
  assert not np.allclose(generated.params.numpy(), other.params.numpy())
  # D's fakes while S is fixed are these composites, composed without T's verdict.
  moved, fakes = moved_by(trainer, lambda: trainer._frozen_composites(synth_batch, seed))
  assert moved == set()
  np.testing.assert_array_equal(fakes.numpy(), generated.composites.numpy())


@pytest.mark.slow
def test_a_generation_pass_caches_only_what_the_trained_s_composes_frozen(tmp_path):
  """A.2: S trains for its steps and caches nothing; then the trained S, frozen, composes
  --generation_batches batches and their hard scenes are the cycle's samples, exactly those."""
  config = detection_config(tmp_path, cycles=1, baseline_epochs=1, finetune_epochs=0, discriminator=False,
                            synth_warmup_steps=1, synth_max_steps=2, generation_batches=2,
                            hard_per_class=(1000,), export=False)
  run = trainer_lib.Trainer(config)
  run.run()
  assert int(run.players.synth_optimizer.iterations.numpy()) == 3  # Warm-up + S's steps; none in the pass.
  stream = iter(pipelines.synth_dataset(run.task, run.strategy, config.synth_batch_size,
                                        config.seed * 1000 + 100, with_real=False, skip_steps=3))
  expected = []
  for step in (3, 4):
    generated = run._generate(next(stream), tf.constant([config.seed, step], tf.int64))
    hard = generated.hardness.numpy() < run.hard_threshold
    expected.append(photos.to_uint8(generated.composites.numpy()[hard]))
  assert len(run.cache) == sum(len(e) for e in expected) > 0
  np.testing.assert_array_equal(run.cache.contents()[0], np.concatenate(expected))


@pytest.mark.parametrize("source", [detection.CUT_PASTE, config_lib.FILTERED, config_lib.TERSE])
def test_an_instance_quota_adds_as_many_objects_whatever_the_source(tmp_path, source):
  """--quota_unit=instances: every source stops once its samples hold the quota's objects (past it by less
  than one scene's objects), however many objects its scenes hold."""
  quota = 15
  config = detection_config(tmp_path, cycles=1, baseline_epochs=0, discriminator=False, sample_source=source,
                            quota_unit="instances", hard_per_class=(quota,), synth_max_steps=20, export=False)
  run = trainer_lib.Trainer(config)
  run._add_samples(1)
  run.cache.commit()
  objects = run.cache.contents()[1]["count"]
  max_objects = run.task.max_objects
  assert run.cache.quota_filled(1).tolist() == [objects.sum()]
  assert quota <= objects.sum() < quota + max_objects
  # Fewer samples than objects: the unit is the object, not the scene (the smoke scenes hold 1-2 objects, and
  # among 8-15 of them some hold 2).
  assert len(run.cache) < objects.sum()


@pytest.mark.slow
def test_d_is_pretrained_before_s_and_trains_beside_t_as_a2_has_it(tmp_path):
  """--discriminator_pretrain_steps D steps before S's first, one D step per S step in lockstep, and with
  --discriminator_trains_with_target one per T step of every T phase but the last, which no S step follows (S
  never moves outside its own steps). No baseline: D steps beside the baseline's T would count towards its
  pre-training."""
  config = detection_config(tmp_path, cycles=2, baseline_epochs=0, finetune_steps=4, synth_warmup_steps=0,
                            synth_max_steps=2, hard_per_class=(1000,), discriminator_pretrain_steps=3,
                            discriminator_trains_with_target=True, export=False)
  run = trainer_lib.Trainer(config)
  run.run()
  assert int(run.target_global_step.numpy()) == 2 * 4
  assert int(run.players.synth_optimizer.iterations.numpy()) == 2 * 2
  assert int(run.players.discriminator_optimizer.iterations.numpy()) == 3 + 2 + 4 + 2


def test_an_object_mostly_out_of_frame_gets_an_ignore_box_and_one_in_view_a_box():
  """The labels S's and the data sets' scenes get (_paste): an object pushed mostly out of the frame, below
  min_visible but with pixels in view, has no box and an ignore box tight on its visible pixels; one wholly in
  view has a box and no ignore box; padding has neither."""
  square = np.zeros([20, 20, 4], np.float32)
  square[5:15, 5:15] = 1.0  # A white 10x10 square, opaque.
  foreground = tf.constant(np.stack([[square] * 3]))
  # Object 0 shifted 22 px right covers columns 37-46: 3 of its 10 in the 40-pixel frame (0.3 < 0.5).
  # Object 1 sits at the centre (rows and columns 15-24); slot 2 is padding.
  params = tf.constant([[[0, 22.0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1]]])
  config = compositor.CompositorConfig(ranges=affnist_task.ranges())
  paste = lambda *args: compositor.composite_objects(*args, config, 0.5)
  task = types.SimpleNamespace(label_slots=4)  # All _paste reads of its task.
  _, labels = detection.PastedObjectDetection._paste(
      task, paste, foreground, tf.zeros([1, 40, 40, 3]), params, tf.constant([[3, 5, 7]]),
      tf.constant([[True, True, False]]))
  visible = paste(foreground, tf.zeros([1, 40, 40, 3]), params, tf.constant([[True, True, False]])).visible_masks
  rows, columns = np.nonzero(visible.numpy()[0, 0, ..., 0] > 0.5)
  assert columns.min() == 37 and columns.max() == 39
  tight = [rows.min() / 40, columns.min() / 40, (rows.max() + 1) / 40, (columns.max() + 1) / 40]
  assert labels["count"].numpy().tolist() == [1] and labels["classes"].numpy().tolist() == [[5, 0, 0, 0]]
  np.testing.assert_allclose(labels["boxes"].numpy()[0], [[15 / 40, 15 / 40, 25 / 40, 25 / 40]] + [[0] * 4] * 3,
                             atol=1e-6)
  np.testing.assert_allclose(labels["ignore_boxes"].numpy()[0], [tight] + [[0] * 4] * 3, atol=1e-6)


def boxes_against_grey_backgrounds(images, boxes, counts):
  """On a grey photo (R = G = B in every pixel) the coloured digits' pixels are exactly the ones that are not
  grey. For each scene whose pixels outside its boxes (grown by 3 px) are grey: how many coloured pixels lie
  outside every box, and for each box clear of the others, (box, tight box of the coloured pixels around it),
  in pixels."""
  size = images.shape[1]
  stray, pairs = [], []
  for image, image_boxes, n in zip(images.astype(int), boxes, counts):
    coloured = image.max(-1) > image.min(-1)
    grown = np.rint(image_boxes[:n] * size).astype(int) + [-3, -3, 3, 3]
    near = np.zeros([size, size], bool)
    for y0, x0, y1, x1 in np.maximum(grown, 0):
      near[y0:y1, x0:x1] = True
    if coloured[~near].mean() > 0.5:
      continue  # A colour photo.
    stray.append(int(coloured[~near].sum()))
    for k, (y0, x0, y1, x1) in enumerate(np.maximum(grown, 0)):
      if any(not (o[0] >= y1 or o[2] <= y0 or o[1] >= x1 or o[3] <= x0) for j, o in enumerate(grown) if j != k):
        continue  # Overlaps another object's surroundings.
      rows, columns = np.nonzero(coloured[y0:y1, x0:x1])
      pairs.append((image_boxes[k] * size, [rows.min() + y0, columns.min() + x0, rows.max() + 1 + y0,
                                            columns.max() + 1 + x0]))
  return np.array(stray), np.array(pairs)


def test_real_and_test_scenes_have_their_objects_boxed(trainer):
  task = trainer.task
  images, labels = task.real_examples()
  assert images.dtype == np.uint8 and images.shape[1:] == task.image_shape
  count = labels["count"]
  # Every real scene shows 1..max_objects digits, and each number occurs.
  assert set(count.tolist()) == set(range(1, task.settings.max_objects + 1))
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
  # The boxes against the pixels, in the scenes on grey photos: a box is where its digit's ink is, inside the
  # digit's coloured pixels (alpha > 0.5 of them) and within its blurred edge (2 px at the canonical size, 3
  # at up to twice it in the test scenes); no digit is left without a box.
  test_boxes = np.zeros([len(task.test_truth), task.settings.test_max_objects, 4])
  for row, truth in zip(test_boxes, task.test_truth):
    row[:len(truth.boxes)] = truth.boxes
  test_counts = [len(truth.boxes) for truth in task.test_truth]
  for scenes, scene_boxes, counts, edge in ((images, labels["boxes"], count, 2),
                                            (task.test_images, test_boxes, test_counts, 3)):
    stray, pairs = boxes_against_grey_backgrounds(scenes, scene_boxes, counts)
    assert len(stray) >= len(scenes) // 5 and len(pairs) >= len(stray) // 2
    assert stray.max() <= 20, stray  # An object mostly covered or cropped may show a few unboxed pixels.
    box, ink = pairs[:, 0], pairs[:, 1]
    np.testing.assert_array_less(ink[:, :2], box[:, :2] + 0.51)
    np.testing.assert_array_less(box[:, 2:], ink[:, 2:] + 0.51)
    np.testing.assert_array_less(box[:, :2], ink[:, :2] + edge + 0.51)
    np.testing.assert_array_less(ink[:, 2:], box[:, 2:] + edge + 0.51)


def block_means(images, boxes, counts, blocks):
  """Scenes uint8 [N, S, S, 3] -> their means over blocks x blocks squares [N, blocks, blocks, 3], and
  weights [N, blocks, blocks]: 1 where a square lies outside every box grown by a pixel (the photo's own
  pixels), else 0."""
  n, size = images.shape[:2]
  f = size // blocks
  means = images.astype(np.float32).reshape(n, blocks, f, blocks, f, 3).mean(axis=(2, 4))
  inside = np.zeros([n, size, size], bool)
  for image_inside, image_boxes, count in zip(inside, boxes, counts):
    for y0, x0, y1, x1 in image_boxes[:count] * size:
      image_inside[max(int(y0) - 1, 0):int(np.ceil(y1)) + 1, max(int(x0) - 1, 0):int(np.ceil(x1)) + 1] = True
  return means, (~inside.reshape(n, blocks, f, blocks, f).any(axis=(2, 4))).astype(np.float32)


def best_crops(templates, weights, photo, sides):
  """Where in `photo` the block-mean `templates` [K, b, b, 3] (weights [K, b, b]) best match a square crop of
  one of `sides` (pixels), placed anywhere: per template (weighted RMS difference in grey levels, side, top,
  left). The photo is block-averaged at each side, in steps of half a block (squared differences by FFT)."""
  k, blocks = templates.shape[:2]
  span = 2 * blocks - 1
  weighted = weights[..., None] * templates
  template_squares = (weighted * templates).sum(axis=(1, 2, 3))
  counts = weights.sum(axis=(1, 2)) * 3
  best = [(np.inf, 0.0, 0.0, 0.0)] * k
  spectra = {}
  for side in sides:
    height, width = round(photo.shape[0] * 2 * blocks / side), round(photo.shape[1] * 2 * blocks / side)
    if min(height, width) <= span:
      continue
    halves = tf.image.resize(photo[None].astype(np.float32), [height, width], method="area").numpy()[0]
    grid = (halves[:-1, :-1] + halves[1:, :-1] + halves[:-1, 1:] + halves[1:, 1:]) / 4  # Block means.
    rows, columns = grid.shape[:2]
    shape = (-(-rows // 16) * 16, -(-columns // 16) * 16)
    if shape not in spectra:  # The templates on every other row and column: one block per half-block step.
      kernels = np.zeros([k, *shape, 4], np.float32)
      kernels[:, :span:2, :span:2, :3] = weighted
      kernels[:, :span:2, :span:2, 3] = weights
      spectra[shape] = np.conj(scipy.fft.rfft2(kernels, axes=(1, 2)))
    planes = np.zeros([*shape, 4], np.float32)
    planes[:rows, :columns, :3] = grid
    planes[:rows, :columns, 3] = (grid ** 2).sum(-1)
    products = scipy.fft.rfft2(planes, axes=(0, 1))[None] * spectra[shape]
    cross = scipy.fft.irfft2(products[..., :3].sum(-1), s=shape)
    photo_squares = scipy.fft.irfft2(products[..., 3], s=shape)
    errors = (template_squares[:, None, None] - 2 * cross + photo_squares)[:, :rows - span + 1, :columns - span + 1]
    for i, (error, at) in enumerate(zip(errors.reshape(k, -1).min(1), errors.reshape(k, -1).argmin(1))):
      error = np.sqrt(max(error, 0) / counts[i])
      if error < best[i][0]:
        top, left = divmod(at, columns - span + 1)
        best[i] = (error, side, top * photo.shape[0] / height, left * photo.shape[1] / width)
  return best


def test_the_test_scenes_use_held_out_photos(trainer):
  """Each test scene's background is a crop of a test photo and of no training photo; a real training scene's
  is a crop of a training photo and of no test photo (the control: the search finds crops). A scene is a
  square crop of a random side and place, resized: the crop is searched for in every photo at sides 8% apart
  in 12x12 blocks, then refined in 48x48 blocks near the best crop of each split."""
  task = trainer.task
  size = task.image_shape[0]
  split_photos = [photos.load_photos(split, task.settings.photo_dir, size) for split in ("train", "test")]
  all_photos = split_photos[0] + split_photos[1]
  splits = [range(len(split_photos[0])), range(len(split_photos[0]), len(all_photos))]
  real_images, real_labels = task.real_examples()
  truth = task.test_truth[:8]
  test_boxes = np.zeros([len(truth), task.settings.test_max_objects, 4])
  for row, image_truth in zip(test_boxes, truth):
    row[:len(image_truth.boxes)] = image_truth.boxes
  pad = test_boxes.shape[1] - real_labels["boxes"].shape[1]
  scenes = np.concatenate([task.test_images[:8], real_images[:4]])
  boxes = np.concatenate([test_boxes, np.pad(real_labels["boxes"][:4], [[0, 0], [0, pad], [0, 0]])])
  counts = [len(t.boxes) for t in truth] + real_labels["count"][:4].tolist()
  own_split = [1] * len(truth) + [0] * 4

  coarse_templates = block_means(scenes, boxes, counts, 12)
  coarse = [best_crops(*coarse_templates, photo, size * 1.08 ** np.arange(np.log(min(photo.shape[:2]) / size)
                                                                         / np.log(1.08) + 1))
            for photo in all_photos]
  templates, weights = block_means(scenes, boxes, counts, 48)
  for i, own in enumerate(own_split):
    errors = []
    for split in splits:
      p = min(split, key=lambda p: coarse[p][i][0])
      _, side, top, left = coarse[p][i]
      margin = 0.25 * side
      y0, x0 = int(max(top - margin, 0)), int(max(left - margin, 0))
      region = all_photos[p][y0:int(top + side + margin) + 1, x0:int(left + side + margin) + 1]
      errors.append(best_crops(templates[i:i + 1], weights[i:i + 1], region,
                               side * np.exp(np.linspace(-0.08, 0.08, 17)))[0][0])
    # Found (a few grey levels: resampling, a sub-pixel offset, remnants of unboxed objects) in its own
    # split's photos, and nowhere near as well in the other's.
    assert errors[own] < 15 and errors[1 - own] > 2 * errors[own], (i, errors)


def test_ssd_hardness_is_the_confidence_for_the_hardest_objects_class():
  """With a class head that ignores its input and favours class 1, every default box gives class 1 the
  same high probability and class 0 a low one: a scene's hardness is the probability of its hardest
  object's class, and it counts towards that class's quota."""
  spec = boxes.DefaultBoxSpec(feature_sizes=(16, 8, 4, 2))
  target = SSDTarget.build("compact", 64, num_classes=2, spec=spec)
  bias = np.array([0.0, 1.0, 3.0], np.float32)  # background, class 0, class 1
  for k in range(4):
    head = target.model.get_layer(f"class_head_{k}")
    head.kernel.assign(tf.zeros_like(head.kernel))
    head.bias.assign(np.tile(bias, spec.boxes_per_cell()))
  probabilities = np.exp(bias) / np.exp(bias).sum()
  labels = {"boxes": tf.constant([[[0.1, 0.1, 0.4, 0.3], [0.5, 0.5, 0.9, 0.8]]] * 3),
            "classes": tf.constant([[1, 0], [1, 1], [0, 0]]), "count": tf.constant([2, 1, 0])}
  judgement = target.judge(target.model(tf.zeros([3, 64, 64, 3]), training=False), labels)
  np.testing.assert_allclose(judgement.hardness.numpy(), [probabilities[1], probabilities[2], 1.0], rtol=1e-5)
  assert judgement.quota_class.numpy()[:2].tolist() == [0, 1]
  # Ignore boxes are no objects: an ignore box over the hardest object's box changes no verdict.
  ignored = target.judge(target.model(tf.zeros([3, 64, 64, 3]), training=False),
                         {**labels, "ignore_boxes": labels["boxes"]})
  np.testing.assert_array_equal(ignored.hardness.numpy(), judgement.hardness.numpy())


def test_the_ssd_loss_leaves_out_default_boxes_on_ignore_boxes_and_reads_none_without_the_key():
  spec = boxes.DefaultBoxSpec(feature_sizes=(16, 8, 4, 2))
  target = SSDTarget.build("compact", 64, num_classes=2, spec=spec)
  # T is surest of background away from the ignore box below, so the default boxes on it are the hardest
  # negatives while they count.
  ignore_box = [0.4, 0.4, 0.9, 0.9]
  on_it = boxes.iou(boxes.centres_to_corners(target.anchors), tf.constant([ignore_box])).numpy()[:, 0] >= 0.5
  logits = np.zeros([2, len(on_it), 3], np.float32)
  logits[:, ~on_it, 0] = 3.0
  outputs = {"class_logits": tf.constant(logits), "box_regression": tf.zeros([2, len(on_it), 4])}
  labels = {"boxes": tf.constant([[[0.1, 0.1, 0.4, 0.3], [0, 0, 0, 0]]] * 2),
            "classes": tf.constant([[1, 0]] * 2), "count": tf.constant([1, 1])}
  loss = float(target.replica_loss(outputs, labels))
  none = {**labels, "ignore_boxes": tf.zeros([2, 2, 4])}
  assert float(target.replica_loss(outputs, none)) == pytest.approx(loss, rel=1e-6)
  # The ignore box in the second image only.
  ignore = {**labels, "ignore_boxes": tf.constant([[[0, 0, 0, 0]] * 2, [ignore_box, [0, 0, 0, 0]]])}
  matched = target._matches(ignore).classes.numpy()
  assert not (matched[0] < 0).any() and (matched[1] == boxes.IGNORED).tolist() == on_it.tolist()
  assert float(target.replica_loss(outputs, ignore)) < loss - 0.1


def test_cut_paste_blend_modes_soften_the_edge_and_keep_the_alpha_mass():
  cutout = np.zeros([4, 40, 40, 4], np.float32)
  cutout[:, 10:30, 15:25] = 1.0
  blended = detection.blur_alpha(tf.constant(cutout), tf.constant([0, 1, 2, 3])).numpy()
  np.testing.assert_array_equal(blended[0], cutout[0])  # "none"
  for mode in (1, 2, 3):
    assert np.abs(blended[mode, ..., 3] - cutout[mode, ..., 3]).max() > 0.1  # The edge is softened...
    assert blended[mode, ..., 3].sum() == pytest.approx(200.0, rel=1e-5)     # ...no ink lost.


def moved_by(trainer, step):
  """(the players whose variables `step()` changed, what it returned)."""
  players = {"synthesizer": trainer.synthesizer, "target": trainer.target.model,
             "discriminator": trainer.discriminator}
  before = {name: values(model.variables) for name, model in players.items()}
  result = step()
  moved = {name for name, model in players.items()
           if any(not np.array_equal(a, b) for a, b in zip(before[name], values(model.variables)))}
  return moved, result


def test_each_players_step_moves_only_its_own_variables(trainer):
  """S's step leaves T and D alone, D's leaves S and T, T's leaves S and D. (What S's step learns from T's
  loss and D's verdict: test_steps.py, against one tape.)"""
  synth_batch, real = next(iter(synth_batches(trainer, 0)))
  step_moves = functools.partial(moved_by, trainer)
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


def boxes_seen_in_the_pixels(alpha, params, valid, image_hw, config, min_visible):
  """What each object shows in the image, read off the pixels: the objects (straight alpha [B, N, h, w, 1],
  N <= 3) are pasted in pure red, green and blue on black with `params` [B, N, 6], so channel i of the
  composite is how much of object i reaches the eye (its mask, minus what later objects cover). Returns
  (pixel boxes [B, N, 4] ymin, xmin, ymax, xmax of the pixels > 0.5, visible share [B, N]: the channel's mass
  over the object's area, alpha mass times sx * sy, the |det| of rotation @ shear @ scale)."""
  batch, count = alpha.shape[:2]
  assert count <= 3
  colours = np.broadcast_to(np.eye(3, dtype=np.float32)[:count, None, None, :],
                            (batch, count, *alpha.shape[2:4], 3))
  image = compositor.composite_objects(tf.concat([colours, alpha], -1), tf.zeros([batch, *image_hw, 3]),
                                       params, valid, config, min_visible).image.numpy()[..., :count]
  params = np.asarray(params)
  area = np.asarray(alpha).sum(axis=(2, 3, 4)) * params[..., 4] * params[..., 5]
  share = image.sum(axis=(1, 2)) / area
  boxes = np.zeros([batch, count, 4])
  for b, i in zip(*np.nonzero(share > 0)):
    rows, columns = np.nonzero(image[b, :, :, i] > 0.5)
    if rows.size:
      boxes[b, i] = rows.min(), columns.min(), rows.max() + 1, columns.max() + 1
  return boxes, share


def assert_boxes_follow_the_pixels(labels, alpha, params, valid, image_hw, config, min_visible):
  """Each reported box (labels: visible objects first) is, within a pixel, the box of what its object shows;
  an object with under `min_visible` of its area in view has none (one within 0.02 of it may go either way).
  Returns how many objects were boxed and how many were left out, of those judged."""
  expected, share = boxes_seen_in_the_pixels(alpha, params, valid, image_hw, config, min_visible)
  valid = np.asarray(valid)
  unsure = np.abs(share - min_visible) < 0.02
  reported, count = np.asarray(labels["boxes"]) * np.tile(image_hw, 2), np.asarray(labels["count"])
  for b in range(len(valid)):
    row = 0  # The next reported row.
    for i in np.flatnonzero(valid[b]):
      matches = row < count[b] and np.abs(reported[b, row] - expected[b, i]).max() <= 1.01
      if share[b, i] >= min_visible or unsure[b, i]:
        assert matches or unsure[b, i], (b, i, reported[b], expected[b, i], share[b, i])
        row += matches
    assert row == count[b], (b, reported[b], expected[b], share[b])
    assert not reported[b, count[b]:].any()
  judged = valid & ~unsure
  return int((judged & (share >= min_visible)).sum()), int((judged & (share < min_visible)).sum())


def test_synthesized_boxes_are_the_boxes_of_what_each_object_shows(trainer):
  """Every box S's composites report is the tight box of the pixels where its object is visible (the
  object's mask, minus what the objects pasted after it cover), and an object mostly covered or outside the
  frame has none."""
  task = trainer.task
  image_hw = task.image_shape[:2]
  batch = next(iter(task.synth_dataset(32, 1, tf.distribute.InputContext())))
  composition = task.compose(
      lambda fg, bg: synthesizer.raw_params(trainer.synthesizer, fg, bg, training=False), batch)
  alpha = batch["foreground"][..., 3:]
  boxed, _ = assert_boxes_follow_the_pixels(composition.labels, alpha, composition.params, batch["valid"],
                                            image_hw, task.compositor, task.min_visible)
  assert boxed >= 20
  # Parameters drawn over the whole range, with and without the mask clean-up, where objects are covered or
  # cropped: in 8 scenes object 1 is an opaque square over all of object 0 but a sliver at one side (15 to 18
  # px of its scale off its centre), in 8 others the objects are large, in the corners of the frame.
  low, high = task.compositor.ranges.bounds()
  params = np.random.default_rng(0).uniform(low, high, size=(*alpha.shape[:2], 6)).astype(np.float32)
  foreground, valid = batch["foreground"].numpy(), batch["valid"].numpy()
  params[:8, 0, [0, 3]] = 0.0
  foreground[:8, 1, ..., 3], params[:8, 1], valid[:8] = 1.0, params[:8, 0], True
  params[:8, 1, 1] -= np.sign(params[:8, 0, 1]) * np.linspace(15, 18, 8) * params[:8, 0, 4]
  params[8:16, :, 1:3] = np.sign(params[8:16, :, 1:3]) * high[1]
  params[8:16, :, 4:] = high[4]
  for config in (task.compositor, dataclasses.replace(task.compositor, mask_cleanup=True)):
    result = compositor.composite_objects(foreground, batch["background"], params, valid, config,
                                          task.min_visible)
    labels = detection.compact_labels(result.boxes, batch["classes"], result.box_valid)
    boxed, hidden = assert_boxes_follow_the_pixels(labels, foreground[..., 3:], params, valid, image_hw, config,
                                                   task.min_visible)
    assert boxed >= 20 and hidden >= 4, (boxed, hidden)


@pytest.mark.slow
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
