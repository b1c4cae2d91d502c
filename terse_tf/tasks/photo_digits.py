"""The photo_digits task: an offline stand-in for VOC person detection (paper §4.2).

Objects are MNIST digits (alpha = ink, each in a random colour) and scenes are crops of real photographs
shipped inside installed packages (data/photos.py), train and test photos disjoint. The "real" training set
(VOC train's analogue) has 1-3 upright digits of the canonical size per image; the test set has held-out
digits on held-out photos over the wide range S also works in (rotation, shear, scale 0.5-2x, 1-4 digits,
occlusion), so there is a gap for synthetic data to close, as in affNIST. The headline is one class, "digit"
(as VOC person is one class); `ten_classes` detects the digits' classes instead. T is an SSD; S places each
object in the scene (scene_synthesizer); a share of backgrounds carries pasted background regions (§3.1), so
a blending edge is no sign of an object.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from terse_tf import boxes as boxes_lib
from terse_tf import compositor as compositor_lib
from terse_tf import evaluation
from terse_tf.data import mnist, photos
from terse_tf.errors import ConfigError
from terse_tf.networks import scene_synthesizer, ssd, synthesizer
from terse_tf.targets.ssd import SSDTarget
from terse_tf.tasks.base import Composition, RawParamsFn, Task, image_grid

CUTOUT_SIZE = mnist.IMAGE_SIZE  # A digit padded to 40x40, so rotation and shear never crop it.
FOREGROUND_CHANNELS = 4         # RGB + straight alpha.
# Cut-Paste-Learn's blend modes (Dwibedi et al. 2017), applied to the pasted mask's edge. Its Poisson blend
# needs OpenCV, which terse_tf does not depend on.
BLEND_MODES = ("none", "gaussian", "box", "motion")
SSD_VGG16_SIZE = 300


@dataclasses.dataclass(frozen=True)
class PhotoDigitsConfig:
  image_size: int = 128
  num_real: int = 2000          # Real training images (1..max_objects upright digits each).
  num_test: int = 500           # Test images (1..test_max_objects digits over the wide range each).
  max_objects: int = 3
  test_max_objects: int = 4
  ten_classes: bool = False     # Detect "0".."9" instead of the one class "digit".
  photo_dir: str = ""           # Folders <photo_dir>/train and <photo_dir>/test of photos; "" bundled ones.
  num_backgrounds: int = 2000   # Random crops of the train photos that S and the baselines paste on.
  background_artifact_fraction: float = 0.3  # Backgrounds given a pasted background region (§3.1).
  min_visible: float = 0.25     # An object with less of it in view gets no box.
  max_rotation_deg: float = 45.0
  max_shear: float = 0.3
  min_scale: float = 0.5
  max_scale: float = 2.0
  synth_backbone: str = "compact"
  backbone_weights: str = ""    # VGG16 weights for S and SSD300: "" none, "imagenet", or a file.

  def __post_init__(self):
    for name in ("image_size", "num_real", "num_test", "max_objects", "test_max_objects", "num_backgrounds"):
      if getattr(self, name) < 1:
        raise ConfigError(f"--photo_{name} must be >= 1, got {getattr(self, name)}")
    if self.image_size < 2 * CUTOUT_SIZE:
      raise ConfigError(f"--photo_image_size must be >= {2 * CUTOUT_SIZE} (twice the 40-pixel cut-out), got "
                        f"{self.image_size}")
    if not 0 <= self.background_artifact_fraction <= 1:
      raise ConfigError(f"--background_artifact_fraction must be in [0, 1], got "
                        f"{self.background_artifact_fraction}")
    if not 0 <= self.min_visible <= 1:
      raise ConfigError(f"--min_visible must be in [0, 1], got {self.min_visible}")
    if self.synth_backbone not in scene_synthesizer.BACKBONES:
      raise ConfigError(f"--synth_backbone must be one of {scene_synthesizer.BACKBONES}, got "
                        f"{self.synth_backbone!r}")

  def ranges(self) -> compositor_lib.AffineRanges:
    """The wide range of the test set, where S (and Cut-Paste's random placement) may put objects: any
    rotation, shear and scale of the test set's, and any place whose centre stays 8 pixels inside."""
    return compositor_lib.AffineRanges(
        max_rotation_deg=self.max_rotation_deg, max_translation_px=self.image_size / 2 - 8,
        max_shear=self.max_shear, min_scale=self.min_scale, max_scale=self.max_scale)


@dataclasses.dataclass(frozen=True)
class PhotoDigitsTaskConfig:
  data: mnist.DataConfig
  photo_digits: PhotoDigitsConfig
  compositor: compositor_lib.CompositorConfig
  target: str = "ssd_compact"
  synth_width: int = 32
  synth_dropout: float = 0.3
  synth_noise_dim: int = 0
  # Seeds the scenes (real and test sets, backgrounds): the data's seed, not the training seed, so every
  # training seed of an experiment is scored on the same test scenes.
  data_seed: int = 0
  jit_compile: bool = True


def cutouts(digits: np.ndarray, colours: np.ndarray) -> np.ndarray:
  """uint8 digits [..., 40, 40] and RGB colours [..., 3] in [0, 1] -> float cut-outs [..., 40, 40, 4]."""
  alpha = digits.astype(np.float32)[..., None] / 255.0
  colour = np.broadcast_to(colours[..., None, None, :], (*digits.shape, 3)).astype(np.float32)
  return np.concatenate([colour, alpha], axis=-1)


def compact_labels(boxes: tf.Tensor, classes: tf.Tensor, valid: tf.Tensor) -> dict[str, tf.Tensor]:
  """Per-object boxes [B, N, 4], classes [B, N] and validity [B, N] -> detection labels with the valid
  objects first: {"boxes", "classes" (int32), "count" (int32)}; padding rows are zero."""
  order = tf.argsort(tf.cast(~valid, tf.int32), axis=1, stable=True)
  valid = tf.gather(valid, order, batch_dims=1)
  keep = tf.cast(valid, tf.float32)
  return {"boxes": tf.gather(boxes, order, batch_dims=1) * keep[..., None],
          "classes": tf.gather(tf.cast(classes, tf.int32), order, batch_dims=1) * tf.cast(valid, tf.int32),
          "count": tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)}


