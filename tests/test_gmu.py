"""GMU Kitchen: the scene and BigBIRD readers on fixtures written in the datasets' on-disk formats, the errors
a bad folder gets, the per-class table of runs' results, and the gmu task built from fixture folders and
trained a few steps."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT, smoke_config
from terse_tf import augment as augment_lib
from terse_tf import evaluation
from terse_tf import trainer as trainer_lib
from terse_tf.data import cutouts, gmu
from terse_tf.errors import ConfigError, DataError
from terse_tf.tasks import gmu as gmu_task
from terse_tf.tasks.base import CommonSettings

GMU_SMOKE_FLAGFILE = os.path.join(REPO_ROOT, "configs", "gmu_smoke.flags")
FRAME_W, FRAME_H = 96, 54  # The 1920x1080 frames' shape, small.


def write_png(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(tf.io.encode_png(image).numpy())


def voc_xml(filename, objects, width=FRAME_W, height=FRAME_H):
  """A GMU annotation as the dataset has it: PASCAL VOC, boxes in 1-based inclusive pixels."""
  entries = "".join(
      f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
      f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
      for name, (x0, y0, x1, y1) in objects)
  return (f"<annotation><folder>gmu_scene</folder><filename>{filename}</filename><size><width>{width}</width>"
          f"<height>{height}</height><depth>3</depth></size>{entries}</annotation>")


def write_scene(root, scene, frames, rng):
  """frames: {frame number: [(class name, (xmin, ymin, xmax, ymax)), ...]}; each object a flat colour patch
  on noise, where its box says."""
  folder = os.path.join(root, gmu.scene_folder(scene))
  for number, objects in frames.items():
    image = rng.integers(0, 80, size=(FRAME_H, FRAME_W, 3), dtype=np.uint8)
    for name, (x0, y0, x1, y1) in objects:
      image[y0 - 1:y1, x0 - 1:x1] = np.array([40, 90, 140]) + 10 * (
          gmu.CLASS_NAMES.index(name) if name in gmu.CLASS_NAMES else 11)
    write_png(os.path.join(folder, gmu.IMAGES, f"rgb_{number}.png"), image)
    os.makedirs(os.path.join(folder, gmu.ANNOTATIONS), exist_ok=True)
    with open(os.path.join(folder, gmu.ANNOTATIONS, f"rgb_{number}.xml"), "w") as f:
      f.write(voc_xml(f"rgb_{number}.png", objects))


def write_gmu(root, scenes=range(1, gmu.NUM_SCENES + 1), seed=0):
  """Nine scenes of three frames, each frame with two of the products."""
  rng = np.random.default_rng(seed)
  for scene in scenes:
    frames = {}
    for number in (1, 2, 10):
      first, second = rng.choice(len(gmu.CLASS_NAMES), 2, replace=False)
      frames[number] = [(gmu.CLASS_NAMES[first], (5, 4, 30, 40)), (gmu.CLASS_NAMES[second], (50, 10, 90, 50))]
    write_scene(root, scene, frames, rng)
  return root


def write_pbm_p4(path, bits):
  """A binary PBM (P4), with a comment line, as BigBIRD's masks are written."""
  height, width = bits.shape
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(f"P4\n# made by a test\n{width} {height}\n".encode())
    f.write(np.packbits(bits.astype(np.uint8), axis=1).tobytes())


def write_bigbird(root, names=gmu.CLASS_NAMES, angles=(0, 3, 6), inverted=()):
  """BigBIRD's layout: <name>/NP<camera>_<angle>.jpg and <name>/masks/NP<camera>_<angle>_mask.pbm, the object a
  centred rectangle, black (bit 1) in the mask, or white for the `inverted` objects."""
  for class_id, name in enumerate(names):
    for camera in (1, 3):
      for angle in angles:
        image = np.full((40, 36, 3), 250, np.uint8)
        image[10:30, 12:24] = [20 + 20 * class_id, 100, 200 - 10 * class_id]
        stem = f"NP{camera}_{angle}"
        os.makedirs(os.path.join(root, name), exist_ok=True)
        with open(os.path.join(root, name, stem + ".jpg"), "wb") as f:
          f.write(tf.io.encode_jpeg(image, quality=95).numpy())
        bits = np.zeros((40, 36), bool)
        bits[10:30, 12:24] = True
        mask_path = os.path.join(root, name, gmu.MASKS, stem + "_mask.pbm")
        write_pbm_p4(mask_path, ~bits if name in inverted else bits)
  return root


