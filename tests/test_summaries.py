"""What TensorBoard gets, read back from the event files."""

import glob

import numpy as np
import tensorflow as tf

from terse_tf import compositor, summaries
from terse_tf.tasks import image_grid


def events(log_dir) -> dict[str, list]:
  """tag -> the values written under it (scalars as floats, others as their tensors' shapes)."""
  written = {}
  for path in glob.glob(f"{log_dir}/*"):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        tensor = tf.make_ndarray(value.tensor)
        written.setdefault(value.tag, []).append(float(tensor) if tensor.ndim == 0 else tensor.shape)
  return written


def test_a_cycles_hard_examples_give_a_capped_grid_and_histograms(tmp_path):
  writer = tf.summary.create_file_writer(str(tmp_path))
  hard = summaries.HardExamples()
  rng = np.random.default_rng(0)
  for _ in range(3):  # Three steps of 40 hard composites each: the grid keeps the first PREVIEW_COUNT.
    composites = rng.uniform(size=(40, 8, 8, 1)).astype(np.float32)
    hard.add(composites, {"label": np.zeros(40, np.int32)}, rng.uniform(-1, 1, 50),
             rng.normal(size=(40, compositor.NUM_PARAMS)))
  assert sum(len(images) for images, _ in hard.examples) == summaries.PREVIEW_COUNT
  hard.write(writer, cycle=2, steps=3, preview=lambda images, labels: image_grid(images), hardness_range=(-1, 1))
  writer.flush()
  written = events(tmp_path)
  assert written["synth/steps_to_fill_cache"] == [3.0]
  assert written["composites/hard_examples_by_cycle"]  # One grid of 8 x 8 composites.
  shares = [written[f"hardness_share/terse/bin{i}"][0] for i in range(10)]
  assert np.isclose(sum(shares), 1.0)  # Every one of the 150 scores falls in a bin of [-1, 1].
  histograms = {tag.split("/")[-1] for tag in written if tag.startswith("synth/hard_params/")}
  assert histograms == set(compositor.PARAM_NAMES)


def test_evaluations_and_epochs_are_scalars_at_their_step(tmp_path):
  writer = tf.summary.create_file_writer(str(tmp_path))
  summaries.evaluation(writer, cycle=1, metrics={"test_accuracy": 0.75}, cache_size=40)
  summaries.target_epoch(writer, step=12, mean_loss=0.5)
  writer.flush()
  written = events(tmp_path)
  assert written["eval/test_accuracy"] == [0.75] and written["eval/cache_size"] == [40.0]
  assert written["train/target_loss"] == [0.5]
