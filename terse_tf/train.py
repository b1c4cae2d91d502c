r"""Launcher: `python -m terse_tf.train --flagfile=configs/affnist.flags`.

Declares the flags, reads them once into a frozen TrainConfig and hands it to train_lib. Rerunning the same
command resumes from the run directory's latest checkpoint; --fresh starts over.
"""

from __future__ import annotations

import os
import shlex
import sys

import tensorflow as tf
from absl import app, flags

from terse_tf import compositor, launch, tasks, train_lib, trainer
from terse_tf.data import affnist, mnist
from terse_tf.errors import ConfigError, TerseError
from terse_tf.networks import scene_synthesizer
from terse_tf.tasks import affnist as affnist_task
from terse_tf.tasks.photo_digits import PhotoDigitsConfig

# Run.
flags.DEFINE_enum("task", "affnist", tasks.TASKS, "affnist: digit classification on affNIST (§4.1); "
                  "photo_digits: digit detection on photographs with an SSD (the offline stand-in for §4.2).")
flags.DEFINE_string("run_dir", "runs/affnist", "Directory for checkpoints, TensorBoard, results, exports.")
flags.DEFINE_bool("fresh", False, "Delete this run's checkpoints, logs and exports first and start over.")
flags.DEFINE_string("init_checkpoint", "", "Checkpoint prefix to initialise S and T from when the run "
                    "directory has no checkpoint of its own.")
flags.DEFINE_integer("seed", 0, "Seed for splits, initialisation and shuffling.")
flags.DEFINE_enum("strategy", "auto", trainer.STRATEGIES, "auto: MirroredStrategy when several GPUs are "
                  "visible, else the default single-device strategy; mirrored: always MirroredStrategy; "
                  "multi_worker: MultiWorkerMirroredStrategy over the workers TF_CONFIG lists (README).")
flags.DEFINE_bool("export", True, "Write SavedModels of S and T at the end of the run.")
flags.DEFINE_integer("checkpoint_every_steps", 25, "Synthesizer steps between checkpoints.", lower_bound=1)
flags.DEFINE_integer("image_summary_every_steps", 100, "Synthesizer steps between composite image grids.",
                     lower_bound=1)
flags.DEFINE_integer("eval_batch_size", 1000, "Batch size for evaluation.", lower_bound=1)
flags.DEFINE_bool("jit_compile", True, "Compile the compositor with XLA (measured faster on CPU).")

# Data.
flags.DEFINE_enum("data_source", "auto", mnist.SOURCES, "MNIST source. auto: idx when --mnist_dir is set, "
                  "else the 10k digits bundled with the package (offline).")
flags.DEFINE_string("mnist_dir", "", "Folder with the four standard MNIST IDX files (.gz or raw).")
flags.DEFINE_string("tfds_data_dir", "", "data_dir for --data_source=tfds.")
flags.DEFINE_bool("tfds_download", True, "Let TFDS download MNIST when it is not prepared.")
flags.DEFINE_integer("num_val", 1000, "Training digits held out for validation.", lower_bound=1)
flags.DEFINE_integer("num_heldout_test", 1000, "Test digits held out when the source has no test split.",
                     lower_bound=1)
flags.DEFINE_integer("num_train", 0, "Cap on training digits (0: all that remain).", lower_bound=0)
flags.DEFINE_string("affnist_dir", "", "Real affNIST test .mat file or folder; else one is generated.")
# The user's cache directory (XDG's rule: $XDG_CACHE_HOME, else ~/.cache), read when the flags are declared.
DEFAULT_CACHE_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "terse_tf")

flags.DEFINE_string("affnist_cache_dir", DEFAULT_CACHE_DIR, "Where generated affNIST test sets are kept "
                    "('' for none).")
flags.DEFINE_integer("affnist_test_digits", 1000, "Test digits transformed into the generated affNIST test "
                     "set (0: all).", lower_bound=0)
flags.DEFINE_integer("affnist_transforms_per_digit", affnist.TRANSFORMS_PER_DIGIT,
                     "Random transforms per test digit (affNIST: 32).", lower_bound=1)

# Compositor.
flags.DEFINE_enum("param_clamp", "tanh", compositor.CLAMP_MODES, "How S's raw outputs are clamped to "
                  "affNIST's ranges: tanh (smooth) or clip (hard).")
flags.DEFINE_float("max_translation_px", affnist_task.MAX_TRANSLATION_PX,
                   "Translation clamp in pixels, used only with --nokeep_in_frame: under --keep_in_frame "
                   "(the default) each foreground's own in-frame shifts bound its translation instead, "
                   "and this value has no effect.", lower_bound=0)
