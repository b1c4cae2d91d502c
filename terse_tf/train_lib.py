"""The library behind the launcher: train (or resume) a run, then export its networks."""

from __future__ import annotations

import os

from absl import logging

from terse_tf import export
from terse_tf.config import TrainConfig
from terse_tf.tasks import Task
from terse_tf.trainer import Trainer


def run(config: TrainConfig, command_line: str = "", task: Task | None = None) -> dict:
  """Runs every remaining phase, exports; returns the results. `task`: one built in Python (terse_tf.api)
  instead of the one the config names; `command_line`: what the run's config.json records."""
  trainer = Trainer(config, task, command_line)  # Creates the run directory only once the run can start.
  try:
    # A rerun of a finished run with both exports written has nothing to do. Read on the chief's run
    # directory, which every worker sees, and by every worker before any exports, so that all of them export
    # (a collective) or none.
    finished = trainer.complete and all(export.versions(os.path.join(config.run_dir, "export", name))
                                        for name in (export.SYNTHESIZER_DIR, export.TARGET_DIR))
    trainer.workers.sync()
    if finished:
      logging.info("%s holds a finished run: nothing left to train, and its exports are in %s/export. Add "
                   "--fresh to start over", config.run_dir, config.run_dir)
    results = trainer.run()
    if config.export and not finished:  # Every worker exports (saving may read variables via collectives).
      # trainer.output_dir is the run directory, or for a worker other than the chief its scratch directory.
      paths = export.export_models(trainer.task, trainer.synthesizer, trainer.target,
                                   os.path.join(trainer.output_dir, "export"))
      if trainer.is_chief:
        logging.info("exported SavedModels: %s", paths)
    trainer.workers.sync()
  finally:
    trainer.close()
  headline = results["headline"]
  before, after = results.get(f"{headline}_before"), results.get(f"{headline}_after")
  logging.info("%s: %s before TERSE, %s after %d cycle(s); results in %s", headline,
               "n/a" if before is None else f"{before:.4f}", "n/a" if after is None else f"{after:.4f}",
               results["cycles_completed"], os.path.join(config.run_dir, "results.json"))
  return results
