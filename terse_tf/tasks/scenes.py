"""What the detection tasks on photographed scenes share (gmu: GMU Kitchen's videos, folders: your own
photos): real and test images with boxes (and ignore boxes, not scored), squashed to T's square; S pasting
cut-outs on square crops of background photos; T any registered detector (targets/registry.py: Faster
R-CNN) or an SSD.

A task's settings subclass SceneSettings and say their flags' prefix once (FLAG_PREFIX: --gmu_image_size,
--folders_image_size); define_scene_flags and scene_settings_from_flags define and read the shared flags, and
SceneDetection builds the task's data and networks from them.

Geometry: the real images are squashed to a square (as SSD resizes), so an object in them is narrowed by
their width / height (their "frame aspect"). Every other image T sees is squashed the same way: each cut-out,
once fitted to the cut-out size (its scale is its height's), is narrowed by it and centred in its square, and
each background photo is narrowed so before its square crops are taken. S's and Cut-Paste's composites then
show objects and backgrounds at the real images' aspect.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar, Protocol

import keras
import numpy as np
from absl import flags

from terse_tf import augment as augment_lib
from terse_tf import boxes as boxes_lib
from terse_tf import compositor as compositor_lib
from terse_tf import evaluation
from terse_tf.data import cutouts as cutouts_lib
from terse_tf.data import photos
from terse_tf.errors import ConfigError
from terse_tf.networks import scene_synthesizer, ssd
from terse_tf.targets import registry as target_registry
from terse_tf.targets.base import DetectorTarget
from terse_tf.targets.ssd import SSDTarget
from terse_tf.tasks.base import CommonSettings
from terse_tf.tasks.detection import StoredCutoutDetection

SSD_VGG16_SIZE = 300
# The SSDs a scene task trains besides the registered detectors.
SSD_TARGETS = ("ssd_compact", "ssd_vgg16")


@dataclasses.dataclass(frozen=True)
class SceneSettings:
  """The settings every scene task has; each is the flag FLAG_PREFIX + its name (config.setting_flags)."""
  FLAG_PREFIX: ClassVar[str] = ""
  image_size: int = 256           # Side the real images are squashed to.
  cutout_size: int = 64           # Side the cut-outs are fitted to (their size at scale 1).
  # Boxes of fewer pixels (in the full-size image) are not scored: ignore boxes in T's real labels, crowd
  # regions in evaluation.
  min_box_area: float = 0.0
  max_objects: int = 4
  num_backgrounds: int = 2000
  min_visible: float = 0.25
  background_artifact_fraction: float = 0.3
  min_scale: float = 0.25
  max_scale: float = 1.5
  max_rotation_deg: float = 30.0
  max_shear: float = 0.2
  # T's training augmentation, one of augment.RECIPES: SSD's (photometric, expand up to 2x, crop, flip) by
  # default, as A.2's pipeline trains its T and A.3 keeps A.2's strategy.
  augment: str = "ssd"
  synth_backbone: str = "compact"
  backbone_weights: str = ""
  # The data's seed: the background crops S and Cut-Paste paste on and the bank §3.1's regions are shaped
  # from (the real and test images do not depend on it). Read from the run's --seed, as photo_digits' data
  # seed is; an experiment's seeds (experiments/common.seeded) change config.seed only, so all its runs share
  # the data the flags' --seed drew and differ in training (initialisation, shuffling, synthesis) alone.
  seed: int = dataclasses.field(default=0, metadata={"flag": "seed"})
  # The settings of a registered detector (targets/registry.py) when --target names one; None: its preset.
  detector: Any = dataclasses.field(default=None, metadata={"flag": "target"})

  def __post_init__(self):
    prefix = self.FLAG_PREFIX
    for name in ("image_size", "cutout_size", "max_objects", "num_backgrounds"):
      if getattr(self, name) < 1:
        raise ConfigError(f"--{prefix}{name} must be >= 1, got {getattr(self, name)}")
    if not 8 <= self.cutout_size <= self.image_size:
      raise ConfigError(f"--{prefix}cutout_size must be between 8 and --{prefix}image_size ({self.image_size}), "
                        f"got {self.cutout_size}")
    for name in ("min_visible", "background_artifact_fraction"):
      if not 0 <= getattr(self, name) <= 1:
        raise ConfigError(f"--{prefix}{name} must be in [0, 1], got {getattr(self, name)}")
    if not 0 < self.min_scale <= self.max_scale:
      raise ConfigError(f"--{prefix}min_scale must be > 0 and <= --{prefix}max_scale, got {self.min_scale} and "
                        f"{self.max_scale}")
    if self.augment not in augment_lib.RECIPES:
      raise ConfigError(f"--{prefix}augment must be one of {list(augment_lib.RECIPES)}, got {self.augment!r}")
    if self.backbone_weights not in ("", "imagenet") and not os.path.isfile(self.backbone_weights):
      # Checked before any data is read: the networks are built after it, minutes later on a real dataset.
      raise ConfigError(f"--{prefix}backbone_weights={self.backbone_weights}: no such file; expected '' (none), "
                        "'imagenet' (Keras downloads them once) or a local VGG16 weights file")
    if self.synth_backbone not in scene_synthesizer.BACKBONES:
      raise ConfigError(f"--{prefix}synth_backbone must be one of {scene_synthesizer.BACKBONES}, got "
                        f"{self.synth_backbone!r}")

  def ranges(self) -> compositor_lib.AffineRanges:
    """Where S (and Cut-Paste's random placement) may put an object: its centre anywhere 8 pixels inside the
    image, at min_scale..max_scale of the cut-out's size, turned and sheared moderately."""
    return compositor_lib.AffineRanges(max_rotation_deg=self.max_rotation_deg,
                                       max_translation_px=self.image_size / 2 - 8, max_shear=self.max_shear,
                                       min_scale=self.min_scale, max_scale=self.max_scale)


# The shared settings read from flags of their own name (seed and detector come from the launcher's).
_SCENE_FLAGS = tuple(field.name for field in dataclasses.fields(SceneSettings) if "flag" not in field.metadata)


def define_scene_flags(flag_values: flags.FlagValues, defaults: SceneSettings) -> None:
  """The shared flags, named with `defaults`' FLAG_PREFIX and defaulting to its values, and the registered
  detectors' flags."""
  prefix = defaults.FLAG_PREFIX
  for name, text in (
      ("image_size", "Side the real images are squashed to (SSD300: 300; Faster R-CNN: a multiple of 32)."),
      ("cutout_size", "Side the cut-outs are fitted to (their size at scale 1)."),
      ("max_objects", "Most objects S places per scene."),
      ("num_backgrounds", "Random crops of the background photos.")):
    flags.DEFINE_integer(prefix + name, getattr(defaults, name), text, lower_bound=1, flag_values=flag_values)
  for name, text in (
      ("min_box_area", "Boxes of fewer pixels (in the full-size image) are not scored: ignore boxes in T's "
       "real labels, crowd regions in evaluation (a detection there is neither a true nor a false positive)."),
      ("min_visible", "A pasted object with less than this share in view gets no box (an ignore box if any "
       "shows)."),
      ("background_artifact_fraction", "Share of S's backgrounds given a pasted background region (§3.1)."),
      ("min_scale", f"Smallest scale S may give an object (of --{prefix}cutout_size)."),
      ("max_scale", "Largest scale S may give an object."),
      ("max_rotation_deg", "Largest in-plane turn S may give an object."),
      ("max_shear", "Largest shear S may give an object.")):
    flags.DEFINE_float(prefix + name, getattr(defaults, name), text, lower_bound=0.0, flag_values=flag_values)
  flags.DEFINE_enum(prefix + "augment", defaults.augment, list(augment_lib.RECIPES), "T's training "
                    f"augmentation of its real images and added scenes: {augment_lib.RECIPES_HELP}.",
                    flag_values=flag_values)
  flags.DEFINE_enum(prefix + "synth_backbone", defaults.synth_backbone, scene_synthesizer.BACKBONES, "S's "
                    "backbone: compact (CPU) or vgg16 (A.2, A.3).", flag_values=flag_values)
  flags.DEFINE_string(prefix + "backbone_weights", defaults.backbone_weights, "VGG16 weights for S and SSD300: "
                      "'' none, 'imagenet' (downloads), or a local weights file.", flag_values=flag_values)
  target_registry.define_flags(flag_values)


def scene_settings_from_flags(f: flags.FlagValues, prefix: str) -> dict[str, Any]:
  """The shared settings' values from the flags of `prefix`, by field name (a SceneSettings subclass's
  keyword arguments)."""
  return {**{name: f[prefix + name].value for name in _SCENE_FLAGS}, "seed": f.seed,
          "detector": target_registry.settings_from_flags(f.target, f)}


class Split(Protocol):
  """Real or test images, squashed: uint8 [N, S, S, 3], and per image the boxes [n, 4] and classes [n]
  scored, and the ignore boxes with their classes (data/gmu.Split, data/coco.Scenes)."""
  images: np.ndarray
  boxes: list[np.ndarray]
  classes: list[np.ndarray]
  ignore_boxes: list[np.ndarray]
  ignore_classes: list[np.ndarray]


class SceneDetection(StoredCutoutDetection):
  """A detection task on real images with boxes (SceneSettings): a subclass sets `targets`, calls
  `_set_scene` and then `_set_data`, and says its default boxes for the SSDs (`default_boxes`)."""

  per_class_figures = True  # Each class's AP@0.5 too (<set>_ap50_<class>): a table per class.
  settings: SceneSettings
  splits: dict[str, Split]
  frame_aspect: float  # Width / height of the real images before they were squashed.

  def _set_scene(self, settings: SceneSettings, common: CommonSettings, class_names: list[str]) -> None:
    """Checks the target against the settings; sets the shapes, the compositing and the augmentation."""
    if common.target not in self.targets:
      raise ConfigError(f"--target must be one of {self.targets} for --task={self.name}, got {common.target!r}")
    if common.target == "ssd_vgg16" and settings.image_size != SSD_VGG16_SIZE:
      raise ConfigError(f"--target=ssd_vgg16 is SSD300: it needs --{settings.FLAG_PREFIX}image_size="
                        f"{SSD_VGG16_SIZE}, got {settings.image_size}")
    self.settings, self.common = settings, common
    size = settings.image_size
    self.image_shape = (size, size, 3)
    self.class_names = list(class_names)
    self.num_classes = len(self.class_names)
    self.cutout_shape = (settings.cutout_size, settings.cutout_size)
    self.max_objects, self.min_visible = settings.max_objects, settings.min_visible
    self.background_artifact_fraction = settings.background_artifact_fraction
    self._set_compositing(common.compositor.with_ranges(settings.ranges()), common.synthesizer.jit_compile)
    self.augmentation = augment_lib.RECIPES[settings.augment]

  @property
  def min_background_side(self) -> int:
    """The shortest side a background photo may have: half the image's."""
    return self.settings.image_size // 2

  def _background_photos(self, paths: list[str], source: str) -> photos.Photos:
    """The background photos at `paths` (photos.read_photos: `source` names where they came from, a flag and
    its folder, in its messages) of at least min_background_side."""
    return photos.read_photos(paths, source, min_side=self.min_background_side)

  def _set_data(self, splits: dict[str, Split], cutouts: cutouts_lib.Cutouts,
                background_photos: list[np.ndarray], frame_aspect: float) -> None:
    """T's real set (splits["train"]) and evaluation sets (every other split; "test" the headline's), and
    S's cut-outs (fitted to the cut-out size) and backgrounds (random square crops of `background_photos`,
    uint8), both squashed by `frame_aspect` as the real images are (module doc)."""
    settings = self.settings
    self.splits, self.frame_aspect = splits, frame_aspect
    self.cutouts = cutouts_lib.squash(cutouts.images, frame_aspect)
    self.cutout_classes = cutouts.classes
    rng = np.random.default_rng([settings.seed, 19])
    self.backgrounds = photos.random_crops(cutouts_lib.squash_photos(background_photos, frame_aspect),
                                           settings.num_backgrounds, settings.image_size, rng)
    self._set_artifact_masks(self.cutouts[..., -1], rng)
    train = splits["train"]
    # Every label has as many rows as the busiest real image (its boxes or its ignore boxes) or S's scenes,
    # whichever is more, so that real and cached examples batch together.
    self.label_slots = max(settings.max_objects, *(len(b) for b in (*train.boxes, *train.ignore_boxes)))
    self.real_images = train.images
    self.real_labels = self.padded_labels(train.boxes, train.classes, train.ignore_boxes)
    # Ignore boxes are not scored: crowd regions, where a detection is no false positive.
    self._evaluation_sets = {
        name: (split.images, [evaluation.ImageBoxes(boxes=b, classes=c, ignore_boxes=ib, ignore_classes=ic)
                              for b, c, ib, ic in zip(split.boxes, split.classes, split.ignore_boxes,
                                                      split.ignore_classes)])
        for name, split in splits.items() if name != "train"}
    self.test_images, self.test_truth = self._evaluation_sets["test"]

  def real_examples(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return self.real_images, self.real_labels

  def evaluation_sets(self) -> dict[str, tuple[np.ndarray, list[evaluation.ImageBoxes]]]:
    return self._evaluation_sets

  # ------------------------------------------------------------------------------------ networks
  def default_boxes(self, feature_sizes: tuple[int, ...]) -> boxes_lib.DefaultBoxSpec:
    """The SSDs' default boxes over feature maps of `feature_sizes`, fitted to the task's objects."""
    raise NotImplementedError

  def _backbone_weights(self) -> str | None:
    return self.settings.backbone_weights or None

  def build_target(self) -> DetectorTarget:
    if self.common.target in target_registry.names():
      return target_registry.build(self.common.target, self.settings.detector, self.image_shape,
                                   self.num_classes, f"{self.settings.FLAG_PREFIX}image_size")
    backbone, size = self.common.target.removeprefix("ssd_"), self.settings.image_size
    spec = self.default_boxes(ssd.feature_sizes(backbone, size))
    return SSDTarget.build(backbone, size, self.num_classes, spec, weights=self._backbone_weights())

  def build_synthesizer(self, seed: int | None) -> keras.Model:
    settings = self.common.synthesizer
    return scene_synthesizer.build_scene_synthesizer(
        (*self.cutout_shape, 3), self.image_shape, self.max_objects, self.settings.synth_backbone,
        settings.width, settings.dropout, settings.noise_dim, weights=self._backbone_weights(), seed=seed)
