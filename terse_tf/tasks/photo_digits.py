"""The photo_digits task: an offline stand-in for VOC person detection (paper §4.2).

Objects are MNIST digits (alpha = ink, each in a random colour) and scenes are crops of real photographs
(data/photos.py: the ones inside installed packages, Debian's wallpaper photographs, or your folders), the
train, validation and test photos disjoint by content. The "real" training set (VOC train's analogue) has
1-3 upright digits of the canonical size per image; the test set has held-out digits on held-out photos over
the wide range S also works in (rotation, shear, scale 0.5-2x, 1-4 digits, occlusion), so there is a gap for
synthetic data to close, as in affNIST. T is scored on:
  test          the wide-range test scenes (the headline, test_ap50);
  val           the same recipe on validation digits and photos: settings are chosen on it, never on test;
  val_upright   validation scenes made like the real training set (in distribution): with `val` it tells
                under-training (both low) from the domain gap (val_upright high, val low);
  unseen        with `unseen_bank`, wide-range scenes on every photo of another source, which no training
                scene came from.
Every set has its own random stream, so no training-set setting changes the scenes T is scored on. The
wide-range sets are rendered with a feathered edge (`test_edge_sigma`) that no way of adding samples uses
exactly (they paste hard edges, or Cut-Paste-Learn's blend modes), so no arm wins by matching the renderer.
The headline is one class, "digit" (as VOC person is one class); `ten_classes` detects the digits' classes
instead. T is an SSD, or a detector registered in targets/registry.py (Faster R-CNN); S places each object in
the scene (scene_synthesizer); a share of backgrounds carries pasted background regions (§3.1), so a blending
edge is no sign of an object.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from terse_tf import augment as augment_lib
from terse_tf import boxes as boxes_lib
from terse_tf import compositor as compositor_lib
from terse_tf import evaluation
from terse_tf.data import mnist, photos
from terse_tf.errors import ConfigError
from terse_tf.networks import scene_synthesizer, ssd
from terse_tf.targets import registry as target_registry
from terse_tf.targets.base import DetectorTarget
from terse_tf.targets.ssd import SSDTarget
from terse_tf.tasks import detection, mnist_flags, registry
from terse_tf.tasks.base import CommonSettings
from terse_tf.tasks.detection import PastedObjectDetection

CUTOUT_SIZE = mnist.IMAGE_SIZE  # A digit padded to 40x40, so rotation and shear never crop it.
SSD_VGG16_SIZE = 300


@dataclasses.dataclass(frozen=True)
class PhotoDigitsConfig:
  image_size: int = dataclasses.field(default=128, metadata={"flag": "photo_image_size"})
  # Real training images (1..max_objects upright digits each).
  num_real: int = dataclasses.field(default=2000, metadata={"flag": "photo_num_real"})
  # Test images (1..test_max_objects digits over the wide range each).
  num_test: int = dataclasses.field(default=500, metadata={"flag": "photo_num_test"})
  # Validation images of each kind (wide range as the test set; upright as the real set).
  num_val: int = dataclasses.field(default=300, metadata={"flag": "photo_num_val"})
  max_objects: int = dataclasses.field(default=3, metadata={"flag": "photo_max_objects"})
  test_max_objects: int = dataclasses.field(default=4, metadata={"flag": "photo_test_max_objects"})
  # Detect "0".."9" instead of the one class "digit".
  ten_classes: bool = dataclasses.field(default=False, metadata={"flag": "photo_ten_classes"})
  photo_dir: str = ""           # Folders <photo_dir>/{train,val,test} of photos; "" the photo_bank's.
  photo_bank: str = "bundled"   # photos.BANKS: where the photos come from without photo_dir.
  unseen_bank: str = dataclasses.field(default="", metadata={"flag": "photo_unseen_bank"})  # "" no unseen set.
  # The Gaussian (pixels) that feathers the wide-range sets' object edges.
  test_edge_sigma: float = dataclasses.field(default=0.6, metadata={"flag": "photo_test_edge_sigma"})
  # T's training augmentation, one of augment.RECIPES (--ssd_augment). On the validation scenes at these run
  # lengths (a few hundred steps) SSD's flip cost AP (a mirrored digit is no digit), its expand and crop more
  # so, and even the photometric distortion did not pay, so the shipped flagfiles say none (BENCHMARKS.md has
  # the screen).
  augment: str = dataclasses.field(default="photometric", metadata={"flag": "ssd_augment"})
  # Random crops of the train photos that S and the baselines paste on.
  num_backgrounds: int = dataclasses.field(default=2000, metadata={"flag": "photo_num_backgrounds"})
  background_artifact_fraction: float = 0.3  # Backgrounds given a pasted background region (§3.1).
  min_visible: float = 0.25     # An object with less of it in view gets no box (an ignore box if any shows).
  max_rotation_deg: float = 45.0
  max_shear: float = 0.3
  min_scale: float = 0.5
  max_scale: float = 2.0
  synth_backbone: str = "compact"
  backbone_weights: str = ""    # VGG16 weights for S and SSD300: "" none, "imagenet", or a file.

  def __post_init__(self):
    for name in ("image_size", "num_real", "num_test", "num_val", "max_objects", "test_max_objects",
                 "num_backgrounds"):
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
    if self.photo_bank not in photos.BANKS:
      raise ConfigError(f"--photo_bank must be one of {photos.BANKS}, got {self.photo_bank!r}")
    if self.unseen_bank and (self.unseen_bank not in photos.BANKS or self.unseen_bank == self.photo_bank
                             and not self.photo_dir):
      raise ConfigError(f"--photo_unseen_bank must be '' or one of {photos.BANKS} other than the training "
                        f"photos' (--photo_bank={self.photo_bank}), got {self.unseen_bank!r}")
    if not self.test_edge_sigma > 0:
      raise ConfigError(f"--photo_test_edge_sigma must be > 0 (the feather's Gaussian width in pixels; 0.01 "
                        f"gives nearly hard edges), got {self.test_edge_sigma}")
    if self.photo_dir and not os.path.isdir(self.photo_dir):
      raise ConfigError(f"--photo_dir={self.photo_dir}: no such folder; expected one with the subfolders "
                        f"{', '.join(photos.SPLITS)} of photos disjoint by content")
    missing = [split for split in photos.SPLITS if self.photo_dir and not os.path.isdir(
        os.path.join(self.photo_dir, split))]
    if missing:
      raise ConfigError(f"--photo_dir={self.photo_dir}: expected the subfolders {', '.join(photos.SPLITS)} "
                        f"(photos disjoint by content); missing: {', '.join(missing)}")
    if self.augment not in augment_lib.RECIPES:
      raise ConfigError(f"--ssd_augment must be one of {list(augment_lib.RECIPES)}, got {self.augment!r}")
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
class PhotoDigitsSettings:
  """The photo_digits task's own settings: the MNIST split its digits come from (whose seed also seeds the
  scenes: the data's seed, not the training seed, so every training seed of an experiment is scored on the
  same test scenes), and the scenes'."""
  data: mnist.DataConfig = mnist.DataConfig()
  photo_digits: PhotoDigitsConfig = PhotoDigitsConfig()
  # The settings of a registered detector (targets/registry.py) when --target names one; None: its preset.
  detector: Any = None


