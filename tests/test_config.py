"""The generic settings on their own: every bad value is one error naming its flag, the task's settings
nest as one field, and which settings a resume must keep."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from conftest import DETECTION_SMOKE_FLAGFILE, REPO_ROOT, smoke_config
from terse_tf import compositor
from terse_tf import config as config_lib
from terse_tf.errors import ConfigError


@pytest.mark.parametrize("override,message", [
    ({"strategy": "tpu"}, "--strategy must be one of"),
    ({"target": "resnet"}, "--target must be one of"),
    ({"target_lr": float("nan")}, "--target_lr must be a finite number, got nan"),
    ({"synth_lr": float("inf")}, "--synth_lr must be a finite number, got inf"),
    ({"discriminator_lr": float("nan")}, "--discriminator_lr must be a finite number"),
    ({"task": "voc"}, "--task must be one of"),
    ({"target": "ssd_compact"}, "--target must be one of .* for --task=affnist"),
    ({"sample_source": "cut_paste"}, "--sample_source must be one of .* for --task=affnist"),
    ({"discriminator_weight": -1.0}, "--discriminator_weight must be >= 0"),
    ({"task": "photo_digits", "task_settings": None},
     "--target must be one of .*ssd_compact.* for --task=photo_digits"),
    ({"task": "photo_digits"},
     "task .photo_digits. takes settings of type PhotoDigitsSettings, got AffnistSettings"),
    ({"synth_dropout": 1.0}, "--synth_dropout must be in"),
    ({"target_lr_warmup_steps": -1}, "--target_lr_warmup_steps must be >= 0"),
    ({"generation_batches": -2}, "--generation_batches must be >= 0"),
    ({"discriminator_pretrain_steps": -1}, "--discriminator_pretrain_steps must be >= 0"),
    ({"batch_size": 0}, "--batch_size must be >= 1"),
    ({"diversity_weight": -1.0}, "--diversity_weight must be >= 0"),
    ({"synth_noise_dim": -2}, "--synth_noise_dim must be >= 0"),
    ({"cache_fraction": 1.0}, "--cache_fraction must be in"),
    ({"synth_warmup_steps": -1}, "--synth_warmup_steps must be >= 0"),
])
def test_bad_training_configs_get_one_clear_error(tmp_path, override, message):
  with pytest.raises(ConfigError, match=message):
    smoke_config(str(tmp_path), **override)


@pytest.mark.parametrize("override,message", [
    ({"task_settings__photo_digits__image_size": 50}, "--photo_image_size must be >= 80"),
    ({"task_settings__photo_digits__min_visible": 1.5}, "--min_visible must be in"),
])
def test_bad_task_settings_get_one_clear_error(tmp_path, override, message):
  with pytest.raises(ConfigError, match=message):
    smoke_config(str(tmp_path), flagfile=DETECTION_SMOKE_FLAGFILE, **override)


@pytest.mark.parametrize("override,message", [
    ({"hard_per_class": (3, 4, 5), "cycles": 2}, "expected one, or one per cycle"),
    ({"hard_per_class": (0,)}, "--hard_per_class needs values >= 1"),
    ({"sample_source": "gan"}, "--sample_source must be one of"),
])
def test_bad_sample_schedules_get_one_clear_error(tmp_path, override, message):
  with pytest.raises(ConfigError, match=message):
    smoke_config(str(tmp_path), **override)


def test_result_settings_leave_out_what_a_resume_may_change():
  config = config_lib.TrainConfig(run_dir="a")
  settings = config_lib.result_settings(config)
  assert settings["synth_lr"] == config.synth_lr and settings["hard_per_class"] == [500]
  assert settings["task_settings.data.num_val"] == config.task_settings.data.num_val  # Nested, by full name.
  elsewhere = dataclasses.replace(config.task_settings.affnist, cache_dir="/elsewhere")
  changed = dataclasses.replace(
      config, run_dir="b", checkpoint_every_steps=7, eval_batch_size=3, strategy="mirrored", jit_compile=False,
      fresh=True, export=False,
      task_settings=dataclasses.replace(config.task_settings, affnist=elsewhere))
  assert config_lib.result_settings(changed) == settings
  assert config_lib.result_settings(dataclasses.replace(config, cycles=9)) != settings
  assert config_lib.result_settings(dataclasses.replace(config, init_checkpoint="x")) != settings


def test_the_task_sets_the_ranges_and_a_config_defines_no_flag():
  with pytest.raises(ConfigError, match="compositor.ranges is set by the task"):
    config_lib.TrainConfig(run_dir="a", compositor=compositor.CompositorConfig(
        ranges=compositor.AffineRanges(10, 5, 0.1, 0.9, 1.1)))
  # A program with flags of its own (one the MNIST tasks also use) builds a TrainConfig: terse_tf defines its
  # tasks' flags only in its own launcher.
  program = ("from absl import flags; flags.DEFINE_integer('num_train', 5, ''); "
             "from terse_tf import config; config.TrainConfig(run_dir='a', task='photo_digits'); print('ok')")
  result = subprocess.run([sys.executable, "-c", program], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
  assert result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.parametrize("schedule", config_lib.LR_SCHEDULES)
def test_ts_learning_rate_ramps_up_then_follows_its_schedule(tmp_path, schedule):
  config = smoke_config(str(tmp_path), target_lr=0.1, target_lr_schedule=schedule, target_lr_warmup_steps=4)
  rates = [config.target_learning_rate(step, 20) for step in range(20)]
  plain = dataclasses.replace(config, target_lr_warmup_steps=0)
  after_warmup = [plain.target_learning_rate(step, 20) for step in range(20)]
  assert rates[:4] == pytest.approx([after_warmup[k] * (k + 1) / 4 for k in range(4)])
  assert rates[4:] == after_warmup[4:]
  if schedule == "cosine":  # From the full rate at the phase's start to ~0 at its end.
    assert after_warmup[0] == 0.1 and after_warmup[-1] == pytest.approx(0.1 * (1 + np.cos(np.pi * 19 / 20)) / 2)
  else:
    assert set(after_warmup) == {0.1}



def test_setting_defaults_are_what_a_run_recorded_before_the_setting_existed(tmp_path):
  config = smoke_config(str(tmp_path), quota_unit="instances")
  defaults = config_lib.setting_defaults(config)
  settings = config_lib.result_settings(config)
  assert set(defaults) <= set(settings)
  assert defaults["quota_unit"] == "samples" and settings["quota_unit"] == "instances"
  assert defaults["hard_per_class"] == [500]  # As JSON has it, the way config.json records it.