def write_backgrounds(folder, count=4):
  rng = np.random.default_rng(1)
  for index in range(count):
    write_png(os.path.join(folder, f"kitchen_{index}.png"), rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
  return folder


# ------------------------------------------------------------------------------------ scenes
def test_a_scene_parses_into_normalised_boxes_classes_and_frames_in_frame_order(tmp_path):
  rng = np.random.default_rng(0)
  write_scene(tmp_path, 3, {
      10: [("red_bull", (1, 1, 48, 27))],
      9: [("hunts_sauce", (49, 28, 96, 54)), ("pop_secret_light_butter", (10, 5, 19, 14))]}, rng)
  frames = gmu.read_scene(str(tmp_path), 3)
  assert [os.path.basename(f.image_path) for f in frames] == ["rgb_9.png", "rgb_10.png"]  # 9 before 10.
  # 1-based inclusive pixels: (49, 28)..(96, 54) is the bottom-right quarter, (1, 1)..(48, 27) the top-left.
  np.testing.assert_allclose(frames[0].boxes, [[27 / 54, 48 / 96, 1, 1], [4 / 54, 9 / 96, 14 / 54, 19 / 96]])
  assert [gmu.CLASS_NAMES[c] for c in frames[0].classes] == ["hunts_sauce", "pop_secret_light_butter"]
  np.testing.assert_allclose(frames[1].boxes, [[0, 0, 0.5, 0.5]])
  assert (frames[1].height, frames[1].width) == (FRAME_H, FRAME_W)

  split = gmu.load_split(str(tmp_path), (3,), image_size=32)
  assert split.images.shape == (2, 32, 32, 3) and split.images.dtype == np.uint8
  assert split.scenes.tolist() == [3, 3]
  # The product's patch lands where its normalised box says in the squashed frame.
  patch = split.images[1, 2:14, 2:14].astype(float).mean(axis=(0, 1))
  np.testing.assert_allclose(patch, np.array([40, 90, 140]) + 10 * gmu.CLASS_NAMES.index("red_bull"), atol=4)
  # Boxes under the area floor (in full-frame pixels) are not scored but ignored: the 10x10 one of frame 9.
  small = gmu.load_split(str(tmp_path), (3,), image_size=32, min_box_area=101)
  assert [len(b) for b in small.boxes] == [1, 1] and [len(b) for b in small.ignore_boxes] == [1, 0]
  np.testing.assert_allclose(small.ignore_boxes[0], frames[0].boxes[1:])
  assert small.ignore_classes[0].tolist() == [gmu.CLASS_NAMES.index("pop_secret_light_butter")]


def test_an_object_outside_the_11_products_is_an_error_unless_skipped(tmp_path):
  write_scene(tmp_path, 1, {1: [("red_bull", (1, 1, 9, 9)), ("paper_plate", (20, 20, 30, 30))]},
              np.random.default_rng(0))
  with pytest.raises(DataError, match=r"rgb_1\.xml: unknown object 'paper_plate'.*--gmu_skip_objects"):
    gmu.read_scene(str(tmp_path), 1)
  (frame,) = gmu.read_scene(str(tmp_path), 1, skip_names=("paper_plate",))
  assert frame.classes.tolist() == [gmu.CLASS_NAMES.index("red_bull")]


def test_a_bad_gmu_folder_gets_one_error_naming_what_is_missing(tmp_path):
  root = write_gmu(tmp_path / "gmu", scenes=(1, 2))
  with pytest.raises(DataError, match=r"no scene folder gmu_scene_003/"):
    gmu.read_scene(str(root), 3)
  scene = root / gmu.scene_folder(1)
  os.rename(scene / "Images", scene / "images_elsewhere")
  with pytest.raises(DataError, match=r"gmu_scene_001: missing Images/;"):
    gmu.read_scene(str(root), 1)
  os.rename(scene / "Annotations", scene / "annotations_elsewhere")
  with pytest.raises(DataError, match=r"gmu_scene_001: missing Images/ and Annotations/;"):
    gmu.read_scene(str(root), 1)
  scene = root / gmu.scene_folder(2)
  for path in (scene / "Annotations").iterdir():
    path.unlink()
  with pytest.raises(DataError, match=r"gmu_scene_002/Annotations: no annotation \(\.xml\) files"):
    gmu.read_scene(str(root), 2)
  write_scene(tmp_path / "gmu", 2, {1: [("red_bull", (1, 1, 9, 9))]}, np.random.default_rng(0))
  (scene / "Images" / "rgb_1.png").unlink()
  with pytest.raises(DataError, match=r"rgb_1\.xml: its frame .*gmu_scene_002/Images/rgb_1\.png is missing"):
    gmu.read_scene(str(root), 2)
  (scene / "Annotations" / "rgb_1.xml").write_text("<annotation><filename>rgb_1.png")
  with pytest.raises(DataError, match=r"rgb_1\.xml: cannot parse this annotation"):
    gmu.read_scene(str(root), 2)
  (scene / "Annotations" / "rgb_1.xml").write_text(voc_xml("rgb_1.png", [("red_bull", (1, 1, 97, 9))]))
  write_png(str(scene / "Images" / "rgb_1.png"), np.zeros((FRAME_H, FRAME_W, 3), np.uint8))
  with pytest.raises(DataError, match=r"box of red_bull \(1, 1, 97, 9\) is not inside the 96x54 frame"):
    gmu.read_scene(str(root), 2)


def test_a_size_or_coordinate_that_is_no_number_is_an_error_naming_the_file(tmp_path):
  write_scene(tmp_path, 1, {1: [("red_bull", (1, 1, 9, 9))]}, np.random.default_rng(0))
  path = tmp_path / gmu.scene_folder(1) / gmu.ANNOTATIONS / "rgb_1.xml"
  good = path.read_text()
  for bad, message in ((good.replace("<width>96<", "<width>96px<"), r"<size/width> is '96px', not an integer"),
                       (good.replace("<ymax>9<", "<ymax>9,5<"), r"<bndbox/ymax> is '9,5', not a number")):
    path.write_text(bad)
    with pytest.raises(DataError, match=r"rgb_1\.xml: " + message):
      gmu.read_scene(str(tmp_path), 1)


# ------------------------------------------------------------------------------------ objects
def test_pbm_masks_read_in_binary_and_text_form(tmp_path):
  bits = np.random.default_rng(0).random((5, 11)) > 0.5  # 11 columns: each row padded to 2 bytes in P4.
  write_pbm_p4(str(tmp_path / "p4.pbm"), bits)
  (tmp_path / "p1.pbm").write_bytes(b"P1\n11 5\n" + b"\n".join(b" ".join(b"1" if v else b"0" for v in row)
                                                               for row in bits))
  for name in ("p4.pbm", "p1.pbm"):
    np.testing.assert_array_equal(gmu.read_pbm(str(tmp_path / name)), bits)
  (tmp_path / "p4.pbm").write_bytes(b"P4\n11 5\n\x00")
  with pytest.raises(DataError, match=r"p4\.pbm: truncated P4 bitmap"):
    gmu.read_pbm(str(tmp_path / "p4.pbm"))
  (tmp_path / "p4.pbm").write_bytes(b"P4\n11 5x\n\x00")
  with pytest.raises(DataError, match=r"p4\.pbm: PBM header's size is '11' x '5x', not two whole numbers"):
    gmu.read_pbm(str(tmp_path / "p4.pbm"))


def test_bigbird_views_parse_into_cutouts_of_the_11_products(tmp_path):
  root = write_bigbird(tmp_path / "bigbird", inverted=("red_bull",))
  os.makedirs(tmp_path / "bigbird" / "paper_plate")  # BigBIRD's other objects are left alone.
  objects = gmu.load_objects(str(root), (16, 16))
  assert objects.class_names == list(gmu.CLASS_NAMES)
  assert np.bincount(objects.classes).tolist() == [6] * 11  # 2 cameras x 3 angles per product.
  # Cropped to the mask's 20x12 box and fitted: the object fills the height, transparent padding beside it.
  alpha = objects.images[..., 3]
  assert alpha.shape == (66, 16, 16) and np.all(alpha[:, :, 6:10] > 0.9) and np.all(alpha[:, :, :2] < 0.1)
  # The white-on-black mask (red_bull) is read the same way round: the border is background.
  red_bull = objects.images[objects.classes == gmu.CLASS_NAMES.index("red_bull")]
  np.testing.assert_allclose(red_bull[..., 3], alpha[objects.classes == 0], atol=1e-6)
  np.testing.assert_allclose(red_bull[:, 8, 8, :3], [[220 / 255, 100 / 255, 100 / 255]] * 6, atol=0.05)
  assert len(gmu.load_objects(str(root), (16, 16), view_stride=2).images) == 11 * 2 * 2  # Angles 0 and 6.


def test_a_product_folder_or_mask_missing_is_an_error_naming_it(tmp_path):
  root = write_bigbird(tmp_path / "bigbird", names=gmu.CLASS_NAMES[:-1])
  with pytest.raises(DataError, match=r"no folder for red_bull; expected one folder per GMU product"):
    gmu.load_objects(str(root), (16, 16))
  write_bigbird(root, names=("red_bull",))
  os.unlink(root / "red_bull" / "masks" / "NP1_3_mask.pbm")
  with pytest.raises(DataError, match=r"red_bull/NP1_3\.jpg: no mask .*NP1_3_mask\.pbm"):
    gmu.load_objects(str(root), (16, 16))


def test_a_cutout_folder_of_the_11_products_works_as_well(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(11, 12, 12, 4)).astype(np.float32)
  images[..., 3] = 1.0
  # Written in reverse class order: the product names, not the folder order, give the class ids.
  cutouts.write_cutouts(images, np.arange(11), list(gmu.CLASS_NAMES[::-1]), str(tmp_path / "cutouts"))
  objects = gmu.load_objects(str(tmp_path / "cutouts"), (12, 12))
  assert objects.class_names == list(gmu.CLASS_NAMES)
  np.testing.assert_allclose(objects.images[objects.classes == 10][0, ..., :3], images[0, ..., :3], atol=1 / 255)


# ------------------------------------------------------------------------------------ the GMU table
def test_the_gmu_table_of_three_runs_results():
  def results(scale):
    figures = {f"test_ap50_{name}_{when}": scale * (k + 1) / 20 for k, name in enumerate(gmu.CLASS_NAMES)
               for when in ("before", "after")}
    return {**figures, "test_ap50_before": scale * 0.3, "test_ap50_after": scale * 0.3}
  table = gmu_task.per_class_markdown({"real only": gmu_task.per_class_row(results(1.0)),
                                       "Cut-Paste": gmu_task.per_class_row(results(1.0)),
                                       "TERSE": gmu_task.per_class_row(results(2.0))})
  lines = table.splitlines()
  assert lines[0] == "| | " + " | ".join(gmu.SHORT_NAMES) + " | mAP |"
  assert lines[2].startswith("| real only | 5.0 | 10.0 |") and lines[2].endswith("| 55.0 | 30.0 |")
  assert lines[4].startswith("| TERSE | 10.0 |") and lines[4].endswith("| 60.0 |")


def test_a_row_of_results_without_its_figures_is_one_error_naming_what_is_wrong():
  figures = {f"test_ap50_{name}_{when}": 0.5 for name in gmu.CLASS_NAMES for when in ("before", "after")}
  results = {"task": "gmu", **figures, "test_ap50_before": 0.5, "test_ap50_after": 0.5, "cycles_completed": 4}
  assert gmu_task.per_class_row(results)["mAP"] == 0.5
  with pytest.raises(ValueError, match=r"--task=photo_digits have no test_ap50_coca_cola_glass_bottle_after"):
    gmu_task.per_class_row({"task": "photo_digits", "test_ap50_after": 0.4})
  with pytest.raises(ValueError, match=r"no val_ap50_coca_cola_glass_bottle_after.*scores the 'val' frames"):
    gmu_task.per_class_row(results, set_name="val")
  stopped = {**results, **{key: None for key in results if key.endswith("_after")}, "cycles_completed": 0}
  with pytest.raises(ValueError, match=r"no figures after its last cycle .*cycles_completed 0\): it stopped"):
    gmu_task.per_class_row(stopped)


def test_an_arms_rows_of_the_folds_average_over_the_folds_with_the_product():
  # A product without a box in a fold (-1) is left out of that product's mean, not averaged in.
  folds = [{"red_bull": 0.5, "hunts_sauce": -1.0, "mAP": 0.4}, {"red_bull": 0.7, "hunts_sauce": 0.3, "mAP": 0.6},
           {"red_bull": 0.6, "hunts_sauce": -1.0, "mAP": 0.5}]
  assert evaluation.mean_row(folds) == pytest.approx({"red_bull": 0.6, "hunts_sauce": 0.3, "mAP": 0.5})
  assert evaluation.mean_row([{"a": -1.0}, {"a": -1.0}]) == {"a": -1.0}  # In no fold: stays undefined.
  with pytest.raises(ValueError, match=r"mean_row needs rows with the same keys"):
    evaluation.mean_row([{"a": 0.1}, {"b": 0.1}])


# ------------------------------------------------------------------------------------ the task
def test_the_flagfile_is_a3s_protocol_and_the_scene_settings_are_checked():
  config = smoke_config("unused", os.path.join(REPO_ROOT, "configs", "gmu.flags"))
  settings = config.task_settings
  assert config.task == "gmu" and not config.discriminator and config.compositor.mask_cleanup  # A.3, A.2.
  assert settings.synth_backbone == "vgg16" and settings.test_scenes == gmu.FOLD1_TEST_SCENES
  assert settings.augment == "ssd"  # A.2's pipeline trains T with SSD's augmentation.
  # A.3's T: Faster R-CNN, Model Garden's ResNet-50 FPN, on frames whose side the FPN takes (a multiple of 32).
  assert config.target == "frcnn_resnet50_fpn" and settings.detector is not None
  assert settings.image_size % 32 == 0
  # Equal instances per arm, and a generation pass that reaches them with a quarter of its scenes hard
  # (2.5 products a scene: 1 to 4, uniform).
  assert config.quota_unit == "instances" and settings.max_objects == 4
  placed = config.generation_batches * config.synth_batch_size * 2.5
  assert 0.25 * placed >= config.hard_per_class[0] * len(gmu.CLASS_NAMES) * 1.25
  with pytest.raises(ConfigError, match=r"--gmu_augment must be one of \['photometric', 'ssd', 'none'\]"):
    gmu_task.GmuSettings(augment="flip")
  assert settings.training_scenes() == (1, 3, 6, 7, 8, 9)  # Six scenes train, three test, none is shared.
  with pytest.raises(ConfigError, match=r"--gmu_test_scenes must be comma-separated .* got '2,x'"):
    gmu_task._scene_list("2,x", "gmu_test_scenes")
  with pytest.raises(ConfigError, match=r"--gmu_val_scenes must be distinct scene numbers 1..9, got '10'"):
    gmu_task._scene_list("10", "gmu_val_scenes")
  with pytest.raises(ConfigError, match=r"the GMU scenes must be disjoint"):
    gmu_task.GmuSettings(test_scenes=(2, 4), val_scenes=(4,))
  with pytest.raises(ConfigError, match=r"--task=gmu needs --gmu_dir"):
    gmu_task.GmuTask(gmu_task.GmuSettings(), CommonSettings(target="ssd_compact"))


def fixture_folders(root):
  return {"gmu_dir": str(write_gmu(root / "gmu")), "objects_dir": str(write_bigbird(root / "bigbird")),
          "backgrounds_dir": str(write_backgrounds(root / "backgrounds"))}


def test_the_gmu_task_builds_from_fixture_folders(tmp_path):
  settings = gmu_task.GmuSettings(**fixture_folders(tmp_path), image_size=64, cutout_size=16,
                                  num_backgrounds=8, min_box_area=0, view_stride=2, val_scenes=(9,))
  task = gmu_task.GmuTask(settings, CommonSettings(target="ssd_compact"))
  # Fold 1: scenes 2, 4, 5 tested, 9 validates, the five others train; three frames a scene.
  assert len(task.real_images) == 5 * 3 and len(task.test_images) == 3 * 3
  assert set(task.evaluation_sets()) == {"test", "val"} and task.splits["val"].scenes.tolist() == [9, 9, 9]
  assert task.real_labels["count"].tolist() == [2] * 15 and task.class_names == list(gmu.CLASS_NAMES)
  # As many label rows as S places objects (4), the frames' two boxes first and zero rows after them.
  expected = [[3 / 54, 4 / 96, 40 / 54, 30 / 96], [9 / 54, 49 / 96, 50 / 54, 90 / 96], [0] * 4, [0] * 4]
  np.testing.assert_allclose(task.real_labels["boxes"][0], expected, atol=1e-6)
  assert task.cutouts.shape == (11 * 2 * 2, 16, 16, 4) and task.backgrounds.shape == (8, 64, 64, 3)
  batch = next(iter(task.synth_dataset(4, 0, tf.distribute.InputContext())))
  assert batch["foreground"].shape == (4, 4, 16, 16, 4)


@pytest.mark.slow  # Model Garden's import and a Faster R-CNN build: ~20 s.
def test_the_gmu_task_builds_a_faster_rcnn_for_its_products(tmp_path):
  settings = gmu_task.GmuSettings(**fixture_folders(tmp_path), image_size=64, cutout_size=16,
                                  num_backgrounds=8, min_box_area=0, view_stride=3)
  task = gmu_task.GmuTask(settings, CommonSettings(target="frcnn_mobilenetv2"))
  target = task.build_target()
  detections = target.detections(tf.zeros([2, 64, 64, 3]))
  assert detections.boxes.shape[0] == 2
  # 11 products: nothing the detector returns is outside them.
  assert set(np.unique(detections.classes.numpy())) <= set(range(len(gmu.CLASS_NAMES)))
  settings_odd = dataclasses.replace(settings, image_size=72)
  with pytest.raises(ConfigError, match=r"--gmu_image_size"):
    gmu_task.GmuTask(settings_odd, CommonSettings(target="frcnn_mobilenetv2")).build_target()


def test_boxes_too_small_to_score_are_ignore_boxes_in_training_and_crowd_regions_in_evaluation(tmp_path):
  # The fixture frames' first box is 26x37 pixels (962), the second 41x41 (1,681).
  settings = gmu_task.GmuSettings(**fixture_folders(tmp_path), image_size=64, cutout_size=16,
                                  num_backgrounds=8, min_box_area=1000, view_stride=3)
  task = gmu_task.GmuTask(settings, CommonSettings(target="ssd_compact"))
  first, second = [3 / 54, 4 / 96, 40 / 54, 30 / 96], [9 / 54, 49 / 96, 50 / 54, 90 / 96]
  assert task.real_labels["count"].tolist() == [1] * 18
  np.testing.assert_allclose(task.real_labels["boxes"][:, 0], [second] * 18, atol=1e-6)
  np.testing.assert_allclose(task.real_labels["ignore_boxes"][:, :2], [[first, [0] * 4]] * 18, atol=1e-6)
  truth = task.test_truth[0]
  np.testing.assert_allclose(truth.boxes, [second], atol=1e-6)
  np.testing.assert_allclose(truth.ignore_boxes, [first], atol=1e-6)
  assert truth.ignore_classes.tolist() == task.splits["test"].ignore_classes[0].tolist() != []
  with pytest.raises(ValueError, match=r"an image has 5 boxes or ignore boxes, more than the 4 label rows"):
    task.padded_labels([np.zeros([1, 4])], [np.zeros([1])], [np.zeros([5, 4])])
  # T's batches of real frames go through SSD's augmentation, ignore boxes moved with the image.
  assert task.augmentation == augment_lib.RECIPES["ssd"]
  labels = {key: tf.constant(value[:2]) for key, value in task.real_labels.items()}
  images, augmented = task.augment(tf.constant(task.real_images[:2], tf.float32) / 255, labels,
                                   tf.constant([1, 2]))
  assert images.shape == (2, 64, 64, 3) and augmented["ignore_boxes"].shape == labels["ignore_boxes"].shape


def test_a_product_has_the_aspect_in_composites_that_it_has_in_the_squashed_real_frames(tmp_path):
  # The fixture's product views are 12 pixels wide, 20 high; a real frame shows one at that shape too.
  write_scene(tmp_path / "real", 1, {1: [("red_bull", (40, 10, 51, 29))]}, np.random.default_rng(0))
  (real_box,), = gmu.load_split(str(tmp_path / "real"), (1,), image_size=96).boxes

  def aspect(box):  # Width over height, normalised: as T sees it in its square image.
    return (box[3] - box[1]) / (box[2] - box[0])
  assert aspect(real_box) == pytest.approx(12 / 20 * FRAME_H / FRAME_W)
  settings = gmu_task.GmuSettings(**fixture_folders(tmp_path), image_size=96, cutout_size=64,
                                  num_backgrounds=4, min_box_area=0, view_stride=3)
  task = gmu_task.GmuTask(settings, CommonSettings(target="ssd_compact"))
  assert task.frame_aspect == pytest.approx(FRAME_W / FRAME_H)
  red_bull = gmu.CLASS_NAMES.index("red_bull")
  view = task.cutouts[task.cutout_classes == red_bull][:1]
  upright = np.array([[[0, 0, 0, 0, 1, 1]]], np.float32)  # Centred at scale 1, not turned or sheared.
  _, labels = task._render_scenes(view[None], np.array([[red_bull]]), np.array([[True]]), task.backgrounds[:1],
                                  upright)
  assert labels["count"].tolist() == [1]
  # Unsquashed it would be 12 / 20 = 0.6; the squashed frames' 0.34 within a pixel of the 64-pixel view.
  assert aspect(labels["boxes"][0, 0]) == pytest.approx(aspect(real_box), abs=1.5 / 64)
  # The background photos are narrowed the same way before their square crops are taken.
  (photo,) = cutouts.squash_photos([np.zeros((60, 80, 3), np.uint8)], task.frame_aspect)
  assert photo.shape == (60, 45, 3)
  # One squash for every frame: a frame of another size is an error naming it.
  scene = tmp_path / "real" / gmu.scene_folder(1)
  write_png(str(scene / gmu.IMAGES / "rgb_2.png"), np.zeros((FRAME_H, 80, 3), np.uint8))
  (scene / gmu.ANNOTATIONS / "rgb_2.xml").write_text(voc_xml("rgb_2.png", [], width=80))
  with pytest.raises(DataError, match=r"rgb_2\.png: 80x54 pixels, where .*rgb_1\.png has 96x54"):
    gmu.load_split(str(tmp_path / "real"), (1,), image_size=96)


@pytest.mark.slow
def test_the_gmu_task_trains_end_to_end(tmp_path):
  config = smoke_config(str(tmp_path / "run"), GMU_SMOKE_FLAGFILE, export=False,
                        **{f"task_settings__{key}": value for key, value in fixture_folders(tmp_path).items()})
  assert config.discriminator is False  # A.3: no D by default.
  trainer = trainer_lib.Trainer(config)
  results = trainer.run()
  assert results["cycles_completed"] == 1 and results["hard_examples"] > 0
  assert set(gmu.CLASS_NAMES) <= {key[len("test_ap50_"):-len("_after")] for key in results
                                  if key.startswith("test_ap50_") and key.endswith("_after")}
  table = gmu_task.per_class_markdown({"baseline": gmu_task.per_class_row(results, "before"),
                                       "TERSE": gmu_task.per_class_row(results)})
  assert len(table.splitlines()) == 4
