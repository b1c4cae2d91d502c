"""The gmu task: instance detection of the 11 GMU Kitchen products (paper §4.3, A.3).

Real training images are the frames of the training scenes, the test set the frames of the test scenes
(data/gmu.py: the folds and why scenes, not frames, are split); S pastes BigBIRD views of the products
(BigBIRD's layout or a data/cutouts.py folder) on crops of a folder of background photos, with §3.1's
background regions in a share of them. Boxes under --gmu_min_box_area are not scored: ignore boxes in T's
real labels, crowd regions in evaluation. T trains with SSD's augmentation (--gmu_augment, A.2's pipeline):
~4,000 frames of six videos, consecutive ones near duplicates, are few views to fine-tune on without it. Not
screened (the data is not here): photo_digits' screen found it did not pay there, on short runs of synthetic
digit scenes.

Geometry: the 1920x1080 frames are squashed to the square T takes (as SSD resizes), so a product in them is
9/16 as wide, for its height, as in life. Every other image T sees is squashed the same way (tasks/scenes.py):
the product views and the background photos, so S's and Cut-Paste's composites show products and kitchens at
the real frames' aspect.

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

import numpy as np
from absl import flags

from terse_tf import boxes as boxes_lib
from terse_tf import evaluation
from terse_tf.data import gmu, photos
from terse_tf.errors import ConfigError, DataError
from terse_tf.targets import registry as target_registry
from terse_tf.tasks import registry
from terse_tf.tasks.base import CommonSettings
from terse_tf.tasks.scenes import (SSD_TARGETS, SceneDetection, SceneSettings, define_scene_flags,
                                   scene_settings_from_flags)


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
class GmuSettings(SceneSettings):
  """The scene settings (tasks/scenes.py; flags --gmu_<name>), GMU Kitchen's folders and its scene split."""
  FLAG_PREFIX = "gmu_"
  # The folder holding gmu_scene_001 ... gmu_scene_009.
  gmu_dir: str = dataclasses.field(default="", metadata={"flag": "gmu_dir"})
  objects_dir: str = ""
  backgrounds_dir: str = ""
  test_scenes: tuple[int, ...] = gmu.FOLD1_TEST_SCENES
  # Scenes held out of training to choose settings on (none by default: the published protocol has none).
  val_scenes: tuple[int, ...] = ()
  # Training scenes; () every scene not tested or validated on.
  train_scenes: tuple[int, ...] = ()
  frame_stride: int = 1
  view_stride: int = 6
  skip_objects: tuple[str, ...] = ()
  # Cut-Paste-Learn evaluates boxes of at least 50x30 (configs/gmu.flags).
  min_box_area: float = 1500.0

  def __post_init__(self):
    super().__post_init__()
    for name in ("frame_stride", "view_stride"):
      if getattr(self, name) < 1:
        raise ConfigError(f"--gmu_{name} must be >= 1, got {getattr(self, name)}")
    if not self.test_scenes:
      raise ConfigError("--gmu_test_scenes must name at least one scene")
    held_out = set(self.test_scenes) | set(self.val_scenes)
    if set(self.test_scenes) & set(self.val_scenes) or held_out & set(self.train_scenes):
      raise ConfigError(f"the GMU scenes must be disjoint: --gmu_train_scenes={list(self.train_scenes)}, "
                        f"--gmu_val_scenes={list(self.val_scenes)}, --gmu_test_scenes={list(self.test_scenes)}")
    if not self.training_scenes():
      raise ConfigError(f"no GMU scene is left to train on (test {list(self.test_scenes)}, validation "
                        f"{list(self.val_scenes)})")

  def training_scenes(self) -> tuple[int, ...]:
    held_out = set(self.test_scenes) | set(self.val_scenes)
    return self.train_scenes or tuple(s for s in range(1, gmu.NUM_SCENES + 1) if s not in held_out)


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
  define_scene_flags(flag_values, _DEFAULT)
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
      ("gmu_frame_stride", _DEFAULT.frame_stride, "Every n-th annotated frame of a scene is used."),
      ("gmu_view_stride", _DEFAULT.view_stride, "Every n-th turntable angle of each BigBIRD camera is pasted.")):
    flags.DEFINE_integer(name, default, text, lower_bound=1, flag_values=flag_values)


