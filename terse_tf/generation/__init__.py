"""Dataset generation: an exported synthesizer -> a synthetic dataset of its composites, as sharded TFRecords
(plus COCO-format annotations for detection) that any model can train on (`python -m terse_tf.generate`).

One concern a module, each importing only those listed before it:
  inputs.py      the cut-outs and background photos, and each batch's random draw (seeded per shard);
  records.py     the dataset on disk: records (their keys and feature spec), shards and sidecars,
                 annotations.json (COCO), preview.png;
  signatures.py  the exported synthesizer and target, run on one batch's draw;
  generator.py   GenerateConfig and the Generator: the shard loop, resuming and its recipe checks.
"""

from terse_tf.generation.generator import GenerateConfig, Generator

__all__ = ["GenerateConfig", "Generator"]