flags.DEFINE_bool("keep_in_frame", True, "affNIST's translation rule: shift each transformed foreground "
                  "only within the shifts that keep its ink inside the frame (else: the fixed "
                  "+-max_translation_px clamp, which can crop it). affnist only: photo_digits objects may "
                  "leave the frame, and lose their box when less than --min_visible of them is in view.")
flags.DEFINE_bool("mask_cleanup", False, "Supplementary A.2 mask clean-up (threshold, ReLU, renormalise, "
                  "blur) before blending.")
flags.DEFINE_float("mask_threshold", 0.1, "Scalar subtracted from the warped mask.", lower_bound=0,
                   upper_bound=0.99)
flags.DEFINE_float("mask_blur_sigma", 0.5, "Gaussian blur of the cleaned mask, pixels.", lower_bound=0)

# photo_digits.
_PHOTO = PhotoDigitsConfig()
flags.DEFINE_integer("photo_image_size", _PHOTO.image_size, "Scene size in pixels (SSD300: 300).")
flags.DEFINE_integer("photo_num_real", _PHOTO.num_real, "Real training scenes (1 to --photo_max_objects "
                     "upright digits of the canonical size each).", lower_bound=1)
flags.DEFINE_integer("photo_num_test", _PHOTO.num_test, "Test scenes (held-out digits on held-out photos, "
                     "wide range).", lower_bound=1)
flags.DEFINE_integer("photo_max_objects", _PHOTO.max_objects, "Most digits per real scene and per composite.",
                     lower_bound=1)
flags.DEFINE_integer("photo_test_max_objects", _PHOTO.test_max_objects, "Most digits per test scene.",
                     lower_bound=1)
flags.DEFINE_bool("photo_ten_classes", _PHOTO.ten_classes, "Detect the digits' ten classes instead of the one "
                  "class 'digit'.")
flags.DEFINE_string("photo_dir", _PHOTO.photo_dir, "Folder with train/ and test/ subfolders of photos for "
                    "backgrounds ('' for the photos bundled with scikit-image and matplotlib).")
flags.DEFINE_integer("photo_num_backgrounds", _PHOTO.num_backgrounds, "Random crops of the train photos S "
                     "and the baselines paste on.", lower_bound=1)
flags.DEFINE_float("background_artifact_fraction", _PHOTO.background_artifact_fraction, "Share of S's "
                   "backgrounds given a pasted background region (§3.1), so blending edges mark no object.")
flags.DEFINE_float("min_visible", _PHOTO.min_visible, "An object with less than this share of it in view "
                   "(covered by later objects or cropped by the frame) gets no box.")
flags.DEFINE_enum("synth_backbone", _PHOTO.synth_backbone, scene_synthesizer.BACKBONES, "photo_digits S's "
                  "backbone: compact (CPU) or vgg16 (A.2).")
flags.DEFINE_string("backbone_weights", _PHOTO.backbone_weights, "VGG16 weights for S and SSD300: '' none "
                    "(offline), 'imagenet' (downloads), or a local weights file.")

# Networks and optimisation.
flags.DEFINE_string("target", "", "Target T, one the task accepts: affnist "
                    f"{tasks.TARGETS['affnist']}, photo_digits {tasks.TARGETS['photo_digits']}; '' for the "
                    "task's first.")
flags.DEFINE_integer("batch_size", 64, "T's batch size.", lower_bound=1)
flags.DEFINE_float("target_lr", 0.01, "T's SGD learning rate.", lower_bound=0)
flags.DEFINE_float("target_momentum", 0.9, "T's SGD momentum.", lower_bound=0)
flags.DEFINE_float("target_weight_decay", 5e-4, "T's weight decay (see --weight_decay_mode).", lower_bound=0)
flags.DEFINE_enum("weight_decay_mode", "coupled", trainer.WEIGHT_DECAY_MODES, "coupled: L2 added to the "
                  "gradient before momentum / Adam's moments, as the paper's PyTorch optimizers do; "
                  "decoupled: Keras 3's decay, w -= lr * decay * w after each update (AdamW-style).")
flags.DEFINE_integer("baseline_epochs", 3, "Epochs of T on real digits before the first cycle.",
                     lower_bound=0)
flags.DEFINE_integer("finetune_epochs", 2, "Epochs of T on real digits + cache per cycle.", lower_bound=0)
flags.DEFINE_integer("finetune_steps", 0, "If > 0: T's steps per cycle on real digits + cache, instead of "
                     "--finetune_epochs epochs (keeps a cycle's cost constant as the cache grows).",
                     lower_bound=0)
