"""The experiments at smoke size: output structure, every arm trained, the reports against the runs they
aggregate."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT, smoke_config
from terse_tf import compositor
from terse_tf.data import photos

SMOKE = os.path.join(REPO_ROOT, "configs", "affnist_efficiency_smoke.flags")


def target_steps(run_dir):
  reader = tf.train.load_checkpoint(os.path.join(run_dir, "checkpoints"))
  return int(reader.get_tensor("target_global_step/.ATTRIBUTES/VARIABLE_VALUE"))


def test_runs_that_differ_only_in_training_share_one_task_and_others_build_their_own(tmp_path):
  from terse_tf.experiments import common

  trainers = common.Trainers()
  first = trainers(smoke_config(str(tmp_path / "a"), seed=0))
  same_data = trainers(smoke_config(str(tmp_path / "b"), seed=3, sample_source="none", synth_lr=0.5))
  other_data = trainers(smoke_config(str(tmp_path / "c"), task_settings__data__num_train=100))
  assert same_data.task is first.task and other_data.task is not first.task
  assert len(other_data.task.real_examples()[0]) != len(first.task.real_examples()[0])


def test_an_arm_given_its_baselines_figures_records_what_it_would_have_measured(tmp_path):
  """An experiment's arm starts from the baseline's T on the baseline's task: handed the baseline's record, it
  skips the evaluation, and an arm that evaluates anyway measures exactly those figures."""
  from terse_tf.experiments import common

  trainers = common.Trainers()
  baseline = trainers(smoke_config(str(tmp_path / "baseline"), cycles=0))
  record = baseline.run()["history"][0]
  checkpoint = baseline.checkpoint_manager.latest_checkpoint
  arm = dict(baseline_epochs=0, cycles=1, sample_source="none", init_checkpoint=checkpoint, finetune_epochs=0)
  marked = dict(record, mnist_val_accuracy=-1.0)  # Tells the record taken from one measured again.
  given = trainers(smoke_config(str(tmp_path / "given"), **arm)).run(baseline_record=marked)["history"]
  measured = trainers(smoke_config(str(tmp_path / "measured"), **arm)).run()["history"]
  assert given[0] == marked and measured[0] == record and given[0]["after"] == "baseline"
  assert given[1]["affnist_test_accuracy"] == measured[1]["affnist_test_accuracy"]


@pytest.mark.slow
def test_efficiency_experiment_at_smoke_size(tmp_path):
  results_dir, runs = tmp_path / "results", tmp_path / "runs"
  run_dir = runs / "affnist_efficiency_smoke"  # <run_dir>/<label>: each data source keeps its own runs
  result = subprocess.run(
      [sys.executable, "-m", "terse_tf.experiments.affnist_efficiency", f"--flagfile={SMOKE}",
       f"--run_dir={runs}", f"--results_dir={results_dir}", "--affnist_cache_dir="],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]

  with open(results_dir / "affnist_efficiency_smoke.csv") as f:
    rows = list(csv.DictReader(f))
  assert set(rows[0]) == {"arm", "k", "k_added", "seed", "affnist_test_accuracy"}
  arms, seeds, grid = ("filtered", "none", "random_affine", "terse"), ("0", "1"), ("0", "20", "60")
  assert sorted((r["arm"], r["seed"], r["k"]) for r in rows) == sorted(
      (a, s, k) for a in arms for s in seeds for k in grid)
  for row in rows:
    assert 0.0 <= float(row["affnist_test_accuracy"]) <= 1.0
    added = int(row["k_added"])
    if row["arm"] == "random_affine":
      assert added == int(row["k"])  # random augmentation always fills its quota
    elif row["arm"] == "none":
      assert added == 0
    else:
      assert 0 <= added <= int(row["k"])
  # All arms start from the same baseline T of their seed.
  for seed in seeds:
    starts = {r["affnist_test_accuracy"] for r in rows if r["seed"] == seed and r["k"] == "0"}
    assert len(starts) == 1

  # Every arm was trained beyond its baseline: one fine-tuning epoch per grid point.
  for seed in seeds:
    baseline_steps = target_steps(run_dir / f"seed{seed}" / "baseline")
    assert baseline_steps > 0
    for arm in arms:
      assert target_steps(run_dir / f"seed{seed}" / arm) > 0

  with open(results_dir / "affnist_efficiency_smoke.json") as f:
    summary = json.load(f)
  assert set(summary["curves"]) == set(arms)
  assert {"random_affine_final_accuracy", "fraction_of_random_samples"} <= set(summary["headline"])
  assert summary["command"].startswith("python -m terse_tf.experiments.affnist_efficiency")
  with open(results_dir / "affnist_efficiency_smoke.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  table = (results_dir / "affnist_efficiency_smoke.md").read_text()
  assert ("| k | random affine + filter | no added samples | random affine augmentation | TERSE | TERSE samples "
          "added |") in table
  # Table 1's form: error rates of the baseline and of every arm at the end of the schedule.
  final = {a: [1 - float(r["affnist_test_accuracy"]) for r in rows if r["arm"] == a and r["k"] == grid[-1]]
           for a in arms}
  start = [1 - float(r["affnist_test_accuracy"]) for r in rows if r["arm"] == "terse" and r["k"] == "0"]
  assert summary["error_rates"]["baseline"]["mean"] == pytest.approx(sum(start) / len(start))
  for arm in arms:
    assert summary["error_rates"][arm]["mean"] == pytest.approx(sum(final[arm]) / len(final[arm]))
  assert f"| TERSE | {summary['error_rates']['terse']['samples_added_mean']:.0f} | " in table
  # What S adds beyond the filter, and the filter beyond random augmentation: per seed, from the rows.
  assert set(summary["paired"]) == {"terse - filtered", "filtered - random_affine", "terse - random_affine"}
  for name, points in summary["paired"].items():
    arm, reference = name.split(" - ")
    for point, k in zip(points, grid[1:], strict=True):
      assert point["k"] == int(k)
      accuracy = {(r["arm"], r["seed"]): float(r["affnist_test_accuracy"]) for r in rows if r["k"] == k}
      assert point["differences"] == pytest.approx([accuracy[arm, s] - accuracy[reference, s] for s in seeds])
      assert point["t_low"] <= point["mean"] <= point["t_high"]
  assert "| k | terse - filtered |" in table
  assert os.listdir(run_dir / "tensorboard") and set(os.listdir(run_dir / "tensorboard")) == set(arms)


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["--k_grid=25"], "--k_grid values must be multiples of 10"),
    (["--k_grid=60,20"], "--k_grid must be increasing"),
    (["--arms=terse,gan"], "--arms must be a non-empty subset"),
    (["--seeds=a"], "--seeds expects comma-separated integers"),
])
def test_bad_experiment_flags_get_one_clear_error(tmp_path, args, message):
  result = subprocess.run(
      [sys.executable, "-m", "terse_tf.experiments.affnist_efficiency", f"--flagfile={SMOKE}",
       f"--run_dir={tmp_path}", f"--results_dir={tmp_path}", *args],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


def test_grid_increments_split_into_small_cycles():
  from terse_tf.experiments import affnist_efficiency as experiment
  from terse_tf.config import TrainConfig

  config = experiment.ExperimentConfig(base=TrainConfig(run_dir="unused"), seeds=(0,),
                                       k_grid=(1000, 2000, 4000, 8500), arms=("terse",), results_dir="",
                                       label="x", max_per_class_per_cycle=200)
  quotas, grid_cycles = config.cycle_schedule()
  # Per class: 100, +100, +200, +450 -> 100 | 100 | 200 | 150, 150, 150
  assert quotas == (100, 100, 200, 150, 150, 150)
  assert grid_cycles == (1, 2, 3, 6)
  assert all(sum(quotas[:c]) * 10 == k for c, k in zip(grid_cycles, config.k_grid))


def test_headline_fraction_is_the_first_grid_point_at_random_augmentations_final_accuracy():
  from terse_tf.experiments import affnist_efficiency as experiment

  def rows(arm, points):
    return [{"arm": arm, "k": k, "k_added": added, "seed": 0, "affnist_test_accuracy": accuracy}
            for k, added, accuracy in points]

  random_curve = rows("random_affine", [(0, 0, 0.2), (1000, 1000, 0.4), (4000, 4000, 0.8)])
  summary = experiment.summarise(
      random_curve + rows("terse", [(0, 0, 0.2), (1000, 1000, 0.6), (4000, 2000, 0.9)]), (1000, 4000))
  headline = summary["headline"]
  assert headline["random_affine_final_accuracy"] == 0.8 and headline["random_affine_samples"] == 4000
  assert headline["terse_samples_to_reach_it"] == 2000 and headline["fraction_of_random_samples"] == 0.5
  # 0.8 lies two thirds of the way from 0.6 (1000 samples) to 0.9 (2000), read in log samples.
  assert headline["terse_samples_to_reach_it_interpolated"] == pytest.approx(1000 * 2 ** (2 / 3))
  assert headline["fraction_of_random_samples_interpolated"] == pytest.approx(1000 * 2 ** (2 / 3) / 4000)
  errors = summary["error_rates"]
  assert errors["baseline"]["mean"] == pytest.approx(0.8) and errors["baseline"]["samples_added_mean"] == 0
  assert errors["random_affine"]["mean"] == pytest.approx(0.2)
  assert errors["terse"]["mean"] == pytest.approx(0.1) and errors["terse"]["samples_added_mean"] == 2000

  never = experiment.summarise(
      random_curve + rows("terse", [(0, 0, 0.2), (1000, 1000, 0.3), (4000, 3000, 0.7)]), (1000, 4000))
  assert never["headline"]["fraction_of_random_samples"] is None
  assert never["headline"]["fraction_of_random_samples_interpolated"] is None


DETECTION_ARMS = ("real_only", "cut_paste", "cut_paste_blend_modes", "uniform_filter", "terse_no_d", "terse",
                  "terse_no_diversity", "d_control")
# The arms every other is compared with (the experiment's REFERENCES; its module is not imported here: it and
# the efficiency experiment's each define --seeds, so one process imports one of them).
DETECTION_REFERENCES = ("cut_paste", "uniform_filter")


def check_detection_report(results_dir, label, seeds, cycles):
  """The detection experiment's report (<results_dir>/<label>.json and .md) against the runs it aggregates
  (<results_dir>/runs/<label>/seed<N>/<arm>/results.json): its rows are the runs' evaluations, every arm
  starts from its seed's baseline T, each mean, sample SD and final figure is recomputed from the rows, and
  the arms of a seed shared their fine-tuning steps and test set. Returns the report."""
  with open(results_dir / f"{label}.json") as f:
    report = json.load(f)
  rows = report["rows"]
  metrics = sorted(key for key in rows[0] if key.endswith(("_ap50", "_ap", "_ap75")))
  assert {"test_ap50", "val_ap50", "val_upright_ap50"} <= set(metrics)
  for seed in seeds:
    seed_dir = results_dir / "runs" / label / f"seed{seed}"
    with open(seed_dir / "baseline" / "results.json") as f:
      baseline = json.load(f)
    for arm in DETECTION_ARMS:
      with open(seed_dir / arm / "results.json") as f:
        history = json.load(f)["history"]
      mine = sorted((r for r in rows if r["seed"] == seed and r["arm"] == arm), key=lambda r: r["cycle"])
      assert [r["cycle"] for r in mine] == list(range(cycles + 1)), (seed, arm)
      assert len(history) == len(mine)
      for row, record in zip(mine, history):
        assert row["samples"] == record["cache_size"]
        assert all(row[m] == record[m] for m in metrics), (row, record)
      # The arm starts from the baseline T: cycle 0 is the baseline run's own evaluation.
      assert all(mine[0][m] == baseline[f"{m}_before"] for m in metrics), (arm, mine[0], baseline)
    fairness = report["fairness"][f"seed{seed}"]
    assert len({f["target_steps"] for f in fairness.values()}) == 1, fairness  # The same fine-tuning.
    assert len({f["test_set"] for f in fairness.values()}) == 1, fairness      # The same test scenes.
    for arm, figures in fairness.items():
      assert figures["instances"] >= figures["samples"], (arm, figures)        # Each sample holds >= 1 object.
      # Whether the arm filled its quota: real_only adds nothing; random placement keeps every draw.
      expected = (None,) if arm == "real_only" else (True,) if arm.startswith("cut_paste") else (True, False)
      assert figures["quota_reached"] in expected, (arm, figures)
  table = (results_dir / f"{label}.md").read_text()
  missed = [(seed, arm) for seed in seeds for arm, figures in report["fairness"][f"seed{seed}"].items()
            if figures["quota_reached"] is False]
  assert ("Every adding arm filled its quota on every seed." in table) == (not missed)
  assert set(report["curves"]) == set(report["final"]) == set(DETECTION_ARMS)
  for arm, points in report["curves"].items():
    assert [p["cycle"] for p in points] == list(range(cycles + 1))
    for point in points:
      chosen = [r for r in rows if r["arm"] == arm and r["cycle"] == point["cycle"]]
      assert point["seeds"] == len(chosen) == len(seeds)
      assert point["samples_mean"] == pytest.approx(np.mean([r["samples"] for r in chosen]))
      for m in metrics:
        values = np.array([r[m] for r in chosen])
        assert point[m] == pytest.approx({"mean": values.mean(), "sd": values.std(ddof=1), "min": values.min(),
                                          "max": values.max()}, abs=1e-12, nan_ok=True), (arm, point)
    last = [r for r in rows if r["arm"] == arm and r["cycle"] == cycles]
    assert report["final"][arm] == pytest.approx({
        "ap50": np.mean([r["test_ap50"] for r in last]), "ap": np.mean([r["test_ap"] for r in last]),
        "samples": np.mean([r["samples"] for r in last]), "instances": np.mean([r["instances"] for r in last]),
        **{m: np.mean([r[m] for r in last]) for m in metrics if not m.startswith("test_")}}, abs=1e-12), arm
    last_point = points[-1]
    assert f" | {last_point['test_ap50']['mean']:.3f} +- {last_point['test_ap50']['sd']:.3f} | " in table, arm
  for arm in DETECTION_ARMS:
    for reference in DETECTION_REFERENCES:
      if arm != reference:
        paired = report["paired"][f"{arm} - {reference} (test)"]
        assert paired["low"] <= paired["high"] and paired["seeds"] == len(seeds), paired
        assert f"| {arm} - {reference} (test) | {paired['mean_difference']:+.3f} |" in table
  histogram = report["hardness_histogram"]
  for arm in set(DETECTION_ARMS) - {"real_only"}:
    assert sum(histogram[arm]) == pytest.approx(1.0), arm
  return report


@pytest.mark.slow
def test_detection_experiment_at_smoke_size(tmp_path):
  """Every arm from one baseline per seed, each adding what its source gives, and the report's fairness
  invariants; the smoke size says nothing about which arm wins."""
  detection_smoke = os.path.join(REPO_ROOT, "configs", "photo_digits_smoke.flags")
  result = subprocess.run(
      [sys.executable, "-m", "terse_tf.experiments.photo_digits", f"--flagfile={detection_smoke}",
       f"--run_dir={tmp_path / 'runs'}", f"--results_dir={tmp_path}", "--label=smoke", "--seeds=0,1",
       "--cycles=1", "--bootstrap_resamples=50", "--quota_unit=instances", "--hard_per_class=8",
       "--workers=2"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  report = check_detection_report(tmp_path, "smoke", seeds=(0, 1), cycles=1)
  assert report["final"]["real_only"]["samples"] == 0
  # Equal instances: each arm stops once its scenes hold 8 objects, past it by less than a scene's 2 at most.
  for arm in ("cut_paste", "cut_paste_blend_modes"):
    assert 8 <= report["final"][arm]["instances"] < 10, arm  # Every random sample is kept.
  for arm in ("uniform_filter", "terse_no_d", "terse", "terse_no_diversity", "d_control"):
    assert 0 < report["final"][arm]["instances"] < 10, arm  # Only what T finds hard, up to the quota.
  assert (tmp_path / "smoke.png").exists()
  # D pre-trained and trained beside T moves S only through its term in S's loss: at weight 0, S's composites,
  # hence T and every figure, are those of TERSE without D.
  for seed in (0, 1):
    rows = {arm: [r for r in report["rows"] if r["seed"] == seed and r["arm"] == arm]
            for arm in ("d_control", "terse_no_d")}
    assert rows["d_control"] == [dict(r, arm="d_control") for r in rows["terse_no_d"]], seed
  # What D does to S: S's placement spreads for the arms S filled, D's accuracy where D plays.
  players = report["players"]
  assert set(players) == {"terse_no_d", "terse", "terse_no_diversity", "d_control"}
  for arm, figures in players.items():
    assert set(figures["param_sd"]) == set(compositor.PARAM_NAMES)
    assert all(value >= 0 for value in figures["param_sd"].values())
    assert ("discriminator_accuracy" in figures) == (arm != "terse_no_d"), arm
    assert 0 <= figures.get("discriminator_accuracy", 0) <= 1
  assert players["d_control"]["param_sd"] == players["terse_no_d"]["param_sd"]
  # Per-photo AP by the test photos' own names.
  assert set(report["per_photo"]["test"]["terse"]) <= set(photos.load_photos("test").names)
  # D trained only in the arm that has it.
  seed_dir = tmp_path / "runs" / "smoke" / "seed0"
  for arm, has_d in (("terse", True), ("terse_no_d", False)):
    keys = [name for name, _ in tf.train.list_variables(str(seed_dir / arm / "checkpoints"))]
    assert any(key.startswith("discriminator_optimizer/") for key in keys) == has_d, arm


def test_per_class_table_averages_each_class_over_seeds_leaving_out_undefined_ones():
  """The ten-class detection experiment's per-class AP@0.5 (the GMU table's form): each arm's last cycle,
  each class's mean over the seeds that define it (-1: no box of the class in that seed's set)."""
  from terse_tf.experiments import common  # pylint: disable=import-outside-toplevel
  names, arms = ["0", "1"], ("cut_paste", "terse")

  def row(arm, seed, cycle, ap0, ap1, overall):
    return {"arm": arm, "seed": seed, "cycle": cycle, "test_ap50": overall, "test_ap50_0": ap0,
            "test_ap50_1": ap1}

  rows = [row("cut_paste", 0, 0, 0.9, 0.9, 0.9),  # An earlier cycle: not in the table.
          row("cut_paste", 0, 1, 0.2, 0.4, 0.3), row("cut_paste", 1, 1, 0.4, -1.0, 0.4),
          row("terse", 0, 1, 0.1, 0.3, 0.2), row("terse", 1, 1, 0.3, 0.5, 0.4)]
  summary = common.per_class_summary(rows, arms, names, ("test", "unseen"))
  assert set(summary) == {"test"}  # The rows carry no unseen figures.
  assert summary["test"]["cut_paste"] == pytest.approx({"0": 0.3, "1": 0.4, "mAP": 0.35})
  assert summary["test"]["terse"] == pytest.approx({"0": 0.2, "1": 0.4, "mAP": 0.3})
  one_class = [{k: v for k, v in r.items() if not k.startswith("test_ap50_")} for r in rows]
  assert common.per_class_summary(one_class, arms, names, ("test", "unseen")) == {}


def test_more_workers_than_cpus_is_one_error_naming_the_flag():
  from terse_tf.errors import ConfigError
  from terse_tf.experiments import common

  cpus = len(os.sched_getaffinity(0))
  shares = common.cpu_shares(cpus)
  assert sorted(cpu for share in shares for cpu in share) == sorted(os.sched_getaffinity(0))
  with pytest.raises(ConfigError, match="--workers"):
    common.cpu_shares(cpus + 1)


class ArmFailed(Exception):
  pass


def summary_failing_in_arm_b(arm, seed, trainer, results):
  """A common.ArmSummariser that fails for arm "b", as a run's own error would."""
  if arm == "b":
    raise ArmFailed(f"arm {arm} of seed {seed}")
  return {"arm": arm, "seed": seed, "steps": int(trainer.target_global_step.numpy()),
          "cache": len(trainer.cache)}