_DEFAULT = PhotoDigitsConfig()


def define_flags(flag_values: flags.FlagValues) -> None:
  mnist_flags.define_flags(flag_values)
  target_registry.define_flags(flag_values)
  for define, name, default, text, bound in (
      (flags.DEFINE_integer, "photo_image_size", _DEFAULT.image_size, "Scene size in pixels (SSD300: 300).", 1),
      (flags.DEFINE_integer, "photo_num_real", _DEFAULT.num_real, "Real training scenes (1 to "
       "--photo_max_objects upright digits of the canonical size each).", 1),
      (flags.DEFINE_integer, "photo_num_test", _DEFAULT.num_test, "Test scenes (held-out digits on held-out "
       "photos, wide range).", 1),
      (flags.DEFINE_integer, "photo_num_val", _DEFAULT.num_val, "Validation scenes of each kind (wide range "
       "as the test set, and upright as the real set), on validation digits and photos.", 1),
      (flags.DEFINE_integer, "photo_max_objects", _DEFAULT.max_objects, "Most digits per real scene and per "
       "composite.", 1),
      (flags.DEFINE_integer, "photo_test_max_objects", _DEFAULT.test_max_objects, "Most digits per test scene.",
       1),
      (flags.DEFINE_integer, "photo_num_backgrounds", _DEFAULT.num_backgrounds, "Random crops of the train "
       "photos S and the baselines paste on.", 1),
      (flags.DEFINE_float, "background_artifact_fraction", _DEFAULT.background_artifact_fraction, "Share of S's "
       "backgrounds given a pasted background region (§3.1), so blending edges mark no object.", None),
      (flags.DEFINE_float, "min_visible", _DEFAULT.min_visible, "An object with less than this share of it in "
       "view (covered by later objects or cropped by the frame) gets no box, and if any of it shows an ignore "
       "box: T's loss counts its default boxes as neither object nor background.", None),
      (flags.DEFINE_float, "photo_test_edge_sigma", _DEFAULT.test_edge_sigma, "Gaussian (pixels) feathering "
       "the object edges of the wide-range evaluation scenes, a blending no way of adding samples uses.", None)):
    define(name, default, text, lower_bound=bound, flag_values=flag_values)
  flags.DEFINE_bool("photo_ten_classes", _DEFAULT.ten_classes, "Detect the digits' ten classes instead of the "
                    "one class 'digit'.", flag_values=flag_values)
  flags.DEFINE_string("photo_dir", _DEFAULT.photo_dir, "Folder with train/, val/ and test/ subfolders of "
                      "photos, disjoint by content ('' for --photo_bank's).", flag_values=flag_values)
  flags.DEFINE_enum("photo_bank", _DEFAULT.photo_bank, photos.BANKS, "Photos without --photo_dir: bundled (the "
                    "sample photos of scikit-image and matplotlib, offline) or debian (Debian's wallpaper "
                    f"photographs: {photos.DEBIAN_INSTALL}).", flag_values=flag_values)
  flags.DEFINE_string("photo_unseen_bank", _DEFAULT.unseen_bank, "A second photo bank for an 'unseen' test set "
                      "on a source no training scene came from ('' none).", flag_values=flag_values)
  flags.DEFINE_enum("ssd_augment", _DEFAULT.augment, list(augment_lib.RECIPES), "T's training augmentation of "
                    f"its real and added scenes: {augment_lib.RECIPES_HELP}.", flag_values=flag_values)
  flags.DEFINE_enum("synth_backbone", _DEFAULT.synth_backbone, scene_synthesizer.BACKBONES, "photo_digits S's "
                    "backbone: compact (CPU) or vgg16 (A.2).", flag_values=flag_values)
  flags.DEFINE_string("backbone_weights", _DEFAULT.backbone_weights, "VGG16 weights for S and SSD300: '' none "
                      "(offline), 'imagenet' (downloads), or a local weights file.", flag_values=flag_values)


