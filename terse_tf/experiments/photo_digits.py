r"""The detection experiment (paper §4.2's protocol on the offline photo_digits task): test AP against
samples added, for four sources of samples.

    python -m terse_tf.experiments.photo_digits --flagfile=configs/photo_digits_experiment.flags

For each seed, one baseline T (an SSD) is trained on the real training scenes; every arm then starts from
that checkpoint and goes through the same sleep cycles: each adds --hard_per_class samples per class, then
fine-tunes T for --finetune_steps steps on real scenes + everything added so far (--cache_fraction of each
batch from the added samples); T's test AP is measured after every cycle. The arms differ only in where
the samples come from:
  real_only   nothing is added: T fine-tunes on the real scenes alone for the same steps;
  cut_paste   Cut-Paste-Learn's random placement over the same ranges, with its blend modes;
  terse       TERSE's hard composites, S trained against T and against the discriminator D;
  terse_no_d  TERSE without D.
Writes --results_dir/<label>.{json,md,png}; the JSON's `final` block holds each arm's mean AP@0.5, AP and
samples added at the last cycle. Runs live under <run_dir>/<label>/seed<N>/<arm>. All flags of
terse_tf.train apply; the ones below are the experiment's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
from absl import app, flags, logging

from terse_tf import train  # Declares the shared flags; config_from_flags reads them.
from terse_tf.config import TrainConfig
from terse_tf.errors import ConfigError
from terse_tf.experiments import common
from terse_tf.trainer import Trainer

# Arm -> (sample source, discriminator on).
ARMS = {"real_only": ("none", False), "cut_paste": ("cut_paste", False), "terse": ("terse", True),
        "terse_no_d": ("terse", False)}
ARM_TITLES = {"real_only": "real only", "cut_paste": "Cut-Paste-Learn", "terse": "TERSE (S + D)",
              "terse_no_d": "TERSE without D"}
ARM_COLOURS = {"real_only": "tab:gray", "cut_paste": "tab:red", "terse": "tab:green", "terse_no_d": "tab:olive"}
METRICS = ("test_ap50", "test_ap", "test_ap75")

flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; each trains its own baseline and runs every arm.")
flags.DEFINE_list("arms", list(ARMS), f"Arms to run, from {list(ARMS)}.")
flags.DEFINE_string("results_dir", "bench/results", "Where the summary, table and plot go.")
flags.DEFINE_string("label", "photo_digits", "Name of the result files.")
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  base: TrainConfig
  seeds: tuple[int, ...]
  arms: tuple[str, ...]
  results_dir: str
  label: str

  def __post_init__(self):
    if self.base.task != "photo_digits":
      raise ConfigError(f"this experiment runs --task=photo_digits, got --task={self.base.task}")
    if not self.seeds:
      raise ConfigError("--seeds needs at least one seed")
    if not self.arms or set(self.arms) - set(ARMS):
      raise ConfigError(f"--arms must be a non-empty subset of {list(ARMS)}, got {list(self.arms)}")
    if not self.base.cycles:
      raise ConfigError("--cycles must be >= 1: the arms differ only in what their cycles add")


def run_seed(experiment: ExperimentConfig, seed: int, command: str = "") -> tuple[list[dict], float]:
  """Baseline, then every arm from the baseline's checkpoint: one row per (arm, cycle) and the runs' own
  training time in seconds."""
  base = experiment.base
  seed_dir = os.path.join(base.run_dir, experiment.label, f"seed{seed}")
  baseline = Trainer(common.seeded(base, seed, os.path.join(seed_dir, "baseline"), cycles=0,
                                   discriminator=False, sample_source="none"), command_line=command)
  training_s = baseline.run()["wall_time_s"]
  checkpoint = baseline.checkpoint_manager.latest_checkpoint
  rows = []
  for arm in experiment.arms:
    source, discriminator = ARMS[arm]
    config = common.seeded(base, seed, os.path.join(seed_dir, arm), baseline_epochs=0,
                           init_checkpoint=checkpoint, sample_source=source, discriminator=discriminator)
    results = Trainer(config, command_line=command).run()
    training_s += results["wall_time_s"]
    for record in results["history"]:
      rows.append({"arm": arm, "seed": seed, "cycle": record["cycle"] if record["after"] != "baseline" else 0,
                   "samples": record["cache_size"], **{m: record[m] for m in METRICS}})
    logging.info("seed %d arm %s: test AP@0.5 %.4f -> %.4f in %.0f s", seed, arm,
                 results["test_ap50_before"], results["test_ap50_after"], results["wall_time_s"])
  return rows, training_s


def summarise(rows: list[dict], arms: tuple[str, ...]) -> dict:
  """Mean and spread over seeds per (arm, cycle); the `final` block at the last cycle."""
  curves = {}
  for arm in arms:
    points = []
    for cycle in sorted({r["cycle"] for r in rows if r["arm"] == arm}):
      chosen = [r for r in rows if r["arm"] == arm and r["cycle"] == cycle]
      point = {"cycle": cycle, "samples_mean": float(np.mean([r["samples"] for r in chosen])),
               "seeds": len(chosen)}
      for metric in METRICS:
        values = [r[metric] for r in chosen]
        point[metric] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                         "min": float(np.min(values)), "max": float(np.max(values))}
      points.append(point)
    curves[arm] = points
  final = {arm: {"ap50": points[-1]["test_ap50"]["mean"], "ap": points[-1]["test_ap"]["mean"],
                 "samples": points[-1]["samples_mean"]} for arm, points in curves.items()}
  return {"curves": curves, "final": final}


def write_outputs(experiment: ExperimentConfig, rows: list[dict], summary: dict, training_s: float,
                  wall_s: float, command: str) -> dict[str, str]:
  os.makedirs(experiment.results_dir, exist_ok=True)
  stem = os.path.join(experiment.results_dir, experiment.label)
  paths = {"json": stem + ".json", "md": stem + ".md", "png": stem + ".png"}
  with open(paths["json"], "w") as f:
    json.dump({"command": command, "wall_time_s": round(wall_s, 1), "training_time_s": round(training_s, 1),
               "seeds": list(experiment.seeds), "config": dataclasses.asdict(experiment.base),
               "final": summary["final"], "curves": summary["curves"], "rows": rows}, f, indent=2)

  import matplotlib  # Imported here: only the report needs it.
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
  for index, metric in enumerate(("test_ap50", "test_ap")):
    for arm, points in summary["curves"].items():
      cycles = [p["cycle"] for p in points]
      axes[index].plot(cycles, [p[metric]["mean"] for p in points], "o-", color=ARM_COLOURS[arm],
                       label=ARM_TITLES[arm])
      axes[index].fill_between(cycles, [p[metric]["min"] for p in points], [p[metric]["max"] for p in points],
                               color=ARM_COLOURS[arm], alpha=0.15)
    axes[index].set_xlabel("sleep cycle (0: the baseline T)")
    axes[index].set_ylabel({"test_ap50": "test AP@0.5", "test_ap": "test AP@[.5:.95]"}[metric])
    axes[index].grid(alpha=0.3)
  axes[0].legend()
  figure.suptitle(f"{experiment.label}: mean over {len(experiment.seeds)} seeds, band = min..max")
  figure.tight_layout()
  figure.savefig(paths["png"], dpi=120)
  plt.close(figure)

  arms = list(summary["curves"])
  lines = [f"# {experiment.label}", "", f"Command: `{command}`  ",
           f"Wall time: {wall_s / 60:.1f} min ({training_s / 60:.1f} min in the runs themselves); seeds "
           f"{list(experiment.seeds)}; target `{experiment.base.target}`.", "",
           "Test AP@0.5 / AP@[.5:.95], mean +- std over seeds, after each sleep cycle (samples: mean number "
           "added so far).", "",
           "| cycle | " + " | ".join(ARM_TITLES[a] for a in arms) + " |",
           "|---|" + "---|" * len(arms)]
  for index, point in enumerate(summary["curves"][arms[0]]):
    cells = []
    for arm in arms:
      p = summary["curves"][arm][index]
      cells.append(f"{p['test_ap50']['mean']:.3f} +- {p['test_ap50']['std']:.3f} / "
                   f"{p['test_ap']['mean']:.3f} +- {p['test_ap']['std']:.3f} ({p['samples_mean']:.0f})")
    lines.append(f"| {point['cycle']} | " + " | ".join(cells) + " |")
  with open(paths["md"], "w") as f:
    f.write("\n".join(lines) + "\n")
  return paths


def run(experiment: ExperimentConfig, command: str = "") -> dict:
  started = time.monotonic()
  rows, training_s = common.run_seeds(experiment.seeds, lambda seed: run_seed(experiment, seed, command))
  summary = summarise(rows, experiment.arms)
  paths = write_outputs(experiment, rows, summary, training_s, time.monotonic() - started, command)
  for arm, figures in summary["final"].items():
    logging.info("%s: test AP@0.5 %.4f, AP %.4f with %.0f samples", arm, figures["ap50"], figures["ap"],
                 figures["samples"])
  logging.info("wrote %s", paths)
  return {"rows": rows, "paths": paths, **summary}


def experiment_from_flags(flag_values: flags.FlagValues = FLAGS) -> ExperimentConfig:
  return ExperimentConfig(base=train.config_from_flags(flag_values),
                          seeds=train.integers_flag("seeds", flag_values.seeds), arms=tuple(flag_values.arms),
                          results_dir=flag_values.results_dir, label=flag_values.label)


def main(argv: list[str]) -> None:
  common.main(argv, "terse_tf.experiments.photo_digits", experiment_from_flags, run)


if __name__ == "__main__":
  app.run(main)
