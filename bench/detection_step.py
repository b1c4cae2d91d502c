r"""Cost of one TERSE step against one plain target step, on the detection task (photo_digits).

    python bench/detection_step.py [--repeats=20] [--out=bench/results/detection_step.json]
    python bench/detection_step.py --flagfile=configs/photo_digits.flags   # any terse_tf.train flags apply
    python bench/detection_step.py --flagfile=configs/photo_digits.flags --target=frcnn_resnet18 \
        --out=bench/results/detection_step_frcnn_resnet18.json            # Faster R-CNN as T

A TERSE step is one update of each player on a batch: S's step (S forward, the compositor, T forward and
backward through the composite, D's verdict, S's update, T's hardness verdict), D's step in lockstep, and
T's step. The goal is that it costs at most 3x one step of T alone on a batch of the same size (the
fine-tuning step). Both are timed in one process, interleaved round by round, and reported as the ratio of
medians, because absolute times on shared machines drift.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import report as bench_report  # pylint: disable=wrong-import-position
from terse_tf import pipelines, train, trainer as trainer_lib  # pylint: disable=wrong-import-position

flags.DEFINE_integer("repeats", 20, "Timed rounds (after warm-up).", lower_bound=3)
flags.DEFINE_string("out", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                        "detection_step.json"), "Where to write the figures.")
FLAGS = flags.FLAGS
GOAL_RATIO = 3.0


def main(argv):
  del argv
  if FLAGS["task"].using_default_value:
    FLAGS.task = "photo_digits"
  if FLAGS["discriminator"].using_default_value:
    FLAGS.discriminator = True
  with tempfile.TemporaryDirectory() as run_dir:
    FLAGS.run_dir = run_dir
    config = train.config_from_flags()
    trainer = trainer_lib.Trainer(config)
    batch = next(iter(pipelines.synth_dataset(trainer.task, trainer.strategy, trainer.config.synth_batch_size, 0,
                                              with_real=trainer.discriminator is not None)))
    synth_batch, real = batch if trainer.discriminator is not None else (batch, None)
    images, labels = trainer.task.real_examples()
    size = config.synth_batch_size
    target_batch = (tf.constant(images[:size], tf.float32) / 255.0,
                    {k: tf.constant(v[:size]) for k, v in labels.items()})

    def terse_step():
      """S's step, D's step in lockstep, and T's step: one of each player's updates."""
      outputs, composites = trainer._synth_step(synth_batch)  # pylint: disable=protected-access
      if trainer.discriminator is not None:
        outputs = outputs, trainer._discriminator_step(real, composites)  # pylint: disable=protected-access
      return outputs, trainer._target_step(target_batch)  # pylint: disable=protected-access

    steps = {"target_step": lambda: trainer._target_step(target_batch),  # pylint: disable=protected-access
             "terse_step": terse_step}
    for step in steps.values():  # Warm-up: tracing stays out of the figures.
      for _ in range(3):
        tf.nest.map_structure(lambda t: t.numpy(), step())
    samples = {name: [] for name in steps}
    for _ in range(FLAGS.repeats):
      for name, step in steps.items():
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), step())
        samples[name].append(time.perf_counter() - start)
  medians = {name: float(np.median(times)) for name, times in samples.items()}
  ratio = medians["terse_step"] / medians["target_step"]
  report = {**bench_report.header(GOAL_RATIO), "batch_size": size, "image_shape": list(trainer.task.image_shape),
            "target": config.target, "discriminator": config.discriminator,
            "median_ms": {k: round(v * 1e3, 2) for k, v in medians.items()},
            "terse_step_over_target_step": round(ratio, 2)}
  players = "S + D + T" if config.discriminator else "S + T"
  print(f"batch {size} at {trainer.task.image_shape}: target step {medians['target_step'] * 1e3:.1f} ms, TERSE "
        f"step ({players}) {medians['terse_step'] * 1e3:.1f} ms: {ratio:.2f}x (goal <= {GOAL_RATIO}x)")
  bench_report.write(report, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