def settings_from_flags(f: flags.FlagValues) -> PhotoDigitsSettings:
  return PhotoDigitsSettings(data=mnist_flags.data_config(f), photo_digits=PhotoDigitsConfig(
      image_size=f.photo_image_size, num_real=f.photo_num_real, num_test=f.photo_num_test,
      max_objects=f.photo_max_objects, test_max_objects=f.photo_test_max_objects, ten_classes=f.photo_ten_classes,
      num_val=f.photo_num_val, photo_dir=f.photo_dir, photo_bank=f.photo_bank, unseen_bank=f.photo_unseen_bank,
      test_edge_sigma=f.photo_test_edge_sigma, augment=f.ssd_augment, num_backgrounds=f.photo_num_backgrounds,
      background_artifact_fraction=f.background_artifact_fraction, min_visible=f.min_visible,
      synth_backbone=f.synth_backbone, backbone_weights=f.backbone_weights),
      detector=target_registry.settings_from_flags(f.target, f))


class Scenes(NamedTuple):
  images: np.ndarray       # uint8 [N, H, W, 3]
  labels: dict[str, np.ndarray]
  photo_index: np.ndarray  # [N] the photo each scene was cropped from


def evaluation_truth(labels: dict[str, np.ndarray], num_classes: int) -> list[evaluation.ImageBoxes]:
  """Detection labels -> the true boxes of each image, for COCO AP, and its digits in view but below
  --min_visible (the ignore band T trains with) as crowd regions: a detection on one is neither a true nor a
  false positive. The labels do not keep those digits' classes, so each region stands for every class."""
  truth = []
  for boxes, classes, count, ignore_boxes in zip(labels["boxes"], labels["classes"], labels["count"],
                                                 labels["ignore_boxes"]):
    ignored = ignore_boxes[np.any(ignore_boxes != 0, axis=-1)]
    truth.append(evaluation.ImageBoxes(boxes=boxes[:count], classes=classes[:count],
                                       ignore_boxes=np.repeat(ignored, num_classes, axis=0),
                                       ignore_classes=np.tile(np.arange(num_classes, dtype=np.int32),
                                                              len(ignored))))
  return truth


