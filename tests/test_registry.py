"""Tasks are plug-ins: one module registers a task with its settings, flags, targets and baseline, and the
generic code (the config, the trainer, the launcher) trains it by name."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from terse_tf import config as config_lib
from terse_tf.errors import ConfigError
from terse_tf.tasks import registry

import tiny_task  # Registers tiny_bars, as a user's launcher would before terse_tf.train.run().

# A user's launcher: their task's module, then terse_tf's command line.
LAUNCHER = "import sys; sys.path.insert(0, 'tests'); import tiny_task; from terse_tf import train; train.run()"


@pytest.mark.slow
def test_a_task_registered_outside_the_package_trains_from_the_command_line(tmp_path):
  run_dir = tmp_path / "run"
  args = ["--task=tiny_bars", f"--run_dir={run_dir}", "--tiny_num_real=128", "--tiny_num_test=64",
          "--baseline_epochs=1", "--finetune_epochs=1", "--cycles=1", "--hard_per_class=4", "--synth_max_steps=6",
          "--batch_size=32", "--synth_batch_size=16", "--checkpoint_every_steps=3", "--export=false"]
  result = subprocess.run([sys.executable, "-c", LAUNCHER, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(run_dir / "results.json") as f:
    results = json.load(f)
  assert results["task"] == "tiny_bars" and results["headline"] == "test_accuracy"
  assert results["cycles_completed"] == 1 and 0 < results["hard_examples"] <= 8
  assert [h["after"] for h in results["history"]] == ["baseline", "cycle 1"]
  with open(run_dir / "config.json") as f:
    recorded = json.load(f)
  # The task's own flags reached its settings, nested as one field of the generic config.
  assert recorded["config"]["task_settings"] == {"num_real": 128, "num_test": 64, "seed": 0}
  assert recorded["results_depend_on"]["task_settings.num_real"] == 128
  # The task's random baseline is a --sample_source like the built-in ones'.
  result = subprocess.run([sys.executable, "-c", LAUNCHER, *args, "--sample_source=random_bars", "--fresh"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(run_dir / "results.json") as f:
    assert json.load(f)["hard_examples"] == 8  # Every random sample is kept: 4 per class.


def test_the_registry_knows_each_task_by_name_only():
  entry = registry.get("tiny_bars")
  assert entry.task_cls is tiny_task.TinyBarsTask and entry.targets == ("paper",)
  assert entry.random_source == "random_bars" and entry.from_flags
  assert "tiny_bars" in registry.names() and "affnist" in registry.names()
  assert "custom" not in registry.names() and "custom" in registry.names(from_flags=False)  # Built in Python.
  config = config_lib.TrainConfig(run_dir="unused", task="tiny_bars")
  assert config.task_settings == tiny_task.TinyBarsSettings() and config.target == "paper"
  with pytest.raises(ConfigError, match=r"--task must be one of \[.*'tiny_bars'.*\], got 'bars'"):
    config_lib.TrainConfig(run_dir="unused", task="bars")
  with pytest.raises(ConfigError, match="--sample_source must be one of .*random_bars"):
    config_lib.TrainConfig(run_dir="unused", task="tiny_bars", sample_source="cut_paste")


def test_a_second_task_under_a_taken_name_is_refused():
  with pytest.raises(ValueError, match="'tiny_bars' is registered twice"):
    registry.register("tiny_bars", settings=tiny_task.TinyBarsSettings, summary="")(type("Other", (), {}))


def test_generic_modules_name_no_task():
  """Only the registry's own loading and the task modules themselves name a task: the trainer, the launcher's
  generic flags, the config and the rest find tasks by name through the registry. (The API names no built-in
  task; it builds its own, the tasks around your model in tasks/custom.py.)"""
  package = os.path.join(REPO_ROOT, "terse_tf")
  for module in ("trainer.py", "train.py", "train_lib.py", "config.py", "steps.py", "pipelines.py", "run_dir.py",
                 "distribute.py", "summaries.py", "progress.py", "api.py"):
    with open(os.path.join(package, module)) as f:
      source = f.read()
    for task_name in ("affnist", "photo_digits", "tiny_bars") + (("tasks.custom",) if module != "api.py" else ()):
      assert task_name not in source, (module, task_name)
