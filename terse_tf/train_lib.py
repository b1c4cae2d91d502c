"""The library behind the launcher: train (or resume) a run, then export its networks."""

from __future__ import annotations

import dataclasses
import os

from absl import logging

from terse_tf import export
from terse_tf.trainer import FOREGROUND_SHAPE, IMAGE_SHAPE, Trainer, TrainConfig, write_json


def run(config: TrainConfig, command_line: str = "") -> dict:
  """Writes the resolved config, runs every remaining phase, exports; returns the results."""
  trainer = Trainer(config)  # Creates the run directory only once the run can start.
  write_json(os.path.join(config.run_dir, "config.json"),
             {"command": command_line, "config": dataclasses.asdict(config)})
  results = trainer.run()
  if config.export:
    paths = export.export_models(trainer.synthesizer, trainer.target, config.compositor, FOREGROUND_SHAPE,
                                 IMAGE_SHAPE, os.path.join(config.run_dir, "export"))
    logging.info("exported SavedModels: %s", paths)
  logging.info("affNIST-test accuracy: %.4f before TERSE, %s after %d cycles; results in %s",
               results["affnist_test_accuracy_before"] or float("nan"),
               "n/a" if results["affnist_test_accuracy_after"] is None else
               f"{results['affnist_test_accuracy_after']:.4f}", results["cycles_completed"],
               os.path.join(config.run_dir, "results.json"))
  return results
