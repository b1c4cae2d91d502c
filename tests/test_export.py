"""Exported SavedModels serve under `saved_model_cli run` in a fresh process and reproduce the in-memory
networks."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import smoke_config
from terse_tf import compositor, export, tasks, trainer as trainer_lib
from terse_tf.data import affnist, mnist
from terse_tf.tasks import affnist as affnist_task


def saved_model_cli_run(model_dir, signature, inputs, out_dir):
  """Serves `signature` of the SavedModel in `model_dir` with `saved_model_cli run` in a fresh process, the
  way TF Serving loads it, on `inputs` {name: array} written as .npy files; returns {output: array}."""
  os.makedirs(out_dir)
  arguments = []
  for name, value in inputs.items():
    path = os.path.join(out_dir, f"input_{name}.npy")
    np.save(path, value)
    arguments.append(f"{name}={path}")
  cli = shutil.which("saved_model_cli") or os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  result = subprocess.run([cli, "run", "--dir", model_dir, "--tag_set", "serve", "--signature_def", signature,
                           "--inputs", ";".join(arguments), "--outdir", out_dir], capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return {name[:-4]: np.load(os.path.join(out_dir, name)) for name in os.listdir(out_dir)
          if name.endswith(".npy") and not name.startswith("input_")}


@pytest.mark.slow
def test_saved_model_cli_serves_both_exports_and_matches_the_in_memory_networks(tmp_path):
  trainer = trainer_lib.Trainer(smoke_config(str(tmp_path / "run"), cycles=1, export=False))
  trainer.run()
  paths = export.export_models(trainer.task, trainer.synthesizer, trainer.target, str(tmp_path / "export"))

  rng = np.random.default_rng(0)
  splits = trainer.task.splits
  foreground = affnist_task.foregrounds(tf.constant(splits.val_images[:6])).numpy()
  background = rng.uniform(0, 0.3, (6, 40, 40, 1)).astype(np.float32)
  images = (splits.val_images[:6, ..., None] / 255.0).astype(np.float32)
  pair = {"foreground": foreground, "background": background}

  served = saved_model_cli_run(paths[export.SYNTHESIZER_DIR], export.SERVING_DEFAULT, pair, str(tmp_path / "s"))
  config = trainer.task.compositor
  raw = trainer.synthesizer([compositor.premultiplied(foreground), background], training=False)
  params = compositor.place(raw, tf.constant(foreground), (40, 40), config)
  expected = compositor.composite(tf.constant(foreground), tf.constant(background), params, config)
  assert set(served) == {"params", "composite", "warped_mask"}
  np.testing.assert_allclose(served["params"], params.numpy(), atol=1e-5)
  np.testing.assert_allclose(served["composite"], expected.image.numpy(), atol=1e-5)
  np.testing.assert_allclose(served["warped_mask"], expected.warped_mask.numpy(), atol=1e-5)

  served = saved_model_cli_run(paths[export.TARGET_DIR], export.SERVING_DEFAULT, {"images": images},
                               str(tmp_path / "t"))
  probabilities = tf.nn.softmax(trainer.target.model(images, training=False)).numpy()
  np.testing.assert_allclose(served["probabilities"], probabilities, atol=1e-5)

  # The sampling signature runs S's dropout: one digit repeated gets several transforms, each composited
  # exactly as the compositor does it for those parameters.
  repeated = {"foreground": np.repeat(foreground[:1], 8, axis=0), "background": np.repeat(background[:1], 8, 0)}
  sampled = saved_model_cli_run(paths[export.SYNTHESIZER_DIR], export.SAMPLE, repeated, str(tmp_path / "d"))
  assert np.std(sampled["params"], axis=0).max() > 1e-3
  recomposited = compositor.composite(tf.constant(repeated["foreground"]), tf.constant(repeated["background"]),
                                      tf.constant(sampled["params"]), config)
  np.testing.assert_allclose(sampled["composite"], recomposited.image.numpy(), atol=1e-5)


def small_task_with_noise() -> affnist_task.AffnistTask:
  """A tiny affNIST task whose S takes a noise vector."""
  return affnist_task.AffnistTask(
      affnist_task.AffnistSettings(data=mnist.DataConfig(num_val=10, num_heldout_test=10, num_train=10),
                                   affnist=affnist.AffnistConfig(num_test_digits=1, transforms_per_digit=1)),
      tasks.CommonSettings(target="paper", synthesizer=tasks.SynthesizerSettings(width=8, noise_dim=4)))


def test_a_synthesizer_with_noise_samples_new_in_frame_transforms_on_every_call(tmp_path):
  task = small_task_with_noise()
  paths = export.export_models(task, task.build_synthesizer(seed=0), task.build_target(), str(tmp_path))
  serve = tf.saved_model.load(paths[export.SYNTHESIZER_DIR]).signatures["serving_default"]
  foreground = np.zeros((4, 40, 40, 2), np.float32)
  foreground[:, 12:28, 15:25] = 1.0
  first, second = (serve(foreground=tf.constant(foreground), background=tf.zeros([4, 40, 40, 1]))
                   for _ in range(2))
  assert np.abs(first["params"].numpy() - second["params"].numpy()).max() > 1e-4
  # The whole 16x10 block is still in the frame: its ink is only resampled, never cropped.
  area = np.abs(np.linalg.det(compositor.forward_matrix(first["params"]).numpy()))
  np.testing.assert_allclose(first["warped_mask"].numpy().sum(axis=(1, 2, 3)), 160 * area, rtol=0.02)


@pytest.mark.slow
def test_generate_is_a_function_of_its_seed_in_any_process_and_hardness_is_the_cache_criterion(tmp_path):
  task = small_task_with_noise()
  synthesizer, target = task.build_synthesizer(seed=0), task.build_target()
  paths = export.export_models(task, synthesizer, target, str(tmp_path / "export"))
  foreground = affnist_task.foregrounds(tf.constant(task.splits.val_images[:8])).numpy()
  inputs = {"foreground": foreground, "background": np.zeros((8, 40, 40, 1), np.float32)}
  runs = [saved_model_cli_run(paths[export.SYNTHESIZER_DIR], export.GENERATE,
                              {**inputs, "seed": np.array(seed, np.int32)}, str(tmp_path / f"g{i}"))
          for i, seed in enumerate([[1, 2], [1, 2], [1, 3]])]
  np.testing.assert_array_equal(runs[0]["composite"], runs[1]["composite"])
  assert np.abs(runs[0]["params"] - runs[2]["params"]).max() > 1e-3
  # In this process too, and with both dropout and noise: each alone would also change the parameters.
  generate = tf.saved_model.load(paths[export.SYNTHESIZER_DIR]).signatures[export.GENERATE]
  here = generate(**{k: tf.constant(v) for k, v in inputs.items()}, seed=tf.constant([1, 2]))
  np.testing.assert_allclose(here["params"].numpy(), runs[0]["params"], atol=1e-6)

  labels = task.splits.val_labels[:8].astype(np.int32)
  served = saved_model_cli_run(paths[export.TARGET_DIR], export.HARDNESS,
                               {"images": runs[0]["composite"], "label": labels}, str(tmp_path / "h"))
  judged = target.judge(target.model(runs[0]["composite"], training=False), {"label": tf.constant(labels)})
  np.testing.assert_allclose(served["hardness"], judged.hardness.numpy(), atol=1e-5)

  # A second export is the next version; the first stays for a server still using it.
  again = export.export_models(task, synthesizer, target, str(tmp_path / "export"))
  assert export.versions(str(tmp_path / "export" / export.SYNTHESIZER_DIR)) == [1, 2]
  assert export.saved_model_path(str(tmp_path / "export" / export.TARGET_DIR)) == again[export.TARGET_DIR]
