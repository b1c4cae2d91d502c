r"""The efficiency experiment (paper §4.1, Fig. 1): affNIST-test accuracy against samples added.

    python -m terse_tf.experiments.affnist_efficiency --flagfile=configs/affnist_efficiency.flags

For each seed, one baseline T is trained on the real digits; every arm then starts from that checkpoint and
goes through the same schedule of sleep cycles: each adds at most --max_per_class_per_cycle samples per
class, then fine-tunes T (--finetune_steps steps, or --finetune_epochs epochs) on real digits + everything
added so far; T is scored whenever the total reaches a point of --k_grid. The arms differ only in where the
samples come from (ARMS): random affine augmentation with affNIST's recipe (the paper's
red curve), TERSE's hard composites (green), nothing (the control), or random affine draws kept only where
T finds them hard (`filtered`: TERSE's hardness filter without S's learning, from at most as many draws as S
may keep from). Same architecture, optimiser, schedule and seeds for every arm.

Cycles are the paper's lockstep (A.1: 500 samples per class): against one frozen T the paper's S converges
on T's single weakest transform, so a cycle that adds tens of thousands of samples would add one mode. The
flagfile bounds the cycle size and turns on S's diversity penalty, which keeps a cycle's composites spread
over affNIST's ranges (BENCHMARKS.md has the numbers).

Writes to --results_dir: <label>.csv (arm, k, k_added, seed, accuracy), <label>.png, <label>.md and
<label>.json with the headline figure — the fraction of random augmentation's samples TERSE needs to reach
random augmentation's final accuracy. Runs live under <run_dir>/<label>/seed<N>/<arm>, so each data source
keeps its own; curves are also TensorBoard scalars under <run_dir>/<label>/tensorboard/<arm>.
All flags of terse_tf.train apply (data source, networks, optimisers); the ones below are the experiment's.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from terse_tf import train  # Declares the shared flags; config_from_flags reads them.
from terse_tf.config import TrainConfig
from terse_tf.data import mnist
from terse_tf.errors import ConfigError
from terse_tf.experiments import common, statistics

# The sample sources affNIST offers: its random baseline, TERSE's synthesizer, none (the control), and the
# random baseline through TERSE's hardness filter (the control for what S's learning adds).
ARMS = ("random_affine", "terse", "none", "filtered")

flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; each trains its own baseline and runs every arm.")
flags.DEFINE_list("k_grid", ["1000", "2000", "4000", "8000", "16000", "32000", "64000"],
                  "Total added samples after each cycle (multiples of the class count).")
flags.DEFINE_list("arms", list(ARMS), f"Arms to run, from {ARMS}.")
flags.DEFINE_string("results_dir", "bench/results", "Where the CSV, plot, table and summary go.")
flags.DEFINE_string("label", "", "Name of the result files; default: affnist_efficiency_<data source>.")
flags.DEFINE_integer("max_per_class_per_cycle", 500, "Largest number of samples per class added in one "
                     "sleep cycle; grid increments are split into cycles of at most this.", lower_bound=1)
flags.DEFINE_integer("synth_steps_per_sample_batch", 8, "TERSE's step cap per cycle (replacing "
                     "--synth_max_steps), in multiples of the steps that one batch per 64 samples would need "
                     "(room for a falling hard yield).",
                     lower_bound=1)
FLAGS = flags.FLAGS

ARM_TITLES = {"random_affine": "random affine augmentation", "terse": "TERSE", "none": "no added samples",
              "filtered": "random affine + filter"}
ARM_COLOURS = {"random_affine": "tab:red", "terse": "tab:green", "none": "tab:gray", "filtered": "tab:orange"}
# (arm, reference) pairs whose per-seed differences the summary reports: what S adds beyond the filter, what
# the filter adds beyond random augmentation, and TERSE against random augmentation.
PAIRS = (("terse", "filtered"), ("filtered", "random_affine"), ("terse", "random_affine"))


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  base: TrainConfig
  seeds: tuple[int, ...]
  k_grid: tuple[int, ...]
  arms: tuple[str, ...]
  results_dir: str
  label: str
  max_per_class_per_cycle: int = 500
  synth_steps_per_sample_batch: int = 8

  def __post_init__(self):
    if not self.seeds:
      raise ConfigError("--seeds needs at least one seed")
    unknown = set(self.arms) - set(ARMS)
    if unknown or not self.arms:
      raise ConfigError(f"--arms must be a non-empty subset of {ARMS}, got {list(self.arms)}")
    if not self.k_grid or list(self.k_grid) != sorted(set(self.k_grid)) or self.k_grid[0] <= 0:
      raise ConfigError(f"--k_grid must be increasing positive totals, got {list(self.k_grid)}")
    if any(k % mnist.NUM_CLASSES for k in self.k_grid):
      raise ConfigError(f"--k_grid values must be multiples of {mnist.NUM_CLASSES} (samples are added per "
                        f"class), got {list(self.k_grid)}")

  def cycle_schedule(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(per-class quota of every cycle, the cycles after which the total reaches a point of k_grid)."""
    per_class = [k // mnist.NUM_CLASSES for k in self.k_grid]
    quotas, grid_cycles = [], []
    for increment in (b - a for a, b in zip([0] + per_class[:-1], per_class)):
      parts = -(-increment // self.max_per_class_per_cycle)
      size, remainder = divmod(increment, parts)
      quotas += [size + (i < remainder) for i in range(parts)]
      grid_cycles.append(len(quotas))
    return tuple(quotas), tuple(grid_cycles)


def run_seed(experiment: ExperimentConfig, seed: int, trainers: common.Trainers) -> tuple[list[dict], float]:
  """Baseline, then every arm from the baseline's checkpoint.

  Returns one row per (arm, k) with this seed, and the runs' own training time in seconds (resumed runs
  report the time they took when they ran).
  """
  base = experiment.base
  seed_dir = os.path.join(base.run_dir, experiment.label, f"seed{seed}")
  baseline_config = common.seeded(base, seed, os.path.join(seed_dir, "baseline"), cycles=0, hard_per_class=(1,))
  baseline = trainers(baseline_config)
  baseline_results = baseline.run()
  training_s = baseline_results["wall_time_s"]
  checkpoint = baseline.checkpoint_manager.latest_checkpoint
  quotas, grid_cycles = experiment.cycle_schedule()
  step_cap = (experiment.synth_steps_per_sample_batch * max(quotas) * mnist.NUM_CLASSES //
              base.synth_batch_size + 1)

  rows = []
  for arm in experiment.arms:
    config = common.seeded(base, seed, os.path.join(seed_dir, arm), baseline_epochs=0,
                           init_checkpoint=checkpoint, cycles=len(quotas), hard_per_class=quotas,
                           eval_after_cycles=grid_cycles, sample_source=arm, synth_max_steps=step_cap,
                           # Checkpoints (and cache shards) at phase ends, not every few steps.
                           checkpoint_every_steps=max(base.checkpoint_every_steps, step_cap))
    _, results = trainers.run_arm(config, baseline_config, common.baseline_record(baseline_results))
    training_s += results["wall_time_s"]
    history = results["history"]
    rows.append({"arm": arm, "k": 0, "k_added": 0, "seed": seed,
                 "affnist_test_accuracy": history[0]["affnist_test_accuracy"]})
    assert [r["cycle"] for r in history[1:]] == list(grid_cycles), "evaluations must sit on the grid"
    for k, record in zip(experiment.k_grid, history[1:]):
      rows.append({"arm": arm, "k": k, "k_added": record["cache_size"], "seed": seed,
                   "affnist_test_accuracy": record["affnist_test_accuracy"]})
    logging.info("seed %d arm %s: affNIST-test accuracy %.4f -> %.4f in %.0f s", seed, arm,
                 history[0]["affnist_test_accuracy"], history[-1]["affnist_test_accuracy"],
                 results["wall_time_s"])
  return rows, training_s


def summarise(rows: list[dict], k_grid: tuple[int, ...]) -> dict:
  """Mean, sample SD (ddof=1) and range per (arm, k); the paired differences of PAIRS at each k (per seed,
  their mean and a 95% t interval over seeds); and the headline fraction of random augmentation's samples."""
  curves = {}
  for arm in sorted({r["arm"] for r in rows}):
    points = []
    for k in (0, *k_grid):
      accuracies = [r["affnist_test_accuracy"] for r in rows if r["arm"] == arm and r["k"] == k]
      added = [r["k_added"] for r in rows if r["arm"] == arm and r["k"] == k]
      points.append({"k": k, "k_added_mean": float(np.mean(added)), "mean": float(np.mean(accuracies)),
                     "std": statistics.sample_sd(accuracies), "min": float(np.min(accuracies)),
                     "max": float(np.max(accuracies)), "seeds": len(accuracies)})
    curves[arm] = points
  headline = {}
  if "random_affine" in curves and "terse" in curves:
    target = curves["random_affine"][-1]["mean"]
    terse = curves["terse"]
    index = next((i for i, p in enumerate(terse) if i and p["mean"] >= target), None)
    random_samples = curves["random_affine"][-1]["k_added_mean"]
    reached = interpolated = None
    if index is not None:
      # First grid point at or above the target: an upper bound. Between it and the point before, the
      # curve is read linearly in log(samples), as the plot draws it: an estimate.
      reached = terse[index]["k_added_mean"]
      before = terse[index - 1]
      interpolated = reached
      if before["k"] and before["mean"] < target:
        share = (target - before["mean"]) / (terse[index]["mean"] - before["mean"])
        interpolated = float(np.exp(np.log(before["k_added_mean"]) +
                                    share * (np.log(reached) - np.log(before["k_added_mean"]))))
    headline = {
        "random_affine_final_accuracy": target,
        "random_affine_samples": random_samples,
        "terse_final_accuracy": terse[-1]["mean"],
        "terse_samples_to_reach_it": reached,
        "fraction_of_random_samples": reached and reached / random_samples,
        "terse_samples_to_reach_it_interpolated": interpolated,
        "fraction_of_random_samples_interpolated": interpolated and interpolated / random_samples,
    }
  # Table 1's form: affNIST-test error at the end of the schedule, and before it (the MNIST-only baseline,
  # the same T for every arm of a seed).
  any_arm = next(iter(curves))
  error_rates = {"baseline": _error_rate([r for r in rows if r["k"] == 0 and r["arm"] == any_arm])}
  for arm in curves:
    error_rates[arm] = _error_rate([r for r in rows if r["arm"] == arm and r["k"] == k_grid[-1]])
  return {"curves": curves, "headline": headline, "error_rates": error_rates, "paired": _paired(rows, k_grid)}


def _paired(rows: list[dict], k_grid: tuple[int, ...]) -> dict:
  """{"<arm> - <reference>": [{k, differences (per seed, in seed order), mean, t_low, t_high}]} for the
  PAIRS both of whose arms ran."""
  accuracy = {(r["arm"], r["k"], r["seed"]): r["affnist_test_accuracy"] for r in rows}
  seeds = sorted({r["seed"] for r in rows})
  paired = {}
  for arm, reference in PAIRS:
    if not any(key[0] == arm for key in accuracy) or not any(key[0] == reference for key in accuracy):
      continue
    points = []
    for k in k_grid:
      differences = [accuracy[arm, k, seed] - accuracy[reference, k, seed] for seed in seeds]
      low, high = statistics.paired_t_interval(differences)
      points.append({"k": k, "differences": differences, "mean": float(np.mean(differences)), "t_low": low,
                     "t_high": high})
    paired[f"{arm} - {reference}"] = points
  return paired


def _error_rate(rows: list[dict]) -> dict:
  errors = [1.0 - r["affnist_test_accuracy"] for r in rows]
  return {"mean": float(np.mean(errors)), "std": statistics.sample_sd(errors),
          "samples_added_mean": float(np.mean([r["k_added"] for r in rows]))}


def write_outputs(experiment: ExperimentConfig, rows: list[dict], summary: dict, training_s: float,
                  command: str) -> dict[str, str]:
  os.makedirs(experiment.results_dir, exist_ok=True)
  stem = os.path.join(experiment.results_dir, experiment.label)
  paths = {"csv": stem + ".csv", "png": stem + ".png", "md": stem + ".md", "json": stem + ".json"}

  with open(paths["csv"], "w", newline="") as f:
    writer = csv.DictWriter(f, ["arm", "k", "k_added", "seed", "affnist_test_accuracy"])
    writer.writeheader()
    writer.writerows(rows)

  import matplotlib  # Imported here: only the report needs it.
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  figure, axes = plt.subplots(figsize=(7, 4.5))
  for arm, points in summary["curves"].items():
    grid = points[1:]
    # Where each arm actually is: TERSE adds fewer than k when a cycle hits its step cap. The control adds
    # nothing, so it is drawn at the schedule's k.
    ks = [p["k"] if arm == "none" else p["k_added_mean"] for p in grid]
    means = np.array([p["mean"] for p in grid])
    axes.plot(ks, means, "o-", color=ARM_COLOURS[arm], label=ARM_TITLES[arm])
    axes.fill_between(ks, [p["min"] for p in grid], [p["max"] for p in grid], color=ARM_COLOURS[arm],
                      alpha=0.2)
  start = np.mean([p[0]["mean"] for p in summary["curves"].values()])
  axes.axhline(start, color="black", linestyle=":", label="MNIST-only start")
  axes.set_xscale("log", base=2)
  axes.set_xlabel("samples added (mean over seeds; the control at the schedule's k)")
  axes.set_ylabel("affNIST-test accuracy")
  seeds = len(experiment.seeds)
  axes.set_title(f"{experiment.label}: mean over {seeds} seeds, band = min..max")
  axes.grid(alpha=0.3)
  axes.legend()
  figure.tight_layout()
  figure.savefig(paths["png"], dpi=120)
  plt.close(figure)

  arms = list(summary["curves"])
  lines = [f"# {experiment.label}", "",
           f"Command: `{command}`  ",
           # Runs resume across processes, so the cores they had are not known here: BENCHMARKS.md says.
           f"Training time: {training_s / 60:.1f} min (sum of the runs' own times); "
           f"seeds {list(experiment.seeds)}; target `{experiment.base.target}`; data "
           f"`{mnist.resolve_source(experiment.base.task_settings.data)}`.", "",
           "affNIST-test accuracy, mean +- sample SD over seeds (error rate = 1 - accuracy). k is the sample "
           "total the schedule aims at; TERSE can add fewer when a cycle hits its step cap (last column); the "
           "no-sample control fine-tunes on the same schedule.", "",
           "| k | " + " | ".join(ARM_TITLES[a] for a in arms) + " | TERSE samples added |",
           "|---|" + "---|" * (len(arms) + 1)]
  for i, k in enumerate((0, *experiment.k_grid)):
    cells = [f"{summary['curves'][a][i]['mean']:.4f} +- {summary['curves'][a][i]['std']:.4f}" for a in arms]
    added = f"{summary['curves']['terse'][i]['k_added_mean']:.0f}" if "terse" in arms else "-"
    lines.append(f"| {k} | " + " | ".join(cells) + f" | {added} |")
  lines += ["", "affNIST-test error rate (%) at the end of the schedule (paper Table 1's form), mean +- sample "
            "SD over seeds:", "", "| method | samples added | error rate (%) |", "|---|---|---|"]
  for name, error in summary["error_rates"].items():
    title = "MNIST only (the baseline T)" if name == "baseline" else ARM_TITLES[name]
    lines.append(f"| {title} | {error['samples_added_mean']:.0f} | {100 * error['mean']:.2f} +- "
                 f"{100 * error['std']:.2f} |")
  if summary["paired"]:
    lines += ["", "Paired differences of affNIST-test accuracy (same seed, same baseline T), mean over seeds "
              "and 95% t interval over seeds:", "",
              "| k | " + " | ".join(summary["paired"]) + " |", "|---|" + "---|" * len(summary["paired"])]
    for i, k in enumerate(experiment.k_grid):
      cells = [f"{points[i]['mean']:+.4f} [{points[i]['t_low']:+.4f}, {points[i]['t_high']:+.4f}]"
               for points in summary["paired"].values()]
      lines.append(f"| {k} | " + " | ".join(cells) + " |")
  headline = summary["headline"]
  if headline:
    lines += ["", f"Random augmentation's final accuracy: {headline['random_affine_final_accuracy']:.4f} with "
              f"{headline['random_affine_samples']:.0f} samples."]
    if headline["fraction_of_random_samples"] is None:
      lines.append(f"TERSE did not reach it on this grid (TERSE's final accuracy "
                   f"{headline['terse_final_accuracy']:.4f}).")
    else:
      lines.append(f"TERSE reached it with {headline['terse_samples_to_reach_it']:.0f} samples: "
                   f"**{headline['fraction_of_random_samples']:.3f}** of random augmentation's "
                   "(first grid point at or above; an upper bound). Read between grid points (linear in "
                   f"log samples): {headline['terse_samples_to_reach_it_interpolated']:.0f} samples, "
                   f"{headline['fraction_of_random_samples_interpolated']:.3f}.")
  with open(paths["md"], "w") as f:
    f.write("\n".join(lines) + "\n")

  with open(paths["json"], "w") as f:
    json.dump({"command": command, "training_time_s": round(training_s, 1), "seeds": list(experiment.seeds),
               "k_grid": list(experiment.k_grid), "config": dataclasses.asdict(experiment.base), **summary},
              f, indent=2)
  return paths


def log_curves(experiment: ExperimentConfig, rows: list[dict], summary: dict) -> None:
  """TensorBoard: one run per arm, accuracy against k (mean, and each seed)."""
  for arm, points in summary["curves"].items():
    writer = tf.summary.create_file_writer(os.path.join(experiment.base.run_dir, experiment.label,
                                                        "tensorboard", arm))
    with writer.as_default():
      for point in points:
        tf.summary.scalar("efficiency/affnist_test_accuracy_mean", point["mean"], step=point["k"])
      for row in rows:
        if row["arm"] == arm:
          tf.summary.scalar(f"efficiency/affnist_test_accuracy_seed{row['seed']}",
                            row["affnist_test_accuracy"], step=row["k"])
    writer.close()


def run(experiment: ExperimentConfig, command: str = "") -> dict:
  trainers = common.Trainers(command)
  rows, training_s = common.run_seeds(experiment.seeds, lambda seed: run_seed(experiment, seed, trainers))
  summary = summarise(rows, experiment.k_grid)
  log_curves(experiment, rows, summary)
  paths = write_outputs(experiment, rows, summary, training_s, command)
  headline = summary["headline"]
  if headline:
    logging.info("random augmentation reaches %.4f with %.0f samples; TERSE %s", headline[
        "random_affine_final_accuracy"], headline["random_affine_samples"],
        "does not reach it" if headline["fraction_of_random_samples"] is None else
        f"reaches it with {headline['fraction_of_random_samples']:.3f} of them")
  logging.info("wrote %s", paths)
  return {"rows": rows, "paths": paths, **summary}


def experiment_from_flags(flag_values: flags.FlagValues = FLAGS) -> ExperimentConfig:
  base = train.config_from_flags(flag_values)
  source = mnist.resolve_source(base.task_settings.data)
  label = flag_values.label or f"affnist_efficiency_{source}"
  return ExperimentConfig(base=base, seeds=train.integers_flag("seeds", flag_values.seeds),
                          k_grid=train.integers_flag("k_grid", flag_values.k_grid), arms=tuple(flag_values.arms),
                          results_dir=flag_values.results_dir, label=label,
                          max_per_class_per_cycle=flag_values.max_per_class_per_cycle,
                          synth_steps_per_sample_batch=flag_values.synth_steps_per_sample_batch)


def main(argv: list[str]) -> None:
  common.main(argv, "terse_tf.experiments.affnist_efficiency", experiment_from_flags, run)


if __name__ == "__main__":
  app.run(main)