def blur_alpha(cutout: tf.Tensor, mode: tf.Tensor) -> tf.Tensor:
  """Cut-Paste-Learn's edge blending on cut-outs [B, h, w, 4]: the alpha blurred by `mode` [B] (an index
  into BLEND_MODES): none, Gaussian (sigma 1), 3x3 box, or 5-pixel horizontal motion blur."""
  gaussian = np.exp(-0.5 * np.arange(-2, 3) ** 2)
  kernels = np.zeros([len(BLEND_MODES), 5, 5], np.float32)
  kernels[0, 2, 2] = 1.0
  kernels[1] = np.outer(gaussian, gaussian) / np.outer(gaussian, gaussian).sum()
  kernels[2, 1:4, 1:4] = 1.0 / 9
  kernels[3, 2, :] = 1.0 / 5
  alpha = cutout[..., 3:]
  blurred = tf.stack([tf.nn.conv2d(alpha, kernel[..., None, None], 1, "SAME") for kernel in kernels], axis=1)
  chosen = tf.gather(blurred, tf.cast(mode, tf.int32), batch_dims=1)
  return tf.concat([cutout[..., :3], chosen], axis=-1)


class PhotoDigitsTask(Task):
  random_source = "cut_paste"
  headline = "test_ap50"

  def __init__(self, config: PhotoDigitsTaskConfig):
    settings = config.photo_digits
    self.config, self.settings = config, settings
    size = settings.image_size
    if config.target == "ssd_vgg16" and size != SSD_VGG16_SIZE:
      raise ConfigError(f"--target=ssd_vgg16 is SSD300: it needs --photo_image_size={SSD_VGG16_SIZE}, "
                        f"got {size}")
    self.image_shape = (size, size, 3)
    self.num_classes = 10 if settings.ten_classes else 1
    self.class_names = [str(d) for d in range(10)] if settings.ten_classes else ["digit"]
    # Objects may be cropped by the frame (the visibility rule drops their box), so no keep_in_frame.
    self.compositor = dataclasses.replace(config.compositor.with_ranges(settings.ranges()), keep_in_frame=False)
    # The data (rendered by the compositor, with hard-edged digits: no clean-up, as a photo's objects).
    self._render_config = dataclasses.replace(self.compositor, mask_cleanup=False)
    self._composite_for_synthesis = self._compositing(self.compositor, config.jit_compile)
    self._composite_for_data = self._compositing(self._render_config, config.jit_compile)
    self.splits = mnist.load_splits(config.data)
    rng = np.random.default_rng([config.data_seed, 17])
    train_photos = photos.load_photos("train", settings.photo_dir, min_side=size)
    test_photos = photos.load_photos("test", settings.photo_dir, min_side=size)
    self.backgrounds = photos.random_crops(train_photos, settings.num_backgrounds, size, rng)
    self.real_images, self.real_labels = self._render(
        self.splits.train_images, self.splits.train_labels,
        photos.random_crops(train_photos, settings.num_real, size, rng), settings.max_objects, upright=True,
        rng=rng)
    test_images, test_labels = self._render(
        self.splits.test_images, self.splits.test_labels,
        photos.random_crops(test_photos, settings.num_test, size, rng), settings.test_max_objects,
        upright=False, rng=rng)
    self.test_images = test_images
    self.test_truth = [evaluation.ImageBoxes(boxes=b[:n], classes=c[:n]) for b, c, n in zip(
        test_labels["boxes"], test_labels["classes"], test_labels["count"])]
    self._photo_counts = (len(train_photos), len(test_photos))

  # ------------------------------------------------------------------------------------ data
  def _object_class(self, digit_labels: np.ndarray) -> np.ndarray:
    return digit_labels.astype(np.int32) if self.settings.ten_classes else np.zeros_like(digit_labels, np.int32)

  def _random_params(self, shape: tuple[int, ...], upright: bool, rng: np.random.Generator) -> np.ndarray:
    """Uniform parameters [*shape, 6] over the wide ranges; upright: the canonical size, no rotation or
    shear, anywhere in the frame."""
    low, high = (np.array(b, np.float32) for b in self.compositor.ranges.bounds())
    params = rng.uniform(low, high, size=(*shape, 6)).astype(np.float32)
    if upright:
      params[..., [0, 3]] = 0.0
      params[..., 4:] = 1.0
    return params

  def _objects(self, digits: np.ndarray, labels: np.ndarray, count: int, max_objects: int,
               rng: np.random.Generator):
    """`count` groups of max_objects coloured cut-outs, 1..max_objects of them valid: (cut-outs, classes,
    valid)."""
    picks = rng.integers(len(labels), size=(count, max_objects))
    colours = rng.uniform(0.0, 1.0, size=(count, max_objects, 3))
    valid = np.arange(max_objects)[None, :] < rng.integers(1, max_objects + 1, size=(count, 1))
    return cutouts(digits[picks], colours), self._object_class(labels[picks]), valid

  def _render(self, digits, labels, backgrounds, max_objects, upright, rng, batch=100):
    """Scenes of digits pasted on `backgrounds` uint8 [N, H, W, 3]: (uint8 images, labels)."""
    count = len(backgrounds)
    objects, classes, valid = self._objects(digits, labels, count, max_objects, rng)
    params = self._random_params((count, max_objects), upright, rng)
    images, parts = [], []
    for start in range(0, count, batch):
      part = slice(start, start + batch)
      result = self._composite_for_data(
          tf.constant(objects[part]), tf.constant(backgrounds[part], tf.float32) / 255.0,
          tf.constant(params[part]), tf.constant(valid[part]))
      images.append(np.clip(np.rint(result.image.numpy() * 255), 0, 255).astype(np.uint8))
      labels_part = compact_labels(result.boxes, classes[part], result.box_valid)
      parts.append({k: v.numpy() for k, v in labels_part.items()})
    return np.concatenate(images), {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def describe(self) -> str:
    return (f"{len(self.real_images)} real training scenes (1-{self.settings.max_objects} upright digits "
            f"from {len(self.splits.train_labels)} {self.splits.source} training digits), "
            f"{len(self.test_images)} test scenes (1-{self.settings.test_max_objects} held-out digits, wide "
            f"range); photos: {self._photo_counts[0]} train, {self._photo_counts[1]} test "
            f"({self.settings.photo_dir or 'bundled'}); classes: {self.class_names}")

  def identity(self) -> dict:
    settings = dataclasses.asdict(self.settings)
    return {"data": dataclasses.asdict(self.config.data), "photo_digits": settings, "target": self.config.target}

  def real_examples(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return self.real_images, self.real_labels

  # ------------------------------------------------------------------------------------ networks
  def _backbone_weights(self) -> str | None:
    return self.settings.backbone_weights or None

  def build_target(self) -> SSDTarget:
    size = self.settings.image_size
    backbone = self.config.target.removeprefix("ssd_")
    sizes = ssd.feature_sizes(backbone, size)
    spec = boxes_lib.DefaultBoxSpec(feature_sizes=sizes, min_scale=0.1,
                                    max_scale=0.6 if backbone == "compact" else 0.9)
    return SSDTarget(backbone, size, self.num_classes, spec, weights=self._backbone_weights())

  def build_synthesizer(self, seed: int | None) -> keras.Model:
    return scene_synthesizer.build_scene_synthesizer(
        (CUTOUT_SIZE, CUTOUT_SIZE, 3), self.image_shape, self.settings.max_objects, self.settings.synth_backbone,
        self.config.synth_width, self.config.synth_dropout, self.config.synth_noise_dim,
        weights=self._backbone_weights(), seed=seed)

  # ------------------------------------------------------------------------------------ compositing
  def _with_artifacts(self, backgrounds: tf.Tensor, masks: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """§3.1: into a share of `backgrounds` [B, H, W, 3], a region of another background shaped like a digit
    mask [B, 40, 40, 1], pasted with the blending S's composites get."""
    batch = tf.shape(backgrounds)[0]
    low, high = (tf.constant(b, tf.float32) for b in self.compositor.ranges.bounds())
    params = low + (high - low) * tf.random.stateless_uniform([batch, 6], seed)
    apply = tf.random.stateless_uniform([batch], seed + 1) < self.settings.background_artifact_fraction
    donors = tf.roll(backgrounds, 1, axis=0)
    return compositor_lib.paste_background_region(backgrounds, donors, masks, params, apply, self.compositor)

  def synth_dataset(self, batch_size: int, seed: int, context: tf.distribute.InputContext) -> tf.data.Dataset:
    """Groups of max_objects training digits (1..max_objects of them present) in random colours, and train
    backgrounds, a share with pasted background regions."""
    settings = self.settings
    digits, labels = self.splits.train_images, self.splits.train_labels
    n = settings.max_objects
    classes = tf.constant(self._object_class(labels))
    objects = tf.data.Dataset.from_tensor_slices((digits, classes)).shard(
        context.num_input_pipelines, context.input_pipeline_id).shuffle(len(labels), seed=seed).repeat()
    backgrounds = tf.data.Dataset.from_tensor_slices(self.backgrounds).shard(
        context.num_input_pipelines, context.input_pipeline_id).shuffle(len(self.backgrounds), seed=seed + 1)
    seeds = tf.data.Dataset.random(seed=seed + 2).batch(2)
    ds = tf.data.Dataset.zip((objects.batch(n, drop_remainder=True), backgrounds.repeat(), seeds))
    ds = ds.batch(batch_size, drop_remainder=True)

    def assemble(group, background, seed_pair):
      group_digits, group_classes = group
      seed_pair = seed_pair[0]
      colours = tf.random.stateless_uniform([batch_size, n, 3], seed_pair)
      alpha = tf.cast(group_digits, tf.float32)[..., None] / 255.0
      cutout = tf.concat([tf.broadcast_to(colours[:, :, None, None, :], [batch_size, n, CUTOUT_SIZE,
                                                                         CUTOUT_SIZE, 3]), alpha], axis=-1)
      present = tf.random.stateless_uniform([batch_size, 1], seed_pair + 3, 1, n + 1, dtype=tf.int32)
      valid = tf.range(n)[None, :] < present
      background = tf.cast(background, tf.float32) / 255.0
      background = self._with_artifacts(background, alpha[:, 0], seed_pair + 5)
      return {"foreground": cutout, "background": background, "classes": group_classes, "valid": valid}

    return ds.map(assemble).prefetch(2)

  def _place(self, raw_params: RawParamsFn, foreground: tf.Tensor, background: tf.Tensor) -> tf.Tensor:
    """S's parameters [B, N, 6] for each object of `foreground` [B, N, h, w, 4] in its scene."""
    raw = raw_params(compositor_lib.premultiplied(foreground), background)
    return compositor_lib.clamp_params(raw, self.compositor.ranges, self.compositor.clamp_mode)

  def _compositing(self, config: compositor_lib.CompositorConfig, compiled: bool) -> Callable:
    """composite_objects with `config`, forward and backward compiled by XLA when `compiled`."""
    if compiled:
      return compositor_lib.compiled_composite_objects(config, self.settings.min_visible)
    return lambda *args: compositor_lib.composite_objects(*args, config, self.settings.min_visible)

  def _paste(self, composite: Callable, foreground, background, params, classes, valid):
    """(composites, labels) of objects pasted with `composite` (one of the two _compositing functions)."""
    result = composite(foreground, background, params, valid)
    return result.image, compact_labels(result.boxes, classes, result.box_valid)

  def compose(self, raw_params: RawParamsFn, batch: dict[str, tf.Tensor]) -> Composition:
    params = self._place(raw_params, batch["foreground"], batch["background"])
    images, labels = self._paste(self._composite_for_synthesis, batch["foreground"], batch["background"], params,
                                 batch["classes"], batch["valid"])
    valid = tf.reshape(batch["valid"], [-1])
    normalized = compositor_lib.normalize_params(tf.reshape(params, [-1, compositor_lib.NUM_PARAMS]),
                                                 self.compositor.ranges)
    return Composition(images=images, labels=labels, params=params, pasted=tf.cast(batch["valid"], tf.bool),
                       normalized=tf.boolean_mask(normalized, valid),
                       object_classes=tf.boolean_mask(tf.reshape(batch["classes"], [-1]), valid))

  def random_samples(self, per_class: int, seed) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Cut-Paste-Learn's random placement: digits at uniform parameters over the wide ranges, each edge
    blended by a blend mode drawn uniformly from BLEND_MODES, on train backgrounds."""
    rng = np.random.default_rng(seed)
    count = per_class * self.num_classes
    n = self.settings.max_objects
    objects, classes, valid = self._objects(self.splits.train_images, self.splits.train_labels, count, n, rng)
    modes = rng.integers(len(BLEND_MODES), size=count * n)
    objects = blur_alpha(tf.constant(objects.reshape(-1, CUTOUT_SIZE, CUTOUT_SIZE, 4)), modes).numpy()
    params = self._random_params((count, n), upright=False, rng=rng)
    backgrounds = self.backgrounds[rng.integers(len(self.backgrounds), size=count)]
    images, labels = [], []
    for start in range(0, count, 100):
      part = slice(start, start + 100)
      image, label = self._paste(
          self._composite_for_data, tf.constant(objects.reshape(count, n, CUTOUT_SIZE, CUTOUT_SIZE, 4)[part]),
          tf.constant(backgrounds[part], tf.float32) / 255.0, tf.constant(params[part]), classes[part],
          tf.constant(valid[part]))
      images.append(image.numpy())
      labels.append({k: v.numpy() for k, v in label.items()})
    return np.concatenate(images), {k: np.concatenate([p[k] for p in labels]) for k in labels[0]}

  # ------------------------------------------------------------------------------------ evaluation
  def evaluate(self, target: SSDTarget, batch_size: int) -> dict[str, float]:
    """COCO AP of T on the test scenes: AP@0.5 (the headline), AP@[.5:.95], AP@0.75."""
    found = []
    for start in range(0, len(self.test_images), batch_size):
      images = tf.image.convert_image_dtype(self.test_images[start:start + batch_size], tf.float32)
      detections = target.detections(images)
      for b, s, c, n in zip(*(x.numpy() for x in detections)):
        found.append(evaluation.ImageBoxes(boxes=b[:n], classes=c[:n].astype(np.int32), scores=s[:n]))
    ap = evaluation.evaluate_detections(self.test_truth, found, self.image_shape[:2], self.class_names)
    return {"test_ap50": ap["ap50"], "test_ap": ap["ap"], "test_ap75": ap["ap75"]}

  def preview(self, images: tf.Tensor, labels: dict[str, tf.Tensor]) -> tf.Tensor:
    """Composites with their boxes drawn (padding boxes are zero-sized and draw nothing)."""
    drawn = tf.image.draw_bounding_boxes(tf.convert_to_tensor(images, tf.float32),
                                         tf.cast(labels["boxes"], tf.float32), tf.constant([[1.0, 0.0, 0.0]]))
    return image_grid(drawn)

  # ------------------------------------------------------------------------------------ export
  def synthesizer_endpoints(self, synthesizer_model: keras.Model) -> dict[str, tuple[Callable, list]]:
    """N = --photo_max_objects. (foreground [B, N, 40, 40, 4] colour + straight alpha, background
    [B, H, W, 3], classes [B, N] int32, -1 for an empty slot) -> {params [B, N, 6], composite [B, H, W, 3],
    boxes [B, N, 4] normalised ymin, xmin, ymax, xmax of the visible objects first, classes [B, N],
    num_objects [B]}."""
    n = self.settings.max_objects
    signature = [tf.TensorSpec([None, n, CUTOUT_SIZE, CUTOUT_SIZE, FOREGROUND_CHANNELS], tf.float32,
                               name="foreground"),
                 tf.TensorSpec([None, *self.image_shape], tf.float32, name="background"),
                 tf.TensorSpec([None, n], tf.int32, name="classes")]

    # Served without XLA: a serving binary need not have the JIT compiler.
    composite = self._compositing(self.compositor, compiled=False)

    def endpoint(raw_params: RawParamsFn) -> Callable:
      def serve(foreground: tf.Tensor, background: tf.Tensor, classes: tf.Tensor) -> dict[str, tf.Tensor]:
        valid = classes >= 0
        params = self._place(raw_params, foreground, background)
        image, labels = self._paste(composite, foreground, background, params, tf.maximum(classes, 0), valid)
        return {"params": params, "composite": image, "boxes": labels["boxes"], "classes": labels["classes"],
                "num_objects": labels["count"]}
      return serve

    return synthesizer.serving_endpoints(synthesizer_model, endpoint, signature)