def settings_from_flags(f: flags.FlagValues) -> GmuSettings:
  return GmuSettings(
      **scene_settings_from_flags(f, GmuSettings.FLAG_PREFIX),
      gmu_dir=f.gmu_dir, objects_dir=f.gmu_objects_dir, backgrounds_dir=f.gmu_backgrounds_dir,
      test_scenes=_scene_list(",".join(f.gmu_test_scenes), "gmu_test_scenes"),
      val_scenes=_scene_list(",".join(f.gmu_val_scenes), "gmu_val_scenes"),
      train_scenes=_scene_list(",".join(f.gmu_train_scenes), "gmu_train_scenes"),
      frame_stride=f.gmu_frame_stride, view_stride=f.gmu_view_stride, skip_objects=tuple(f.gmu_skip_objects))


@registry.register("gmu", settings=GmuSettings, define_flags=define_flags,
                   settings_from_flags=settings_from_flags,
                   summary="GMU Kitchen instance detection of 11 products (§4.3, A.3; your copy of the data)")
class GmuTask(SceneDetection):
  # The paper's Faster R-CNN first (A.3), then the other registered detectors and the SSDs.
  targets = ("frcnn_resnet50_fpn", *(name for name in target_registry.names() if name != "frcnn_resnet50_fpn"),
             *SSD_TARGETS)

  def __init__(self, settings: GmuSettings, common: CommonSettings):
    self._set_scene(settings, common, list(gmu.CLASS_NAMES))
    for flag, folder in (("gmu_dir", settings.gmu_dir), ("gmu_objects_dir", settings.objects_dir),
                         ("gmu_backgrounds_dir", settings.backgrounds_dir)):
      if not folder:
        raise ConfigError(f"--task=gmu needs --{flag} (README \"GMU Kitchen\" says where the data comes from)")

    def load(scenes: tuple[int, ...]) -> gmu.Split:
      return gmu.load_split(settings.gmu_dir, scenes, settings.image_size, settings.frame_stride,
                            settings.skip_objects, settings.min_box_area)

    splits = {"train": load(settings.training_scenes()), "test": load(settings.test_scenes)}
    if settings.val_scenes:
      splits["val"] = load(settings.val_scenes)
    aspects = {name: split.frame_aspect for name, split in splits.items()}
    if len(set(aspects.values())) > 1:
      raise DataError(f"--gmu_dir={settings.gmu_dir}: the splits' frames differ in shape (width / height "
                      f"{aspects}); every frame must have one shape, which S's composites are squashed to")
    backgrounds = self._background_photos(photos.image_paths(settings.backgrounds_dir),
                                          f"--gmu_backgrounds_dir={settings.backgrounds_dir}")
    self._set_data(splits, gmu.load_objects(settings.objects_dir, self.cutout_shape, settings.view_stride),
                   backgrounds, aspects["train"])

  def describe(self) -> str:
    scenes = {name: ",".join(str(s) for s in np.unique(split.scenes)) for name, split in self.splits.items()}
    return (f"GMU Kitchen at {self.image_shape[0]} px, squashed from {self.frame_aspect:.2f}:1: " + ", ".join(
        f"{len(split.images)} {name} frames (scenes {scenes[name]})" for name, split in self.splits.items()) +
        f"; {len(self.cutouts)} product views at {self.cutout_shape[0]} px, up to {self.max_objects} per scene, "
        f"{len(self.backgrounds)} backgrounds")

  def identity(self) -> dict:
    return {"task": self.name, "gmu": dataclasses.asdict(self.settings), "target": self.common.target}

  def default_boxes(self, feature_sizes: tuple[int, ...]) -> boxes_lib.DefaultBoxSpec:
    # Products fill 1-25% of a kitchen frame's side and stand upright (bottles, boxes): small scales and tall
    # ratios as well as wide.
    return boxes_lib.DefaultBoxSpec(feature_sizes=feature_sizes, min_scale=0.05, max_scale=0.4,
                                    aspect_ratios=(1.0, 2.0, 0.5, 0.33))
