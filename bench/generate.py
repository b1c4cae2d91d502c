r"""Dataset generation throughput against the compositor's own forward throughput at the same size.

    python bench/generate.py [--num=2000] [--out=bench/results/generate.json]

Two synthesizers, exported untrained (the network's weights do not change its cost): affNIST's (40x40 grey
digits) and photo_digits' at 300x300 (3 coloured digits per scene on photo crops, the compact backbone).
For each, `terse_tf.generate`'s rate (composites written per second: S, the compositor, PNG encoding,
serialisation and the TFRecord writes) is set against the rate at which the compositor alone pastes the
same batches, as the served signature runs it and compiled by XLA (as the generator runs the signature),
timed before and after the generator in the same process. Goal: generation within 2x of the faster of the
two (ratio = compositor rate / generator rate <= 2).
Also timed the same way: the synthesizer's signature alone (S and the compositor, what the generator cannot
avoid), so that the generator's own overhead (drawing inputs, encoding, writing) shows as the ratio of the
signature's rate to the generator's.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import report as bench_report  # pylint: disable=wrong-import-position
from terse_tf import compositor, export, generation, train  # pylint: disable=wrong-import-position
from terse_tf import trainer as trainer_lib  # pylint: disable=wrong-import-position
from terse_tf.data import cutouts, mnist, photos  # pylint: disable=wrong-import-position

flags.DEFINE_integer("num", 2000, "Composites generated per case.", lower_bound=64)
flags.DEFINE_integer("batch", 64, "Composites per synthesizer call.", lower_bound=1)
flags.DEFINE_string("out", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                        "generate.json"), "Where to write the figures.")
FLAGS = flags.FLAGS
GOAL_RATIO = 2.0
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {
    "affnist_40x40": [f"--flagfile={REPO}/configs/affnist_smoke.flags"],
    "photo_digits_300x300": [f"--flagfile={REPO}/configs/photo_digits_smoke.flags", "--photo_image_size=300"],
}


def build(arguments: list[str], root: str):
  """(task, exported synthesizer path) of an untrained run of the given launcher flags."""
  flag_values = copy.deepcopy(train.FLAGS)
  flag_values(["bench", *arguments, f"--run_dir={root}/run", "--affnist_cache_dir=", "--cycles=0",
               "--baseline_epochs=0", "--noexport"])
  trainer = trainer_lib.Trainer(train.config_from_flags(flag_values))
  paths = export.export_models(trainer.task, trainer.synthesizer, trainer.target, f"{root}/export")
  return trainer.task, paths[export.SYNTHESIZER_DIR]


def write_inputs(root: str, coloured: bool) -> None:
  images, labels = mnist.load_bundled()
  rng = np.random.default_rng(0)
  pick = rng.choice(len(images), 500, replace=False)
  alpha = mnist.pad_to(images[pick]).astype(np.float32)[..., None] / 255
  colour = rng.uniform(size=(500, 1, 1, 3)) if coloured else np.ones((500, 1, 1, 3))
  rgba = np.concatenate([np.broadcast_to(colour, alpha.shape[:-1] + (3,)), alpha], -1)
  if coloured:
    cutouts.write_cutouts(rgba, np.zeros(500, np.int64), ["digit"], f"{root}/cutouts")
  else:
    cutouts.write_cutouts(rgba, labels[pick], [str(d) for d in range(10)], f"{root}/cutouts")
  os.makedirs(f"{root}/photos")
  for path in photos._bundled_paths("train"):  # pylint: disable=protected-access
    shutil.copy(path, f"{root}/photos")


def compositor_rate(generator: generation.Generator, task, compiled: bool, rounds: int = 10) -> float:
  """Composites per second of the compositor alone (the served signature's path, or with `compiled` that
  path compiled by XLA, as the generator runs it) on the generator's own inputs, with fixed parameters
  inside the task's ranges."""
  draw = generator.inputs.draw(FLAGS.batch, np.random.default_rng(0))
  foreground, background, classes = draw.foreground, draw.background, draw.classes
  ranges = task.compositor.ranges
  low, high = ranges.bounds()
  rng = np.random.default_rng(1)
  if classes is None:
    params = tf.constant(rng.uniform(low, high, (FLAGS.batch, 6)), tf.float32)
    paste = tf.function(lambda f, b, p: compositor.composite(f, b, p, task.compositor).image)
    arguments = (tf.constant(foreground), tf.constant(background), params)
  else:
    params = tf.constant(rng.uniform(low, high, (*classes.shape, 6)), tf.float32)
    composite = task._compositing(task.compositor, compiled=False)  # pylint: disable=protected-access
    paste = tf.function(lambda f, b, p, v: composite(f, b, p, v).image)
    arguments = (tf.constant(foreground), tf.constant(background), params, tf.constant(classes >= 0))
  if compiled:
    paste = tf.function(paste.python_function, jit_compile=True)
  paste(*arguments).numpy()
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    paste(*arguments).numpy()
    times.append(time.perf_counter() - start)
  return FLAGS.batch / float(np.median(times))


