r"""Compositor speed: our differentiable warp (forward + backward) vs TF's forward-only transform op.

    python bench/compositor.py [--repeats=30] [--out=bench/results/compositor.json]

`tf.raw_ops.ImageProjectiveTransformV3` (the op behind tfa.image.transform) is the fastest warp TF has, but
it has no gradient with respect to the transform, so it cannot train the synthesizer. The goal is that our
forward+backward pass costs at most 1.5x that op's forward pass. Two backward passes are timed: gradients
for the parameters only (what training S computes, since foregrounds and backgrounds are data) and for the
parameters and the image. Each configuration is timed in one process, interleaved round by round, and reported as the
ratio of medians, because absolute times on shared machines drift.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import report as bench_report  # pylint: disable=wrong-import-position
from terse_tf import compositor  # pylint: disable=wrong-import-position
from terse_tf.tasks import affnist as affnist_task  # pylint: disable=wrong-import-position

flags.DEFINE_integer("repeats", 30, "Timed rounds per configuration (after warm-up).", lower_bound=3)
flags.DEFINE_string("out", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                        "compositor.json"), "Where to write the figures.")
FLAGS = flags.FLAGS

CASES = (("40x40x1_batch256", 256, 40, 1), ("300x300x3_batch32", 32, 300, 3))
GOAL_RATIO = 1.5


def make_inputs(batch: int, size: int, channels: int):
  rng = np.random.default_rng(0)
  low, high = affnist_task.ranges().bounds()
  images = tf.constant(rng.uniform(size=(batch, size, size, channels)), tf.float32)
  params = tf.constant(rng.uniform(low, high, size=(batch, 6)), tf.float32)
  projection = tf.constant(rng.normal(size=(batch, size, size, channels)), tf.float32)
  return images, params, projection


def ours_forward_backward(jit: bool, image_gradient: bool):
  """Gradient for the parameters (what training S needs: fg and bg are data), optionally for the image."""
  @tf.function(jit_compile=jit)
  def step(images, params, projection):
    sources = [images, params] if image_gradient else [params]
    with tf.GradientTape() as tape:
      tape.watch(sources)
      size = tuple(images.shape[1:3])
      warped = compositor.warp(images, compositor.params_to_matrix(params, size))
      objective = tf.reduce_sum(warped * projection)
    return tape.gradient(objective, sources)
  return step


def ours_forward(jit: bool):
  @tf.function(jit_compile=jit)
  def step(images, params, projection):
    del projection
    return compositor.warp(images, compositor.params_to_matrix(params, tuple(images.shape[1:3])))
  return step


@tf.function
def reference_forward(images, params, projection):
  """ImageProjectiveTransformV3 with the same output->input sampling matrix, bilinear, zero fill."""
  del projection
  size = tuple(images.shape[1:3])
  matrix = compositor.params_to_matrix(params, size)
  transforms = tf.concat([tf.reshape(matrix, [-1, 6]), tf.zeros([tf.shape(matrix)[0], 2])], axis=1)
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=images, transforms=transforms, output_shape=tf.constant(size, tf.int32),
      fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")


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
  for name, batch, size, channels in CASES:
    inputs = make_inputs(batch, size, channels)
    agreement = float(tf.reduce_max(tf.abs(ours_forward(False)(*inputs) - reference_forward(*inputs))))
    medians = time_interleaved({
        "reference_forward": reference_forward,
        "ours_forward_xla": ours_forward(True),
        "ours_fwd_bwd_params_xla": ours_forward_backward(True, image_gradient=False),
        "ours_fwd_bwd_params_no_xla": ours_forward_backward(False, image_gradient=False),
        "ours_fwd_bwd_params_and_image_xla": ours_forward_backward(True, image_gradient=True),
        "ours_fwd_bwd_params_and_image_no_xla": ours_forward_backward(False, image_gradient=True),
    }, inputs, FLAGS.repeats)
    reference = medians["reference_forward"]
    case = {"median_ms": {k: round(v * 1e3, 3) for k, v in medians.items()},
            "ratio_vs_reference_forward": {k: round(v / reference, 2) for k, v in medians.items()
                                           if k != "reference_forward"},
            "max_abs_difference_forward": agreement}
    report["cases"][name] = case
    print(f"{name}: reference forward {case['median_ms']['reference_forward']:.3f} ms; ratios "
          + ", ".join(f"{k} {v:.2f}x" for k, v in case["ratio_vs_reference_forward"].items())
          + f"; max |ours - reference| forward = {agreement:.2e}")
  bench_report.write(report, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
