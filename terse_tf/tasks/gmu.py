"""The gmu task: instance detection of the 11 GMU Kitchen products (paper §4.3, A.3).

Real training images are the frames of the training scenes, the test set the frames of the test scenes
(data/gmu.py: the folds and why scenes, not frames, are split); S pastes BigBIRD views of the products
(BigBIRD's layout or a data/cutouts.py folder) on crops of a folder of background photos, with §3.1's
background regions in a share of them. Boxes under --gmu_min_box_area are not scored: ignore boxes in T's
real labels, crowd regions in evaluation. T trains with SSD's augmentation (--gmu_augment, A.2's pipeline).

Geometry: the 1920x1080 frames are squashed to the square T takes (as SSD resizes), so a product in them is
9/16 as wide, for its height, as in life. Every other image T sees is squashed the same way: each product
view, once fitted to --gmu_cutout_size (its scale is its height's), is narrowed by the frames' height / width
and centred in its square, and each background photo is narrowed so before its square crops are taken. S's
and Cut-Paste's composites then show products and kitchens at the real frames' aspect.

A.3 trains without the discriminator ("we did not see noticeable improvements"): that is the trainer's
default (--nodiscriminator), and --discriminator switches D on. T is scored by COCO AP with the per-class
AP@0.5 of the published GMU tables (<set>_ap50_<product>). The table's three rows are three runs of the same
flagfile, as many cycles each: real only (--sample_source=none: its T trains as long as the other arms', on
the real frames alone), Cut-Paste (--sample_source=cut_paste) and TERSE. Each row is its run's figures after
the last cycle (per_class_row); an arm's rows of the three folds are averaged (evaluation.mean_row, leaving
out a product without a box in a fold), and per_class_markdown writes the table. A run's figures before its
first cycle (after the baseline) are no real-only row: that T trained fewer epochs than the arms.

The paper's T is a Faster R-CNN: --target=frcnn_resnet50_fpn (Model Garden's heads, a GPU's size) or the slim
frcnn_resnet18 / frcnn_mobilenetv2 (any detector targets/registry.py registers); the SSDs work too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
from absl import flags

from terse_tf import augment as augment_lib
from terse_tf import boxes as boxes_lib
from terse_tf import compositor as compositor_lib
from terse_tf import evaluation
from terse_tf.data import cutouts as cutouts_lib
from terse_tf.data import gmu, photos
from terse_tf.errors import ConfigError, DataError
from terse_tf.networks import scene_synthesizer, ssd
from terse_tf.targets import registry as target_registry
from terse_tf.targets.base import DetectorTarget
from terse_tf.targets.ssd import SSDTarget
from terse_tf.tasks import registry
from terse_tf.tasks.base import CommonSettings
from terse_tf.tasks.detection import StoredCutoutDetection

SSD_VGG16_SIZE = 300


def _scene_list(text: str, flag: str) -> tuple[int, ...]:
  """'2,4,5' -> (2, 4, 5); a ConfigError naming `flag` for anything but scene numbers 1..9."""
  try:
    scenes = tuple(int(part) for part in text.split(",") if part.strip())
  except ValueError as e:
    raise ConfigError(f"--{flag} must be comma-separated scene numbers 1..{gmu.NUM_SCENES}, got {text!r}") from e
  if any(not 1 <= scene <= gmu.NUM_SCENES for scene in scenes) or len(set(scenes)) != len(scenes):
    raise ConfigError(f"--{flag} must be distinct scene numbers 1..{gmu.NUM_SCENES}, got {text!r}")
  return scenes


@dataclasses.dataclass(frozen=True)
class GmuSettings:
  gmu_dir: str = ""             # The folder holding gmu_scene_001 ... gmu_scene_009.
  objects_dir: str = dataclasses.field(default="", metadata={"flag": "gmu_objects_dir"})
  backgrounds_dir: str = dataclasses.field(default="", metadata={"flag": "gmu_backgrounds_dir"})
  test_scenes: tuple[int, ...] = dataclasses.field(default=gmu.FOLD1_TEST_SCENES,
                                                   metadata={"flag": "gmu_test_scenes"})
  # Scenes held out of training to choose settings on (none by default: the published protocol has none).
  val_scenes: tuple[int, ...] = dataclasses.field(default=(), metadata={"flag": "gmu_val_scenes"})
  # Training scenes; () every scene not tested or validated on.
  train_scenes: tuple[int, ...] = dataclasses.field(default=(), metadata={"flag": "gmu_train_scenes"})
  image_size: int = dataclasses.field(default=256, metadata={"flag": "gmu_image_size"})
  frame_stride: int = dataclasses.field(default=1, metadata={"flag": "gmu_frame_stride"})
  view_stride: int = dataclasses.field(default=6, metadata={"flag": "gmu_view_stride"})
  cutout_size: int = dataclasses.field(default=64, metadata={"flag": "gmu_cutout_size"})
  skip_objects: tuple[str, ...] = dataclasses.field(default=(), metadata={"flag": "gmu_skip_objects"})
  min_box_area: float = dataclasses.field(default=1500.0, metadata={"flag": "gmu_min_box_area"})
  max_objects: int = dataclasses.field(default=4, metadata={"flag": "gmu_max_objects"})
  num_backgrounds: int = dataclasses.field(default=2000, metadata={"flag": "gmu_num_backgrounds"})
  min_visible: float = dataclasses.field(default=0.25, metadata={"flag": "gmu_min_visible"})
  background_artifact_fraction: float = dataclasses.field(
      default=0.3, metadata={"flag": "gmu_background_artifact_fraction"})
  min_scale: float = dataclasses.field(default=0.25, metadata={"flag": "gmu_min_scale"})
  max_scale: float = dataclasses.field(default=1.5, metadata={"flag": "gmu_max_scale"})
  max_rotation_deg: float = dataclasses.field(default=30.0, metadata={"flag": "gmu_max_rotation_deg"})
  max_shear: float = dataclasses.field(default=0.2, metadata={"flag": "gmu_max_shear"})
  # T's training augmentation, one of augment.RECIPES. SSD's (photometric, expand up to 2x, crop, flip) by
  # default: A.2's pipeline trains its T so and A.3 keeps A.2's strategy, and ~4,000 frames of six videos,
  # consecutive ones near duplicates, are few views to fine-tune on without it. Not screened (the data is not
  # here): photo_digits' screen found it did not pay there, on short runs of synthetic digit scenes.
  augment: str = dataclasses.field(default="ssd", metadata={"flag": "gmu_augment"})
  synth_backbone: str = dataclasses.field(default="compact", metadata={"flag": "gmu_synth_backbone"})
  backbone_weights: str = dataclasses.field(default="", metadata={"flag": "gmu_backbone_weights"})
  # The data's seed: the background crops S and Cut-Paste paste on and the bank §3.1's regions are shaped
  # from (the real and test frames do not depend on it). Read from the run's --seed, as photo_digits' data
  # seed is; an experiment's seeds (experiments/common.seeded) change config.seed only, so all its runs share
  # the data the flags' --seed drew and differ in training (initialisation, shuffling, synthesis) alone.
  seed: int = 0
  # The settings of a registered detector (targets/registry.py) when --target names one; None: its preset.
  detector: Any = None

  def __post_init__(self):
    for name in ("image_size", "frame_stride", "view_stride", "cutout_size", "max_objects", "num_backgrounds"):
      if getattr(self, name) < 1:
        raise ConfigError(f"--gmu_{name} must be >= 1, got {getattr(self, name)}")
    if not 8 <= self.cutout_size <= self.image_size:
      raise ConfigError(f"--gmu_cutout_size must be between 8 and --gmu_image_size ({self.image_size}), got "
                        f"{self.cutout_size}")
    for name in ("min_visible", "background_artifact_fraction"):
      if not 0 <= getattr(self, name) <= 1:
        raise ConfigError(f"--gmu_{name} must be in [0, 1], got {getattr(self, name)}")
    if not 0 < self.min_scale <= self.max_scale:
      raise ConfigError(f"--gmu_min_scale must be > 0 and <= --gmu_max_scale, got {self.min_scale} and "
                        f"{self.max_scale}")
    if not self.test_scenes:
      raise ConfigError("--gmu_test_scenes must name at least one scene")
    held_out = set(self.test_scenes) | set(self.val_scenes)
    if set(self.test_scenes) & set(self.val_scenes) or held_out & set(self.train_scenes):
      raise ConfigError(f"the GMU scenes must be disjoint: --gmu_train_scenes={list(self.train_scenes)}, "
                        f"--gmu_val_scenes={list(self.val_scenes)}, --gmu_test_scenes={list(self.test_scenes)}")
    if not self.training_scenes():
      raise ConfigError(f"no GMU scene is left to train on (test {list(self.test_scenes)}, validation "
                        f"{list(self.val_scenes)})")
    if self.augment not in augment_lib.RECIPES:
      raise ConfigError(f"--gmu_augment must be one of {list(augment_lib.RECIPES)}, got {self.augment!r}")
    if self.synth_backbone not in scene_synthesizer.BACKBONES:
      raise ConfigError(f"--gmu_synth_backbone must be one of {scene_synthesizer.BACKBONES}, got "
                        f"{self.synth_backbone!r}")

  def training_scenes(self) -> tuple[int, ...]:
    held_out = set(self.test_scenes) | set(self.val_scenes)
    return self.train_scenes or tuple(s for s in range(1, gmu.NUM_SCENES + 1) if s not in held_out)

  def ranges(self) -> compositor_lib.AffineRanges:
    """Where S (and Cut-Paste's random placement) may put a product: its centre anywhere 8 pixels inside the
    frame, at min_scale..max_scale of the cut-out's size, turned and sheared moderately."""
    return compositor_lib.AffineRanges(max_rotation_deg=self.max_rotation_deg,
                                       max_translation_px=self.image_size / 2 - 8, max_shear=self.max_shear,
                                       min_scale=self.min_scale, max_scale=self.max_scale)


_DEFAULT = GmuSettings()


def per_class_row(results: dict, when: str = "after", set_name: str = "test") -> dict[str, float]:
  """One arm's row of the GMU table from a gmu run's results.json: its per-product AP@0.5 and mAP on
  `set_name`'s frames after its last cycle ("after": real only with --sample_source=none, Cut-Paste with
  --sample_source=cut_paste, TERSE by default) or after its baseline ("before", a T trained fewer epochs than
  the arms: no real-only row). One ValueError naming what is wrong for the results of another task, of a set
  the run did not score, or of a run that has no such figures yet (no cycle completed)."""
  if when not in ("before", "after"):
    raise ValueError(f"when must be 'before' or 'after', got {when!r}")
  keys = {name: f"{set_name}_ap50_{name}_{when}" for name in gmu.CLASS_NAMES}
  keys["mAP"] = f"{set_name}_ap50_{when}"  # pycocotools' mean over the products with a box.
  missing = [key for key in keys.values() if key not in results]
  if missing:
    raise ValueError(f"results of --task={results.get('task')} have no {', '.join(missing[:2])}, ...: expected "
                     f"the results.json of a gmu run that scores the {set_name!r} frames per product")
  if any(results[key] is None for key in keys.values()):
    stage = "its last cycle" if when == "after" else "its baseline"
    raise ValueError(f"the run has no figures after {stage} ({keys['mAP']} is None; cycles_completed "
                     f"{results.get('cycles_completed')}): it stopped before; resume it")
  return {name: results[key] for name, key in keys.items()}


def per_class_markdown(rows: dict[str, dict[str, float]]) -> str:
  """The paper's GMU table (11 products + mAP, AP@0.5 in percent) of arms' rows (per_class_row, or the mean
  of an arm's rows over the folds: evaluation.mean_row), in order."""
  return evaluation.per_class_table(rows, list(gmu.CLASS_NAMES), list(gmu.SHORT_NAMES))


def define_flags(flag_values: flags.FlagValues) -> None:
  for name, default, text in (
      ("gmu_dir", _DEFAULT.gmu_dir, "GMU Kitchen: the folder with gmu_scene_001 ... gmu_scene_009, each with "
       "Images/ and Annotations/ (data/gmu.py)."),
      ("gmu_objects_dir", _DEFAULT.objects_dir, "The 11 products' views: BigBIRD's object folders "
       "(<name>/NP<camera>_<angle>.jpg, <name>/masks/NP<camera>_<angle>_mask.pbm), or a cut-out folder "
       "(data/cutouts.py) with one sub-folder per product."),
      ("gmu_backgrounds_dir", _DEFAULT.backgrounds_dir, "A folder of background photos (no GMU product in them) "
       "S and the Cut-Paste baseline paste on.")):
    flags.DEFINE_string(name, default, text, flag_values=flag_values)
  for name, default, text in (
      ("gmu_test_scenes", _DEFAULT.test_scenes, "Test scenes (numbers 1-9); default: fold 1 as far as we "
       "could trace it (data/gmu.py)."),
      ("gmu_val_scenes", _DEFAULT.val_scenes, "Scenes held out of training to choose settings on."),
      ("gmu_train_scenes", _DEFAULT.train_scenes, "Training scenes; empty: every scene not tested or "
       "validated on.")):
    flags.DEFINE_list(name, [str(s) for s in default], text, flag_values=flag_values)
  flags.DEFINE_list("gmu_skip_objects", list(_DEFAULT.skip_objects), "Object names in the annotations that "
                    "are not one of the 11 products and are left out (any other name is an error).",
                    flag_values=flag_values)
  for name, default, text in (
      ("gmu_image_size", _DEFAULT.image_size, "Side the frames are resized to (SSD300: 300)."),
      ("gmu_frame_stride", _DEFAULT.frame_stride, "Every n-th annotated frame of a scene is used."),
      ("gmu_view_stride", _DEFAULT.view_stride, "Every n-th turntable angle of each BigBIRD camera is pasted."),
      ("gmu_cutout_size", _DEFAULT.cutout_size, "Side the product views are fitted to (their size at scale 1)."),
      ("gmu_max_objects", _DEFAULT.max_objects, "Most products S places per scene."),
      ("gmu_num_backgrounds", _DEFAULT.num_backgrounds, "Random crops of the background photos.")):
    flags.DEFINE_integer(name, default, text, lower_bound=1, flag_values=flag_values)
  for name, default, text in (
      ("gmu_min_box_area", _DEFAULT.min_box_area, "Boxes of fewer pixels (in the 1920x1080 frame) are not "
       "scored: ignore boxes in T's real labels, crowd regions in evaluation (a detection there is neither a "
       "true nor a false positive); Cut-Paste-Learn evaluates boxes of at least 50x30."),
      ("gmu_min_visible", _DEFAULT.min_visible, "A pasted product with less than this share in view gets no "
       "box (an ignore box if any shows)."),
      ("gmu_background_artifact_fraction", _DEFAULT.background_artifact_fraction, "Share of S's backgrounds "
       "given a pasted background region (§3.1)."),
      ("gmu_min_scale", _DEFAULT.min_scale, "Smallest scale S may give a product (of --gmu_cutout_size)."),
      ("gmu_max_scale", _DEFAULT.max_scale, "Largest scale S may give a product."),
      ("gmu_max_rotation_deg", _DEFAULT.max_rotation_deg, "Largest in-plane turn S may give a product."),
      ("gmu_max_shear", _DEFAULT.max_shear, "Largest shear S may give a product.")):
    flags.DEFINE_float(name, default, text, lower_bound=0.0, flag_values=flag_values)
  flags.DEFINE_enum("gmu_augment", _DEFAULT.augment, list(augment_lib.RECIPES), "T's training augmentation of "
                    f"its real frames and added scenes: {augment_lib.RECIPES_HELP}.", flag_values=flag_values)
  flags.DEFINE_enum("gmu_synth_backbone", _DEFAULT.synth_backbone, scene_synthesizer.BACKBONES, "S's backbone: "
                    "compact (CPU) or vgg16 (A.2, A.3).", flag_values=flag_values)
  flags.DEFINE_string("gmu_backbone_weights", _DEFAULT.backbone_weights, "VGG16 weights for S and SSD300: '' "
                      "none, 'imagenet' (downloads), or a local weights file.", flag_values=flag_values)


def settings_from_flags(f: flags.FlagValues) -> GmuSettings:
  return GmuSettings(
      gmu_dir=f.gmu_dir, objects_dir=f.gmu_objects_dir, backgrounds_dir=f.gmu_backgrounds_dir,
      test_scenes=_scene_list(",".join(f.gmu_test_scenes), "gmu_test_scenes"),
      val_scenes=_scene_list(",".join(f.gmu_val_scenes), "gmu_val_scenes"),
      train_scenes=_scene_list(",".join(f.gmu_train_scenes), "gmu_train_scenes"),
      image_size=f.gmu_image_size, frame_stride=f.gmu_frame_stride, view_stride=f.gmu_view_stride,
      cutout_size=f.gmu_cutout_size, skip_objects=tuple(f.gmu_skip_objects), min_box_area=f.gmu_min_box_area,
      max_objects=f.gmu_max_objects, num_backgrounds=f.gmu_num_backgrounds, min_visible=f.gmu_min_visible,
      background_artifact_fraction=f.gmu_background_artifact_fraction, min_scale=f.gmu_min_scale,
      max_scale=f.gmu_max_scale, max_rotation_deg=f.gmu_max_rotation_deg, max_shear=f.gmu_max_shear,
      augment=f.gmu_augment, synth_backbone=f.gmu_synth_backbone, backbone_weights=f.gmu_backbone_weights,
      seed=f.seed, detector=target_registry.settings_from_flags(f.target, f))


@registry.register("gmu", settings=GmuSettings, define_flags=define_flags,
                   settings_from_flags=settings_from_flags,
                   summary="GMU Kitchen instance detection of 11 products (§4.3, A.3; your copy of the data)")
class GmuTask(StoredCutoutDetection):
  # The paper's Faster R-CNN first (A.3), then the other registered detectors and the SSDs.
  targets = ("frcnn_resnet50_fpn", *(name for name in target_registry.names() if name != "frcnn_resnet50_fpn"),
             "ssd_compact", "ssd_vgg16")
  per_class_figures = True  # The published GMU results are per-product tables.

  def __init__(self, settings: GmuSettings, common: CommonSettings):
    if common.target not in self.targets:
      raise ConfigError(f"--target must be one of {self.targets} for --task=gmu, got {common.target!r}")
    if common.target == "ssd_vgg16" and settings.image_size != SSD_VGG16_SIZE:
      raise ConfigError(f"--target=ssd_vgg16 is SSD300: it needs --gmu_image_size={SSD_VGG16_SIZE}, got "
                        f"{settings.image_size}")
    for flag, folder in (("gmu_dir", settings.gmu_dir), ("gmu_objects_dir", settings.objects_dir),
                         ("gmu_backgrounds_dir", settings.backgrounds_dir)):
      if not folder:
        raise ConfigError(f"--task=gmu needs --{flag} (README \"GMU Kitchen\" says where the data comes from)")
    self.settings, self.common = settings, common
    size = settings.image_size
    self.image_shape = (size, size, 3)
    self.class_names = list(gmu.CLASS_NAMES)
    self.num_classes = len(self.class_names)
    self.cutout_shape = (settings.cutout_size, settings.cutout_size)
    self.max_objects, self.min_visible = settings.max_objects, settings.min_visible
    self.background_artifact_fraction = settings.background_artifact_fraction
    self._set_compositing(common.compositor.with_ranges(settings.ranges()), common.synthesizer.jit_compile)
    self.augmentation = augment_lib.RECIPES[settings.augment]

    def load(scenes: tuple[int, ...]) -> gmu.Split:
      return gmu.load_split(settings.gmu_dir, scenes, size, settings.frame_stride, settings.skip_objects,
                            settings.min_box_area)

    self.splits = {"train": load(settings.training_scenes()), "test": load(settings.test_scenes)}
    if settings.val_scenes:
      self.splits["val"] = load(settings.val_scenes)
    aspects = {name: split.frame_aspect for name, split in self.splits.items()}
    if len(set(aspects.values())) > 1:
      raise DataError(f"--gmu_dir={settings.gmu_dir}: the splits' frames differ in shape (width / height "
                      f"{aspects}); every frame must have one shape, which S's composites are squashed to")
    # Every image T sees has the real frames' geometry: they are squashed to a square, so the products'
    # views (after fitting: their scale is their height's) and the background photos (before their square
    # crops are taken) are squashed the same way.
    self.frame_aspect = aspects["train"]
    objects = gmu.load_objects(settings.objects_dir, self.cutout_shape, settings.view_stride)
    self.cutouts = cutouts_lib.squash(objects.images, self.frame_aspect)
    self.cutout_classes = objects.classes
    rng = np.random.default_rng([settings.seed, 19])
    self.backgrounds = photos.random_crops(gmu.squash_photos(
        photos.read_photos(photos.image_paths(settings.backgrounds_dir),
                           f"--gmu_backgrounds_dir={settings.backgrounds_dir}", min_side=size // 2),
        self.frame_aspect), settings.num_backgrounds, size, rng)
    self._set_artifact_masks(self.cutouts[..., -1], rng)
    train = self.splits["train"]
    # Every label has as many rows as the busiest real frame (its boxes or its ignore boxes) or S's scenes,
    # whichever is more, so that real and cached examples batch together.
    self.label_slots = max(settings.max_objects, *(len(b) for b in (*train.boxes, *train.ignore_boxes)))
    self.real_images = train.images
    self.real_labels = self.padded_labels(train.boxes, train.classes, train.ignore_boxes)
    # Boxes under --gmu_min_box_area are not scored: crowd regions, where a detection is no false positive.
    self._evaluation_sets = {
        name: (split.images, [evaluation.ImageBoxes(boxes=b, classes=c, ignore_boxes=ib, ignore_classes=ic)
                              for b, c, ib, ic in zip(split.boxes, split.classes, split.ignore_boxes,
                                                      split.ignore_classes)])
        for name, split in self.splits.items() if name != "train"}
    self.test_images, self.test_truth = self._evaluation_sets["test"]

  def describe(self) -> str:
    scenes = {name: ",".join(str(s) for s in np.unique(split.scenes)) for name, split in self.splits.items()}
    return (f"GMU Kitchen at {self.image_shape[0]} px, squashed from {self.frame_aspect:.2f}:1: " + ", ".join(
        f"{len(split.images)} {name} frames (scenes {scenes[name]})" for name, split in self.splits.items()) +
        f"; {len(self.cutouts)} product views at {self.cutout_shape[0]} px, up to {self.max_objects} per scene, "
        f"{len(self.backgrounds)} backgrounds")

  def identity(self) -> dict:
    return {"task": self.name, "gmu": dataclasses.asdict(self.settings), "target": self.common.target}

  def real_examples(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return self.real_images, self.real_labels

  def evaluation_sets(self) -> dict[str, tuple[np.ndarray, list[evaluation.ImageBoxes]]]:
    return self._evaluation_sets

  # ------------------------------------------------------------------------------------ networks
  def _backbone_weights(self) -> str | None:
    return self.settings.backbone_weights or None

  def build_target(self) -> DetectorTarget:
    size = self.settings.image_size
    if self.common.target in target_registry.names():
      return target_registry.build(self.common.target, self.settings.detector, self.image_shape,
                                   self.num_classes, "gmu_image_size")
    backbone = self.common.target.removeprefix("ssd_")
    # Products fill 1-25% of a kitchen frame's side and stand upright (bottles, boxes): small scales and tall
    # ratios as well as wide.
    spec = boxes_lib.DefaultBoxSpec(feature_sizes=ssd.feature_sizes(backbone, size), min_scale=0.05,
                                    max_scale=0.4, aspect_ratios=(1.0, 2.0, 0.5, 0.33))
    return SSDTarget.build(backbone, size, self.num_classes, spec, weights=self._backbone_weights())

  def build_synthesizer(self, seed: int | None) -> keras.Model:
    settings = self.common.synthesizer
    return scene_synthesizer.build_scene_synthesizer(
        (*self.cutout_shape, 3), self.image_shape, self.max_objects, self.settings.synth_backbone,
        settings.width, settings.dropout, settings.noise_dim, weights=self._backbone_weights(), seed=seed)