def signature_rate(generator: generation.Generator, rounds: int = 10) -> float:
  """Composites per second of the synthesizer's signature alone (S + the compositor) on the generator's
  own inputs."""
  draw = generator.inputs.draw(FLAGS.batch, np.random.default_rng(0))
  arguments = (draw.foreground, draw.background, draw.classes, draw.seed)
  generator.synthesizer(*arguments)
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    generator.synthesizer(*arguments)
    times.append(time.perf_counter() - start)
  return FLAGS.batch / float(np.median(times))


def main(argv):
  del argv
  report = {**bench_report.header(GOAL_RATIO), "cases": {}}
  for name, arguments in CASES.items():
    with tempfile.TemporaryDirectory() as root:
      task, synthesizer = build(arguments, root)
      coloured = "photo_digits" in name
      write_inputs(root, coloured)
      config = generation.GenerateConfig(synthesizer=synthesizer, foregrounds=f"{root}/cutouts",
                                         backgrounds=f"{root}/photos" if coloured else "", out=f"{root}/out",
                                         num=FLAGS.num, shard_size=1000, batch_size=FLAGS.batch)
      generator = generation.Generator(config)
      def compositor_rates() -> tuple[float, float]:
        return compositor_rate(generator, task, compiled=False), compositor_rate(generator, task, compiled=True)

      (plain_before, xla_before), signature_before = compositor_rates(), signature_rate(generator)
      summary = generator.run()
      (plain_after, xla_after), signature_after = compositor_rates(), signature_rate(generator)
      rate = summary["composites_per_second"]
      plain, xla = (plain_before + plain_after) / 2, (xla_before + xla_after) / 2
      # The goal is set against the faster compositor: the generator runs the signature compiled by XLA.
      reference, signature = max(plain, xla), (signature_before + signature_after) / 2
      case = {"generator_composites_per_second": rate, "compositor_composites_per_second": round(reference, 1),
              "compositor_plain_before_after": [round(plain_before, 1), round(plain_after, 1)],
              "compositor_xla_before_after": [round(xla_before, 1), round(xla_after, 1)],
              "ratio_compositor_over_generator": round(reference / rate, 2),
              "signature_composites_per_second": round(signature, 1),
              "signature_before_after": [round(signature_before, 1), round(signature_after, 1)],
              "ratio_signature_over_generator": round(signature / rate, 2),
              "bytes_written": sum(os.path.getsize(os.path.join(config.out, f)) for f in os.listdir(config.out))}
      report["cases"][name] = case
      print(f"{name}: generator {rate:.1f}/s, compositor alone {reference:.1f}/s (plain {plain:.1f}, XLA "
            f"{xla:.1f}): ratio {case['ratio_compositor_over_generator']:.2f}x "
            f"(goal <= {GOAL_RATIO}x); the signature alone (S + compositor) {signature:.1f}/s: the generator's "
            f"own overhead {case['ratio_signature_over_generator']:.2f}x")
  bench_report.write(report, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