def cutouts(digits: np.ndarray, colours: np.ndarray) -> np.ndarray:
  """uint8 digits [..., 40, 40] and RGB colours [..., 3] in [0, 1] -> float cut-outs [..., 40, 40, 4]."""
  alpha = digits.astype(np.float32)[..., None] / 255.0
  colour = np.broadcast_to(colours[..., None, None, :], (*digits.shape, 3)).astype(np.float32)
  return np.concatenate([colour, alpha], axis=-1)


@registry.register("photo_digits", settings=PhotoDigitsSettings, define_flags=define_flags,
                   settings_from_flags=settings_from_flags,
                   summary="digit detection on photographs with an SSD or Faster R-CNN (the offline stand-in for "
                   "§4.2)")
class PhotoDigitsTask(PastedObjectDetection):
  targets = ("ssd_compact", "ssd_vgg16", *target_registry.names())

  def __init__(self, task_settings: PhotoDigitsSettings, common: CommonSettings):
    if common.target not in self.targets:
      raise ConfigError(f"--target must be one of {self.targets} for --task=photo_digits, got "
                        f"{common.target!r}")
    settings = task_settings.photo_digits
    self.task_settings, self.settings, self.common = task_settings, settings, common
    size = settings.image_size
    if common.target == "ssd_vgg16" and size != SSD_VGG16_SIZE:
      raise ConfigError(f"--target=ssd_vgg16 is SSD300: it needs --photo_image_size={SSD_VGG16_SIZE}, "
                        f"got {size}")
    self.image_shape = (size, size, 3)
    self.num_classes = 10 if settings.ten_classes else 1
    self.class_names = [str(d) for d in range(10)] if settings.ten_classes else ["digit"]
    self.cutout_shape = (CUTOUT_SIZE, CUTOUT_SIZE)
    self.max_objects = self.label_slots = settings.max_objects
    self.min_visible = settings.min_visible
    self.background_artifact_fraction = settings.background_artifact_fraction
    self._set_compositing(common.compositor.with_ranges(settings.ranges()), common.synthesizer.jit_compile)
    self.splits = mnist.load_splits(task_settings.data)
    self.augmentation = augment_lib.RECIPES[settings.augment]
    # One random stream per set (keyed by the data's seed and the set's name), so that no set's size or
    # recipe changes another's scenes.
    streams = {name: np.random.default_rng([task_settings.data.seed, 17, index]) for index, name in enumerate(
        ("backgrounds", "real", "val", "val_upright", "test", "unseen", "artifact_masks"))}
    split_photos = {split: photos.load_photos(split, settings.photo_dir, size, settings.photo_bank)
                    for split in photos.SPLITS}
    self.backgrounds = photos.random_crops(split_photos["train"], settings.num_backgrounds, size,
                                           streams["backgrounds"])
    splits = self.splits
    self._set_artifact_masks(splits.train_images, streams["artifact_masks"])
    self.real_images, self.real_labels, _ = self._scenes(
        splits.train_images, splits.train_labels, split_photos["train"], settings.num_real, settings.max_objects,
        upright=True, rng=streams["real"])
    wide = dict(max_objects=settings.test_max_objects, upright=False, edge_sigma=settings.test_edge_sigma)
    scene_sets = {
        "test": self._scenes(splits.test_images, splits.test_labels, split_photos["test"], settings.num_test,
                             rng=streams["test"], **wide),
        "val": self._scenes(splits.val_images, splits.val_labels, split_photos["val"], settings.num_val,
                            rng=streams["val"], **wide),
        "val_upright": self._scenes(splits.val_images, splits.val_labels, split_photos["val"], settings.num_val,
                                    settings.max_objects, upright=True, rng=streams["val_upright"])}
    self._photo_counts = {split: len(split_photos[split]) for split in photos.SPLITS}
    photo_names = {"test": split_photos["test"].names, "val": split_photos["val"].names,
                   "val_upright": split_photos["val"].names}
    if settings.unseen_bank:
      unseen_photos = photos.Photos()
      for split in photos.SPLITS:
        bank = photos.load_photos(split, min_side=size, bank=settings.unseen_bank)
        unseen_photos.extend(bank)
        unseen_photos.names.extend(bank.names)
      photo_names["unseen"] = unseen_photos.names
      scene_sets["unseen"] = self._scenes(splits.test_images, splits.test_labels, unseen_photos,
                                          settings.num_test, rng=streams["unseen"], **wide)
      self._photo_counts["unseen"] = len(unseen_photos)
    self._evaluation_sets = {name: (scenes.images, evaluation_truth(scenes.labels, self.num_classes))
                             for name, scenes in scene_sets.items()}
    # The photo each evaluation scene was cropped from (the name of that photo in its source), for per-photo AP.
    self.scene_photos = {name: np.array(photo_names[name])[scenes.photo_index]
                         for name, scenes in scene_sets.items()}
    self.test_images, self.test_truth = self._evaluation_sets["test"]

  @property
  def per_class_figures(self) -> bool:
    """Per-class AP (the GMU table's form) for the ten digit classes; one class needs none."""
    return self.settings.ten_classes

  # ------------------------------------------------------------------------------------ data
  def _object_class(self, digit_labels: np.ndarray) -> np.ndarray:
    return digit_labels.astype(np.int32) if self.settings.ten_classes else np.zeros_like(digit_labels, np.int32)

  def _objects(self, digits: np.ndarray, labels: np.ndarray, count: int, max_objects: int,
               rng: np.random.Generator):
    """`count` groups of max_objects coloured cut-outs, 1..max_objects of them valid: (cut-outs, classes,
    valid)."""
    picks = rng.integers(len(labels), size=(count, max_objects))
    colours = rng.uniform(0.0, 1.0, size=(count, max_objects, 3))
    valid = np.arange(max_objects)[None, :] < rng.integers(1, max_objects + 1, size=(count, 1))
    return cutouts(digits[picks], colours), self._object_class(labels[picks]), valid

  def _scenes(self, digits: np.ndarray, labels: np.ndarray, scene_photos: list[np.ndarray], count: int,
              max_objects: int, upright: bool, rng: np.random.Generator, edge_sigma: float = 0.0) -> Scenes:
    """`count` scenes of 1..max_objects of `digits` pasted on random crops of `scene_photos`, upright or
    over the wide range, with hard edges or edges feathered by `edge_sigma` pixels."""
    picks = rng.integers(len(scene_photos), size=count)
    backgrounds = photos.random_crops(scene_photos, count, self.settings.image_size, rng, picks=picks)
    objects, classes, valid = self._objects(digits, labels, count, max_objects, rng)
    if edge_sigma:
      objects = detection.feather_alpha(objects, edge_sigma)
    params = self._random_params((count, max_objects), upright, rng)
    return Scenes(*self._render_scenes(objects, classes, valid, backgrounds, params), photo_index=picks)

  def describe(self) -> str:
    settings = self.settings
    photo_source = f"--photo_dir={settings.photo_dir}" if settings.photo_dir else settings.photo_bank
    unseen = f", unseen {self._photo_counts['unseen']} ({settings.unseen_bank})" if settings.unseen_bank else ""
    return (f"{len(self.real_images)} real training scenes (1-{self.settings.max_objects} upright digits "
            f"from {len(self.splits.train_labels)} {self.splits.source} training digits), "
            f"{len(self.test_images)} test scenes (1-{self.settings.test_max_objects} held-out digits, wide "
            f"range); photos: {self._photo_counts['train']} train, {self._photo_counts['val']} val, "
            f"{self._photo_counts['test']} test ({photo_source}){unseen}; classes: {self.class_names}")

  def evaluation_sets(self) -> dict[str, tuple[np.ndarray, list[evaluation.ImageBoxes]]]:
    return self._evaluation_sets

  def identity(self) -> dict:
    settings = dataclasses.asdict(self.settings)
    identity = {"task": self.name, "data": dataclasses.asdict(self.task_settings.data), "photo_digits": settings,
                "target": self.common.target}
    if self.task_settings.detector is not None:
      identity["detector"] = dataclasses.asdict(self.task_settings.detector)
    return identity

  def real_examples(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return self.real_images, self.real_labels

  # ------------------------------------------------------------------------------------ networks
  def _backbone_weights(self) -> str | None:
    return self.settings.backbone_weights or None

  def build_target(self) -> DetectorTarget:
    size = self.settings.image_size
    if self.common.target in target_registry.names():
      return target_registry.build(self.common.target, self.task_settings.detector, self.image_shape,
                                   self.num_classes, "photo_image_size")
    backbone = self.common.target.removeprefix("ssd_")
    sizes = ssd.feature_sizes(backbone, size)
    if backbone == "compact":
      # Fitted to the digits' boxes (0.07-0.31 of the scene high, 0.2-3 wide per high), chosen on the
      # validation scenes: 98% of the test boxes get a default box at IoU >= 0.5 (test_photo_protocol.py).
      spec = boxes_lib.DefaultBoxSpec(feature_sizes=sizes, min_scale=0.09, max_scale=0.35,
                                      aspect_ratios=(1.0, 2.0, 0.5, 0.33))
    else:
      spec = boxes_lib.DefaultBoxSpec(feature_sizes=sizes, min_scale=0.1, max_scale=0.9)
    return SSDTarget.build(backbone, size, self.num_classes, spec, weights=self._backbone_weights())

  def build_synthesizer(self, seed: int | None) -> keras.Model:
    return scene_synthesizer.build_scene_synthesizer(
        (CUTOUT_SIZE, CUTOUT_SIZE, 3), self.image_shape, self.settings.max_objects, self.settings.synth_backbone,
        self.common.synthesizer.width, self.common.synthesizer.dropout, self.common.synthesizer.noise_dim,
        weights=self._backbone_weights(), seed=seed)

  # ------------------------------------------------------------------------------------ compositing
  def synth_dataset(self, batch_size: int, seed: int, context: tf.distribute.InputContext) -> tf.data.Dataset:
    """Groups of max_objects training digits (1..max_objects of them present) in random colours, and train
    backgrounds, a share with pasted background regions."""
    digits, labels = self.splits.train_images, self.splits.train_labels
    classes = tf.constant(self._object_class(labels))
    objects = tf.data.Dataset.from_tensor_slices((digits, classes)).shard(
        context.num_input_pipelines, context.input_pipeline_id).shuffle(len(labels), seed=seed).repeat()
    n = self.max_objects

    def coloured(group_digits: tf.Tensor, seed_pair: tf.Tensor) -> tf.Tensor:
      colours = tf.random.stateless_uniform([batch_size, n, 3], seed_pair)
      alpha = tf.cast(group_digits, tf.float32)[..., None] / 255.0
      return tf.concat([tf.broadcast_to(colours[:, :, None, None, :],
                                        [batch_size, n, CUTOUT_SIZE, CUTOUT_SIZE, 3]), alpha], axis=-1)

    return self._scenes_dataset(objects, coloured, batch_size, seed, context)

  def random_samples(self, per_class: int, seed, source: str | None = None
                     ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Cut-Paste-Learn's random placement (detection.CUT_PASTE or CUT_PASTE_BLEND_MODES): groups of training
    digits at uniform parameters over the wide ranges, on train backgrounds."""
    rng = np.random.default_rng(seed)
    objects, classes, valid = self._objects(self.splits.train_images, self.splits.train_labels,
                                            per_class * self.num_classes, self.max_objects, rng)
    return self._cut_paste(objects, classes, valid, rng, source)
