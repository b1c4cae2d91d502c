r"""The detection experiment (paper §4.2's protocol on the offline photo_digits task): T's AP after the same
sleep cycles, for eight ways of adding samples, with the controls that say what S's learning adds.

    python -m terse_tf.experiments.photo_digits --flagfile=configs/photo_digits_experiment.flags

For each seed, one baseline T (the flagfile's SSD; any --target) is trained on the real training scenes; every
arm then starts from that checkpoint and goes through the same sleep cycles: each adds --hard_per_class
samples (or objects, with --quota_unit=instances: the flagfile's equal-instance protocol) per class, then
fine-tunes T for --finetune_steps steps on real scenes + everything added so far (--cache_fraction of each
batch from the added samples); T is scored after every cycle on every evaluation set of the task (test, val,
val_upright, and unseen with --photo_unseen_bank). The arms differ only in where the samples come from:
  real_only              nothing is added: T fine-tunes on the real scenes alone for the same steps;
  cut_paste              Cut-Paste-Learn's random placement over the same ranges, on the same backgrounds
                         with the same §3.1 regions, pasted as S pastes;
  cut_paste_blend_modes  the same with Cut-Paste-Learn's own blend-mode mix;
  uniform_filter         cut_paste's samples kept only where T finds them hard by TERSE's criterion, from
                         at most as many draws as S composes at its step cap: the filter without S;
  terse_no_d             TERSE's hard composites, S trained against T alone;
  terse                  TERSE with the discriminator D;
  terse_no_diversity     terse with --diversity_weight=0;
  d_control              terse with D trained but --discriminator_weight=0 (D cannot move S).
Settings are chosen on the validation sets; the test set is only reported. Writes
--results_dir/<label>.{json,md,png}: the JSON's `final` block is {arm: {ap50, ap, samples, instances}} (means
over seeds at the last cycle) with `seeds` beside it, `spread` the sample SDs, and `paired` each arm's
difference from cut_paste and from uniform_filter on the test and unseen sets, with 95% bootstrap intervals
over test images (the same resample for every seed); `per_photo` AP, `hardness_histogram` (Fig. 8: each arm's
first-cycle samples by the baseline T's confidence), `fairness` (the invariants every arm shares) and, with
--photo_ten_classes, `per_class_ap50` (each digit's AP@0.5 on the paired sets, the GMU table's form). Runs
live under <run_dir>/<label>/seed<N>/<arm>. All flags of terse_tf.train apply; the ones below are the
experiment's.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from terse_tf import compositor, evaluation, provenance
from terse_tf import config as config_lib
from terse_tf import losses, pipelines
from terse_tf.experiments import common, statistics
from terse_tf.tasks import detection
from terse_tf.trainer import Trainer

# Arm -> the settings it changes from the experiment's base config.
ARMS = {
    "real_only": dict(sample_source=config_lib.NO_SAMPLES, discriminator=False),
    "cut_paste": dict(sample_source=detection.CUT_PASTE, discriminator=False),
    "cut_paste_blend_modes": dict(sample_source=detection.CUT_PASTE_BLEND_MODES, discriminator=False),
    "uniform_filter": dict(sample_source=config_lib.FILTERED, discriminator=False),
    "terse_no_d": dict(sample_source=config_lib.TERSE, discriminator=False),
    "terse": dict(sample_source=config_lib.TERSE, discriminator=True),
    "terse_no_diversity": dict(sample_source=config_lib.TERSE, discriminator=True, diversity_weight=0.0),
    "d_control": dict(sample_source=config_lib.TERSE, discriminator=True, discriminator_weight=0.0),
}
ARM_TITLES = {"real_only": "real only", "cut_paste": "Cut-Paste-Learn",
              "cut_paste_blend_modes": "Cut-Paste-Learn, blend modes", "uniform_filter": "uniform + filter",
              "terse_no_d": "TERSE without D", "terse": "TERSE (S + D)",
              "terse_no_diversity": "TERSE, no diversity", "d_control": "TERSE, D weight 0"}
ARM_COLOURS = {"real_only": "tab:gray", "cut_paste": "tab:red", "cut_paste_blend_modes": "tab:pink",
               "uniform_filter": "tab:orange", "terse_no_d": "tab:olive", "terse": "tab:green",
               "terse_no_diversity": "tab:cyan", "d_control": "tab:purple"}
# The arms every other is compared with, pairwise.
REFERENCES = ("cut_paste", "uniform_filter")
# The sets whose per-image detections feed the paired bootstrap and per-photo AP.
PAIRED_SETS = ("test", "unseen")
BOOTSTRAP_SEED = 0  # One stream of draws of the test images for every arm and seed: the pairing.

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentConfig(common.ArmsExperiment):
  TASK = "photo_digits"
  ARMS = tuple(ARMS)
  bootstrap_resamples: int = 1000


@dataclasses.dataclass
class ArmOutcome:
  """What the experiment keeps of one arm's run of one seed (a common.ArmSummariser's: it pickles)."""
  rows: list[dict]                   # one per cycle
  training_s: float
  # evaluation set -> statistics.match_at_iou of the last cycle's T (per-image TP/FP), and its AP@0.5 on each
  # of the paired bootstrap's draws (statistics.resampled_aps), scored where the arm ran: with --workers in
  # parallel, instead of every comparison scoring the same draws again in the report.
  matches: dict[str, statistics.Matches]
  resampled_ap50: dict[str, np.ndarray]
  fairness: dict                     # what every arm must share (fine-tuning steps, test set), what it added
  hardness: list[float]              # first-cycle samples' hardness under the baseline T
  players: dict                      # S's placements (SD of each parameter) and D's accuracy at the end
  class_names: list[str]
  scene_photos: dict[str, np.ndarray]  # set -> photo of each scene


@dataclasses.dataclass
class SeedResult:
  rows: list[dict]                   # one per (arm, cycle)
  training_s: float
  # arm -> each of ArmOutcome's per-arm fields.
  matches: dict[str, dict[str, statistics.Matches]]
  resampled_ap50: dict[str, dict[str, np.ndarray]]
  fairness: dict[str, dict]
  hardness: dict[str, list[float]]
  players: dict[str, dict]
  task_description: str
  class_names: list[str]
  scene_photos: dict[str, np.ndarray]


def _digest(images: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]


def arm_outcome(arm: str, seed: int, trainer: Trainer, results: dict, resamples: int) -> ArmOutcome:
  """An arm's rows (its figures after each cycle, samples and instances added), its last T's per-image matches
  on the paired sets and their AP@0.5 on `resamples` bootstrap draws, and what the report says of its
  players."""
  task, cache = trainer.task, trainer.cache
  # A task with per-class figures (the ten digit classes) records each class's AP@0.5 on the paired sets.
  per_class_prefixes = tuple(f"{name}_ap50_" for name in PAIRED_SETS) if task.per_class_figures else ()
  _, cached_labels = cache.contents() if len(cache) else (None, {"count": np.zeros([0], np.int32)})
  cycles_of_entries = cache.cycles()
  rows = []
  for record in results["history"]:
    cycle = record["cycle"] if record["after"] != "baseline" else 0
    instances = int(np.sum(cached_labels["count"][cycles_of_entries <= cycle])) if len(cache) else 0
    figures = {key: value for key, value in record.items()
               if key.endswith(("_ap50", "_ap", "_ap75")) or key.startswith(per_class_prefixes)}
    rows.append({"arm": arm, "seed": seed, "cycle": cycle, "samples": record["cache_size"],
                 "instances": instances, **figures})
  sets = task.evaluation_sets()
  matches = {name: statistics.match_at_iou(truth, task.detect(trainer.target, images,
                                                               trainer.config.eval_batch_size),
                                           image_hw=task.image_shape[:2], num_classes=task.num_classes)
             for name, (images, truth) in sets.items() if name in PAIRED_SETS}
  logging.info("seed %d arm %s: test AP@0.5 %.4f -> %.4f in %.0f s", seed, arm, results["test_ap50_before"],
               results["test_ap50_after"], results["wall_time_s"])
  # Equal instances hold only where every adding arm filled each cycle's quota within its step or draw budget.
  quota_reached = (None if trainer.config.sample_source == config_lib.NO_SAMPLES else
                   all(cache.quota_filled(cycle).min() >= trainer.config.quota(cycle)
                       for cycle in range(1, trainer.config.cycles + 1)))
  return ArmOutcome(rows=rows, training_s=results["wall_time_s"], matches=matches,
                    resampled_ap50={name: statistics.resampled_aps(m, resamples, BOOTSTRAP_SEED)
                                    for name, m in matches.items()},
                    fairness={"target_steps": int(trainer.target_global_step.numpy()),
                              "test_set": _digest(sets["test"][0]), "samples": len(cache),
                              "instances": rows[-1]["instances"], "quota_reached": quota_reached},
                    hardness=common.first_cycle_hardness(cache), players=players_at_the_end(trainer),
                    class_names=list(task.class_names),
                    scene_photos=task.scene_photos)


def seed_result(runs: dict[str, ArmOutcome | dict], arms: tuple[str, ...]) -> SeedResult:
  """One seed's arms' outcomes (common.run_arms' entry for the seed) as one record."""
  outcomes = [runs[arm] for arm in arms]
  return SeedResult(rows=[row for outcome in outcomes for row in outcome.rows],
                    training_s=runs[common.BASELINE]["wall_time_s"] + sum(o.training_s for o in outcomes),
                    matches={arm: runs[arm].matches for arm in arms},
                    resampled_ap50={arm: runs[arm].resampled_ap50 for arm in arms},
                    fairness={arm: runs[arm].fairness for arm in arms},
                    hardness={arm: runs[arm].hardness for arm in arms},
                    players={arm: runs[arm].players for arm in arms},
                    task_description=runs[common.BASELINE]["data"], class_names=outcomes[0].class_names,
                    scene_photos=outcomes[0].scene_photos)


def players_at_the_end(trainer: Trainer, batches: int = 4) -> dict:
  """What D does to S, measured on the arm's last S and D over `batches` batches of S's stream (one fixed
  seed for every arm): the sample SD of each of S's placement parameters over its pasted objects (S frozen as
  the exported sampler: dropout and noise on, BatchNorm's moving averages), beside the SD of uniform placements
  over the ranges;
  and D's patch accuracy on real training scenes (with §3.1's artefacts) against those composites. Arms whose
  samples S did not make get none of it."""
  if trainer.config.sample_source != config_lib.TERSE:
    return {}
  stream = iter(pipelines.synth_dataset(trainer.task, trainer.strategy, trainer.config.synth_batch_size, seed=7,
                                        with_real=trainer.discriminator is not None))
  params, accuracy = [], []
  for index in range(batches):
    batch = next(stream)
    synth_batch, real = batch if trainer.discriminator is not None else (batch, None)
    generated = trainer._generate(synth_batch, tf.constant([7, index], tf.int64))
    params.append(generated.params.numpy()[generated.pasted.numpy() > 0])
    if trainer.discriminator is not None:
      real_images = tf.concat(trainer.strategy.experimental_local_results(real), axis=0)
      accuracy.append(float(losses.discriminator_accuracy(trainer.discriminator(real_images, training=False),
                                                          trainer.discriminator(generated.composites,
                                                                                training=False))))
  params = np.concatenate(params).reshape([-1, compositor.NUM_PARAMS])
  low, high = (np.asarray(b) for b in trainer.task.compositor.ranges.bounds())
  figures = {"param_sd": dict(zip(compositor.PARAM_NAMES, np.std(params, axis=0, ddof=1).tolist())),
             "uniform_sd": dict(zip(compositor.PARAM_NAMES, ((high - low) / np.sqrt(12)).tolist()))}
  if accuracy:
    figures["discriminator_accuracy"] = float(np.mean(accuracy))
  return figures


def players_summary(seed_results: list[SeedResult], arms: tuple[str, ...]) -> dict:
  """Means over seeds of players_at_the_end's figures, per arm that has them."""
  summary = {}
  for arm in arms:
    per_seed = [r.players[arm] for r in seed_results if r.players.get(arm)]
    if not per_seed:
      continue
    summary[arm] = {"param_sd": {name: float(np.mean([p["param_sd"][name] for p in per_seed]))
                                 for name in compositor.PARAM_NAMES},
                    "uniform_sd": per_seed[0]["uniform_sd"]}
    if "discriminator_accuracy" in per_seed[0]:
      summary[arm]["discriminator_accuracy"] = float(np.mean([p["discriminator_accuracy"] for p in per_seed]))
  return summary


def metric_names(rows: list[dict]) -> list[str]:
  return sorted(key for key in rows[0] if key.endswith(("_ap50", "_ap", "_ap75")))


def summarise(rows: list[dict], arms: tuple[str, ...]) -> dict:
  """Mean, sample SD (ddof=1), min and max over seeds per (arm, cycle) of every figure; the `final` block
  (means at the last cycle) and `spread` (their SDs)."""
  curves = {}
  for arm in arms:
    points = []
    for cycle in sorted({r["cycle"] for r in rows if r["arm"] == arm}):
      chosen = [r for r in rows if r["arm"] == arm and r["cycle"] == cycle]
      point = {"cycle": cycle, "samples_mean": float(np.mean([r["samples"] for r in chosen])),
               "instances_mean": float(np.mean([r["instances"] for r in chosen])), "seeds": len(chosen)}
      for metric in metric_names(rows):
        values = [r[metric] for r in chosen]
        point[metric] = {"mean": float(np.mean(values)), "sd": statistics.sample_sd(values),
                         "min": float(np.min(values)), "max": float(np.max(values))}
      points.append(point)
    curves[arm] = points
  final = {arm: {"ap50": points[-1]["test_ap50"]["mean"], "ap": points[-1]["test_ap"]["mean"],
                 "samples": points[-1]["samples_mean"], "instances": points[-1]["instances_mean"],
                 **{m: points[-1][m]["mean"] for m in metric_names(rows) if not m.startswith("test_")}}
           for arm, points in curves.items()}
  spread = {arm: {m: points[-1][m]["sd"] for m in metric_names(rows)} for arm, points in curves.items()}
  return {"curves": curves, "final": final, "spread": spread}


def compare(seed_results: list[SeedResult], arms: tuple[str, ...], resamples: int) -> dict:
  """Each arm against each reference arm on each paired set: the mean over seeds of the AP@0.5 difference,
  with its 95% bootstrap interval over test images (the trained networks held fixed), and beside it the
  seeds' own differences with a paired t interval over seeds (what another training seed would give)."""
  # Each arm's draws were scored where it ran (ArmOutcome.resampled_ap50).
  memo = {(r.matches[arm][name], resamples, BOOTSTRAP_SEED): r.resampled_ap50[arm][name]
          for r in seed_results for arm in arms for name in r.matches[arm]}
  paired = {}
  for reference in REFERENCES:
    if reference not in arms:
      continue
    for arm in arms:
      if arm == reference:
        continue
      for name in seed_results[0].matches[arm]:
        mine, theirs = ([r.matches[a][name] for r in seed_results] for a in (arm, reference))
        figures = statistics.paired_bootstrap(mine, theirs, resamples=resamples, seed=BOOTSTRAP_SEED,
                                              memo=memo)
        differences = [statistics.ap_at_iou(a) - statistics.ap_at_iou(b) for a, b in zip(mine, theirs)]
        figures["seed_differences"] = differences
        if len(differences) > 1:
          figures["seed_t_low"], figures["seed_t_high"] = statistics.paired_t_interval(differences)
        paired[f"{arm} - {reference} ({name})"] = figures
  return paired


def per_photo(seed_results: list[SeedResult], arms: tuple[str, ...], scene_photos: dict[str, np.ndarray]
              ) -> dict:
  """AP@0.5 of each arm's last T on the scenes of each test photo (by its name), mean over seeds."""
  table = {}
  for arm in arms:
    for name, groups in scene_photos.items():
      if name not in seed_results[0].matches[arm]:
        continue
      per_seed = [statistics.grouped_ap(r.matches[arm][name], groups) for r in seed_results]
      table.setdefault(name, {})[arm] = {str(photo): float(np.mean([s[photo] for s in per_seed]))
                                         for photo in sorted(per_seed[0])}
  return table


def write_outputs(experiment: ExperimentConfig, report: dict) -> dict[str, str]:
  os.makedirs(experiment.results_dir, exist_ok=True)
  stem = os.path.join(experiment.results_dir, experiment.label)
  paths = {"json": stem + ".json", "md": stem + ".md", "png": stem + ".png"}
  with open(paths["json"], "w") as f:
    json.dump(report, f, indent=2)

  import matplotlib  # Imported here: only the report needs it.
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  curves = report["curves"]
  panels = [m for m in ("test_ap50", "unseen_ap50", "val_ap50") if m in curves[next(iter(curves))][0]]
  figure, axes = plt.subplots(1, len(panels) + 1, figsize=(5 * (len(panels) + 1), 4.5))
  for axis, metric in zip(axes, panels):
    for arm, points in curves.items():
      cycles = [p["cycle"] for p in points]
      axis.plot(cycles, [p[metric]["mean"] for p in points], "o-", color=ARM_COLOURS[arm], label=ARM_TITLES[arm])
      axis.fill_between(cycles, [p[metric]["min"] for p in points], [p[metric]["max"] for p in points],
                        color=ARM_COLOURS[arm], alpha=0.1)
    axis.set_xlabel("sleep cycle (0: the baseline T)")
    axis.set_ylabel(metric.replace("_ap50", " AP@0.5"))
    axis.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  histogram = report["hardness_histogram"]
  centres = (np.array(histogram["bins"][:-1]) + np.array(histogram["bins"][1:])) / 2
  for arm in curves:
    if arm in histogram:
      axes[-1].plot(centres, histogram[arm], "o-", color=ARM_COLOURS[arm], label=ARM_TITLES[arm])
  axes[-1].set_xlabel("baseline T's confidence at the hardest object (cycle 1)")
  axes[-1].set_ylabel("share of the arm's samples")
  axes[-1].grid(alpha=0.3)
  figure.suptitle(f"{experiment.label}: mean over {len(experiment.seeds)} seeds, band = min..max")
  figure.tight_layout()
  figure.savefig(paths["png"], dpi=120)
  plt.close(figure)

  arms = list(curves)
  sets = [m.removesuffix("_ap50") for m in metric_names(report["rows"]) if m.endswith("_ap50")]
  machine = report["provenance"]
  lines = [f"# {experiment.label}", "", f"Command: `{report['command']}`  ",
           f"Wall time: {report['wall_time_s'] / 60:.1f} min ({report['training_time_s'] / 60:.1f} min in the "
           f"runs themselves, on {experiment.workers} worker(s)); seeds {list(experiment.seeds)}; target "
           f"`{experiment.base.target}`; commit {machine['commit']}, {machine['date']}, {machine['cpu']}.", "",
           "AP@0.5 after the last cycle, mean +- sample SD over seeds, per evaluation set; samples and object "
           "instances added (means).", "",
           "| arm | " + " | ".join(sets) + " | samples | instances |", "|---|" + "---|" * (len(sets) + 2)]
  for arm in arms:
    last = curves[arm][-1]
    cells = [f"{last[f'{s}_ap50']['mean']:.3f} +- {last[f'{s}_ap50']['sd']:.3f}" for s in sets]
    lines.append(f"| {ARM_TITLES[arm]} | " + " | ".join(cells) +
                 f" | {last['samples_mean']:.1f} | {last['instances_mean']:.1f} |")
  missed = [f"seed {seed[4:]} {ARM_TITLES[arm]} ({figures['instances']})"
            for seed, arms_fairness in report["fairness"].items() for arm, figures in arms_fairness.items()
            if figures["quota_reached"] is False]
  lines += ["", "Every adding arm filled its quota on every seed." if not missed else
            "Quota not filled within the arm's step or draw budget (instances added): " + ", ".join(missed)
            + "."]
  lines += ["", "Test AP@0.5 after each cycle (mean +- sample SD):", "",
            "| cycle | " + " | ".join(ARM_TITLES[a] for a in arms) + " |", "|---|" + "---|" * len(arms)]
  for index, point in enumerate(curves[arms[0]]):
    cells = [f"{curves[a][index]['test_ap50']['mean']:.3f} +- {curves[a][index]['test_ap50']['sd']:.3f}"
             for a in arms]
    lines.append(f"| {point['cycle']} | " + " | ".join(cells) + " |")
  lines += ["", f"Paired differences of AP@0.5 (mean over seeds; 95% bootstrap interval over the images, "
            f"{experiment.bootstrap_resamples} resamples shared by all seeds, the networks fixed; 95% paired t "
            "interval over seeds):", "",
            "| comparison | difference | 95% interval, images | 95% interval, seeds |", "|---|---|---|---|"]
  for name, figures in report["paired"].items():
    seeds = (f"[{figures['seed_t_low']:+.3f}, {figures['seed_t_high']:+.3f}]" if "seed_t_low" in figures
             else "n/a")
    lines.append(f"| {name} | {figures['mean_difference']:+.3f} | [{figures['low']:+.3f}, "
                 f"{figures['high']:+.3f}] | {seeds} |")
  for name, table in report["per_class_ap50"].items():
    lines += ["", f"Per-class AP@0.5 on the {name} scenes after the last cycle, in percent (mean over seeds; "
              "the GMU table's form):", "", evaluation.per_class_table(
                  {ARM_TITLES[arm]: figures for arm, figures in table.items()}, report["class_names"]).rstrip()]
  if report["players"]:
    names = compositor.PARAM_NAMES
    uniform = next(iter(report["players"].values()))["uniform_sd"]
    lines += ["", "S's placements at the end (SD of each parameter over its pasted objects, mean over seeds) "
              "and D's patch accuracy on real scenes against them:", "",
              "| arm | " + " | ".join(names) + " | D accuracy |", "|---|" + "---|" * (len(names) + 1),
              "| uniform over the ranges | " + " | ".join(f"{uniform[n]:.3f}" for n in names) + " | |"]
    for arm, figures in report["players"].items():
      accuracy = figures.get("discriminator_accuracy")
      lines.append(f"| {ARM_TITLES[arm]} | " + " | ".join(f"{figures['param_sd'][n]:.3f}" for n in names) +
                   f" | {'' if accuracy is None else f'{accuracy:.2f}'} |")
  with open(paths["md"], "w") as f:
    f.write("\n".join(lines) + "\n")
  return paths


def run(experiment: ExperimentConfig, command: str = "") -> dict:
  started = time.monotonic()
  runs = experiment.runs({arm: ARMS[arm] for arm in experiment.arms},
                         functools.partial(arm_outcome, resamples=experiment.bootstrap_resamples), command)
  seed_results = [seed_result(runs[seed], experiment.arms) for seed in experiment.seeds]
  rows = [row for result in seed_results for row in result.rows]
  summary = summarise(rows, experiment.arms)
  paired = compare(seed_results, experiment.arms, experiment.bootstrap_resamples)
  report = {"command": command, "wall_time_s": round(time.monotonic() - started, 1),
            "training_time_s": round(sum(r.training_s for r in seed_results), 1),
            "seeds": list(experiment.seeds), "workers": experiment.workers, "provenance": provenance.describe(),
            "config": dataclasses.asdict(experiment.base), "task": seed_results[0].task_description,
            "final": summary["final"], "spread": summary["spread"],
            "paired": paired, "class_names": seed_results[0].class_names,
            "per_class_ap50": common.per_class_summary(rows, experiment.arms, seed_results[0].class_names,
                                                       PAIRED_SETS),
            "per_photo": per_photo(seed_results, experiment.arms, seed_results[0].scene_photos),
            "hardness_histogram": common.hardness_histogram(
                {arm: [r.hardness[arm] for r in seed_results] for arm in experiment.arms}),
            "players": players_summary(seed_results, experiment.arms),
            "fairness": {f"seed{seed}": result.fairness for seed, result in zip(experiment.seeds, seed_results)},
            "curves": summary["curves"], "rows": rows}
  paths = write_outputs(experiment, report)
  for arm, figures in summary["final"].items():
    logging.info("%s: test AP@0.5 %.4f, AP %.4f with %.0f samples (%.0f instances)", arm, figures["ap50"],
                 figures["ap"], figures["samples"], figures["instances"])
  logging.info("wrote %s", paths)
  return {**report, "paths": paths}


def experiment_from_flags(flag_values: flags.FlagValues = FLAGS) -> ExperimentConfig:
  return ExperimentConfig(**ExperimentConfig.fields_from_flags(flag_values),
                          bootstrap_resamples=flag_values.bootstrap_resamples)


def define_flags() -> None:
  """The experiment's flags, defined when it is the program (not on import: the other experiments' modules
  define flags of the same names, and its worker processes import this module)."""
  flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Seeds; each trains its own baseline and runs every "
                    "arm.")
  flags.DEFINE_list("arms", list(ARMS), f"Arms to run, from {list(ARMS)}.")
  flags.DEFINE_integer("bootstrap_resamples", 1000, "Bootstrap resamples of the test images for the paired "
                       "intervals.", lower_bound=1)
  flags.DEFINE_string("results_dir", "bench/results", "Where the summary, table and plot go.")
  flags.DEFINE_string("label", "photo_digits", "Name of the result files.")
  common.define_workers_flag()
  flags.declare_key_flag("workers")


def main(argv: list[str]) -> None:
  common.main(argv, "terse_tf.experiments.photo_digits", experiment_from_flags, run)


if __name__ == "__main__":
  define_flags()
  app.run(main)
