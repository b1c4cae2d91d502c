r"""Launcher: write a synthetic dataset with an exported synthesizer.

    python -m terse_tf.generate --synthesizer=runs/photo_digits/export/synthesizer \
        --foregrounds=my_cutouts/ --backgrounds=my_photos/ --num=10000 --out=synthetic/ \
        [--target=runs/photo_digits/export/target --hard_only]

(`--foregrounds=bundled --backgrounds=bundled`: the MNIST digits and sample photos that ship with terse_tf.)

Rerunning the same command resumes: finished shards are kept, the rest are written. generation/records.py
has the record format; the README has a walk-through.
"""

from __future__ import annotations

import sys

from absl import app, flags

from terse_tf import export, generation, launch
from terse_tf.errors import TerseError

flags.DEFINE_string("synthesizer", "", "Exported synthesizer: a SavedModel or a TF Serving model directory "
                    "(its highest version), e.g. runs/affnist/export/synthesizer.")
flags.DEFINE_string("foregrounds", "", "Folder of cut-outs, one sub-folder per class: <class>/<name>.png with "
                    "alpha, or an image with <name>.mask.png beside it; 'bundled': 1,000 of the MNIST digits "
                    "that ship with terse_tf, in the synthesizer's classes.")
flags.DEFINE_string("backgrounds", "", "Folder of photos to crop backgrounds from; 'bundled': the sample photos "
                    "of scikit-image and matplotlib; '' black backgrounds.")
flags.DEFINE_integer("num", 1000, "Composites to write.", lower_bound=1)
flags.DEFINE_string("out", "", "Output folder (TFRecord shards, each with its .json sidecar, annotations.json, "
                    "preview.png, generation.json).")
flags.DEFINE_integer("shard_size", 1000, "Composites per TFRecord shard.", lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "Composites per synthesizer call.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "The dataset is a function of this seed (and the inputs).")
flags.DEFINE_string("signature", export.GENERATE, "Synthesizer signature: generate (seeded: reproducible), "
                    "sample (dropout on, unseeded) or serving_default (inference mode).")
flags.DEFINE_string("target", "", "Exported target: records its hardness of each composite.")
flags.DEFINE_bool("hard_only", False, "Keep only composites the --target finds hard (hardness below "
                  "--hard_threshold, the trainer's cache criterion).")
flags.DEFINE_float("hard_threshold", None, "Hardness below which a composite is hard, as the trainer's: the "
                   "classifier's p_gt - max_other in [-1, 1] (default 0.0), the detector's confidence at the "
                   "object in [0, 1] (default 0.5). Unset: the --target's default.")
flags.DEFINE_integer("max_objects", 0, "Detection: objects per image drawn from 1..max_objects (0: as many "
                     "as the synthesizer has slots).", lower_bound=0)
flags.DEFINE_bool("write_masks", False, "Also store masks: the pasted object's alpha (classification), or "
                  "each boxed object's visible mask as PNG instance masks and COCO RLE (detection).")
flags.DEFINE_bool("jit_compile", True, "Run the synthesizer compiled by XLA (1.8x the composites per second at "
                  "300x300 on CPU, BENCHMARKS.md). "
                  "XLA draws other random numbers for a seed than the plain graph, so datasets made with and "
                  "without it differ; each is deterministic.")
FLAGS = flags.FLAGS


def config_from_flags() -> generation.GenerateConfig:
  f = FLAGS
  return generation.GenerateConfig(
      synthesizer=f.synthesizer, foregrounds=f.foregrounds, backgrounds=f.backgrounds, num=f.num, out=f.out,
      shard_size=f.shard_size, batch_size=f.batch_size, seed=f.seed, signature=f.signature, target=f.target,
      hard_only=f.hard_only, hard_threshold=f.hard_threshold, max_objects=f.max_objects,
      write_masks=f.write_masks, jit_compile=f.jit_compile)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    generation.Generator(config_from_flags()).run()
  except TerseError as e:
    sys.exit(f"terse_tf.generate: error: {e}")
  except KeyboardInterrupt:
    launch.exit_interrupted("terse_tf.generate: interrupted. Rerun the same command to resume: finished shards "
                            "are kept.")


def run() -> None:
  """Entry point of `python -m terse_tf.generate` and the console script terse-generate."""
  launch.run(main, __name__)


if __name__ == "__main__":
  run()
