"""The dataset generator end to end on exported models: records and COCO JSON read back, determinism, resume
after SIGKILL, --hard_only, the signatures run on one draw, bad cut-outs, resumes that tell models and
folders by content, and bad inputs as one clear error. Its parts without a model: test_generation_parts.py."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from pycocotools.coco import COCO

from conftest import DETECTION_SMOKE_FLAGFILE, REPO_ROOT, smoke_config
from terse_tf import export, files, generation, trainer as trainer_lib
from terse_tf.data import cutouts, mnist, photos
from terse_tf.errors import ConfigError, DataError
from terse_tf.generation import inputs, records as records_lib, signatures

DIGIT_NAMES = [str(d) for d in range(10)]


def digit_cutouts(count: int, seed: int, coloured: bool) -> tuple[np.ndarray, np.ndarray]:
  """RGBA cut-outs [count, 40, 40, 4] of bundled digits (white or coloured ink) and their labels."""
  images, labels = mnist.load_bundled()
  rng = np.random.default_rng(seed)
  pick = rng.choice(len(images), count, replace=False)
  alpha = mnist.pad_to(images[pick]).astype(np.float32)[..., None] / 255
  colour = rng.uniform(size=(count, 1, 1, 3)) if coloured else np.ones((count, 1, 1, 3))
  return np.concatenate([np.broadcast_to(colour, alpha.shape[:-1] + (3,)), alpha], -1), labels[pick]


RETRAINED = "retrained synthesizer"


@pytest.fixture(scope="module")
def affnist_export(tmp_path_factory):
  """An affNIST run's exports (baseline T trained, so some composites are hard and some not), another
  synthesizer of that task (paths[RETRAINED]: what a retrain exports) and a --foregrounds folder of digits."""
  root = tmp_path_factory.mktemp("affnist")
  trainer = trainer_lib.Trainer(smoke_config(str(root / "run"), cycles=0, export=False))
  trainer.run()
  paths = export.export_models(trainer.task, trainer.synthesizer, trainer.target, str(root / "export"))
  retrained = export.synthesizer_archive(trainer.task.build_synthesizer(seed=1), trainer.task)
  paths[RETRAINED] = export.write(retrained, str(root / "retrained"), trainer.task.class_names)
  images, labels = digit_cutouts(200, seed=0, coloured=False)
  cutouts.write_cutouts(images, labels, DIGIT_NAMES, str(root / "digits"))
  return root, paths


@pytest.fixture(scope="module")
def detection_export(tmp_path_factory):
  root = tmp_path_factory.mktemp("detection")
  trainer = trainer_lib.Trainer(smoke_config(str(root / "run"), DETECTION_SMOKE_FLAGFILE, cycles=0,
                                             baseline_epochs=0, export=False))
  paths = export.export_models(trainer.task, trainer.synthesizer, trainer.target, str(root / "export"))
  images, _ = digit_cutouts(100, seed=1, coloured=True)
  cutouts.write_cutouts(images, np.zeros(100, np.int64), ["digit"], str(root / "digits"))
  os.makedirs(root / "photos")
  for path in photos._bundled_paths("train")[:3]:  # pylint: disable=protected-access
    shutil.copy(path, root / "photos")
  return root, paths


def read_records(out_dir) -> list[tf.train.Example]:
  shards = sorted(tf.io.gfile.glob(os.path.join(str(out_dir), "*" + records_lib.RECORD_SUFFIX)))
  return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(shards)]


def feature(example, key):
  value = example.features.feature[key]
  return list(value.bytes_list.value or value.float_list.value or value.int64_list.value)


def generate_cli(*args):
  return subprocess.Popen([sys.executable, "-m", "terse_tf.generate", *args], cwd=REPO_ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_killed_generation_resumes_to_exactly_the_uninterrupted_dataset(affnist_export, tmp_path):
  root, paths = affnist_export
  common = [f"--synthesizer={os.path.dirname(paths[export.SYNTHESIZER_DIR])}", f"--foregrounds={root / 'digits'}",
            "--num=1200", "--shard_size=100", "--batch_size=50", "--seed=7", "--write_masks"]
  reference = generate_cli(*common, f"--out={tmp_path / 'whole'}")
  interrupted = generate_cli(*common, f"--out={tmp_path / 'killed'}")
  # SIGKILL once some shards are finished and before all of them are.
  deadline = time.time() + 240
  while time.time() < deadline:
    done = [n for n in os.listdir(tmp_path / "killed")] if os.path.isdir(tmp_path / "killed") else []
    if sum(n.endswith(records_lib.RECORD_SUFFIX) for n in done) >= 2:
      break
    time.sleep(0.05)
  interrupted.send_signal(signal.SIGKILL)
  interrupted.wait()
  finished_before = sorted(n for n in os.listdir(tmp_path / "killed") if n.endswith(records_lib.RECORD_SUFFIX))
  assert 2 <= len(finished_before) < 12, finished_before
  assert not os.path.exists(tmp_path / "killed" / records_lib.SUMMARY)
  resumed = generate_cli(*common, f"--out={tmp_path / 'killed'}")
  for process in (reference, resumed):
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
  assert "resuming: " in stderr

  records = read_records(tmp_path / "killed")
  assert len(records) == 1200
  assert len({feature(r, "image/source_id")[0] for r in records}) == 1200
  # The same seed gives the same dataset, byte for byte, however often the run was interrupted.
  for name in sorted(os.listdir(tmp_path / "whole")):
    if name.endswith(records_lib.RECORD_SUFFIX):
      assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes(), name

  example = records[0]
  image = tf.io.decode_png(feature(example, "image/encoded")[0]).numpy()
  mask = tf.io.decode_png(feature(example, "image/mask/encoded")[0]).numpy()
  assert image.shape == mask.shape == (40, 40, 1) and mask.max() > 200
  assert feature(example, "image/class/text")[0].decode() == DIGIT_NAMES[feature(example, "image/class/label")[0]]
  assert len(feature(example, "synthesizer/params")) == 6
  summary = json.loads((tmp_path / "killed" / records_lib.SUMMARY).read_text())
  assert summary["num"] == 1200 and os.path.exists(summary["preview"])
  # Resuming into it with another seed would mix two datasets: refused, naming --out.
  other_seed = [a for a in common if not a.startswith("--seed")] + ["--seed=8", f"--out={tmp_path / 'killed'}"]
  refused = generate_cli(*other_seed)
  _, stderr = refused.communicate(timeout=300)
  assert refused.returncode != 0 and "written with other settings" in stderr and "Traceback" not in stderr


def test_hard_only_keeps_what_the_target_finds_hard_and_reports_the_yield(affnist_export, tmp_path):
  root, paths = affnist_export
  config = generation.GenerateConfig(
      synthesizer=paths[export.SYNTHESIZER_DIR], foregrounds=str(root / "digits"), out=str(tmp_path / "all"),
      num=64, shard_size=64, batch_size=32, target=paths[export.TARGET_DIR])
  generation.Generator(config).run()
  # A threshold half of the composites fall below, whatever the smoke run's T learned.
  threshold = float(np.median([feature(r, "target/hardness")[0] for r in read_records(tmp_path / "all")]))
  config = dataclasses.replace(config, out=str(tmp_path / "hard"), num=100, shard_size=60, hard_only=True,
                               hard_threshold=threshold)
  summary = generation.Generator(config).run()
  records = read_records(tmp_path / "hard")
  hardness = np.array([feature(r, "target/hardness")[0] for r in records])
  assert len(records) == 100 and np.all(hardness < threshold)
  assert 0.2 < summary["yield"] < 0.8 and summary["drawn"] > 100
  # The recorded hardness is the exported target's verdict on the decoded image.
  images = np.stack([tf.io.decode_png(feature(r, "image/encoded")[0]).numpy() for r in records[:16]]) / 255
  labels = np.array([feature(r, "image/class/label")[0] for r in records[:16]], np.int32)
  served = signatures.Target(paths[export.TARGET_DIR]).hardness(images.astype(np.float32), {"label": labels})
  np.testing.assert_allclose(served, hardness[:16], atol=0.02)  # PNG rounding of the image.


def test_the_exported_signatures_composite_a_draw_and_judge_it(affnist_export, detection_export):
  """signatures.composite on its own: a batch is a function of the draw (its seed included) and holds what
  the records need (a detector's labels from the synthesizer) and the target's verdict on each composite."""
  for root, paths in (affnist_export, detection_export):
    synthesizer = signatures.Synthesizer(paths[export.SYNTHESIZER_DIR], export.GENERATE)
    target = signatures.Target(paths[export.TARGET_DIR])
    cutout_shape = synthesizer.foreground_shape[-3:]
    loaded = inputs.load_cutouts(str(root / "digits"), cutout_shape, synthesizer.class_names)
    drawer = inputs.Inputs(loaded.with_channels(cutout_shape[-1]), loaded.classes, None,
                           synthesizer.background_shape, synthesizer.detection, synthesizer.slots, synthesizer.slots)
    draw = drawer.draw(4, inputs.shard_rng(0, 0))
    batch = signatures.composite(synthesizer, target, draw, masks=True)
    np.testing.assert_array_equal(signatures.composite(synthesizer, target, draw, masks=True).images, batch.images)
    reseeded = signatures.composite(synthesizer, None, dataclasses.replace(draw, seed=draw.seed + 1), masks=False)
    assert not np.array_equal(reseeded.params, batch.params)  # The seed drives S's dropout and noise.
    assert reseeded.hardness is None and reseeded.masks is None
    height, width, _ = synthesizer.background_shape
    assert batch.images.shape == (4, *synthesizer.background_shape)
    np.testing.assert_array_equal(batch.hardness, target.hardness(batch.images, batch.labels))
    if synthesizer.detection:
      slots = synthesizer.slots
      assert batch.params.shape == (4, slots, 6) and batch.masks.shape == (4, slots, height, width, 1)
      assert set(batch.labels) == {"boxes", "classes", "count"}
      assert np.all(batch.labels["count"] <= np.sum(draw.classes >= 0, axis=1))  # Covered objects lose boxes.
    else:
      assert batch.labels is draw.labels
      assert batch.params.shape == (4, 6) and batch.masks.shape == (4, height, width, 1)


def test_detection_records_masks_and_coco_json_read_back_and_agree(detection_export, tmp_path):
  root, paths = detection_export
  config = generation.GenerateConfig(
      synthesizer=paths[export.SYNTHESIZER_DIR], foregrounds=str(root / "digits"),
      backgrounds=str(root / "photos"), out=str(tmp_path / "out"), num=70, shard_size=32, batch_size=16,
      write_masks=True)
  generation.Generator(config).run()
  records = read_records(tmp_path / "out")
  coco = COCO(str(tmp_path / "out" / records_lib.ANNOTATIONS))
  assert len(records) == len(coco.getImgIds()) == 70
  assert coco.loadCats(coco.getCatIds())[0]["name"] == "digit"
  objects = 0
  for image_id, record in zip(sorted(coco.getImgIds()), records):
    height, width = feature(record, "image/height")[0], feature(record, "image/width")[0]
    boxes = np.stack([feature(record, f"image/object/bbox/{k}") for k in ("ymin", "xmin", "ymax", "xmax")], -1)
    assert np.all((boxes >= 0) & (boxes <= 1)) and np.all(boxes[:, 2:] > boxes[:, :2])
    annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    coco_boxes = np.array([a["bbox"] for a in annotations]).reshape(-1, 4)
    expected = np.stack([boxes[:, 1] * width, boxes[:, 0] * height, (boxes[:, 3] - boxes[:, 1]) * width,
                         (boxes[:, 2] - boxes[:, 0]) * height], -1)
    np.testing.assert_allclose(coco_boxes, expected, atol=1e-3)
    # One PNG instance mask per box, whose tight box is that box; COCO's RLE of it decodes to the same mask.
    masks = [tf.io.decode_png(png).numpy()[..., 0] for png in feature(record, "image/object/mask")]
    assert len(masks) == len(boxes) == len(annotations)
    for mask, box, annotation in zip(masks, boxes, annotations):
      assert set(np.unique(mask)) <= {0, 255}
      rows, cols = np.nonzero(mask)
      np.testing.assert_allclose([rows.min() / height, cols.min() / width, (rows.max() + 1) / height,
                                  (cols.max() + 1) / width], box, atol=1e-5)
      np.testing.assert_array_equal(coco.annToMask(annotation), mask // 255)
      assert annotation["area"] == np.count_nonzero(mask)
    objects += len(boxes)
  assert objects >= 70  # 1..3 objects each; a box may be dropped when most of its object is covered.


def test_unusable_cutouts_are_skipped_by_name_and_an_empty_folder_is_an_error(tmp_path, caplog):
  folder = tmp_path / "cutouts" / "thing"
  folder.mkdir(parents=True)
  rgba = np.zeros((30, 20, 4), np.uint8)
  rgba[5:25, 5:15] = 255
  (folder / "good.png").write_bytes(tf.io.encode_png(rgba).numpy())
  (folder / "paired.jpg").write_bytes(tf.io.encode_jpeg(np.full((30, 20, 3), 128, np.uint8)).numpy())
  (folder / "paired.mask.png").write_bytes(tf.io.encode_png(rgba[..., 3:]).numpy())
  (folder / "broken.png").write_bytes(b"\x89PNG not really")
  (folder / "no_alpha.png").write_bytes(tf.io.encode_png(rgba[..., :3]).numpy())
  (folder / "wrong_mask.jpg").write_bytes(tf.io.encode_jpeg(np.zeros((30, 20, 3), np.uint8)).numpy())
  (folder / "wrong_mask.mask.png").write_bytes(tf.io.encode_png(np.zeros((10, 10, 1), np.uint8)).numpy())
  loaded = cutouts.load_cutouts(str(tmp_path / "cutouts"), (40, 40))
  assert loaded.images.shape == (2, 40, 40, 4) and loaded.class_names == ["thing"]
  # The 20x30 object keeps its aspect: scaled to 40 pixels high, 26-27 wide, centred.
  assert np.count_nonzero(loaded.images[0, :, :, 3].max(axis=0) > 0.5) in (13, 14)
  warnings = "\n".join(r.getMessage() for r in caplog.records)
  for name in ("broken.png", "no_alpha.png", "wrong_mask.mask.png", "3 of 5 cut-outs"):
    assert name in warnings
  empty = tmp_path / "empty" / "thing"
  empty.mkdir(parents=True)
  with pytest.raises(DataError, match="--foregrounds=.*empty.*no usable cut-out"):
    cutouts.load_cutouts(str(tmp_path / "empty"), (40, 40))


def small_config(root, paths, out, **overrides) -> generation.GenerateConfig:
  """Two shards of 20 affNIST composites."""
  return generation.GenerateConfig(**{
      "synthesizer": paths[export.SYNTHESIZER_DIR], "foregrounds": str(root / "digits"), "out": str(out),
      "num": 40, "shard_size": 20, "batch_size": 20, **overrides})


def folder_bytes(folder) -> dict[str, bytes]:
  return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_a_resume_tells_models_and_folders_by_content_not_by_how_their_path_is_spelled(
    affnist_export, tmp_path, monkeypatch):
  root, paths = affnist_export
  model_dir = tmp_path / "export" / "synthesizer"
  shutil.copytree(paths[export.SYNTHESIZER_DIR], model_dir / "1")
  config = small_config(root, paths, tmp_path / "out", synthesizer=str(model_dir), foregrounds=f"{root}/digits/",
                        target=paths[export.TARGET_DIR])
  generation.Generator(config).run()
  (tmp_path / "out" / "composites-00001-of-00002.tfrecord").unlink()  # The run was killed before shard 1.
  # The same model, cut-outs and target under other spellings (the version directory, paths relative to
  # another working directory, no trailing slash): the same recipe, so the run resumes.
  monkeypatch.chdir(tmp_path)
  respelled = dataclasses.replace(config, synthesizer=os.path.join("export", "synthesizer", "1"),
                                  foregrounds=os.path.relpath(root / "digits"), out="out/",
                                  target=os.path.relpath(paths[export.TARGET_DIR]))
  summary = generation.Generator(respelled).run()
  assert summary["written_this_run"] == 20 and summary["num"] == 40
  # A synthesizer retrained and exported into the same path (train --fresh rewrites export/synthesizer/1)
  # is another model: resuming would mix two synthesizers' composites in one dataset.
  (tmp_path / "out" / "composites-00001-of-00002.tfrecord").unlink()
  shutil.rmtree(model_dir / "1")
  shutil.copytree(paths[RETRAINED], model_dir / "1")
  with pytest.raises(DataError, match="written with other settings \\(--synthesizer: other contents"):
    generation.Generator(config).run()


def test_another_num_or_shard_size_into_a_dataset_is_refused_and_leaves_it_as_it_was(affnist_export, tmp_path):
  root, paths = affnist_export
  config = small_config(root, paths, tmp_path / "out")
  generation.Generator(config).run()
  before = folder_bytes(tmp_path / "out")
  # More or fewer shards: their names differ, so the earlier set would stay beside the new one.
  for changed in ({"num": 60}, {"shard_size": 10}):
    with pytest.raises(ConfigError, match="holds a dataset of 2 shards .*made with --num=40 --shard_size=20"):
      generation.Generator(dataclasses.replace(config, **changed))
  # As many shards, the last one shorter: the finished shard of the earlier set does not fit.
  with pytest.raises(DataError, match="--num=40, this run 30"):
    generation.Generator(dataclasses.replace(config, num=30)).run()
  assert folder_bytes(tmp_path / "out") == before


def test_bad_inputs_are_one_error_naming_the_flag_or_file(affnist_export, detection_export, tmp_path):
  root, paths = affnist_export
  detection_root, detection_paths = detection_export
  config = small_config(root, paths, tmp_path / "out")
  # A target export where the synthesizer's belongs.
  with pytest.raises(ConfigError, match="--synthesizer=.*: this is an exported target"):
    generation.Generator(dataclasses.replace(config, synthesizer=paths[export.TARGET_DIR]))
  # A target of the other kind (and image size) than the synthesizer's.
  with pytest.raises(ConfigError, match="--target=.* is a detector .* --synthesizer=.* makes classification"):
    generation.Generator(dataclasses.replace(config, target=detection_paths[export.TARGET_DIR]))
  # More cut-out classes than the target tells apart: the one-class detector and the ten digits; the
  # classifier, exported without its list of classes, and eleven.
  with pytest.raises(ConfigError, match="--foregrounds=.* has 10 classes .* --target=.* tells 1 apart"):
    generation.Generator(generation.GenerateConfig(
        synthesizer=detection_paths[export.SYNTHESIZER_DIR], target=detection_paths[export.TARGET_DIR],
        foregrounds=str(root / "digits"), out=str(tmp_path / "out"), num=4))
  unlisted = tmp_path / "target"
  shutil.copytree(paths[export.TARGET_DIR], unlisted, ignore=shutil.ignore_patterns("assets.extra"))
  images, labels = digit_cutouts(22, seed=2, coloured=False)
  cutouts.write_cutouts(images, np.arange(22) % 11, [f"c{k:02d}" for k in range(11)], str(tmp_path / "eleven"))
  with pytest.raises(ConfigError, match="has 11 classes .* tells 10 apart"):
    generation.Generator(dataclasses.replace(config, target=str(unlisted), foregrounds=str(tmp_path / "eleven")))
  # --hard_threshold outside the target's hardness range (NaN included), or without a target.
  detection = generation.GenerateConfig(
      synthesizer=detection_paths[export.SYNTHESIZER_DIR], foregrounds=str(detection_root / "digits"),
      out=str(tmp_path / "out"), num=4)
  for base, target, threshold in ((config, paths, 1.5), (config, paths, float("nan")),
                                  (detection, detection_paths, -0.5)):
    with pytest.raises(ConfigError, match="--hard_threshold=.* lies in \\["):
      generation.Generator(dataclasses.replace(base, target=target[export.TARGET_DIR], hard_threshold=threshold))
  with pytest.raises(ConfigError, match="--hard_threshold needs --target"):
    dataclasses.replace(config, hard_threshold=0.5)
  # --out is a file.
  (tmp_path / "a_file").write_text("")
  with pytest.raises(ConfigError, match="--out=.*a_file is a file"):
    generation.Generator(dataclasses.replace(config, out=str(tmp_path / "a_file")))
  # A batch that cannot fit in memory (800 GB of cut-out picks alone: refused at once, nothing touched).
  with pytest.raises(ConfigError, match="--batch_size=100000000000: out of memory .*lower --batch_size"):
    generation.Generator(dataclasses.replace(config, out=str(tmp_path / "huge"), batch_size=10 ** 11)).run()
  # A finished shard whose sidecar is lost or corrupt cannot be resumed.
  generation.Generator(config).run()
  sidecar = tmp_path / "out" / "composites-00001-of-00002.json"
  emptied = '{"records": 2, "drawn": 2, "annotations": [], "recipe": {}}'  # Damaged, not other settings.
  for damage in (sidecar.unlink, lambda: sidecar.write_text('{"records": 2'), lambda: sidecar.write_text(emptied)):
    damage()
    with pytest.raises(DataError, match=f"{sidecar}: (missing|unreadable|not a shard's sidecar).* delete "
                                        "composites-00001-of-00002"):
      generation.Generator(config).run()


def test_hard_threshold_defaults_to_the_targets_own(affnist_export, detection_export, tmp_path):
  root, paths = affnist_export
  detection_root, detection_paths = detection_export
  classifier = generation.Generator(small_config(root, paths, tmp_path / "c", target=paths[export.TARGET_DIR]))
  assert classifier.recipe()["hard_threshold"] == 0.0  # The trainer's: T misclassifies it.
  detector = generation.Generator(generation.GenerateConfig(
      synthesizer=detection_paths[export.SYNTHESIZER_DIR], target=detection_paths[export.TARGET_DIR],
      foregrounds=str(detection_root / "digits"), out=str(tmp_path / "d"), num=4))
  assert detector.recipe()["hard_threshold"] == 0.5


def test_bundled_cutouts_and_photos_make_a_dataset_in_the_synthesizers_classes(detection_export, tmp_path):
  _, paths = detection_export
  config = generation.GenerateConfig(
      synthesizer=os.path.dirname(paths[export.SYNTHESIZER_DIR]), foregrounds="bundled", backgrounds="bundled",
      target=os.path.dirname(paths[export.TARGET_DIR]), hard_only=True, out=str(tmp_path / "out"), num=8,
      batch_size=8)
  summary = generation.Generator(config).run()
  records = read_records(tmp_path / "out")
  assert len(records) == 8 and summary["class_names"] == ["digit"]  # The photo_digits task's one class.
  for record in records:
    assert set(feature(record, "image/object/class/text")) == {b"digit"}
    assert feature(record, "target/hardness")[0] < 0.5
  # Backgrounds are photos, not black.
  image = tf.io.decode_png(feature(records[0], "image/encoded")[0]).numpy()
  assert image.std() > 10


@pytest.mark.slow
def test_the_launcher_prints_bad_inputs_as_one_line(affnist_export, detection_export, tmp_path):
  root, paths = affnist_export
  _, detection_paths = detection_export
  (tmp_path / "a_file").write_text("")
  common = [f"--synthesizer={paths[export.SYNTHESIZER_DIR]}", f"--foregrounds={root / 'digits'}", "--num=4"]
  for args, expected in (([f"--target={detection_paths[export.TARGET_DIR]}", f"--out={tmp_path / 'out'}"],
                          "--target="),
                         ([f"--out={tmp_path / 'a_file'}"], "--out=")):
    process = generate_cli(*common, *args)
    _, stderr = process.communicate(timeout=300)
    lines = [line for line in stderr.splitlines() if line.startswith("terse_tf.generate: error: ")]
    assert process.returncode != 0 and "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1 and expected in lines[0], stderr[-3000:]


def test_a_second_generation_into_an_out_in_use_is_refused(affnist_export, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  holder = subprocess.Popen(  # Another process holding --out, as a generation still going does.
      [sys.executable, "-c", "import sys, time; from terse_tf import files; "
       "files.DirectoryLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(300)", str(out)],
      cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(ConfigError, match=f"--out={out} is in use by another process \\(pid {holder.pid} "):
      generation.Generator(small_config(*affnist_export, out)).run()
    assert os.listdir(out) == [files.LOCK_NAME]
  finally:
    holder.kill()
    holder.wait()
  generation.Generator(small_config(*affnist_export, out)).run()  # The killed holder left no lock behind.
