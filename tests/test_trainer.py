"""The trainer in-process: a smoke run end to end, resume, --fresh, NaN handling, TensorBoard output."""

import glob
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT, smoke_config
from terse_tf import train_lib, trainer as trainer_lib
from terse_tf.errors import ConfigError, DataError, NonFiniteLossError


def summary_tags(run_dir):
  tags = set()
  for path in glob.glob(os.path.join(run_dir, "tensorboard", "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(value.tag for value in event.summary.value)
  return tags


def summary_scalars(run_dir, tag):
  """{step: value} of one scalar tag."""
  values = {}
  for path in glob.glob(os.path.join(run_dir, "tensorboard", "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          values[event.step] = float(tf.make_ndarray(value.tensor))
  return values


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  run_dir = str(tmp_path_factory.mktemp("smoke"))
  config = smoke_config(run_dir)
  return config, train_lib.run(config)


def test_smoke_run_writes_results_before_and_after(smoke_run):
  config, results = smoke_run
  assert results["cycles_completed"] == config.cycles == 2
  assert [h["after"] for h in results["history"]] == ["baseline", "cycle 1", "cycle 2"]
  for key in ("affnist_test_accuracy_before", "affnist_test_accuracy_after"):
    assert 0.0 <= results[key] <= 1.0
  assert results["affnist_test_accuracy_after"] == results["history"][-1]["affnist_test_accuracy"]
  with open(os.path.join(config.run_dir, "results.json")) as f:
    assert json.load(f) == results
  with open(os.path.join(config.run_dir, "config.json")) as f:
    assert json.load(f)["config"]["cycles"] == 2


def test_smoke_run_fills_the_cache_per_class_and_cycle(smoke_run):
  config, _ = smoke_run
  trainer = trainer_lib.Trainer(config)  # Resumes the finished run: nothing left to train.
  assert int(trainer.phase.numpy()) == trainer_lib.PHASE_DONE
  images, labels = trainer.cache.contents()
  assert len(labels) > 0 and images.shape[1:] == (40, 40, 1)
  for cycle in (1, 2):
    assert trainer.cache.class_counts(cycle).max() <= config.quota(cycle)
  # Every cached composite was hard when it was made.
  margins = trainer.cache.margins.numpy()[:len(labels)]
  assert np.all(margins < config.hard_threshold)


def test_smoke_run_logs_scalars_images_and_histograms(smoke_run):
  config, _ = smoke_run
  tags = summary_tags(config.run_dir)
  for tag in ("train/target_loss", "train/synth_loss", "train/hard_yield", "cache/size",
              "eval/mnist_val_accuracy", "eval/affnist_test_accuracy", "composites/during_synthesis",
              "synth/hardness_margin"):
    assert tag in tags, tag


def test_smoke_run_exports_both_savedmodels(smoke_run):
  config, _ = smoke_run
  for name in ("synthesizer", "target"):
    assert os.path.exists(os.path.join(config.run_dir, "export", name, "saved_model.pb"))


def test_rerun_of_a_finished_run_resumes_without_training(smoke_run):
  config, results = smoke_run
  trainer = trainer_lib.Trainer(config)
  step_before = int(trainer.target_global_step.numpy())
  rerun = trainer.run()
  assert int(trainer.target_global_step.numpy()) == step_before
  assert rerun["history"] == results["history"]


def test_fresh_starts_over(tmp_path):
  config = smoke_config(str(tmp_path), cycles=0, baseline_epochs=1, export=False)
  train_lib.run(config)
  assert os.listdir(tmp_path / "checkpoints")
  (tmp_path / "notes.txt").write_text("not ours")
  trainer = trainer_lib.Trainer(smoke_config(str(tmp_path), fresh=True, cycles=0, export=False))
  assert int(trainer.phase.numpy()) == trainer_lib.PHASE_BASELINE
  assert int(trainer.target_global_step.numpy()) == 0
  assert (tmp_path / "notes.txt").exists()  # --fresh removes only what a run writes


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = smoke_config(str(tmp_path), cycles=1, export=False)
  trainer = trainer_lib.Trainer(config)
  trainer.run()
  last_good = trainer.checkpoint_manager.latest_checkpoint
  for variable in trainer.target.trainable_variables:
    variable.assign(variable * np.nan)
  trainer.phase.assign(trainer_lib.PHASE_FINETUNE)
  trainer.epoch_in_phase.assign(0)
  with pytest.raises(NonFiniteLossError, match="target loss became nan.*last good checkpoint"):
    trainer.run()
  assert trainer.checkpoint_manager.latest_checkpoint == last_good
  restored = trainer_lib.Trainer(config)
  assert all(np.isfinite(v.numpy()).all() for v in restored.target.trainable_variables)


@pytest.mark.parametrize("override,message", [
    ({"strategy": "tpu"}, "--strategy must be one of"),
    ({"target": "resnet"}, "--target must be one of"),
    ({"hard_threshold": 3.0}, "--hard_threshold compares p_gt - max_other"),
    ({"synth_dropout": 1.0}, "--synth_dropout must be in"),
    ({"batch_size": 0}, "--batch_size must be >= 1"),
    ({"diversity_weight": -1.0}, "--diversity_weight must be >= 0"),
    ({"synth_noise_dim": -2}, "--synth_noise_dim must be >= 0"),
    ({"cache_fraction": 1.0}, "--cache_fraction must be in"),
    ({"synth_warmup_steps": -1}, "--synth_warmup_steps must be >= 0"),
])
def test_bad_training_configs_get_one_clear_error(tmp_path, override, message):
  with pytest.raises(ConfigError, match=message):
    smoke_config(str(tmp_path), **override)


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, "tests")
    from conftest import smoke_config
    from terse_tf import trainer as trainer_lib
    trainer = trainer_lib.Trainer(smoke_config(sys.argv[1], strategy="mirrored", cycles=1, export=False))
    results = trainer.run()
    print(json.dumps({"replicas": trainer.strategy.num_replicas_in_sync,
                      "cycles": results["cycles_completed"], "cache": len(trainer.cache),
                      "finetune_steps": sum(1 for _ in trainer._target_dataset(0, steps=5))}))
""")


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
  result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary == {"replicas": 2, "cycles": 1, "cache": summary["cache"], "finetune_steps": 5}
  assert summary["cache"] > 0


@pytest.mark.parametrize("cache_fraction", [0.0, 0.5])
def test_fine_tuning_batches_mix_real_digits_and_cache_at_the_configured_share(tmp_path, cache_fraction):
  trainer = trainer_lib.Trainer(smoke_config(str(tmp_path), cache_fraction=cache_fraction, export=False))
  white = np.ones((40, *trainer_lib.IMAGE_SHAPE), np.float32)  # Unlike any real digit: easy to count.
  trainer.cache.add(white, np.arange(40) % 10, np.zeros(40), cycle=1, per_class_quota=4)
  real = len(trainer.splits.train_labels)
  batches = [images.numpy() for images, _ in trainer._target_dataset(epoch_seed=3, steps=60)]
  assert len(batches) == 60
  cached_share = np.mean([(image == 1.0).all() for batch in batches for image in batch])
  expected = cache_fraction or 40 / (real + 40)
  assert abs(cached_share - expected) < 4 * np.sqrt(expected * (1 - expected) / (60 * 64))
  # An epoch is as many batches as one pass over real digits + cache, whichever way they are mixed.
  assert sum(1 for _ in trainer._target_dataset(epoch_seed=3)) == (real + 40) // 64


def test_warm_up_keeps_a_fresh_synthesizers_first_composites_out_of_the_cache(tmp_path):
  # Threshold 1: every composite counts as hard, so only the warm-up keeps any out.
  config = smoke_config(str(tmp_path), synth_warmup_steps=5, hard_threshold=1.0, cycles=2, export=False)
  trainer = trainer_lib.Trainer(config)
  trainer.run()
  added = summary_scalars(config.run_dir, "train/hard_added")
  steps_per_cycle = summary_scalars(config.run_dir, "synth/steps_to_fill_cache")
  assert [added[step] for step in range(1, 6)] == [0] * 5 and added[6] > 0
  assert steps_per_cycle[1] > 5
  # S is not new in the second cycle (no reset): it adds from its first step.
  assert added[steps_per_cycle[1] + 1] > 0 and steps_per_cycle[2] < 5
  assert trainer.cache.class_counts(1).tolist() == [config.quota(1)] * 10


def test_random_affine_baseline_fills_exact_quotas_per_cycle(tmp_path):
  config = smoke_config(str(tmp_path), sample_source="random_affine", cycles=2, hard_per_class=(3, 5),
                        export=False)
  trainer = trainer_lib.Trainer(config)
  results = trainer.run()
  assert results["cycles_completed"] == 2
  assert trainer.cache.class_counts(1).tolist() == [3] * 10
  assert trainer.cache.class_counts(2).tolist() == [5] * 10
  images, _ = trainer.cache.contents()
  # Random affNIST-recipe transforms move the digits off the centre of the frame.
  centroids = [np.argwhere(im[..., 0] > 128).mean(axis=0) for im in images]
  assert np.std(centroids, axis=0).max() > 1.5


def test_none_source_fine_tunes_on_real_digits_only(tmp_path):
  config = smoke_config(str(tmp_path), sample_source="none", cycles=2, export=False)
  trainer = trainer_lib.Trainer(config)
  results = trainer.run()
  assert len(trainer.cache) == 0 and results["cycles_completed"] == 2
  assert trainer.cache.capacity == 1  # Nothing is checkpointed for a cache that stays empty.
  assert int(trainer.synth_global_step.numpy()) == 0
  assert int(trainer.target_global_step.numpy()) > 0


@pytest.mark.parametrize("override,message", [
    ({"hard_per_class": (3, 4, 5), "cycles": 2}, "expected one, or one per cycle"),
    ({"hard_per_class": (0,)}, "--hard_per_class needs values >= 1"),
    ({"sample_source": "gan"}, "--sample_source must be one of"),
])
def test_bad_sample_schedules_get_one_clear_error(tmp_path, override, message):
  with pytest.raises(ConfigError, match=message):
    smoke_config(str(tmp_path), **override)


def test_checkpoint_from_another_configuration_asks_for_fresh(tmp_path):
  train_lib.run(smoke_config(str(tmp_path), cycles=1, export=False))
  with pytest.raises(ConfigError, match="from a different configuration.*--fresh"):
    trainer_lib.Trainer(smoke_config(str(tmp_path), cycles=3, export=False))


def test_missing_init_checkpoint_names_the_flag(tmp_path):
  with pytest.raises(DataError, match="--init_checkpoint=.*nope: expected the prefix"):
    trainer_lib.Trainer(smoke_config(str(tmp_path / "run"), init_checkpoint=str(tmp_path / "nope")))


def test_init_checkpoint_initialises_the_target(tmp_path):
  first = trainer_lib.Trainer(smoke_config(str(tmp_path / "a"), cycles=0, export=False))
  first.run()
  second = trainer_lib.Trainer(smoke_config(
      str(tmp_path / "b"), cycles=0, baseline_epochs=0, export=False,
      init_checkpoint=first.checkpoint_manager.latest_checkpoint))
  for a, b in zip(first.target.trainable_variables, second.target.trainable_variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_synthesizer_reset_each_cycle_restarts_weights_and_moments_but_keeps_the_rate(tmp_path):
  trainer = trainer_lib.Trainer(smoke_config(str(tmp_path), reset_synthesizer_each_cycle=True, export=False))
  trainer.run()
  learning_rate = float(trainer.synth_optimizer.learning_rate.numpy())
  trained = [v.numpy().copy() for v in trainer.synthesizer.trainable_variables]
  trainer._reset_synthesizer(cycle=3)
  fresh = [v.numpy() for v in trainer.synthesizer.trainable_variables]
  assert any(not np.array_equal(a, b) for a, b in zip(trained, fresh))
  assert int(trainer.synth_optimizer.iterations.numpy()) == 0
  assert float(trainer.synth_optimizer.learning_rate.numpy()) == learning_rate > 0
  kernel = trainer.synthesizer.get_layer("regression_fc1").kernel.numpy()
  fan_in, fan_out = kernel.shape
  assert np.abs(kernel).max() <= 0.4 * np.sqrt(6.0 / (fan_in + fan_out))  # Xavier gain 0.4 again


def test_resuming_a_run_on_other_data_is_refused(tmp_path):
  train_lib.run(smoke_config(str(tmp_path), cycles=0, export=False))
  with pytest.raises(ConfigError, match="holds a run on other data or another target"):
    trainer_lib.Trainer(smoke_config(str(tmp_path), cycles=0, export=False, data__num_train=256))
  with pytest.raises(ConfigError, match="holds a run on other data or another target"):
    trainer_lib.Trainer(smoke_config(str(tmp_path), cycles=0, export=False, target="itn_swish"))
  # Where the generated test set is cached is not part of a run's identity.
  trainer_lib.Trainer(smoke_config(str(tmp_path), cycles=0, export=False,
                                   affnist__cache_dir=str(tmp_path / "cache")))


@pytest.mark.parametrize("per_class", [False, True])
def test_diversity_penalty_keeps_the_synthesizers_transforms_spread(tmp_path, per_class):
  """Against one frozen T, the paper's loss alone drives S's batch of transforms together; the energy
  distance penalty, pooled or per class, holds them near the uniform spread of the clamp box."""
  distances = {}
  for weight in (0.0, 5.0):
    config = smoke_config(str(tmp_path / f"weight{weight}"), synth_noise_dim=4, diversity_weight=weight,
                          diversity_per_class=per_class, synth_lr=1e-2, export=False)
    trainer = trainer_lib.Trainer(config)
    batches = iter(trainer._synth_dataset(seed=0))
    distances[weight] = [float(trainer._synth_step(next(batches)).diversity.numpy()) for _ in range(40)]
  assert np.mean(distances[5.0][-10:]) < 0.5 * np.mean(distances[0.0][-10:])
  assert np.mean(distances[0.0][-10:]) > np.mean(distances[0.0][:5])  # The paper's loss alone collapses.