flags.DEFINE_float("cache_fraction", 0.0, "If > 0: the share of each fine-tuning batch drawn from the cache "
                   "(the rest from the real digits), instead of shuffling both as one pool (A.1's mix). Keeps "
                   "the added samples in view when the real digits far outnumber them.")
flags.DEFINE_integer("cycles", 4, "Sleep cycles (synthesize, then fine-tune).", lower_bound=0)
flags.DEFINE_integer("synth_batch_size", 64, "S's batch size.", lower_bound=1)
flags.DEFINE_float("synth_lr", 1e-3, "S's Adam learning rate.", lower_bound=0)
flags.DEFINE_float("synth_weight_decay", 1e-4, "S's weight decay (see --weight_decay_mode).", lower_bound=0)
flags.DEFINE_integer("synth_width", 32, "S's channel width.", lower_bound=2)
flags.DEFINE_float("synth_dropout", 0.3, "Dropout in S's regression head.", lower_bound=0, upper_bound=0.99)
flags.DEFINE_integer("synth_noise_dim", 0, "Length of a standard-normal noise vector S takes beside the "
                     "images (0: none, as in the paper).", lower_bound=0)
flags.DEFINE_float("diversity_weight", 0.0, "Weight of S's diversity penalty: energy distance between a "
                   "batch's transforms and uniform draws from the clamp ranges (0: the paper's loss).",
                   lower_bound=0)
flags.DEFINE_bool("diversity_per_class", False, "Apply the diversity penalty to each class's transforms "
                  "(each against the whole range) instead of the pooled batch's, so that S cannot give each "
                  "class its own part of the range.")
flags.DEFINE_float("hard_threshold", None, "A composite is hard (and cached) when T's hardness score is below "
                   "this: a classifier's p_gt - max_other in [-1, 1] (default 0: misclassified), a detector's "
                   "confidence for the object's class at its box in [0, 1] (default 0.5). Unset: the target's "
                   "default.")
flags.DEFINE_list("hard_per_class", ["500"], "Hard examples to cache per class per cycle: one value for "
                  "every cycle, or a comma-separated value per cycle.")
flags.DEFINE_bool("reset_synthesizer_each_cycle", False, "Re-initialise S and its optimizer at the start "
                  "of every sleep cycle (counters a synthesizer saturated on the clamp bounds).")
flags.DEFINE_enum("sample_source", "terse", trainer.SAMPLE_SOURCES, "Where each cycle's added samples come "
                  "from: terse (the synthesizer's hard composites), the task's random baseline (affnist: "
                  "random_affine, affNIST's recipe; photo_digits: cut_paste, Cut-Paste-Learn's random "
                  "placement and blending), none (control: fine-tune on the real set only).")
flags.DEFINE_bool("discriminator", False, "Train a discriminator D (§3.3) in lockstep with S and add its "
                  "realism term to S's loss.")
flags.DEFINE_float("discriminator_weight", 0.1, "Weight of D's realism term in S's loss.", lower_bound=0)
flags.DEFINE_float("discriminator_lr", 2e-4, "D's Adam learning rate.", lower_bound=0)
flags.DEFINE_integer("discriminator_width", 32, "D's first layer's channels.", lower_bound=1)
flags.DEFINE_integer("discriminator_scales", 2, "Image scales D judges (multi-scale PatchGAN).", lower_bound=1)
flags.DEFINE_integer("cache_shuffle_buffer", 20000, "Cached examples in T's shuffle buffer (the on-disk "
                     "cache streams shard by shard).", lower_bound=1)
flags.DEFINE_integer("synth_max_steps", 400, "Cap on S steps per cycle (after any warm-up).", lower_bound=1)
flags.DEFINE_integer("synth_warmup_steps", 0, "S steps whose composites are not cached each time S starts "
                     "afresh (first cycle, or every cycle with --reset_synthesizer_each_cycle): time for the "
                     "diversity penalty to spread a new S's near-identity transforms.", lower_bound=0)

FLAGS = flags.FLAGS


