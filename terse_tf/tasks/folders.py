"""The folders task: TERSE on your own objects from the command line (README "Your own objects from the
command line"), no Python to write.

You bring folders: cut-outs of your objects (data/cutouts.py's layout: one sub-folder per class, RGBA PNGs or
an image with <name>.mask.png; the sub-folders are the classes), photos of backgrounds without your objects,
and real training and test images, each set a folder of images with a COCO instances JSON of their boxes
(data/coco.py; categories matched to the classes by name, crowd annotations are ignore boxes). Optionally a
validation set, scored as "val", to choose settings on without looking at the test set.

Everything else is the scene tasks' (tasks/scenes.py): the real images squashed to --folders_image_size, the
cut-outs and background photos squashed by the training images' median width / height so that objects keep
one aspect in every image T sees (an image of another aspect is squashed by its own, as SSD resizes), S
placing up to --folders_max_objects cut-outs a scene, T any registered detector (Faster R-CNN,
targets/registry.py) or an SSD: ssd_compact by default, which trains on a laptop's CPU; ssd_vgg16 (SSD300,
A.2's) or a Faster R-CNN for a GPU. Scored by COCO AP and each class's AP@0.5 (<set>_ap50_<class>).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import flags

from terse_tf import boxes as boxes_lib
from terse_tf.data import coco, photos
from terse_tf.data import cutouts as cutouts_lib
from terse_tf.errors import ConfigError
from terse_tf.targets import registry as target_registry
from terse_tf.tasks import registry
from terse_tf.tasks.base import CommonSettings
from terse_tf.tasks.scenes import (SSD_TARGETS, SceneDetection, SceneSettings, define_scene_flags,
                                   scene_settings_from_flags)

README_SECTION = 'README "Your own objects from the command line"'
# The sets of real images: (name, images folder field, annotations field); "val" is optional.
SETS = (("train", "real_images", "real_annotations"), ("test", "test_images", "test_annotations"),
        ("val", "val_images", "val_annotations"))


@dataclasses.dataclass(frozen=True)
class FoldersSettings(SceneSettings):
  """The scene settings (tasks/scenes.py; flags --folders_<name>) and your folders."""
  FLAG_PREFIX = "folders_"
  cutouts: str = ""               # data/cutouts.py's layout: one sub-folder of cut-outs per class.
  backgrounds: str = ""           # A folder of photos without your objects.
  real_images: str = ""           # T's real training set: a folder of images ...
  real_annotations: str = ""      # ... and the COCO instances JSON of their boxes.
  test_images: str = ""
  test_annotations: str = ""
  val_images: str = ""            # Optional: a validation set, scored as "val".
  val_annotations: str = ""
  # Categories of the JSON files that are no cut-out class, whose boxes are left out (any other is an error).
  skip_categories: tuple[str, ...] = ()
  # Objects an eighth to half the image's side (cut-outs of 64 px at 0.5-2x of 256): a photo of a few things.
  min_scale: float = 0.5
  max_scale: float = 2.0


_DEFAULT = FoldersSettings()


def define_flags(flag_values: flags.FlagValues) -> None:
  define_scene_flags(flag_values, _DEFAULT)
  for name, text in (
      ("cutouts", "Your objects: one sub-folder per class (its name the class's), each with RGBA PNGs or images "
       "with <name>.mask.png beside them (data/cutouts.py)."),
      ("backgrounds", "A folder of background photos without your objects, S and Cut-Paste paste on."),
      ("real_images", "T's real training images: a folder of images."),
      ("real_annotations", "The COCO instances JSON of --folders_real_images' boxes (categories named as the "
       "cut-out classes)."),
      ("test_images", "The test images, a folder."),
      ("test_annotations", "The COCO instances JSON of --folders_test_images."),
      ("val_images", "Optional: validation images, scored as 'val', to choose settings on."),
      ("val_annotations", "The COCO instances JSON of --folders_val_images.")):
    flags.DEFINE_string(f"folders_{name}", getattr(_DEFAULT, name), text, flag_values=flag_values)
  flags.DEFINE_list("folders_skip_categories", list(_DEFAULT.skip_categories), "Categories of the JSON files "
                    "that are no cut-out class; their boxes are left out (any other is an error).",
                    flag_values=flag_values)


def settings_from_flags(f: flags.FlagValues) -> FoldersSettings:
  return FoldersSettings(**scene_settings_from_flags(f, FoldersSettings.FLAG_PREFIX),
                         **{name: f[f"folders_{name}"].value for name in (
                             "cutouts", "backgrounds", "real_images", "real_annotations", "test_images",
                             "test_annotations", "val_images", "val_annotations")},
                         skip_categories=tuple(f.folders_skip_categories))


@registry.register("folders", settings=FoldersSettings, define_flags=define_flags,
                   settings_from_flags=settings_from_flags,
                   summary="your objects, backgrounds and COCO-annotated images, from folders")
class FoldersTask(SceneDetection):
  # A CPU's SSD first, then SSD300 and the registered detectors.
  targets = (*SSD_TARGETS, *target_registry.names())

  def __init__(self, settings: FoldersSettings, common: CommonSettings):
    required = ("cutouts", "backgrounds", "real_images", "real_annotations", "test_images", "test_annotations")
    missing = [f"--folders_{name}" for name in required if not getattr(settings, name)]
    if missing:
      raise ConfigError(f"--task=folders needs {', '.join(missing)} ({README_SECTION} says what each holds)")
    if bool(settings.val_images) != bool(settings.val_annotations):
      raise ConfigError("--folders_val_images and --folders_val_annotations go together: give both for a "
                        "validation set, or neither")
    size = (settings.cutout_size, settings.cutout_size)
    objects = cutouts_lib.load_cutouts(settings.cutouts, size, flag="--folders_cutouts")
    # A class without a cut-out would never be pasted, and S's cycles would run to their step cap waiting for it.
    empty = [name for index, name in enumerate(objects.class_names) if not np.any(objects.classes == index)]
    if empty:
      raise ConfigError(f"--folders_cutouts={settings.cutouts}: no usable cut-out of class {', '.join(empty)} "
                        "(each needs RGBA PNGs or images with <name>.mask.png; the log names what was skipped)")
    self._set_scene(settings, common, objects.class_names)
    splits = {name: coco.read_scenes(getattr(settings, images), getattr(settings, annotations), self.class_names,
                                     settings.image_size, settings.skip_categories, settings.min_box_area,
                                     "folders_skip_categories")
              for name, images, annotations in SETS if getattr(settings, images)}
    backgrounds = self._background_photos(photos.image_paths(settings.backgrounds),
                                          f"--folders_backgrounds={settings.backgrounds}")
    self._set_data(splits, objects, backgrounds, float(np.median(splits["train"].aspects)))

  def describe(self) -> str:
    sets = ", ".join(f"{len(split.images)} {name} images" for name, split in self.splits.items())
    return (f"your objects at {self.image_shape[0]} px, squashed from {self.frame_aspect:.2f}:1: "
            f"{len(self.cutouts)} cut-outs of {self.num_classes} classes ({', '.join(self.class_names)}) at "
            f"{self.cutout_shape[0]} px, up to {self.max_objects} per scene, {len(self.backgrounds)} "
            f"backgrounds; {sets}")

  def identity(self) -> dict:
    return {"task": self.name, "folders": dataclasses.asdict(self.settings), "class_names": self.class_names,
            "target": self.common.target}

  def default_boxes(self, feature_sizes: tuple[int, ...]) -> boxes_lib.DefaultBoxSpec:
    # Scaled as the objects S pastes (cutout_size x min_scale..max_scale, a share of the image's side): with
    # the ranges set to your scenes' objects, the default boxes follow them.
    settings = self.settings
    low, high = (np.clip(settings.cutout_size * scale / settings.image_size, 0.04, 0.95)
                 for scale in (settings.min_scale, settings.max_scale))
    return boxes_lib.DefaultBoxSpec(feature_sizes=feature_sizes, min_scale=float(low), max_scale=float(high),
                                    aspect_ratios=(1.0, 2.0, 0.5, 3.0, 0.33))
