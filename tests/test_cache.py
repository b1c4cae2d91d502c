"""The on-disk hard-example cache: quotas, order, dtypes, streaming, and what survives a kill."""

import os

import numpy as np
import pytest
import tensorflow as tf

from terse_tf.cache import HardExampleCache
from terse_tf.errors import DataError


def candidates(classes, value=0.5):
  """(images, labels, quota classes, margins): detection-style labels, so several label keys travel."""
  classes = np.asarray(classes)
  images = np.full((len(classes), 4, 4, 1), value, np.float32)
  images[:, 0, 0, 0] = np.arange(len(classes)) / 100  # tell entries apart
  labels = {"boxes": np.tile(np.arange(len(classes), dtype=np.float32)[:, None, None], [1, 2, 4]),
            "classes": np.stack([classes, classes], axis=1).astype(np.int32),
            "count": np.ones(len(classes), np.int32)}
  return images, labels, classes, -np.linspace(0, 1, len(classes))


def new_cache(tmp_path, num_classes=3):
  cache = HardExampleCache(str(tmp_path / "cache"), num_classes)
  cache.sync()
  return cache


def test_per_class_quota_per_cycle(tmp_path):
  cache = new_cache(tmp_path)
  images, labels, classes, margins = candidates([0, 0, 0, 1, 2, 0])
  assert cache.add(images, labels, classes, margins, cycle=1, per_class_quota=2) == 4
  assert cache.class_counts(cycle=1).tolist() == [2, 1, 1]
  cache.commit()
  # The first candidates of a class win; later ones of a full class are dropped; labels follow their image.
  stored, stored_labels = cache.contents()
  np.testing.assert_allclose(stored[:, 0, 0, 0] / 255, [0.0, 0.01, 0.03, 0.04], atol=0.003)
  assert stored_labels["classes"][:, 0].tolist() == [0, 0, 1, 2]
  assert stored_labels["boxes"][:, 0, 0].tolist() == [0, 1, 3, 4]
  # A new cycle has its own quota; the old entries stay.
  assert cache.add(images, labels, classes, margins, cycle=2, per_class_quota=2) == 4
  assert len(cache) == 8 and cache.class_counts().tolist() == [4, 2, 2]


def test_images_are_stored_as_uint8(tmp_path):
  cache = new_cache(tmp_path)
  cache.add(*candidates([1], value=1.0), cycle=1, per_class_quota=1)
  cache.commit()
  assert cache.contents()[0].dtype == np.uint8 and cache.contents()[0][0, 1, 1, 0] == 255


def test_the_stream_holds_every_committed_entry_in_order(tmp_path):
  cache = new_cache(tmp_path)
  assert cache.dataset() is None
  for cycle in (1, 2, 3):  # Three shards.
    cache.add(*candidates([0, 1, 2]), cycle=cycle, per_class_quota=5)
    cache.commit()
  assert len(os.listdir(tmp_path / "cache")) == 3
  streamed = list(cache.dataset().as_numpy_iterator())
  images, labels = cache.contents()
  assert len(streamed) == 9
  for i, (image, label) in enumerate(streamed):
    np.testing.assert_array_equal(image, images[i])
    for key in labels:
      np.testing.assert_array_equal(label[key], labels[key][i])


def test_a_shard_written_after_the_last_checkpoint_is_dropped_on_resume(tmp_path):
  cache = new_cache(tmp_path)
  cache.add(*candidates([2, 1, 0, 2]), cycle=3, per_class_quota=5)
  cache.commit()
  path = tf.train.Checkpoint(cache=cache).save(str(tmp_path / "ckpt"))
  # Killed between writing the next shard and the checkpoint that would count it, and mid-write of a third.
  cache.add(*candidates([0, 0]), cycle=3, per_class_quota=5)
  cache.commit()
  (tmp_path / "cache" / "tmpabc.tmp").write_bytes(b"half a shard")
  restored = HardExampleCache(str(tmp_path / "cache"), 3)
  tf.train.Checkpoint(cache=restored).restore(path).assert_existing_objects_matched()
  restored.sync()
  assert sorted(os.listdir(tmp_path / "cache")) == ["shard-00000.npz"]
  assert len(restored) == 4 and restored.class_counts(cycle=3).tolist() == [1, 1, 2]
  np.testing.assert_array_equal(restored.margins(), cache.margins()[:4])
  # Filling resumes from the checkpoint's state: the quota counts only the entries it saw.
  assert restored.add(*candidates([0, 0, 0]), cycle=3, per_class_quota=2) == 1