def integers_flag(name: str, values: list[str]) -> tuple[int, ...]:
  """A list flag's values as integers, or a ConfigError naming the flag."""
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise ConfigError(f"--{name} expects comma-separated integers, got {','.join(values)!r}") from None


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> trainer.TrainConfig:
  """Reads every flag once; nothing below the launcher sees flags."""
  f = flag_values
  return trainer.TrainConfig(
      run_dir=f.run_dir, task=f.task,
      data=mnist.DataConfig(source=f.data_source, mnist_dir=f.mnist_dir,
                            tfds_data_dir=f.tfds_data_dir, tfds_download=f.tfds_download,
                            num_val=f.num_val, num_heldout_test=f.num_heldout_test,
                            num_train=f.num_train, seed=f.seed),
      affnist=affnist.AffnistConfig(affnist_dir=f.affnist_dir,
                                    cache_dir=os.path.expanduser(f.affnist_cache_dir),
                                    num_test_digits=f.affnist_test_digits,
                                    transforms_per_digit=f.affnist_transforms_per_digit, seed=f.seed),
      photo_digits=PhotoDigitsConfig(
          image_size=f.photo_image_size, num_real=f.photo_num_real, num_test=f.photo_num_test,
          max_objects=f.photo_max_objects, test_max_objects=f.photo_test_max_objects,
          ten_classes=f.photo_ten_classes, photo_dir=f.photo_dir, num_backgrounds=f.photo_num_backgrounds,
          background_artifact_fraction=f.background_artifact_fraction, min_visible=f.min_visible,
          synth_backbone=f.synth_backbone, backbone_weights=f.backbone_weights),
      compositor=compositor.CompositorConfig(
          # Only affnist reads a translation flag; every other task sets its own ranges.
          ranges=affnist_task.ranges(f.max_translation_px) if f.task == "affnist" else None,
          clamp_mode=f.param_clamp, keep_in_frame=f.keep_in_frame, mask_cleanup=f.mask_cleanup,
          mask_threshold=f.mask_threshold, mask_blur_sigma=f.mask_blur_sigma),
      target=f.target, seed=f.seed, batch_size=f.batch_size, target_lr=f.target_lr,
      target_momentum=f.target_momentum, target_weight_decay=f.target_weight_decay,
      weight_decay_mode=f.weight_decay_mode,
      baseline_epochs=f.baseline_epochs, finetune_epochs=f.finetune_epochs,
      finetune_steps=f.finetune_steps, cache_fraction=f.cache_fraction, cycles=f.cycles,
      synth_batch_size=f.synth_batch_size, synth_lr=f.synth_lr,
      synth_weight_decay=f.synth_weight_decay, synth_width=f.synth_width,
      synth_dropout=f.synth_dropout, synth_noise_dim=f.synth_noise_dim,
      diversity_weight=f.diversity_weight, diversity_per_class=f.diversity_per_class,
      discriminator=f.discriminator, discriminator_weight=f.discriminator_weight,
      discriminator_lr=f.discriminator_lr, discriminator_width=f.discriminator_width,
      discriminator_scales=f.discriminator_scales, cache_shuffle_buffer=f.cache_shuffle_buffer,
      hard_threshold=f.hard_threshold,
      hard_per_class=integers_flag("hard_per_class", f.hard_per_class), synth_max_steps=f.synth_max_steps,
      synth_warmup_steps=f.synth_warmup_steps,
      reset_synthesizer_each_cycle=f.reset_synthesizer_each_cycle, sample_source=f.sample_source,
      strategy=f.strategy,
      checkpoint_every_steps=f.checkpoint_every_steps,
      image_summary_every_steps=f.image_summary_every_steps, eval_batch_size=f.eval_batch_size,
      jit_compile=f.jit_compile,
      init_checkpoint=f.init_checkpoint, fresh=f.fresh, export=f.export)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = None
  try:
    config = config_from_flags()
    train_lib.run(config, command_line=shlex.join(sys.argv))
  except TerseError as e:  # One line on stderr, no traceback: each names the flag or file at fault.
    sys.exit(f"terse_tf: error: {e}")
  except tf.errors.ResourceExhaustedError as e:
    first_line = ((e.message or "").strip().splitlines() or ["no detail"])[0][:200]
    sys.exit(f"terse_tf: error: out of memory ({first_line}). Lower --batch_size, --synth_batch_size or "
             "--eval_batch_size, then rerun to resume")
  except KeyboardInterrupt:
    launch.exit_interrupted(interrupted_message(config))


def interrupted_message(config: trainer.TrainConfig | None) -> str:
  """The one line a Ctrl-C ends with."""
  if config is None:
    return "terse_tf: interrupted before the run started."
  return (f"terse_tf: interrupted. Rerun the same command to resume {config.run_dir} from its last "
          "checkpoint (without --fresh, which would start over).")


def run() -> None:
  """Entry point of `python -m terse_tf.train` and the console script terse-train."""
  launch.run(main, __name__)


if __name__ == "__main__":
  run()
