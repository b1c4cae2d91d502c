"""Shapes and initialisation of S and the T classifiers."""

import numpy as np
import pytest
import tensorflow as tf

from terse_tf.networks import classifier, scene_synthesizer, synthesizer


def test_synthesizer_maps_foreground_and_background_to_six_parameters():
  model = synthesizer.build_synthesizer((40, 40, 1), width=16, dropout_rate=0.3, seed=0)
  foreground, background = tf.random.uniform([5, 40, 40, 1]), tf.zeros([5, 40, 40, 1])
  assert model([foreground, background], training=False).shape == (5, 6)
  assert [i.name for i in model.inputs] == ["foreground", "background"]


def test_synthesizer_shares_its_backbone_and_splits_mid_level_branches():
  model = synthesizer.build_synthesizer((40, 40, 1), width=16)
  names = [layer.name for layer in model.layers]
  assert names.count("shared_backbone") == 1  # one set of weights applied to fg and bg
  assert "foreground_branch" in names and "background_branch" in names
  backbone = model.get_layer("shared_backbone")
  assert len(backbone._inbound_nodes) == 2


def test_synthesizer_dropout_makes_transforms_diverse_only_in_training():
  model = synthesizer.build_synthesizer((40, 40, 1), width=16, dropout_rate=0.5, seed=0)
  foreground = tf.tile(tf.random.uniform([1, 40, 40, 1], seed=1), [8, 1, 1, 1])
  background = tf.zeros_like(foreground)
  training = model([foreground, background], training=True).numpy()
  inference = model([foreground, background], training=False).numpy()
  assert np.std(training, axis=0).max() > 1e-4
  assert np.std(inference, axis=0).max() < 1e-6


def test_synthesizer_uses_xavier_initialisation_with_gain_0_4():
  model = synthesizer.build_synthesizer((40, 40, 1), width=32, seed=0)
  kernel = model.get_layer("regression_fc1").kernel.numpy()
  fan_in, fan_out = kernel.shape
  limit = 0.4 * np.sqrt(6.0 / (fan_in + fan_out))
  assert np.abs(kernel).max() <= limit
  # Uniform on [-limit, limit] has standard deviation limit / sqrt(3).
  assert kernel.std() == pytest.approx(limit / np.sqrt(3), rel=0.05)


@pytest.mark.parametrize("architecture", classifier.ARCHITECTURES)
def test_classifiers_return_logits_per_class(architecture):
  model = classifier.build_classifier(architecture, (40, 40, 1), 10)
  logits = model(tf.random.uniform([3, 40, 40, 1]), training=False)
  assert logits.shape == (3, 10)


def test_paper_classifier_has_two_convolutions_and_two_dense_layers():
  model = classifier.build_classifier("paper", (40, 40, 1), 10)
  kinds = [type(layer).__name__ for layer in model.layers]
  assert kinds.count("Conv2D") == 2 and kinds.count("Dense") == 2
  assert any("Dropout" in kind for kind in kinds)


def test_itn_classifier_uses_swish():
  model = classifier.build_classifier("itn_swish", (40, 40, 1), 10)
  activations = [layer for layer in model.layers if type(layer).__name__ == "Activation"]
  x = tf.linspace(-4.0, 4.0, 9)
  assert len(activations) == 4
  for layer in activations:  # Keras names it silu: x * sigmoid(x).
    np.testing.assert_allclose(layer(x).numpy(), (x * tf.sigmoid(x)).numpy(), rtol=1e-6)


def test_unknown_architecture_is_rejected():
  with pytest.raises(ValueError, match="target architecture must be one of"):
    classifier.build_classifier("resnet", (40, 40, 1), 10)


def test_synthesizer_with_noise_gives_one_foreground_many_transforms_at_inference():
  model = synthesizer.build_synthesizer((40, 40, 1), width=16, dropout_rate=0.3, noise_dim=4, seed=0)
  assert [i.name for i in model.inputs] == ["foreground", "background", "noise"]
  assert synthesizer.noise_dim(model) == 4
  foreground = tf.tile(tf.random.uniform([1, 40, 40, 1], seed=1), [8, 1, 1, 1])
  raw = synthesizer.raw_params(model, foreground, tf.zeros_like(foreground), training=False).numpy()
  assert raw.shape == (8, 6) and np.std(raw, axis=0).max() > 1e-4
  plain = synthesizer.build_synthesizer((40, 40, 1), width=16, seed=0)
  assert synthesizer.noise_dim(plain) == 0
  raw = synthesizer.raw_params(plain, foreground, tf.zeros_like(foreground), training=False).numpy()
  assert np.std(raw, axis=0).max() < 1e-6


def kernels(model):
  return {v.path: v.numpy().ravel() for v in model.trainable_variables if v.path.endswith("kernel")}


