r"""The VOC person experiment (paper §4.2): Table 2's ablation grid, Table 3's baseline, Table 4's AP by IoU
and Fig. 8's hardness histogram, from one command.

    python -m terse_tf.experiments.voc_person --flagfile=configs/voc_person.flags --voc_dir=... \
      --voc_background_source=coco --voc_coco_dir=... --voc_coco_annotations=...

For each seed one baseline T (SSD) trains on VOC 2007 + 2012 trainval alone; every arm then starts from its
checkpoint and runs the flagfile's sleep cycles (experiments/common.run_arms), the arms differing only
in Table 2's five switches, or in where their samples come from:

  annotation clean-up  A.2's: person instances whose mask and XML box disagree are dropped
                       (--voc_min_mask_box_iou as the flagfile sets it; off: 0, every instance kept);
  dropout              S's dropout (--synth_dropout as set; off: 0);
  blending             §3.1's blending artefacts pasted into S's backgrounds, D's real images and the Cut-Paste
                       arm's (--voc_background_artifact_fraction as set; off: 0);
  ratio                (iv) "fine-tuning with real and synthetic data" at a fixed ratio: each fine-tuning batch
                       draws --cache_fraction of its examples from the synthetic cache, the rest from VOC (on);
                       off: real and synthetic shuffled as one pool (--cache_fraction=0, A.1's mix), where the
                       few thousand composites are a small share of VOC's 16,551 images. Our reading: the
                       table's label is all that survives of the paper's setting;
  discriminator        D on or off (--discriminator).

Table 2's columns: column 1 has all five switches on (TERSE as A.2 trains it) and each further column turns
the last one still on off, so column 6 has none: column 2 is without D, column 3 also without the ratio, ...,
column 6 also without the clean-up. That is how our extracted copy of the table reads, but its marks are
left-packed (the extraction drops empty cells, so a row's blanks on the left cannot be told from blanks on the
right), and the paper's "progressive improvements with each addition" suggests the reverse order: the column
labels may be reversed (the paper's column 1 our column 6, and so on). The six settings are the same either
way. Beside them two arms without S:
  cut_paste            Cut-Paste-Learn [7]'s random placement with the same cut-outs, backgrounds and blending
                       artefacts (§4.2.1's fair comparison), as many person instances a cycle
                       (--quota_unit=instances);
  cut_paste_filter     cut_paste's samples kept only where the T of the cycle scores them below
                       --hard_threshold (sample source "filtered"; photo_digits' uniform_filter), from at most
                       as many draws as S composes in a cycle. TERSE's cache holds only composites that pass
                       this filter while Cut-Paste keeps every sample, so "TERSE's samples are harder" (Fig. 8)
                       and "TERSE beats Cut-Paste" (Table 4) could follow from the filter alone: this arm is the
                       filter without S's learning, and what TERSE adds beyond it is S's.
The baseline T is Table 3's row. The paper's second cut-and-paste baseline, Dvornik et al.'s context-based
placement [6] (Fig. 8 and §4.2.1 compare against it too), is not implemented: only Cut-Paste-Learn [7] is.

Figures are VOC 2007's 11-point AP on VOC 2007 test (tasks/voc_person.py): AP0.5 and AP0.8 of Tables 2 and 3
are test_voc07_ap50 and test_voc07_ap80 after the last cycle; Table 4 is test_voc07_ap50 ... _ap90 of the
baseline, Cut-Paste, Cut-Paste + filter, TERSE without D (column 2) and TERSE (column 1). Fig. 8 is the share
of each arm's first-cycle samples per bin of the baseline T's confidence (experiments/common.hardness_histogram),
TERSE against Cut-Paste and Cut-Paste + filter. Means over seeds (sample SD beside them with several).

Writes --results_dir/<label>.{json,md,png} and, under <run_dir>/<label>/tensorboard, the tables as scalars
(table2/<column>/ap50 ...), Fig. 8 as scalars per bin, the markdown as text and the PNG as an image. Runs live
under <run_dir>/<label>/seed<N>/<arm>. All flags of terse_tf.train apply; the ones below are the experiment's.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from terse_tf import config as config_lib
from terse_tf import evaluation, provenance
from terse_tf.config import TrainConfig
from terse_tf.errors import ConfigError
from terse_tf.experiments import common
from terse_tf.tasks import detection
from terse_tf.trainer import Trainer

# Table 2's switches, in the order the paper lists them, and the settings each turns off.
SWITCHES = ("cleanup", "dropout", "blending", "ratio", "discriminator")
SWITCH_TITLES = {"cleanup": "Ann. Cleanup", "dropout": "Dropout", "blending": "Blending", "ratio": "Ratio",
                 "discriminator": "Discriminator"}
# Column c of Table 2 has the first 6 - c switches on (the module docstring).
COLUMNS = {f"column{c}": SWITCHES[:len(SWITCHES) + 1 - c] for c in range(1, len(SWITCHES) + 2)}
CUT_PASTE, CUT_PASTE_FILTER = detection.CUT_PASTE, "cut_paste_filter"
ARMS = (*COLUMNS, CUT_PASTE, CUT_PASTE_FILTER)
# Table 4's rows (besides the baseline) and Fig. 8's arms.
TABLE4_ARMS = {CUT_PASTE: "Cut-Paste [7]", CUT_PASTE_FILTER: "Cut-Paste [7] + filter",
               "column2": "TERSE without D", "column1": "TERSE"}
FIG8_ARMS = {CUT_PASTE: "Cut-Paste [7]", CUT_PASTE_FILTER: "Cut-Paste [7] + filter", "column1": "TERSE"}
BASELINE = common.BASELINE
# The figures each table reads, VOC 2007's 11-point AP at an IoU (tasks/voc_person.py's set_figures).
IOUS = evaluation.TABLE4_IOUS
FIGURE = "test_voc07_ap{}"

FLAGS = flags.FLAGS


def figure_name(iou: float) -> str:
  return FIGURE.format(round(100 * iou))


@dataclasses.dataclass(frozen=True)
class ExperimentConfig(common.ArmsExperiment):
  TASK = "voc_person"
  ARMS = tuple(ARMS)

  def __post_init__(self):
    super().__post_init__()
    # A switch on keeps the flagfile's value, off sets 0: the flagfile must set each on.
    settings = self.base.task_settings
    for flag, value in (("voc_min_mask_box_iou", settings.min_mask_box_iou), ("synth_dropout",
                        self.base.synth_dropout), ("voc_background_artifact_fraction",
                        settings.background_artifact_fraction), ("cache_fraction", self.base.cache_fraction)):
      if value <= 0:
        raise ConfigError(f"--{flag} must be > 0: it is Table 2's switch on (off sets it to 0), got {value}")


def arm_changes(base: TrainConfig, arm: str) -> dict:
  """The changes to `base` (the flagfile's settings, every switch on) that make `arm`."""
  if arm in (CUT_PASTE, CUT_PASTE_FILTER):
    return dict(sample_source=CUT_PASTE if arm == CUT_PASTE else config_lib.FILTERED, discriminator=False)
  on = COLUMNS[arm]
  task_settings = dataclasses.replace(
      base.task_settings,
      min_mask_box_iou=base.task_settings.min_mask_box_iou if "cleanup" in on else 0.0,
      background_artifact_fraction=base.task_settings.background_artifact_fraction if "blending" in on else 0.0)
  return dict(sample_source=config_lib.TERSE, task_settings=task_settings,
              synth_dropout=base.synth_dropout if "dropout" in on else 0.0,
              cache_fraction=base.cache_fraction if "ratio" in on else 0.0, discriminator="discriminator" in on)


def arm_outcome(arm: str, seed: int, trainer: Trainer, results: dict) -> dict:
  """An arm's figures after its last cycle, its first-cycle samples' hardness, the samples it added and its
  training time (a common.ArmSummariser)."""
  figures = last_figures(results)
  logging.info("seed %d %s: VOC07 AP@0.5 %.4f, AP@0.8 %.4f", seed, arm, figures[figure_name(0.5)],
               figures[figure_name(0.8)])
  return {"figures": figures, "hardness": common.first_cycle_hardness(trainer.cache),
          "samples": len(trainer.cache), "training_s": results["wall_time_s"]}


def last_figures(results: dict) -> dict[str, float]:
  last = results["history"][-1]
  return {key: last[key] for key in (*map(figure_name, IOUS), "test_ap50", "test_ap")}


def seed_result(runs: dict[str, dict], arms: tuple[str, ...]) -> dict:
  """One seed's {"figures": {arm: its figures after its last cycle, "baseline": the baseline T's},
  "hardness": {arm: its first-cycle samples' hardness}, "samples": {arm: samples added}, "training_s",
  "task"}, from common.run_arms' entry for the seed."""
  baseline = runs[BASELINE]
  return {"figures": {BASELINE: last_figures(baseline), **{arm: runs[arm]["figures"] for arm in arms}},
          "hardness": {arm: runs[arm]["hardness"] for arm in arms},
          "samples": {arm: runs[arm]["samples"] for arm in arms},
          "training_s": baseline["wall_time_s"] + sum(runs[arm]["training_s"] for arm in arms),
          "task": baseline["data"]}


def summarise(per_seed: list[dict], arms: tuple[str, ...]) -> dict:
  """{arm or "baseline": {figure: {"mean", "sd"}}} over seeds (sd None with one seed)."""
  summary = {}
  for arm in (BASELINE, *arms):
    rows = [result["figures"][arm] for result in per_seed]
    summary[arm] = {key: {"mean": float(np.mean([row[key] for row in rows])),
                          "sd": float(np.std([row[key] for row in rows], ddof=1)) if len(rows) > 1 else None}
                    for key in rows[0]}
  return summary


def _cell(figure: dict | None) -> str:
  """A figure in percent to one decimal, +- its SD over seeds when there is one; n/a for an arm not run."""
  if figure is None:
    return "n/a"
  sd = "" if figure["sd"] is None else f" +- {100 * figure['sd']:.1f}"
  return f"{100 * figure['mean']:.1f}{sd}"


def tables(report: dict) -> dict[str, str]:
  """Markdown of Tables 2, 3 and 4 and Fig. 8's histogram, from the report's summary."""
  summary, columns = report["summary"], list(COLUMNS)

  def ap(arm: str, iou: float) -> dict | None:
    return summary.get(arm, {}).get(figure_name(iou))

  table2 = ["| Column No. | " + " | ".join(str(c) for c in range(1, len(columns) + 1)) + " |",
            "|---|" + "---:|" * len(columns)]
  for switch in SWITCHES:
    marks = ("✓" if switch in COLUMNS[column] else "" for column in columns)
    table2.append(f"| {SWITCH_TITLES[switch]} | " + " | ".join(marks) + " |")
  for iou in (0.5, 0.8):
    table2.append(f"| AP{iou} | " + " | ".join(_cell(ap(c, iou)) for c in columns) + " |")
  table3 = ["| | AP0.5 | AP0.8 |", "|---|---:|---:|",
            f"| Baseline SSD | {_cell(ap(BASELINE, 0.5))} | {_cell(ap(BASELINE, 0.8))} |"]
  rows4 = {BASELINE: "Baseline SSD", **TABLE4_ARMS}
  table4 = ["| | " + " | ".join(f"AP{iou}" for iou in IOUS) + " |", "|---|" + "---:|" * len(IOUS)]
  for arm, title in rows4.items():
    table4.append(f"| {title} | " + " | ".join(_cell(ap(arm, iou)) for iou in IOUS) + " |")
  histogram = report["hardness_histogram"]
  bins = histogram["bins"]
  fig8 = ["| baseline T's confidence | " + " | ".join(FIG8_ARMS.values()) + " |",
          "|---|" + "---:|" * len(FIG8_ARMS)]
  for index in range(len(bins) - 1):
    cells = [f"{histogram[arm][index]:.3f}" if arm in histogram else "n/a" for arm in FIG8_ARMS]
    fig8.append(f"| {bins[index]:.1f}-{bins[index + 1]:.1f} | " + " | ".join(cells) + " |")
  return {name: "\n".join(lines) + "\n" for name, lines in (("table2", table2), ("table3", table3),
                                                             ("table4", table4), ("fig8", fig8))}


def write_outputs(experiment: ExperimentConfig, report: dict) -> dict[str, str]:
  """<label>.json, .md and .png under --results_dir, and the same into TensorBoard under the runs' folder."""
  os.makedirs(experiment.results_dir, exist_ok=True)
  stem = os.path.join(experiment.results_dir, experiment.label)
  paths = {"json": stem + ".json", "md": stem + ".md", "png": stem + ".png"}
  with open(paths["json"], "w") as f:
    json.dump(report, f, indent=2)
  parts = tables(report)
  seeds = f"{len(experiment.seeds)} seed{'s' if len(experiment.seeds) > 1 else ''}"
  markdown = "\n".join([
      f"# {experiment.label}", "", f"Command: `{report['command']}`  ",
      f"Wall time: {report['wall_time_s'] / 60:.1f} min; target `{experiment.base.target}`; {seeds}, means "
      "(+- sample SD over seeds where there are several). VOC 2007 11-point AP on VOC 2007 test, in percent.",
      "", f"Task: {report['task']}", "",
      "## Table 2: ablation (after the last cycle; column 1 is TERSE, each further column one switch fewer)", "",
      parts["table2"], "## Table 3: the baseline SSD (VOC 2007 + 2012 trainval alone)", "", parts["table3"],
      "## Table 4: AP by IoU threshold", "", parts["table4"],
      "## Fig. 8: share of each arm's first-cycle samples by the baseline T's confidence", "", parts["fig8"]])
  with open(paths["md"], "w") as f:
    f.write(markdown)
  png = _plot(report, paths["png"])
  _to_tensorboard(os.path.join(experiment.base.run_dir, experiment.label, "tensorboard"), report, markdown, png)
  return paths


def _plot(report: dict, path: str) -> bytes:
  """Table 2's AP0.5 / AP0.8 by column, Table 4's AP by IoU and Fig. 8, side by side; returns the PNG."""
  import matplotlib  # Imported here: only the report needs it.
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  summary = report["summary"]

  def mean(arm: str, iou: float) -> float:
    return summary[arm][figure_name(iou)]["mean"] if arm in summary else np.nan

  figure, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  positions = np.arange(len(COLUMNS))
  for offset, iou in ((-0.2, 0.5), (0.2, 0.8)):
    axes[0].bar(positions + offset, [100 * mean(c, iou) for c in COLUMNS], 0.4, label=f"AP{iou}")
    axes[0].axhline(100 * mean(BASELINE, iou), color="grey", ls="--" if iou == 0.5 else ":", lw=1)
  axes[0].set_xticks(positions, [str(c) for c in range(1, len(COLUMNS) + 1)])
  axes[0].set_xlabel("Table 2 column (1: TERSE; dashed / dotted: baseline)")
  axes[0].set_ylabel("VOC07 AP (%)")
  axes[0].legend()
  for arm, title in {BASELINE: "Baseline SSD", **TABLE4_ARMS}.items():
    axes[1].plot(IOUS, [100 * mean(arm, iou) for iou in IOUS], "o-", label=title)
  axes[1].set_xlabel("IoU threshold")
  axes[1].set_ylabel("VOC07 AP (%)")
  axes[1].legend()
  histogram = report["hardness_histogram"]
  centres = (np.array(histogram["bins"][:-1]) + np.array(histogram["bins"][1:])) / 2
  for arm, title in FIG8_ARMS.items():
    if arm in histogram:
      axes[2].plot(centres, histogram[arm], "o-", label=title)
  axes[2].set_xlabel("baseline SSD's confidence")
  axes[2].set_ylabel("share of the arm's first-cycle samples")
  axes[2].legend()
  for axis in axes:
    axis.grid(alpha=0.3)
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=110)
  plt.close(figure)
  with open(path, "wb") as f:
    f.write(buffer.getvalue())
  return buffer.getvalue()


