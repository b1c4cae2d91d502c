"""The folders task: built from a folder tree the tests write in the formats a user brings (cut-outs as RGBA
PNGs and as image + .mask.png, background photos, real / test / validation images with COCO JSON), the
errors bad flags and folders get, the flagfiles, and a run of the real command line that trains, exports and
serves its T under saved_model_cli."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT, run_cli, smoke_config
from terse_tf import config as config_lib
from terse_tf import export
from terse_tf.errors import ConfigError, DataError
from terse_tf.tasks import folders
from terse_tf.tasks.base import CommonSettings
from test_coco import write_coco, write_image
from test_export import saved_model_cli_run

FOLDERS_SMOKE_FLAGFILE = os.path.join(REPO_ROOT, "configs", "folders_smoke.flags")
IMAGE_H, IMAGE_W = 48, 96  # The real images are 2:1.
COLOURS = {"bottle": (40, 200, 60), "mug": (220, 60, 40)}


def write_cutouts(root):
  """Two classes in data/cutouts.py's two forms: mugs as RGBA PNGs, bottles as JPEGs with .mask.png."""
  for index in range(2):
    mug = np.zeros((20, 20, 4), np.uint8)
    mug[..., :3], mug[..., 3] = COLOURS["mug"], 255
    write_image(os.path.join(root, "mug", f"mug_{index}.png"), mug)
    bottle = np.full((24, 12, 3), COLOURS["bottle"], np.uint8)
    os.makedirs(os.path.join(root, "bottle"), exist_ok=True)
    with open(os.path.join(root, "bottle", f"bottle_{index}.jpg"), "wb") as f:
      f.write(tf.io.encode_jpeg(bottle, quality=95).numpy())
    write_image(os.path.join(root, "bottle", f"bottle_{index}.mask.png"), np.full((24, 12, 1), 255, np.uint8))
  return root


def write_scenes(folder, count, seed):
  """`count` 2:1 images, each with a mug and a bottle where its COCO JSON says, and a crowd of mugs in the
  first; categories numbered unlike the classes (they match by name)."""
  rng = np.random.default_rng(seed)
  images, annotations = {}, []
  for index in range(count):
    image = rng.integers(0, 60, (IMAGE_H, IMAGE_W, 3), dtype=np.uint8)
    for category, name, (x, y, w, h) in ((7, "mug", (8 + 4 * index, 8, 24, 24)), (3, "bottle", (60, 4, 16, 32))):
      image[y:y + h, x:x + w] = COLOURS[name]
      annotations.append((index + 1, category, [x, y, w, h], 0))
    images[f"scene_{index}.png"] = image
  annotations.append((1, 7, [40, 36, 12, 10], 1))
  return write_coco(folder, images, annotations)


def write_tree(root):
  """A user's folders; returns them as FoldersSettings' keyword arguments."""
  rng = np.random.default_rng(1)
  for index in range(3):
    write_image(os.path.join(root, "backgrounds", f"room_{index}.jpg"),
                rng.integers(0, 255, (60, 90, 3), dtype=np.uint8))
  paths = {"cutouts": write_cutouts(os.path.join(root, "cutouts")),
           "backgrounds": os.path.join(root, "backgrounds")}
  for name, count, seed in (("real", 6, 2), ("test", 3, 3), ("val", 2, 4)):
    paths[f"{name}_images"] = os.path.join(root, name)
    paths[f"{name}_annotations"] = write_scenes(os.path.join(root, name), count, seed)
  return paths


def test_the_folders_task_builds_from_a_folder_tree(tmp_path):
  settings = folders.FoldersSettings(**write_tree(str(tmp_path)), image_size=64, cutout_size=16,
                                     num_backgrounds=8)
  task = folders.FoldersTask(settings, CommonSettings(target="ssd_compact"))
  assert task.class_names == ["bottle", "mug"]  # The cut-out folders, sorted.
  assert len(task.real_images) == 6 and task.real_images.shape[1:] == (64, 64, 3)
  assert set(task.evaluation_sets()) == {"test", "val"} and len(task.test_images) == 3
  # A mug and a bottle per image, normalised in the 96x48 image; the first image's crowd is an ignore box.
  assert task.real_labels["count"].tolist() == [2] * 6 and task.label_slots == 4
  np.testing.assert_allclose(task.real_labels["boxes"][0, :2], [[8 / 48, 8 / 96, 32 / 48, 32 / 96],
                                                               [4 / 48, 60 / 96, 36 / 48, 76 / 96]], atol=1e-6)
  assert task.real_labels["classes"][0, :2].tolist() == [1, 0]
  np.testing.assert_allclose(task.real_labels["ignore_boxes"][0, 0], [36 / 48, 40 / 96, 46 / 48, 52 / 96])
  assert not task.real_labels["ignore_boxes"][1].any()
  truth = task.test_truth[0]
  assert truth.classes.tolist() == [1, 0] and truth.ignore_classes.tolist() == [1]
  # The real images are 2:1, squashed to a square: the cut-outs are narrowed the same way, so a square mug
  # (fitted to 16 px) is 8 px wide, as a square mug in a real image is once squashed.
  assert task.frame_aspect == 2.0
  mug = task.cutouts[task.cutout_classes == 1][0, ..., 3]
  assert np.flatnonzero(mug[8] > 0.5).tolist() == list(range(4, 12)) and np.all(mug[:, 8] > 0.5)
  assert task.cutouts.shape == (4, 16, 16, 4) and task.backgrounds.shape == (8, 64, 64, 3)
  batch = next(iter(task.synth_dataset(2, 0, tf.distribute.InputContext())))
  assert batch["foreground"].shape == (2, 4, 16, 16, 4)
  spec = task.default_boxes((16, 8))  # Objects of 16 x 0.5..2 px in 64: an eighth to a half of the side.
  assert (spec.min_scale, spec.max_scale) == (0.125, 0.5)


