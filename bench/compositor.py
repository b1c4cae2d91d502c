r"""Compositor speed: our differentiable warp (forward + backward) vs TF's forward-only transform op.

    python bench/compositor.py [--repeats=30] [--out=bench/results/compositor.json]

`tf.raw_ops.ImageProjectiveTransformV3` (the op behind tfa.image.transform) is the fastest warp TF has, but
it has no gradient with respect to the transform, so it cannot train the synthesizer. The goal is that our
forward+backward pass costs at most 1.5x that op's forward pass. Two backward passes are timed: gradients
for the parameters only (what training S computes, since foregrounds and backgrounds are data) and for the
parameters and the image. Three cases: a whole image warped at affNIST's size and at 300x300 (every output
pixel is read), and the compositor's job in detection, a 40x40 RGBA cut-out pasted into a 300x300 frame over
photo_digits' ranges at that size (up to twice the digit's size), where our warp samples only the cut-out's
footprint (`compositor.warp_footprint`) and the reference op fills the whole frame. Each configuration is
timed in one process, interleaved round by round, and reported as the ratio of medians, because absolute
times on shared machines drift.
"""

from __future__ import annotations

import os
import sys
import time
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import report as bench_report  # pylint: disable=wrong-import-position
from terse_tf import compositor  # pylint: disable=wrong-import-position
from terse_tf.tasks import affnist as affnist_task  # pylint: disable=wrong-import-position
from terse_tf.tasks import photo_digits  # pylint: disable=wrong-import-position

flags.DEFINE_integer("repeats", 30, "Timed rounds per configuration (after warm-up).", lower_bound=3)
flags.DEFINE_string("out", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                        "compositor.json"), "Where to write the figures.")
FLAGS = flags.FLAGS


class Case(NamedTuple):
  name: str
  batch: int
  input_size: int
  output_size: int
  channels: int
  ranges: compositor.AffineRanges


CASES = (
    Case("40x40x1_batch256", 256, 40, 40, 1, affnist_task.ranges()),
    Case("300x300x3_batch32", 32, 300, 300, 3, affnist_task.ranges()),
    Case("paste_40x40x4_into_300x300_batch32", 32, 40, 300, 4,
         photo_digits.PhotoDigitsConfig(image_size=300).ranges()),
)
GOAL_RATIO = 1.5


def make_inputs(case: Case):
  rng = np.random.default_rng(0)
  low, high = case.ranges.bounds()
  images = tf.constant(rng.uniform(size=(case.batch, case.input_size, case.input_size, case.channels)),
                       tf.float32)
  params = tf.constant(rng.uniform(low, high, size=(case.batch, 6)), tf.float32)
  projection = tf.constant(rng.normal(size=(case.batch, case.output_size, case.output_size, case.channels)),
                           tf.float32)
  return images, params, projection


def ours(case: Case, jit: bool, gradient: str | None):
  """Our warp; with `gradient` "params" its gradient for the parameters (what training S needs: fg and bg
  are data), with "params_and_image" for both."""
  output_hw = (case.output_size, case.output_size)

  def warped(images, params):
    return compositor.warp_footprint(images, params, output_hw, case.ranges)

  @tf.function(jit_compile=jit)
  def step(images, params, projection):
    if gradient is None:
      return warped(images, params)
    sources = [images, params] if gradient == "params_and_image" else [params]
    with tf.GradientTape() as tape:
      tape.watch(sources)
      objective = tf.reduce_sum(warped(images, params) * projection)
    return tape.gradient(objective, sources)
  return step


def reference_forward(case: Case):
  """ImageProjectiveTransformV3 with the same output->input sampling matrix, bilinear, zero fill."""
  output_hw = (case.output_size, case.output_size)

  @tf.function
  def step(images, params, projection):
    del projection
    matrix = compositor.params_to_matrix(params, tuple(images.shape[1:3]), output_hw)
    transforms = tf.concat([tf.reshape(matrix, [-1, 6]), tf.zeros([tf.shape(matrix)[0], 2])], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.constant(output_hw, tf.int32),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
  return step


def time_interleaved(functions: dict, inputs, repeats: int) -> dict[str, float]:
  for fn in functions.values():  # Warm-up: tracing and XLA compilation stay out of the figures.
    for _ in range(3):
      tf.nest.map_structure(lambda t: t.numpy(), fn(*inputs))
  samples = {name: [] for name in functions}
  for _ in range(repeats):
    for name, fn in functions.items():
      start = time.perf_counter()
      tf.nest.map_structure(lambda t: t.numpy(), fn(*inputs))
      samples[name].append(time.perf_counter() - start)
  return {name: float(np.median(times)) for name, times in samples.items()}


def main(argv):
  del argv
  report = {**bench_report.header(GOAL_RATIO), "cases": {}}
  for case in CASES:
    name = case.name
    inputs = make_inputs(case)
    reference_fn = reference_forward(case)
    agreement = float(tf.reduce_max(tf.abs(ours(case, False, None)(*inputs) - reference_fn(*inputs))))
    medians = time_interleaved({
        "reference_forward": reference_fn,
        "ours_forward_xla": ours(case, True, None),
        "ours_fwd_bwd_params_xla": ours(case, True, "params"),
        "ours_fwd_bwd_params_no_xla": ours(case, False, "params"),
        "ours_fwd_bwd_params_and_image_xla": ours(case, True, "params_and_image"),
        "ours_fwd_bwd_params_and_image_no_xla": ours(case, False, "params_and_image"),
    }, inputs, FLAGS.repeats)
    reference = medians["reference_forward"]
    figures = {"footprint_window": compositor.footprint_side((case.input_size,) * 2, (case.output_size,) * 2,
                                                          case.ranges),
            "median_ms": {k: round(v * 1e3, 3) for k, v in medians.items()},
            "ratio_vs_reference_forward": {k: round(v / reference, 2) for k, v in medians.items()
                                           if k != "reference_forward"},
            "max_abs_difference_forward": agreement}
    report["cases"][name] = figures
    print(f"{name}: reference forward {figures['median_ms']['reference_forward']:.3f} ms; ratios "
          + ", ".join(f"{k} {v:.2f}x" for k, v in figures["ratio_vs_reference_forward"].items())
          + f"; max |ours - reference| forward = {agreement:.2e}")
  bench_report.write(report, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