def test_a_missing_shard_is_an_error_naming_it(tmp_path):
  cache = new_cache(tmp_path)
  cache.add(*candidates([0]), cycle=1, per_class_quota=1)
  cache.commit()
  os.remove(tmp_path / "cache" / "shard-00000.npz")
  with pytest.raises(DataError, match="shard-00000.npz.*--fresh"):
    cache.sync()


def test_a_damaged_shard_is_an_error_naming_it(tmp_path):
  cache = new_cache(tmp_path)
  cache.add(*candidates([0]), cycle=1, per_class_quota=1)
  cache.commit()
  path = tmp_path / "cache" / "shard-00000.npz"
  path.write_bytes(path.read_bytes()[:100])  # Truncated, as by a full disk.
  with pytest.raises(DataError, match="shard-00000.npz: damaged cache shard.*--fresh"):
    cache.sync()


def test_shards_written_before_a_label_key_existed_read_as_zeros_there(tmp_path):
  """A run resumed by a version that writes "ignore_boxes" adds shards with a key its older ones lack: the
  older entries read as having no ignore boxes (zero rows), in the stream and in `contents`."""
  cache = new_cache(tmp_path)
  cache.add(*candidates([0, 1]), cycle=1, per_class_quota=5)
  cache.commit()
  images, labels, classes, margins = candidates([2, 0])
  labels["ignore_boxes"] = np.full([2, 2, 4], 0.25, np.float32)
  cache.add(images, labels, classes, margins, cycle=2, per_class_quota=5)
  cache.commit()
  _, stored = cache.contents()
  assert set(stored) == {"boxes", "classes", "count", "ignore_boxes"}
  np.testing.assert_array_equal(stored["ignore_boxes"],
                                np.concatenate([np.zeros([2, 2, 4]), labels["ignore_boxes"]]))
  streamed = [label["ignore_boxes"] for _, label in cache.dataset().as_numpy_iterator()]
  np.testing.assert_array_equal(np.stack(streamed), stored["ignore_boxes"])


def test_weighted_entries_fill_the_quota_by_their_weights(tmp_path):
  """Under an instance quota each entry counts its objects: a class takes entries while it has room, so it
  may end past its quota by less than the last entry's weight; entries per class are still counted apart."""
  cache = new_cache(tmp_path, num_classes=2)
  images, labels, classes, margins = candidates([0, 0, 0, 1, 1, 1])
  weights = np.array([3, 2, 1, 1, 1, 1])
  assert cache.add(images, labels, classes, margins, cycle=1, per_class_quota=4, weights=weights) == 5
  assert cache.quota_filled(cycle=1).tolist() == [5, 3] and cache.class_counts(cycle=1).tolist() == [2, 3]
  # A full class takes nothing more; the other fills up to its quota.
  assert cache.add(images, labels, classes, margins, cycle=1, per_class_quota=4, weights=weights) == 1
  assert cache.quota_filled(cycle=1).tolist() == [5, 4]
  assert cache.quota_filled(cycle=2).tolist() == [0, 0]
  cache.commit()
  path = tf.train.Checkpoint(cache=cache).save(str(tmp_path / "ckpt"))
  restored = HardExampleCache(str(tmp_path / "cache"), 2)
  tf.train.Checkpoint(cache=restored).restore(path).assert_existing_objects_matched()
  restored.sync()
  assert restored.quota_filled(cycle=1).tolist() == [5, 4]


def test_shards_written_before_weights_existed_count_each_entry_once(tmp_path):
  cache = new_cache(tmp_path)
  cache.add(*candidates([0, 1, 1]), cycle=1, per_class_quota=5, weights=np.array([4, 4, 4]))
  cache.commit()
  path = tmp_path / "cache" / "shard-00000.npz"
  with np.load(path) as shard:
    old = {key: shard[key] for key in shard.files if key != "weight"}
  np.savez(path, **old)
  cache.sync()
  assert cache.quota_filled(cycle=1).tolist() == [1, 2, 0]
