"""Exported SavedModels reload in a fresh process and reproduce the in-memory networks."""

import subprocess
import sys
import textwrap

import numpy as np
import tensorflow as tf

from conftest import REPO_ROOT, smoke_config
from terse_tf import compositor, export, trainer as trainer_lib
from terse_tf.networks import classifier, synthesizer

RELOAD_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    export_dir, inputs_path, outputs_path = sys.argv[1:]
    inputs = np.load(inputs_path)
    synthesizer = tf.saved_model.load(export_dir + "/synthesizer").signatures["serving_default"]
    target = tf.saved_model.load(export_dir + "/target").signatures["serving_default"]
    served = synthesizer(foreground=tf.constant(inputs["foreground"]),
                         background=tf.constant(inputs["background"]))
    probabilities = target(images=tf.constant(inputs["images"]))["probabilities"]
    np.savez(outputs_path, probabilities=probabilities.numpy(),
             **{key: value.numpy() for key, value in served.items()})
""")


def test_savedmodels_reload_in_a_fresh_process_and_match(tmp_path):
  trainer = trainer_lib.Trainer(smoke_config(str(tmp_path / "run"), cycles=1, export=False))
  trainer.run()
  export_dir = str(tmp_path / "export")
  export.export_models(trainer.synthesizer, trainer.target, trainer.config.compositor,
                       trainer_lib.FOREGROUND_SHAPE, trainer_lib.IMAGE_SHAPE, export_dir)

  rng = np.random.default_rng(0)
  digits = trainer.splits.val_images[:6]
  foreground = trainer_lib._foregrounds(tf.constant(digits)).numpy()
  background = rng.uniform(0, 0.3, (6, 40, 40, 1)).astype(np.float32)
  images = (trainer.splits.val_images[:6, ..., None] / 255.0).astype(np.float32)
  np.savez(tmp_path / "inputs.npz", foreground=foreground, background=background, images=images)

  subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, export_dir, str(tmp_path / "inputs.npz"),
                  str(tmp_path / "outputs.npz")], cwd=REPO_ROOT, check=True, timeout=300)
  served = np.load(tmp_path / "outputs.npz")

  config = trainer.config.compositor
  raw = trainer.synthesizer([compositor.premultiplied(foreground), background], training=False)
  params = compositor.place(raw, tf.constant(foreground), (40, 40), config)
  expected = compositor.composite(tf.constant(foreground), tf.constant(background), params, config)
  np.testing.assert_allclose(served["params"], params.numpy(), atol=1e-5)
  np.testing.assert_allclose(served["composite"], expected.image.numpy(), atol=1e-5)
  np.testing.assert_allclose(served["warped_mask"], expected.warped_mask.numpy(), atol=1e-5)
  probabilities = tf.nn.softmax(trainer.target(images, training=False)).numpy()
  np.testing.assert_allclose(served["probabilities"], probabilities, atol=1e-5)
  np.testing.assert_allclose(served["probabilities"].sum(axis=1), 1.0, atol=1e-5)


def test_a_synthesizer_with_noise_samples_new_in_frame_transforms_on_every_call(tmp_path):
  model = synthesizer.build_synthesizer((40, 40, 1), width=8, noise_dim=4, seed=0)
  target = classifier.build_classifier("paper", (40, 40, 1), 10)
  paths = export.export_models(model, target, compositor.CompositorConfig(), (40, 40, 2), (40, 40, 1),
                               str(tmp_path))
  serve = tf.saved_model.load(paths[export.SYNTHESIZER_DIR]).signatures["serving_default"]
  foreground = np.zeros((4, 40, 40, 2), np.float32)
  foreground[:, 12:28, 15:25] = 1.0
  first, second = (serve(foreground=tf.constant(foreground), background=tf.zeros([4, 40, 40, 1]))
                   for _ in range(2))
  assert np.abs(first["params"].numpy() - second["params"].numpy()).max() > 1e-4
  # The whole 16x10 block is still in the frame: its ink is only resampled, never cropped.
  area = np.abs(np.linalg.det(compositor.forward_matrix(first["params"]).numpy()))
  np.testing.assert_allclose(first["warped_mask"].numpy().sum(axis=(1, 2, 3)), 160 * area, rtol=0.02)
