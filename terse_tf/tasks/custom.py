"""Tasks around the user's own Keras target and data (terse_tf.api builds them).

Classification: the user brings a classifier (images [H, W, C] floats in [0, 1] -> logits), a folder of
cut-outs with one sub-folder per class (data/cutouts.py), photos to crop backgrounds from, and labelled real
images. S pastes one cut-out per background; a composite's label is its cut-out's class. The random-placement
baseline puts cut-outs at uniform parameters over the ranges; evaluation is accuracy on the user's test images.

Detection: the user brings a single-shot detector over default boxes (targets.ssd.SSDTarget's contract),
cut-outs, photos, and real and test images with their boxes. S places up to `max_objects` cut-outs per scene
(PastedObjectDetection: occlusion, boxes from the visible masks, background regions pasted in a share of the
backgrounds); the random baseline is Cut-Paste-Learn's; evaluation is COCO AP on the user's test images.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from terse_tf import compositor as compositor_lib
from terse_tf import evaluation
from terse_tf.data import photos as photos_lib
from terse_tf.data.cutouts import Cutouts, fit
from terse_tf.errors import ConfigError
from terse_tf.networks import scene_synthesizer, synthesizer
from terse_tf.targets.classification import ClassifierTarget
from terse_tf.targets.ssd import SSDTarget
from terse_tf.tasks import registry
from terse_tf.tasks.base import CommonSettings, PastedObjectClassification
from terse_tf.tasks.detection import StoredCutoutDetection

# Where S may put a cut-out fitted to the whole image: anywhere it stays in the frame (keep_in_frame), at
# 40-100% of the image's size, turned and sheared moderately.
DEFAULT_RANGES = compositor_lib.AffineRanges(max_rotation_deg=30.0, max_translation_px=1.0, max_shear=0.2,
                                             min_scale=0.4, max_scale=1.0)


@dataclasses.dataclass(frozen=True)
class CustomTaskConfig:
  """The settings of a task around your classifier (TrainConfig.task_settings): where S may place a cut-out
  and how many backgrounds it pastes on."""
  ranges: compositor_lib.AffineRanges = DEFAULT_RANGES
  num_backgrounds: int = 500    # Random crops of the photos S pastes on.


# Built in Python around the user's model and arrays (terse_tf.api), so registered without flags.
@registry.register("custom", settings=CustomTaskConfig, summary="your classifier (terse_tf.api)")
class CustomClassificationTask(PastedObjectClassification):
  """Classification with the user's own classifier, cut-outs, backgrounds and real images."""

  targets = ("yours",)
  random_source = "random_placement"
  headline = "test_accuracy"

  def __init__(self, config: CustomTaskConfig, common: CommonSettings, *, model_fn: Callable[[], keras.Model],
               cutouts: Cutouts, backgrounds: list[np.ndarray], real: tuple[np.ndarray, np.ndarray],
               test: tuple[np.ndarray, np.ndarray], seed: int = 0):
    probe = model_fn()
    self.image_shape = tuple(probe.input_shape[1:])
    if len(self.image_shape) != 3 or None in self.image_shape:
      raise ConfigError(f"the target must take images of a fixed size [H, W, C]; its input is {probe.input_shape}")
    self.num_classes = int(probe.output_shape[-1])
    self.class_names = cutouts.class_names
    if len(self.class_names) != self.num_classes:
      raise ConfigError(f"the cut-outs have {len(self.class_names)} classes ({self.class_names}); the target "
                        f"has {self.num_classes} outputs")
    self.model_fn, self.config, self.common = model_fn, config, common
    self._set_compositing(common, config.ranges)
    height, width, channels = self.image_shape
    fitted = cutouts.images if cutouts.images.shape[1:3] == (height, width) else np.stack(
        [fit(cutout, (height, width)) for cutout in cutouts.images])
    self.cutouts = Cutouts(fitted, cutouts.classes, cutouts.class_names).with_channels(channels + 1)
    self.cutout_classes = cutouts.classes
    self.backgrounds = photos_lib.random_backgrounds(backgrounds, config.num_backgrounds, self.image_shape,
                                                     np.random.default_rng(seed))
    self.real, self.test = (self._checked(real, "real"), self._checked(test, "test"))

  def _checked(self, split: tuple[np.ndarray, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = split
    if images.shape[1:] != self.image_shape or images.dtype != np.uint8 or len(images) != len(labels):
      raise ConfigError(f"{name} images must be uint8 [N, {', '.join(map(str, self.image_shape))}] with N "
                        f"labels; got {images.dtype} {images.shape} and {len(labels)} labels")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
      raise ConfigError(f"{name} labels must be integers [N]; got {labels.dtype} {labels.shape}")
    outside = labels[(labels < 0) | (labels >= self.num_classes)]
    if len(outside):  # T would train towards classes it has no output for.
      raise ConfigError(f"{name} labels must lie in [0, {self.num_classes}), the cut-out classes "
                        f"{self.class_names} in sorted order; got {len(outside)} outside it, e.g. {outside[0]}")
    return images, labels.astype(np.int32)

  def describe(self) -> str:
    return (f"your classifier on {self.image_shape}: {len(self.cutouts)} cut-outs of {self.num_classes} "
            f"classes, {len(self.backgrounds)} backgrounds, {len(self.real[1])} real and {len(self.test[1])} "
            "test images")

  def identity(self) -> dict:
    return {"task": self.name, "image_shape": list(self.image_shape), "class_names": self.class_names,
            "cutouts": len(self.cutouts), "real": len(self.real[1]), "test": len(self.test[1])}

  def build_target(self) -> ClassifierTarget:
    return ClassifierTarget(self.model_fn())

  def build_synthesizer(self, seed: int | None) -> keras.Model:
    settings = self.common.synthesizer
    return synthesizer.build_synthesizer(self.image_shape, settings.width, settings.dropout, settings.noise_dim,
                                         seed=seed)

  def real_examples(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return self.real[0], {"label": self.real[1]}

  def synth_dataset(self, batch_size: int, seed: int, context: tf.distribute.InputContext) -> tf.data.Dataset:
    """Cut-outs (shuffled, with their classes) on random backgrounds."""
    objects = tf.data.Dataset.from_tensor_slices((self.cutouts, self.cutout_classes)).shard(
        context.num_input_pipelines, context.input_pipeline_id).shuffle(len(self.cutouts), seed=seed).repeat()
    scenes = tf.data.Dataset.from_tensor_slices(self.backgrounds).shuffle(len(self.backgrounds),
                                                                           seed=seed + 1).repeat()
    ds = tf.data.Dataset.zip(objects, scenes).batch(batch_size, drop_remainder=True)
    return ds.map(lambda o, b: {"foreground": o[0], "label": o[1], "background": b}).prefetch(2)

  def random_samples(self, per_class: int, seed, source: str | None = None
                     ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`per_class` cut-outs per class at uniform parameters over the ranges, on random backgrounds."""
    del source  # One random source: random_source.
    rng = np.random.default_rng(seed)
    picks = np.concatenate([rng.choice(np.flatnonzero(self.cutout_classes == c), per_class, replace=True)
                            for c in range(self.num_classes) if np.any(self.cutout_classes == c)])
    raw_uniform = rng.uniform(-1, 1, size=(len(picks), 6)).astype(np.float32)
    foreground = tf.constant(self.cutouts[picks])
    background = tf.constant(self.backgrounds[rng.integers(len(self.backgrounds), size=len(picks))])
    # Uniform over the clamp box: the tanh clamp's inverse of uniform places in [-1, 1].
    _, result = self.place_and_paste(tf.atanh(tf.constant(raw_uniform) * 0.999), foreground, background)
    return result.image.numpy(), {"label": self.cutout_classes[picks]}

  def evaluate(self, target: ClassifierTarget, batch_size: int) -> dict[str, float]:
    images, labels = self.test
    correct = 0
    for start in range(0, len(labels), batch_size):
      logits = target.logits(tf.constant(images[start:start + batch_size], tf.float32) / 255.0)
      correct += int(np.sum(logits.numpy().argmax(-1) == labels[start:start + batch_size]))
    return {"test_accuracy": correct / len(labels)}


# A detection scene's boxes as the user gives them: per image, boxes [n, 4] (normalised ymin, xmin, ymax,
# xmax) and classes [n] (0-based).
BoxesPerImage = tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]


def detection_ranges(image_side: int) -> compositor_lib.AffineRanges:
  """Where S may put a cut-out in a detection scene by default: centre anywhere 8 pixels inside the frame,
  at half to twice the cut-out's size, turned and sheared moderately."""
  return compositor_lib.AffineRanges(max_rotation_deg=30.0, max_translation_px=image_side / 2 - 8,
                                     max_shear=0.2, min_scale=0.5, max_scale=2.0)


@dataclasses.dataclass(frozen=True)
class CustomDetectionConfig(CustomTaskConfig):
  """The settings of a task around your detector: CustomTaskConfig's, and how many objects S places, at what
  size."""
  ranges: compositor_lib.AffineRanges | None = None  # None: detection_ranges of the image's side.
  cutout_size: int = 0          # Side the cut-outs are fitted to (their size at scale 1); 0: a third of the image.
  max_objects: int = 3          # Cut-outs S places per scene (1..max_objects present).
  min_visible: float = 0.25     # An object with less of it in view gets no box.
  background_artifact_fraction: float = 0.3  # Backgrounds given a pasted background region (§3.1).


@registry.register("custom_detection", settings=CustomDetectionConfig,
                   summary="your single-shot detector (terse_tf.api)")
class CustomDetectionTask(StoredCutoutDetection):
  """Detection with the user's own single-shot detector, cut-outs, backgrounds and real and test scenes."""

  targets = ("yours",)

  def __init__(self, config: CustomDetectionConfig, common: CommonSettings, *,
               model_fn: Callable[[], keras.Model], anchors: np.ndarray, cutouts: Cutouts,
               backgrounds: list[np.ndarray], real: BoxesPerImage, test: BoxesPerImage, seed: int = 0):
    probe = model_fn()
    self.image_shape = tuple(probe.input_shape[1:])
    if len(self.image_shape) != 3 or None in self.image_shape or self.image_shape[-1] != 3:
      raise ConfigError(f"the detector must take RGB images of a fixed size [H, W, 3]; its input is "
                        f"{probe.input_shape}")
    self.anchors = np.asarray(anchors, np.float32)
    outputs = probe(tf.zeros([1, *self.image_shape]), training=False)
    expected = f"{{'class_logits': [B, A, classes + 1], 'box_regression': [B, A, 4]}} with A = {len(self.anchors)}"
    if (not isinstance(outputs, dict) or {"class_logits", "box_regression"} - set(outputs) or
        self.anchors.ndim != 2 or self.anchors.shape[1] != 4 or
        outputs["class_logits"].shape[1] != len(self.anchors) or
        tuple(outputs["box_regression"].shape[1:]) != (len(self.anchors), 4)):
      shapes = ({k: tuple(v.shape) for k, v in outputs.items()} if isinstance(outputs, dict)
                else type(outputs).__name__)
      raise ConfigError(f"the detector must return {expected} (anchors [A, 4]); it returns {shapes} for "
                        f"anchors {self.anchors.shape}")
    self.num_classes = int(outputs["class_logits"].shape[-1]) - 1
    self.class_names = cutouts.class_names
    if len(self.class_names) != self.num_classes:
      raise ConfigError(f"the cut-outs have {len(self.class_names)} classes ({self.class_names}); the detector "
                        f"scores {self.num_classes} (class_logits has {self.num_classes + 1} with the background)")
    self.model_fn, self.config, self.common = model_fn, config, common
    height, width, _ = self.image_shape
    side = config.cutout_size or min(height, width) // 3
    if not 8 <= side <= min(height, width) // 2:
      raise ConfigError(f"cutout_size must be between 8 and half the image's side ({min(height, width) // 2}), "
                        f"got {side}")
    self.cutout_shape = (side, side)
    self.max_objects, self.min_visible = config.max_objects, config.min_visible
    self.background_artifact_fraction = config.background_artifact_fraction
    ranges = config.ranges or detection_ranges(min(height, width))
    self._set_compositing(common.compositor.with_ranges(ranges), common.synthesizer.jit_compile)
    self.cutouts = cutouts.images if cutouts.images.shape[1:3] == self.cutout_shape else np.stack(
        [fit(cutout, self.cutout_shape) for cutout in cutouts.images])
    self.cutout_classes = cutouts.classes.astype(np.int32)
    self.backgrounds = photos_lib.to_uint8(photos_lib.random_backgrounds(
        backgrounds, config.num_backgrounds, self.image_shape, np.random.default_rng(seed)))
    self._set_artifact_masks(self.cutouts[..., -1], np.random.default_rng([seed, 1]))
    real_images, real_boxes, real_classes = self._checked(real, "real")
    test_images, test_boxes, test_classes = self._checked(test, "test")
    # Every label has as many rows as the busiest real image or S's scenes, whichever is more, so that
    # real and cached examples batch together.
    self.label_slots = max(config.max_objects, max((len(b) for b in real_boxes), default=0))
    self.real_images, self.real_labels = real_images, self.padded_labels(real_boxes, real_classes)
    self.test_images = test_images
    self.test_truth = [evaluation.ImageBoxes(boxes=b, classes=c) for b, c in zip(test_boxes, test_classes)]

  def _checked(self, split: BoxesPerImage, name: str) -> BoxesPerImage:
    images, boxes, classes = split
    if images.shape[1:] != self.image_shape or images.dtype != np.uint8 or not len(images) == len(boxes) == len(
        classes):
      raise ConfigError(f"{name} images must be uint8 [N, {', '.join(map(str, self.image_shape))}] with N box "
                        f"arrays and N class arrays; got {images.dtype} {images.shape}, {len(boxes)} and "
                        f"{len(classes)}")
    boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes]
    classes = [np.asarray(c, np.int32).reshape(-1) for c in classes]
    for index, (b, c) in enumerate(zip(boxes, classes)):
      if (len(b) != len(c) or np.any(b < 0) or np.any(b > 1) or np.any(b[:, 2] <= b[:, 0]) or
          np.any(b[:, 3] <= b[:, 1]) or np.any(c < 0) or np.any(c >= self.num_classes)):
        raise ConfigError(f"{name} image {index}: expected boxes [n, 4] (ymin, xmin, ymax, xmax) normalised to "
                          f"[0, 1] with ymin < ymax, xmin < xmax, and n classes in [0, {self.num_classes}); got "
                          f"{b.tolist()} and {c.tolist()}")
    return images, boxes, classes

  def describe(self) -> str:
    return (f"your detector on {self.image_shape}: {len(self.cutouts)} cut-outs of {self.num_classes} classes "
            f"at {self.cutout_shape[0]} px, up to {self.max_objects} per scene, {len(self.backgrounds)} "
            f"backgrounds, {len(self.real_images)} real and {len(self.test_images)} test images")

  def identity(self) -> dict:
    return {"task": self.name, "image_shape": list(self.image_shape), "class_names": self.class_names,
            "anchors": len(self.anchors), "cutouts": len(self.cutouts), "real": len(self.real_images),
            "test": len(self.test_images),
            "max_objects": self.max_objects, "cutout_size": self.cutout_shape[0]}

  def build_target(self) -> SSDTarget:
    return SSDTarget(self.model_fn(), self.anchors)

  def build_synthesizer(self, seed: int | None) -> keras.Model:
    settings = self.common.synthesizer
    return scene_synthesizer.build_scene_synthesizer(
        (*self.cutout_shape, 3), self.image_shape, self.max_objects, "compact", settings.width,
        settings.dropout, settings.noise_dim, seed=seed)

  def real_examples(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return self.real_images, self.real_labels