@pytest.mark.slow
def test_runs_in_worker_processes_are_the_runs_of_one_process_and_a_runs_error_ends_the_experiment(tmp_path,
                                                                                                    capfd):
  """Two single-core workers: each seed's baseline, then its arms from the baseline's checkpoint, returned
  in order and with what one process gives (steps, samples added), each worker's log lines labelled with
  their run; an error in one run reaches the caller as itself, with no worker left behind."""
  import multiprocessing

  from absl import logging

  from terse_tf.experiments import common

  previous_verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.INFO)  # The workers log at the caller's verbosity.

  base = smoke_config(str(tmp_path / "runs"), cycles=1, baseline_epochs=1, finetune_steps=5)
  arms = {"a": dict(sample_source="none"), "c": dict(sample_source="random_affine")}
  in_workers, in_process = (
      common.run_arms(base, (0, 1), lambda seed: str(tmp_path / f"{workers}" / f"seed{seed}"), arms,
                      summary_failing_in_arm_b, workers=workers) for workers in (2, 1))
  assert list(in_workers) == [0, 1] and all(list(runs) == [common.BASELINE, "a", "c"]
                                            for runs in in_workers.values())
  for seed in (0, 1):
    assert in_workers[seed][common.BASELINE]["history"][0]["after"] == "baseline"
    assert in_workers[seed]["a"]["cache"] == 0 and in_workers[seed]["c"]["cache"] > 0
    assert in_workers[seed]["a"]["steps"] == in_workers[seed]["c"]["steps"] > 0  # From the same baseline T.
    assert {arm: in_workers[seed][arm] for arm in arms} == {arm: in_process[seed][arm] for arm in arms}
  logging.set_verbosity(previous_verbosity)
  worker_log = capfd.readouterr().err
  assert all(f"[seed {seed} {run}] " in worker_log for seed in (0, 1) for run in (common.BASELINE, "a", "c"))
  with pytest.raises(ArmFailed, match="arm b of seed 0"):
    common.run_arms(base, (0,), lambda seed: str(tmp_path / f"failing{seed}"), {"b": {}, **arms},
                    summary_failing_in_arm_b, workers=2)
  assert not multiprocessing.active_children()
