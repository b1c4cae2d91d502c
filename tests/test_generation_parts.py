"""The dataset generator's parts on their own, without an exported model: the inputs a shard draws
(generation/inputs.py), and records, shards with their sidecars, COCO annotations and the preview
(generation/records.py). The signatures' wrappers need exports: tests/test_generate.py has them."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from terse_tf.data import cutouts
from terse_tf.generation import inputs, records

HEIGHT, WIDTH, SLOTS = 12, 10, 3
CLASS_NAMES = ["ball", "cube", "cone"]


def toy_cutouts(count: int = 20, channels: int = 4) -> tuple[np.ndarray, np.ndarray]:
  """Random cut-outs [count, 8, 8, channels] (each unlike the others) and their classes."""
  rng = np.random.default_rng(0)
  return rng.uniform(size=(count, 8, 8, channels)).astype(np.float32), np.arange(count, dtype=np.int32) % 3


def toy_photos() -> list[np.ndarray]:
  rng = np.random.default_rng(1)
  return [rng.integers(0, 256, (40 + 10 * k, 50, 3), np.uint8) for k in range(3)]


def assert_same_draw(first: inputs.Draw, second: inputs.Draw) -> None:
  for name in ("foreground", "background", "classes", "seed"):
    np.testing.assert_array_equal(getattr(first, name), getattr(second, name), err_msg=name)
  assert (first.labels is None) == (second.labels is None)
  if first.labels is not None:
    np.testing.assert_array_equal(first.labels["label"], second.labels["label"])


@pytest.mark.parametrize("detection", [False, True], ids=["classification", "detection"])
def test_a_shards_inputs_are_a_function_of_the_seed_and_the_shard(detection):
  images, classes = toy_cutouts()
  drawer = inputs.Inputs(images, classes, toy_photos(), (16, 16, 3), detection, slots=SLOTS if detection else 1,
                         max_objects=2 if detection else 1)

  def shard(seed: int, index: int) -> list[inputs.Draw]:
    rng = inputs.shard_rng(seed, index)
    return [drawer.draw(6, rng) for _ in range(2)]

  reference = shard(7, 1)
  for again, draw in zip(shard(7, 1), reference):
    assert_same_draw(again, draw)
  # Another shard, another seed, the shard's next batch: other inputs.
  for other in (shard(7, 2)[0], shard(8, 1)[0], reference[1]):
    assert not np.array_equal(other.foreground, reference[0].foreground)
    assert not np.array_equal(other.background, reference[0].background)
    assert not np.array_equal(other.seed, reference[0].seed)

  for draw in reference:
    assert draw.background.shape == (6, 16, 16, 3) and 0 <= draw.background.min() and draw.background.max() <= 1
    assert draw.background.std() > 0.05  # Crops of the photos, not black.
    assert draw.seed.shape == (2,) and np.all((0 <= draw.seed) & (draw.seed < 2 ** 31 - 1))
    if not detection:
      assert draw.classes is None and draw.foreground.shape == (6, 8, 8, 4)
      for foreground, label in zip(draw.foreground, draw.labels["label"]):
        (picked,) = np.flatnonzero(np.all(images == foreground, axis=(1, 2, 3)))
        assert classes[picked] == label
      continue
    # Detection: 1..max_objects cut-outs in the first slots, each slot's class its cut-out's; empty slots
    # hold zeros and class -1. The synthesizer makes the labels.
    assert draw.labels is None and draw.foreground.shape == (6, SLOTS, 8, 8, 4)
    filled = draw.classes >= 0
    assert np.all(filled[:, 0]) and not np.any(filled[:, 2])
    for foreground, slot_classes, slot_filled in zip(draw.foreground, draw.classes, filled):
      for cutout, class_id, is_filled in zip(foreground, slot_classes, slot_filled):
        if is_filled:
          (picked,) = np.flatnonzero(np.all(images == cutout, axis=(1, 2, 3)))
          assert classes[picked] == class_id
        else:
          assert not cutout.any()


def test_without_photos_backgrounds_are_black_and_the_draws_stay_the_same_otherwise():
  images, classes = toy_cutouts()
  with_photos = inputs.Inputs(images, classes, toy_photos(), (16, 16, 1), False, 1, 1)
  black = inputs.Inputs(images, classes, inputs.load_photos("", (16, 16, 1)), (16, 16, 1), False, 1, 1)
  draw = black.draw(4, inputs.shard_rng(0, 0))
  assert draw.background.shape == (4, 16, 16, 1) and not draw.background.any()
  # The photos' crops take draws of their own: the cut-outs picked before them are the same.
  np.testing.assert_array_equal(with_photos.draw(4, inputs.shard_rng(0, 0)).foreground, draw.foreground)


def test_bundled_cutouts_take_the_synthesizers_classes_and_channels():
  grey = inputs.load_cutouts(cutouts.BUNDLED, (20, 20, 2), None)  # An export without its class names.
  assert grey.class_names == [str(d) for d in range(10)] and grey.images.shape[1:3] == (20, 20)
  assert grey.with_channels(2).shape[-1] == 2
  single = inputs.load_cutouts(cutouts.BUNDLED, (20, 20, 4), ["digit"])
  assert single.class_names == ["digit"] and not single.classes.any()


def test_a_recipe_names_input_folders_by_content_not_by_path(tmp_path, monkeypatch):
  images, classes = toy_cutouts(6)
  cutouts.write_cutouts(images, classes, CLASS_NAMES, str(tmp_path / "objects"))
  identity = inputs.foregrounds_identity(str(tmp_path / "objects"))
  monkeypatch.chdir(tmp_path)
  assert inputs.foregrounds_identity("objects/") == inputs.foregrounds_identity("./objects") == identity
  (tmp_path / "objects" / "ball" / "extra.png").write_bytes(tf.io.encode_png(np.zeros((4, 4, 4), np.uint8)).numpy())
  assert inputs.foregrounds_identity("objects") != identity
  assert inputs.foregrounds_identity(cutouts.BUNDLED) == cutouts.BUNDLED
  for value in ("", inputs.BUNDLED_PHOTOS):
    assert inputs.backgrounds_identity(value) == value
  (tmp_path / "photos").mkdir()
  (tmp_path / "photos" / "a.png").write_bytes(tf.io.encode_png(toy_photos()[0]).numpy())
  assert inputs.backgrounds_identity("photos") == inputs.backgrounds_identity(os.path.join(tmp_path, "photos", ""))


def toy_batch(detection: bool, size: int = 4) -> records.Batch:
  """A batch as the synthesizer and target make one, with masks and hardness; a detector's objects are
  rectangles, each boxed by its mask."""
  rng = np.random.default_rng(2)
  hardness = rng.uniform(-1, 1, size).astype(np.float32)
  if not detection:
    return records.Batch(images=rng.uniform(size=(size, HEIGHT, WIDTH, 1)).astype(np.float32),
                         params=rng.normal(size=(size, 6)).astype(np.float32),
                         labels={"label": rng.integers(3, size=size).astype(np.int32)},
                         masks=rng.uniform(size=(size, HEIGHT, WIDTH, 1)).astype(np.float32), hardness=hardness)
  masks = np.zeros((size, SLOTS, HEIGHT, WIDTH, 1), np.float32)
  boxes = np.zeros((size, SLOTS, 4), np.float32)
  count = rng.integers(1, SLOTS + 1, size=size).astype(np.int32)
  for i in range(size):
    for j in range(count[i]):
      top, left = rng.integers(HEIGHT - 3), rng.integers(WIDTH - 3)
      bottom, right = top + rng.integers(2, HEIGHT - top), left + rng.integers(2, WIDTH - left)
      masks[i, j, top:bottom, left:right] = 0.9
      boxes[i, j] = [top / HEIGHT, left / WIDTH, bottom / HEIGHT, right / WIDTH]
  classes = np.where(np.arange(SLOTS) < count[:, None], rng.integers(3, size=(size, SLOTS)), 0).astype(np.int32)
  return records.Batch(images=rng.uniform(size=(size, HEIGHT, WIDTH, 3)).astype(np.float32),
                       params=rng.normal(size=(size, SLOTS, 6)).astype(np.float32),
                       labels={"boxes": boxes, "classes": classes, "count": count}, masks=masks, hardness=hardness)


def decode_png(data) -> np.ndarray:
  return tf.io.decode_png(data).numpy()


def as_pixels(images: np.ndarray) -> np.ndarray:
  return np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)


@pytest.mark.parametrize("detection", [False, True], ids=["classification", "detection"])
def test_records_parse_back_with_the_feature_spec_to_what_was_encoded(detection):
  batch = toy_batch(detection)
  encoder = records.RecordEncoder(CLASS_NAMES, detection)
  rows = np.array([3, 1])
  encoded = encoder.encode(batch, rows, first=5, shard=2)
  assert encoded == encoder.encode(batch, rows, first=5, shard=2)  # Byte for byte: datasets are reproducible.
  assert encoder.encode(batch, np.array([], np.int64), 0, 2) == []
  spec = records.feature_spec(detection, masks=True, hardness=True)
  for n, (i, (record, annotation)) in enumerate(zip(rows, encoded)):
    # The spec names every key a record holds, no more.
    assert set(tf.train.Example.FromString(record).features.feature) == set(spec)
    parsed = {key: (tf.sparse.to_dense(value) if isinstance(value, tf.SparseTensor) else value).numpy()
              for key, value in tf.io.parse_single_example(record, spec).items()}
    source_id = f"00002-{5 + n:06d}"
    assert parsed["image/source_id"].decode() == annotation["source_id"] == source_id
    assert parsed["image/format"] == b"png"
    image = decode_png(parsed["image/encoded"])
    np.testing.assert_array_equal(image, as_pixels(batch.images[i]))
    assert tuple(parsed[f"image/{k}"] for k in ("height", "width", "channels")) == image.shape
    np.testing.assert_allclose(parsed["synthesizer/params"], batch.params[i].reshape(-1))
    assert parsed["target/hardness"] == annotation["hardness"] == pytest.approx(batch.hardness[i])
    if not detection:
      label = batch.labels["label"][i]
      assert parsed["image/class/label"] == annotation["label"] == label
      assert parsed["image/class/text"].decode() == CLASS_NAMES[label]
      np.testing.assert_array_equal(decode_png(parsed["image/mask/encoded"]), as_pixels(batch.masks[i]))
      continue
    count = batch.labels["count"][i]
    boxes = np.stack([parsed[f"image/object/bbox/{k}"] for k in ("ymin", "xmin", "ymax", "xmax")], -1)
    np.testing.assert_allclose(boxes, batch.labels["boxes"][i, :count])
    np.testing.assert_allclose(annotation["boxes"], batch.labels["boxes"][i, :count])
    np.testing.assert_array_equal(parsed["image/object/class/label"], batch.labels["classes"][i, :count])
    assert annotation["classes"] == batch.labels["classes"][i, :count].tolist()
    assert [t.decode() for t in parsed["image/object/class/text"]] == [CLASS_NAMES[c] for c in annotation["classes"]]
    # One PNG instance mask per object (255 where it is visible), and the same mask as COCO RLE.
    visible = batch.masks[i, :count, ..., 0] > 0.5
    pngs = parsed["image/object/mask"]
    assert len(pngs) == len(annotation["segmentation"]) == count
    for png, rle, mask in zip(pngs, annotation["segmentation"], visible):
      np.testing.assert_array_equal(decode_png(png)[..., 0], mask * 255)
      np.testing.assert_array_equal(coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}),
                                    mask)


def test_a_shard_is_in_place_only_once_its_sidecar_is_written(tmp_path):
  name = records.shard_name(1, 3)
  assert records.SHARD_NAME.match(name).groups() == ("00001", "00003")
  path = str(tmp_path / name)
  batch = toy_batch(detection=True)
  encoder = records.RecordEncoder(CLASS_NAMES, detection=True)
  encoded = encoder.encode(batch, np.array([0, 1]), 0, 1) + encoder.encode(batch, np.array([2, 3]), 2, 1)
  with records.ShardWriter(path) as writer:
    writer.write(encoded[:2])
    writer.write(encoded[2:])
    assert not os.path.exists(path) and not os.path.exists(records.sidecar_path(path))
    sidecar = writer.finish(shard=1, drawn=9, recipe={"seed": 1})
  assert sorted(os.listdir(tmp_path)) == [name[:-len(records.RECORD_SUFFIX)] + records.SIDECAR_SUFFIX, name]
  with open(records.sidecar_path(path)) as f:
    assert json.load(f) == sidecar
  assert (sidecar["shard"], sidecar["records"], sidecar["drawn"], sidecar["recipe"]) == (1, 4, 9, {"seed": 1})
  assert [a["source_id"] for a in sidecar["annotations"]] == [f"00001-{k:06d}" for k in range(4)]
  assert [r.numpy() for r in tf.data.TFRecordDataset(path)] == [record for record, _ in encoded]

  # The preview: the first records with their boxes drawn in red, read back from the shard.
  preview = tmp_path / records.PREVIEW
  records.write_preview(str(preview), path, count=3)
  grid = decode_png(preview.read_bytes())
  assert grid.shape == (HEIGHT, 3 * WIDTH, 3)
  assert np.all(grid == [255, 0, 0], axis=-1).any()

  # A shard cut short leaves neither records nor a sidecar in place: a resume writes it again.
  cut_short = str(tmp_path / records.shard_name(2, 3))
  with pytest.raises(KeyboardInterrupt), records.ShardWriter(cut_short) as writer:
    writer.write(encoded)
    raise KeyboardInterrupt
  assert not os.path.exists(cut_short) and not os.path.exists(records.sidecar_path(cut_short))


def test_coco_annotations_load_in_pycocotools_with_boxes_and_masks_of_every_record(tmp_path):
  batch = toy_batch(detection=True)
  encoder = records.RecordEncoder(CLASS_NAMES, detection=True)
  shards = [(records.shard_name(k, 2), {"annotations": [a for _, a in encoder.encode(batch, rows, 0, k)]})
            for k, rows in enumerate((np.array([0, 1, 2]), np.array([3])))]
  path = str(tmp_path / records.ANNOTATIONS)
  records.write_coco(path, shards, (HEIGHT, WIDTH), CLASS_NAMES, masks=True)
  coco = COCO(path)
  assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == CLASS_NAMES
  images = coco.loadImgs(sorted(coco.getImgIds()))
  assert [image["file_name"] for image in images] == [f"{shards[0][0]}:{k}" for k in range(3)] + [
      f"{shards[1][0]}:0"]
  for i, image in enumerate(images):
    assert (image["height"], image["width"]) == (HEIGHT, WIDTH)
    objects = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
    count = batch.labels["count"][i]
    assert len(objects) == count
    for j, annotation in enumerate(objects):
      assert annotation["category_id"] == batch.labels["classes"][i, j] + 1  # COCO's ids start at 1.
      ymin, xmin, ymax, xmax = batch.labels["boxes"][i, j]
      np.testing.assert_allclose(annotation["bbox"], [xmin * WIDTH, ymin * HEIGHT, (xmax - xmin) * WIDTH,
                                                      (ymax - ymin) * HEIGHT], atol=1e-4)
      visible = batch.masks[i, j, ..., 0] > 0.5
      np.testing.assert_array_equal(coco.annToMask(annotation), visible)
      assert annotation["area"] == np.count_nonzero(visible)