def test_missing_flags_and_bad_folders_are_one_error_naming_them(tmp_path):
  common = CommonSettings(target="ssd_compact")
  with pytest.raises(ConfigError, match=r"--task=folders needs --folders_cutouts, --folders_backgrounds, "
                                        r"--folders_real_images, .*--folders_test_annotations \(README "
                                        r"\"Your own objects from the command line\""):
    folders.FoldersTask(folders.FoldersSettings(), common)
  paths = write_tree(str(tmp_path))
  small = {"image_size": 64, "cutout_size": 16, "num_backgrounds": 4}
  with pytest.raises(ConfigError, match=r"--folders_val_images and --folders_val_annotations go together"):
    folders.FoldersTask(folders.FoldersSettings(**{**paths, "val_annotations": ""}, **small), common)
  with pytest.raises(ConfigError, match=r"--target=ssd_vgg16 is SSD300: it needs --folders_image_size=300"):
    folders.FoldersTask(folders.FoldersSettings(**paths, **small), CommonSettings(target="ssd_vgg16"))
  with pytest.raises(ConfigError, match=r"--folders_augment must be one of \['photometric', 'ssd', 'none'\]"):
    folders.FoldersSettings(augment="flip")
  with pytest.raises(ConfigError, match=r"--folders_cutout_size must be between 8 and --folders_image_size"):
    folders.FoldersSettings(image_size=64, cutout_size=65)
  # A JSON category that is no cut-out class: both lists, and the flag that leaves it out.
  write_scenes(paths["test_images"], 1, 0)
  with open(paths["test_annotations"]) as f:
    dataset = json.load(f)
  dataset["categories"][0]["name"] = "cup"
  with open(paths["test_annotations"], "w") as f:
    json.dump(dataset, f)
  with pytest.raises(ConfigError, match=r"category 'cup' \(id 7\) is not one of the cut-out classes "
                                        r"\['bottle', 'mug'\].*--folders_skip_categories"):
    folders.FoldersTask(folders.FoldersSettings(**paths, **small), common)
  # Cut-outs without alpha or masks: data/cutouts.py's error, naming the flag.
  for name in os.listdir(os.path.join(paths["cutouts"], "bottle")):
    if name.endswith(".mask.png"):
      os.unlink(os.path.join(paths["cutouts"], "bottle", name))
  # One class left without a usable cut-out while another has them: it would never be pasted.
  with pytest.raises(ConfigError, match=r"--folders_cutouts=.*: no usable cut-out of class bottle \(each needs"):
    folders.FoldersTask(folders.FoldersSettings(**paths, **small), common)
  unmasked = {**paths, "cutouts": str(tmp_path / "only_bottles")}
  os.renames(os.path.join(paths["cutouts"], "bottle"), os.path.join(unmasked["cutouts"], "bottle"))
  with pytest.raises(DataError, match=r"--folders_cutouts=.*only_bottles: no usable cut-out"):
    folders.FoldersTask(folders.FoldersSettings(**unmasked, **small), common)


def test_the_flagfiles_parse_and_each_setting_is_named_by_its_flag():
  config = smoke_config("unused", os.path.join(REPO_ROOT, "configs", "folders.flags"))
  settings = config.task_settings
  assert config.task == "folders" and config.target == "ssd_compact" and not config.discriminator
  assert settings.cutouts == "MY_CUTOUTS" and settings.skip_categories == () and settings.augment == "ssd"
  assert settings.image_size % 32 == 0  # The compact SSD's feature maps halve five times.
  flags = config_lib.setting_flags(config)
  assert flags["task_settings.image_size"] == "folders_image_size"
  assert flags["task_settings.real_annotations"] == "folders_real_annotations"
  assert flags["task_settings.seed"] == "seed" and flags["target"] == "target"
  gmu_flags = config_lib.setting_flags(smoke_config("unused", os.path.join(REPO_ROOT, "configs", "gmu.flags")))
  assert gmu_flags["task_settings.image_size"] == "gmu_image_size"
  assert gmu_flags["task_settings.gmu_dir"] == "gmu_dir"
  assert gmu_flags["task_settings.objects_dir"] == "gmu_objects_dir"
  assert smoke_config("unused", FOLDERS_SMOKE_FLAGFILE).task_settings.image_size == 64


@pytest.mark.slow  # ~50 s: the smoke flagfile's whole loop in a subprocess, and saved_model_cli.
def test_the_command_line_trains_on_your_folders_exports_and_its_t_serves(tmp_path):
  paths = write_tree(str(tmp_path / "data"))
  run_dir = tmp_path / "run"
  run_cli(f"--flagfile={FOLDERS_SMOKE_FLAGFILE}", f"--run_dir={run_dir}",
          *(f"--folders_{name}={path}" for name, path in paths.items()), timeout=600)
  with open(run_dir / "results.json") as f:
    results = json.load(f)
  assert results["cycles_completed"] == 1 and results["hard_examples"] > 0
  for figure in ("test_ap50_after", "val_ap50_after", "test_ap50_mug_after", "test_ap50_bottle_after"):
    assert 0 <= results[figure] <= 1, figure
  images = np.random.default_rng(0).uniform(size=(2, 64, 64, 3)).astype(np.float32)
  served = saved_model_cli_run(str(run_dir / "export" / export.TARGET_DIR / "1"), export.SERVING_DEFAULT,
                               {"images": images}, str(tmp_path / "served"))
  assert served["boxes"].shape == (2, 100, 4) and served["num_detections"].shape == (2,)
  assert set(np.unique(served["classes"])) <= {0, 1}  # The two classes, bottle and mug.