def _to_tensorboard(log_dir: str, report: dict, markdown: str, png: bytes) -> None:
  """The tables as scalars (table2/<column>/ap50, table4/<arm>/ap<iou>; step 0), Fig. 8 as one scalar per arm
  stepped by bin, the markdown as text and the PNG as an image."""
  writer = tf.summary.create_file_writer(log_dir)
  summary = report["summary"]
  with writer.as_default():
    for arm, figures in summary.items():
      for iou in IOUS:
        tag = f"table2/{arm}" if arm in COLUMNS else f"table4/{arm}"
        tf.summary.scalar(f"{tag}/ap{round(100 * iou)}", figures[figure_name(iou)]["mean"], step=0)
    histogram = report["hardness_histogram"]
    for arm in FIG8_ARMS:
      for index, share in enumerate(histogram.get(arm, [])):
        tf.summary.scalar(f"fig8/{arm}", share, step=index)
    tf.summary.text("voc_person/report", markdown, step=0)
    tf.summary.image("voc_person/figure", tf.image.decode_png(png)[None], step=0)
  writer.close()


def run(experiment: ExperimentConfig, command: str = "") -> dict:
  started = time.monotonic()
  runs = experiment.runs({arm: arm_changes(experiment.base, arm) for arm in experiment.arms}, arm_outcome,
                         command)
  per_seed = [seed_result(runs[seed], experiment.arms) for seed in experiment.seeds]
  hardness = {arm: [result["hardness"][arm] for result in per_seed] for arm in experiment.arms}
  report = {"command": command, "wall_time_s": round(time.monotonic() - started, 1),
            "training_time_s": round(sum(result["training_s"] for result in per_seed), 1),
            "seeds": list(experiment.seeds), "arms": list(experiment.arms), "provenance": provenance.describe(),
            "columns": {column: list(on) for column, on in COLUMNS.items()},
            "config": dataclasses.asdict(experiment.base), "task": per_seed[0]["task"],
            "summary": summarise(per_seed, experiment.arms),
            "hardness_histogram": common.hardness_histogram(hardness),
            "samples": {f"seed{seed}": result["samples"] for seed, result in zip(experiment.seeds, per_seed)},
            "figures": {f"seed{seed}": result["figures"] for seed, result in zip(experiment.seeds, per_seed)}}
  paths = write_outputs(experiment, report)
  logging.info("wrote %s", paths)
  return {**report, "paths": paths}


def experiment_from_flags(flag_values: flags.FlagValues = FLAGS) -> ExperimentConfig:
  return ExperimentConfig(**ExperimentConfig.fields_from_flags(flag_values))


def define_flags() -> None:
  """The experiment's flags, defined when it is the program (not on import: the other experiments' modules
  define flags of the same names, a test imports several, and its worker processes import this module)."""
  flags.DEFINE_list("seeds", ["0"], "Seeds; each trains its own baseline and runs every arm.")
  flags.DEFINE_list("arms", list(ARMS), f"Arms to run, from {list(ARMS)} (Table 2's columns, Cut-Paste and "
                    "Cut-Paste with TERSE's hardness filter).")
  flags.DEFINE_string("results_dir", "bench/results", "Where the tables, figure and JSON go.")
  flags.DEFINE_string("label", "voc_person", "Name of the result files and of the runs' folder.")
  common.define_workers_flag()
  flags.declare_key_flag("workers")


def main(argv: list[str]) -> None:
  common.main(argv, "terse_tf.experiments.voc_person", experiment_from_flags, run)


if __name__ == "__main__":
  define_flags()
  app.run(main)
