"""The voc_person task (§4.2, A.2) built from a mini VOCdevkit and a mini COCO folder the tests write in their
on-disk formats: the real and test sets, the cut-outs' recovery with its drops counted and the VOC2007 test
images excluded, the person images filtered out of COCO's backgrounds, the VOC07 figures a run records, the
errors bad flags get, and the Table 2 ablation command at smoke size."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT, smoke_config
from terse_tf import config as config_lib
from terse_tf import evaluation
from terse_tf.data import voc
from terse_tf.errors import ConfigError, DataError
from terse_tf.experiments import voc_person as experiment
from terse_tf.tasks import voc_person
from terse_tf.tasks.base import CommonSettings
from test_coco import write_coco
from test_voc import PERSON, W, H, write_devkit, write_image, write_image_set

SMOKE_FLAGFILE = os.path.join(REPO_ROOT, "configs", "voc_person_smoke.flags")
FULL_FLAGFILE = os.path.join(REPO_ROOT, "configs", "voc_person.flags")
# VOC2007 test: 000001 a person and a difficult one, 000002 a dog only.
TEST_OBJECTS = {"000001": [("person", (11, 11, 50, 80), False, False),
                           ("person", (71, 21, 100, 60), True, False)],
                "000002": [("dog", (21, 21, 60, 70), False, False)]}


def write_data(root):
  """A VOCdevkit (test_voc's, plus VOC2007 test, and VOC2012's segmented copy of test image 000001, which must
  not give a cut-out) and a COCO folder of three images, one with a person; returns the task's flags' values."""
  devkit = write_devkit(os.path.join(root, "voc"))
  voc2007, voc2012 = (os.path.join(devkit, "VOCdevkit", f"VOC{year}") for year in voc.YEARS)
  for image_id, objects in TEST_OBJECTS.items():
    write_image(voc2007, image_id, objects)
  write_image_set(voc2007, voc.MAIN_SETS, "test", list(TEST_OBJECTS))
  write_image(voc2012, "2007_000001", TEST_OBJECTS["000001"][:1],
              segmentation=[(1, PERSON, (12, 12, 77, 47), False)])
  write_image_set(voc2012, voc.SEGMENTATION_SETS, "trainval", ["2007_000005", "2008_000002", "2007_000001"])
  # Flat colours, so that a background crop tells which photo it came from: the person image's is 250.
  images = {name: np.full((60, 80, 3), value, np.uint8) for name, value in (("street.png", 10),
                                                                           ("crowd.png", PERSON_PHOTO),
                                                                           ("room.png", 20))}
  coco_dir = os.path.join(root, "coco")
  annotations = write_coco(coco_dir, images, [(2, 1, [5, 5, 20, 40], 0), (3, 3, [1, 1, 10, 10], 0)],
                           categories=((1, "person"), (3, "car")))
  return {"voc_dir": devkit, "background_source": "coco", "coco_dir": coco_dir, "coco_annotations": annotations}


PERSON_PHOTO = 250
SMALL = {"image_size": 64, "cutout_size": 16, "num_backgrounds": 8}


def test_the_task_builds_real_test_cutouts_and_person_free_backgrounds(tmp_path):
  data = write_data(str(tmp_path))
  task = voc_person.VocPersonTask(voc_person.VocPersonSettings(**data, **SMALL), CommonSettings("ssd_compact"))
  assert task.class_names == ["person"] and task.headline == "test_voc07_ap50"
  # Training: VOC2007 trainval 000005, 000007, 000009 and VOC2012 2008_000002; VOC2012's 2007_000005 is a copy
  # of 000005, read once. 000005's four plain persons are scored, its difficult one ignored, its dog left out;
  # 000009 has no object: a negative.
  assert task.splits["train"].names == ["000005", "000007", "000009", "2008_000002"]
  assert task.real_labels["count"].tolist() == [4, 1, 0, 1]
  assert (task.real_labels["ignore_boxes"][0, 0] > 0).any() and not task.real_labels["ignore_boxes"][1:].any()
  assert task.real_images.shape == (4, 64, 64, 3) and task.frame_aspect == W / H
  # Test: VOC2007 test, the difficult person an ignore box, the dog image a negative.
  truth = task.test_truth
  assert [len(t.boxes) for t in truth] == [1, 0] and [len(t.ignore_boxes) for t in truth] == [1, 0]
  # Cut-outs: test_voc's two kept persons; 2007_000001 (VOC2007 test 000001) excluded, 2007_000005 read once;
  # the report counts each drop.
  report = task.person_instances.report
  assert len(task.cutouts) == 2 and task.cutouts.shape[1:] == (16, 16, 4)
  assert (report.kept, report.box_mismatch, report.no_mask, report.class_mismatch, report.excluded,
          report.duplicates) == (2, 1, 1, 1, 1, 1)
  assert "kept 2 of" in task.describe() and "2 person cut-outs" in task.describe()
  # Backgrounds: COCO's crowd.png has a person and is left out, so every crop comes from street or room.
  assert task.backgrounds.shape == (8, 64, 64, 3)
  assert set(np.unique(task.backgrounds)) == {10, 20}
  # Without A.2's clean-up (and a size floor under its 31 pixels) the disagreeing instance is kept.
  loose = voc_person.VocPersonTask(voc_person.VocPersonSettings(**data, **SMALL, min_mask_box_iou=0.0,
                                                                min_instance_size=16),
                                   CommonSettings("ssd_compact"))
  assert len(loose.cutouts) == 3 and loose.person_instances.report.box_mismatch == 0
  assert ("2007", "000005", 2) in loose.person_instances.sources
  # The two tasks differ in the cut-outs' recovery alone: they share the VOC images, read once.
  assert loose.real_images is task.real_images and loose.test_images is task.test_images
  # --voc_min_box_area: persons spanning fewer pixels of the full-size image are ignore boxes in T's labels and
  # in evaluation (000005's 10x30, 11x12 and 12x41 persons and 2008_000002's 40x40 under 2100; 000005's and
  # 000007's 30x70 ones and VOC2007 test's 40x70 one not).
  small = voc_person.VocPersonTask(voc_person.VocPersonSettings(**data, **SMALL, min_box_area=2100),
                                   CommonSettings("ssd_compact"))
  assert small.real_labels["count"].tolist() == [1, 1, 0, 0]
  ignored = (small.real_labels["ignore_boxes"] > 0).any(axis=2).sum(axis=1)
  assert ignored.tolist() == [4, 0, 0, 1]  # 000005's three small persons and its difficult one.
  assert [len(t.boxes) for t in small.test_truth] == [1, 0]
  tiny = voc_person.VocPersonTask(voc_person.VocPersonSettings(**data, **SMALL, min_box_area=2801),
                                  CommonSettings("ssd_compact"))
  assert [len(t.boxes) for t in tiny.test_truth] == [0, 0] and len(tiny.test_truth[0].ignore_boxes) == 2


def test_the_task_records_voc07_ap_at_table_4s_ious_beside_coco_ap(tmp_path):
  task = voc_person.VocPersonTask(voc_person.VocPersonSettings(**write_data(str(tmp_path)), **SMALL),
                                  CommonSettings("ssd_compact"))
  person, difficult = task.test_truth[0].boxes[0], task.test_truth[0].ignore_boxes[0]
  ymin, xmin, ymax, xmax = person
  taller = np.array([ymin, xmin, ymax + (ymax - ymin) / 3, xmax], np.float32)  # IoU 0.75 with the person.

  def found(box):
    # Ranked: a false positive on the dog image (0.95), the person (0.9), the difficult person (0.8: neither).
    return [evaluation.ImageBoxes(np.stack([box, difficult]), np.zeros(2, np.int32), np.float32([0.9, 0.8])),
            evaluation.ImageBoxes(np.float32([[0.1, 0.1, 0.5, 0.5]]), np.zeros(1, np.int32), np.float32([0.95]))]

  # By hand: precision 0 then 1/2 as recall reaches 1 at the second detection: 0.5 at every recall level.
  exact = task.set_figures("test", task.test_truth, found(person))
  voc07 = {f"test_voc07_ap{t}" for t in (50, 60, 70, 80, 90)}
  assert voc07 | {"test_ap50", "test_ap", "test_ap75"} == set(exact)
  assert all(exact[f"test_voc07_ap{t}"] == 0.5 for t in (50, 60, 70, 80, 90))
  # At IoU 0.75 the detection is a true positive up to Table 4's 0.7 and a false positive from 0.8: AP 0 there.
  shifted = task.set_figures("test", task.test_truth, found(taller))
  assert [shifted[f"test_voc07_ap{t}"] for t in (50, 60, 70, 80, 90)] == [0.5, 0.5, 0.5, 0.0, 0.0]
  assert 0 < shifted["test_ap50"] <= 1 and shifted["test_ap"] < shifted["test_ap50"]  # COCO's, beside them.


def test_bad_flags_and_a_missing_folder_are_one_error_naming_them(tmp_path):
  data = write_data(str(tmp_path))
  common = CommonSettings("ssd_compact")
  with pytest.raises(ConfigError, match=r"--task=voc_person needs --voc_dir, the VOCdevkit folder \(README "):
    voc_person.VocPersonTask(voc_person.VocPersonSettings(**{**data, "voc_dir": ""}, **SMALL), common)
  with pytest.raises(ConfigError, match=r"needs --voc_background_source, one of \['coco', 'tfds', 'folder'\] "
                                        r"\(got ''"):
    voc_person.VocPersonTask(voc_person.VocPersonSettings(**{**data, "background_source": ""}, **SMALL), common)
  with pytest.raises(ConfigError, match=r"--voc_background_source=coco needs --voc_coco_annotations$"):
    voc_person.VocPersonTask(voc_person.VocPersonSettings(**{**data, "coco_annotations": ""}, **SMALL), common)
  with pytest.raises(ConfigError, match=r"--voc_background_source=folder needs --voc_backgrounds_dir$"):
    voc_person.VocPersonTask(voc_person.VocPersonSettings(**{**data, "background_source": "folder"}, **SMALL),
                             common)
  with pytest.raises(ConfigError, match=r"--voc_train_years must be distinct years from \['2007', '2012'\]"):
    voc_person.VocPersonSettings(train_years=("2008",))
  with pytest.raises(ConfigError, match=r"--target=ssd_vgg16 is SSD300: it needs --voc_image_size=300"):
    voc_person.VocPersonTask(voc_person.VocPersonSettings(**data, **SMALL), CommonSettings("ssd_vgg16"))
  # A background folder that is not there: named before VOC's reading, not after it.
  with pytest.raises(ConfigError, match=r"--voc_coco_dir=.*nowhere: no such folder"):
    voc_person.VocPersonTask(voc_person.VocPersonSettings(**{**data, "coco_dir": str(tmp_path / "nowhere")},
                                                          **SMALL), common)
  # A devkit without a year it is asked to read: the flag that names the years.
  os.rename(os.path.join(data["voc_dir"], "VOCdevkit", "VOC2012"), os.path.join(data["voc_dir"], "elsewhere"))
  with pytest.raises(DataError, match=r"VOC2012 exists; .*--voc_train_years=2007,2012 names the trainval years"):
    voc_person.VocPersonTask(voc_person.VocPersonSettings(**data, **SMALL), common)
  os.rename(os.path.join(data["voc_dir"], "elsewhere"), os.path.join(data["voc_dir"], "VOCdevkit", "VOC2012"))
  # A devkit without VOC2007's test set: the folder and the image set named.
  os.unlink(os.path.join(data["voc_dir"], "VOCdevkit", "VOC2007", voc.MAIN_SETS, "test.txt"))
  with pytest.raises(DataError, match=r"ImageSets/Main/test\.txt: no such image set; .* lists "
                                      r"\['trainval'\]"):
    voc_person.VocPersonTask(voc_person.VocPersonSettings(**data, **SMALL), common)
  # A folder of backgrounds with no image in it.
  empty = tmp_path / "empty"
  empty.mkdir()
  write_image_set(os.path.join(data["voc_dir"], "VOCdevkit", "VOC2007"), voc.MAIN_SETS, "test", ["000001"])
  with pytest.raises(DataError, match=r"--voc_backgrounds_dir=.*empty: no image files"):
    voc_person.VocPersonTask(voc_person.VocPersonSettings(
        **{**data, "background_source": "folder", "backgrounds_dir": str(empty)}, **SMALL), common)


def test_the_flagfiles_parse_and_the_grid_sets_table_2s_switches():
  config = smoke_config("unused", FULL_FLAGFILE)
  settings = config.task_settings
  assert config.task == "voc_person" and config.target == "ssd_vgg16" and settings.image_size == 300
  assert settings.backbone_weights == "imagenet" and settings.synth_backbone == "vgg16" and config.discriminator
  assert settings.train_years == ("2007", "2012") and config.compositor.mask_cleanup
  flags = config_lib.setting_flags(config)
  assert flags["task_settings.min_mask_box_iou"] == "voc_min_mask_box_iou"
  assert flags["task_settings.voc_dir"] == "voc_dir"
  assert flags["task_settings.background_artifact_fraction"] == "voc_background_artifact_fraction"
  assert smoke_config("unused", SMOKE_FLAGFILE).task_settings.image_size == 64
  # Column 1 is the flagfile's TERSE; each further column turns one more switch off, the last one still on.
  def switches(changes):
    return [changes["task_settings"].min_mask_box_iou > 0, changes["synth_dropout"] > 0,
            changes["task_settings"].background_artifact_fraction > 0, changes["cache_fraction"] > 0,
            changes["discriminator"]]

  for column, on in enumerate(([True] * 5, [True] * 4 + [False], [True] * 3 + [False] * 2,
                               [True] * 2 + [False] * 3, [True] + [False] * 4, [False] * 5), start=1):
    changes = experiment.arm_changes(config, f"column{column}")
    assert switches(changes) == on and changes["sample_source"] == "terse", column
  assert experiment.arm_changes(config, "column1")["task_settings"] == settings
  assert experiment.arm_changes(config, "cut_paste") == {"sample_source": "cut_paste", "discriminator": False}
  assert experiment.arm_changes(config, "cut_paste_filter") == {"sample_source": config_lib.FILTERED,
                                                                "discriminator": False}
  with pytest.raises(ConfigError, match=r"--cache_fraction must be > 0: it is Table 2's switch on"):
    experiment.ExperimentConfig(base=dataclasses.replace(config, cache_fraction=0.0), seeds=(0,),
                                arms=experiment.ARMS, results_dir="unused", label="x")
  with pytest.raises(ConfigError, match=r"--arms must be distinct arms from \['column1', "):
    experiment.ExperimentConfig(base=config, seeds=(0,), arms=("column7",), results_dir="unused", label="x")


@pytest.mark.slow  # ~70 s on a shared core: a baseline and the eight arms at toy size, in a subprocess.
def test_the_ablation_command_writes_tables_2_to_4_and_fig_8(tmp_path):
  data = write_data(str(tmp_path / "data"))
  result = subprocess.run(
      [sys.executable, "-m", "terse_tf.experiments.voc_person", f"--flagfile={SMOKE_FLAGFILE}",
       *(f"--voc_{name.removeprefix('voc_')}={value}" for name, value in data.items()),
       f"--run_dir={tmp_path / 'runs'}", f"--results_dir={tmp_path / 'results'}", "--label=smoke", "--seeds=0"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  with open(tmp_path / "results" / "smoke.json") as f:
    report = json.load(f)
  assert set(report["summary"]) == {"baseline", *experiment.ARMS}
  for arm, figures in report["summary"].items():
    assert set(figures) == {*(f"test_voc07_ap{t}" for t in (50, 60, 70, 80, 90)), "test_ap50", "test_ap"}, arm
    assert all(0 <= figure["mean"] <= 1 and figure["sd"] is None for figure in figures.values()), arm
  assert all(count > 0 for count in report["samples"]["seed0"].values())  # Every arm added composites.
  histogram = report["hardness_histogram"]
  for arm in ("cut_paste", "cut_paste_filter", "column1"):
    assert len(histogram[arm]) == 10 and sum(histogram[arm]) == pytest.approx(1.0), arm
  # The filter keeps only samples the baseline T scores below --hard_threshold, as TERSE's cache does.
  assert sum(histogram["cut_paste_filter"][5:]) == 0
  markdown = (tmp_path / "results" / "smoke.md").read_text()
  for heading in ("## Table 2", "| Ann. Cleanup | ✓ | ✓ | ✓ | ✓ | ✓ |  |",
                  "| Discriminator | ✓ |  |  |  |  |  |", "| AP0.8 |", "## Table 3", "| Baseline SSD |",
                  "## Table 4", "| TERSE without D |", "| Cut-Paste [7] + filter |",
                  "| AP0.5 | AP0.6 | AP0.7 | AP0.8 | AP0.9 |", "## Fig. 8", "| 0.9-1.0 |"):
    assert heading in markdown, heading
  assert (tmp_path / "results" / "smoke.png").stat().st_size > 0
  # TensorBoard: the tables and the figure under the runs' folder; each arm's run recorded its VOC07 figure.
  events = list((tmp_path / "runs" / "smoke" / "tensorboard").glob("events.out.tfevents.*"))
  tags = {value.tag for event in tf.compat.v1.train.summary_iterator(str(events[0]))
          for value in event.summary.value}
  assert {"table2/column1/ap50", "table4/cut_paste/ap90", "table4/baseline/ap80", "fig8/column1",
          "voc_person/report", "voc_person/figure"} <= tags
  with open(tmp_path / "runs" / "smoke" / "seed0" / "column1" / "results.json") as f:
    run = json.load(f)
  assert run["headline"] == "test_voc07_ap50" and 0 <= run["test_voc07_ap50_after"] <= 1