@pytest.mark.parametrize("seed", [0, None])
def test_no_two_synthesizer_kernels_are_equal_or_proportional(seed):
  """Every layer draws its own stream: no kernel repeats another, or another's stream at another scale."""
  found = kernels(synthesizer.build_synthesizer((40, 40, 1), width=32, seed=seed))
  assert len(found) == 9  # backbone 2, each mid-level branch 2, regression conv, 2 dense
  names = sorted(found)
  for i, first in enumerate(names):
    for second in names[i + 1:]:
      a, b = found[first], found[second]
      length = min(len(a), len(b))  # A scaled copy of one stream shows in the common prefix.
      correlation = np.corrcoef(a[:length], b[:length])[0, 1]
      # Independent streams correlate with SD 1/sqrt(length) (0.08 for the 144-entry first conv); a copy
      # correlates at 1. Six SDs fails an honest layer with odds ~1e-9, not the few percent a fixed 0.2 did.
      assert abs(correlation) < 6 / np.sqrt(length), (first, second, correlation)


def test_a_seeded_synthesizer_is_reproducible_and_seeds_differ():
  same = [kernels(synthesizer.build_synthesizer((40, 40, 1), width=8, seed=3)) for _ in range(2)]
  other = kernels(synthesizer.build_synthesizer((40, 40, 1), width=8, seed=4))
  for name, kernel in same[0].items():
    np.testing.assert_array_equal(kernel, same[1][name])
    assert not np.array_equal(kernel, other[name])


def test_the_sampler_keeps_dropout_on_and_batchnorm_in_inference():
  model = synthesizer.build_synthesizer((40, 40, 1), width=8, dropout_rate=0.5, seed=0)
  foreground = tf.tile(tf.random.uniform([1, 40, 40, 1], seed=1), [16, 1, 1, 1])
  background = tf.zeros_like(foreground)
  sample = synthesizer.sampler(model)
  drawn = sample(foreground, background).numpy()
  # Dropout on: one foreground, many transforms (S's outputs are small at initialisation, gain 0.4).
  assert np.std(drawn, axis=0).max() > 0.1 * np.abs(drawn).mean()
  # With the dropout rate at 0 the sampler is S in inference mode (BatchNorm's moving averages), exactly.
  model.get_layer(synthesizer.DROPOUT_LAYER).rate = 0.0
  np.testing.assert_allclose(sample(foreground, background).numpy(),
                             model([foreground, background], training=False).numpy(), atol=1e-6)


@pytest.mark.parametrize("backbone", scene_synthesizer.BACKBONES)
def test_scene_synthesizer_has_a2s_branches_and_its_sampler_runs_them_on_moving_averages(backbone):
  """A.2: the shared backbone, a foreground and a background mid-level branch (two conv-ReLU-BatchNorm
  bottlenecks each, synchronised), the extra background layout branch; [B, N, 6] out. The sampler (dropout
  off) is S in inference mode: an object's parameters do not depend on what else is in the batch."""
  model = scene_synthesizer.build_scene_synthesizer((40, 40, 3), (64, 64, 3), 2, backbone, width=8, seed=0)
  names = [layer.name for layer in model.layers]
  assert "background_layout_branch" in names and "background_branch" in names
  foreground_branch = model.get_layer("foreground_features").layer.get_layer("foreground_branch")
  for branch in (foreground_branch, model.get_layer("background_branch")):
    kinds = [type(layer).__name__ for layer in branch.layers]
    assert kinds == ["Conv2D", "ReLU", "BatchNormalization"] * 2, kinds
    assert all(layer.synchronized for layer in branch.layers[2::3])
  rng = np.random.default_rng(0)
  foreground = tf.constant(rng.uniform(size=(4, 2, 40, 40, 3)), tf.float32)
  background = tf.constant(rng.uniform(size=(4, 64, 64, 3)), tf.float32)
  assert model([foreground, background], training=True).shape == (4, 2, 6)
  # One training call moved the moving averages away from their start, so inference differs from it.
  moved = [v.numpy() for v in model.non_trainable_variables if "moving_mean" in v.path]
  assert len(moved) == 4 and all(np.abs(m).max() > 0 for m in moved)
  model.get_layer(synthesizer.DROPOUT_LAYER).rate = 0.0
  sample = synthesizer.sampler(model)
  whole = sample(foreground, background).numpy()
  np.testing.assert_allclose(sample(foreground[:1], background[:1]).numpy(), whole[:1], atol=1e-5)
  np.testing.assert_allclose(whole, model([foreground, background], training=False).numpy(), atol=1e-5)
  assert np.abs(whole - model([foreground, background], training=True).numpy()).max() > 1e-5


def test_a_missing_vgg16_weights_file_is_one_clear_error(tmp_path):
  """Keras's own message for a missing file lists the argument's allowed values; ours names the file."""
  from terse_tf.errors import ConfigError  # pylint: disable=import-outside-toplevel
  from terse_tf.networks import vgg16  # pylint: disable=import-outside-toplevel
  missing = str(tmp_path / "vgg16_notop.h5")
  with pytest.raises(ConfigError, match=r"VGG16 weights .*vgg16_notop\.h5: no such file; expected"):
    vgg16.vgg16(missing, input_shape=(32, 32, 3))
  with pytest.raises(ConfigError, match=r"--folders_backbone_weights=.*vgg16_notop\.h5: no such file"):
    from terse_tf.tasks.folders import FoldersSettings  # pylint: disable=import-outside-toplevel
    FoldersSettings(backbone_weights=missing)
  assert len(vgg16.vgg16(None, input_shape=(32, 32, 3)).layers) > 10  # No weights: builds offline.
