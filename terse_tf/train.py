r"""Launcher: `python -m terse_tf.train --flagfile=configs/<experiment>.flags` (configs/ has one per experiment).

Declares the flags, reads them once into a frozen TrainConfig and hands it to train_lib. Rerunning the same
command resumes from the run directory's latest checkpoint; --fresh starts over.
"""

from __future__ import annotations

import os
import shlex
import sys

import tensorflow as tf
from absl import app, flags

from terse_tf import compositor, config as config_lib, distribute, launch, train_lib
from terse_tf.errors import ConfigError, TerseError
from terse_tf.tasks import registry

# Run. Each task's own flags (its data, its scenes) are defined by its module (registry.define_flags below).
flags.DEFINE_string("task", registry.DEFAULT_TASK, "The registered task to train: " + "; ".join(
    f"{name}: {registry.get(name).summary}" for name in registry.names()) + ".")
flags.DEFINE_string("run_dir", "", "Directory for checkpoints, TensorBoard, results, exports ('': runs/<task>).")
flags.DEFINE_bool("fresh", False, "Delete this run's checkpoints, logs and exports first and start over.")
flags.DEFINE_string("init_checkpoint", "", "Checkpoint prefix to initialise S and T from when the run "
                    "directory has no checkpoint of its own.")
flags.DEFINE_integer("seed", 0, "Seed for splits, initialisation and shuffling.")
flags.DEFINE_enum("strategy", "auto", distribute.STRATEGIES, "auto: MirroredStrategy when several GPUs are "
                  "visible, else the default single-device strategy; mirrored: always MirroredStrategy; "
                  "multi_worker: MultiWorkerMirroredStrategy over the workers TF_CONFIG lists (README).")
flags.DEFINE_bool("export", True, "Write SavedModels of S and T at the end of the run.")
flags.DEFINE_integer("checkpoint_every_steps", 25, "Synthesizer steps between checkpoints.", lower_bound=1)
flags.DEFINE_integer("image_summary_every_steps", 100, "Synthesizer steps between composite image grids.",
                     lower_bound=1)
flags.DEFINE_integer("eval_batch_size", 1000, "Batch size for evaluation.", lower_bound=1)
flags.DEFINE_bool("jit_compile", True, "Compile the compositor with XLA (measured faster on CPU).")

# Compositor (the task sets the ranges S's parameters are clamped to).
flags.DEFINE_enum("param_clamp", "tanh", compositor.CLAMP_MODES, "How S's raw outputs are clamped to the "
                  "task's ranges: tanh (smooth) or clip (hard).")
flags.DEFINE_bool("keep_in_frame", True, "affNIST's translation rule: shift each transformed foreground "
                  "only within the shifts that keep its ink inside the frame (else: the task's fixed "
                  "translation clamp, which can crop it). Classification tasks only: detection objects may "
                  "leave the frame, and lose their box when less than --min_visible of them is in view.")
flags.DEFINE_bool("mask_cleanup", False, "Supplementary A.2 mask clean-up (threshold, ReLU, renormalise, "
                  "blur) before blending.")
flags.DEFINE_float("mask_threshold", 0.1, "Scalar subtracted from the warped mask.", lower_bound=0,
                   upper_bound=0.99)
flags.DEFINE_float("mask_blur_sigma", 0.5, "Gaussian blur of the cleaned mask, pixels.", lower_bound=0)

# Networks and optimisation.
flags.DEFINE_string("target", "", "Target T, one the task accepts: " + "; ".join(
    f"{name} {', '.join(registry.get(name).targets)}" for name in registry.names()) + "; '' for the task's first.")
flags.DEFINE_integer("batch_size", 64, "T's batch size.", lower_bound=1)
flags.DEFINE_float("target_lr", 0.01, "T's SGD learning rate.", lower_bound=0)
flags.DEFINE_enum("target_lr_schedule", "constant", config_lib.LR_SCHEDULES, "T's learning rate within each of "
                  "its phases (baseline, each fine-tuning): constant, or cosine-decayed to 0 over the phase.")
flags.DEFINE_integer("target_lr_warmup_steps", 0, "Steps at the start of each of T's phases over which its "
                     "learning rate ramps linearly up from 0 to the schedule's.", lower_bound=0)
flags.DEFINE_float("target_momentum", 0.9, "T's SGD momentum.", lower_bound=0)
flags.DEFINE_float("target_weight_decay", 5e-4, "T's weight decay (see --weight_decay_mode).", lower_bound=0)
flags.DEFINE_enum("weight_decay_mode", "coupled", config_lib.WEIGHT_DECAY_MODES, "coupled: L2 added to the "
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
flags.DEFINE_enum("quota_unit", config_lib.QUOTA_SAMPLES, config_lib.QUOTA_UNITS, "What --hard_per_class "
                  "counts: samples, or object instances (a detection sample counts its objects, under the class "
                  "it counts for), so that arms whose samples hold different numbers of objects add as many.")
flags.DEFINE_bool("reset_synthesizer_each_cycle", False, "Re-initialise S and its optimizer at the start "
                  "of every sleep cycle (counters a synthesizer saturated on the clamp bounds).")
flags.DEFINE_string("sample_source", config_lib.TERSE, "Where each cycle's added samples come from: terse (the "
                    "synthesizer's hard composites), the task's random baseline (" + "; ".join(
                        f"{name}: {', '.join(registry.get(name).random_sources)}" for name in registry.names()) +
                    "), filtered (the random baseline kept only where T finds it hard, drawing at most as many "
                    "as S's step cap composes: the hardness filter without S), none (control: fine-tune on the "
                    "real set only).")
flags.DEFINE_bool("discriminator", False, "Train a discriminator D (§3.3) in lockstep with S and add its "
                  "realism term to S's loss.")
flags.DEFINE_float("discriminator_weight", 0.1, "Weight of D's realism term in S's loss.", lower_bound=0)
flags.DEFINE_float("discriminator_lr", 2e-4, "D's Adam learning rate.", lower_bound=0)
flags.DEFINE_integer("discriminator_width", 32, "D's first layer's channels.", lower_bound=1)
flags.DEFINE_integer("discriminator_scales", 2, "Image scales D judges (multi-scale PatchGAN).", lower_bound=1)
flags.DEFINE_integer("discriminator_pretrain_steps", 0, "With --discriminator: before S's first step, D trains "
                     "on real images against the composites of S as it starts (frozen) until it has taken this "
                     "many steps in all (steps beside a baseline T count).", lower_bound=0)
flags.DEFINE_bool("discriminator_trains_with_target", False, "With --discriminator: in each of T's phases that "
                  "S's steps follow (all but the last), one D step (real images against S's frozen composites) "
                  "after each of T's steps, as A.2 trains D and T together with S fixed.")
flags.DEFINE_integer("generation_batches", 0, "A.2's generation pass: if > 0, S's steps only train S; then "
                     "this many batches composed by the trained S (frozen, dropout and noise on) give the "
                     "cycle's hard examples. 0: cache hard composites from S's training steps (A.1).",
                     lower_bound=0)
flags.DEFINE_integer("cache_shuffle_buffer", 20000, "Cached examples in T's shuffle buffer (the on-disk "
                     "cache streams shard by shard).", lower_bound=1)
flags.DEFINE_integer("synth_max_steps", 400, "Cap on S steps per cycle (after any warm-up).", lower_bound=1)
flags.DEFINE_integer("synth_warmup_steps", 0, "S steps whose composites are not cached each time S starts "
                     "afresh (first cycle, or every cycle with --reset_synthesizer_each_cycle): time for the "
                     "diversity penalty to spread a new S's near-identity transforms.", lower_bound=0)

FLAGS = flags.FLAGS
registry.define_flags(FLAGS)  # The built-in tasks' and any registered before this module was imported.


def integers_flag(name: str, values: list[str]) -> tuple[int, ...]:
  """A list flag's values as integers, or a ConfigError naming the flag."""
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise ConfigError(f"--{name} expects comma-separated integers, got {','.join(values)!r}") from None


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> config_lib.TrainConfig:
  """Reads every flag once (the task's through its registration); nothing below the launcher sees flags."""
  f = flag_values
  task = registry.get(f.task)
  if not task.from_flags:
    raise ConfigError(f"--task={f.task} is built in Python (terse_tf.api); the command line trains "
                      f"{list(registry.names())}")
  return config_lib.TrainConfig(
      run_dir=f.run_dir or f"runs/{f.task}", task=f.task, task_settings=task.settings_from_flags(f),
      compositor=compositor.CompositorConfig(
          clamp_mode=f.param_clamp, keep_in_frame=f.keep_in_frame, mask_cleanup=f.mask_cleanup,
          mask_threshold=f.mask_threshold, mask_blur_sigma=f.mask_blur_sigma),
      target=f.target, seed=f.seed, batch_size=f.batch_size, target_lr=f.target_lr,
      target_lr_schedule=f.target_lr_schedule, target_lr_warmup_steps=f.target_lr_warmup_steps,
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
      discriminator_scales=f.discriminator_scales,
      discriminator_pretrain_steps=f.discriminator_pretrain_steps,
      discriminator_trains_with_target=f.discriminator_trains_with_target,
      generation_batches=f.generation_batches, cache_shuffle_buffer=f.cache_shuffle_buffer,
      hard_threshold=f.hard_threshold,
      hard_per_class=integers_flag("hard_per_class", f.hard_per_class), quota_unit=f.quota_unit,
      synth_max_steps=f.synth_max_steps,
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
    train_lib.run(config, command_line=resume_command(sys.argv))
  except TerseError as e:  # One line on stderr, no traceback: each names the flag or file at fault.
    sys.exit(f"terse_tf: error: {e}")
  except tf.errors.ResourceExhaustedError as e:
    first_line = ((e.message or "").strip().splitlines() or ["no detail"])[0][:200]
    sys.exit(f"terse_tf: error: out of memory ({first_line}). Lower --batch_size, --synth_batch_size or "
             "--eval_batch_size, then rerun to resume")
  except KeyboardInterrupt:
    launch.exit_interrupted(interrupted_message(config))


def resume_command(argv: list[str]) -> str:
  """The command config.json records: the one that resumes the run, `python -m terse_tf.train` (or the
  user's own launcher) with the flags given, less --fresh, which would start it over."""
  given = [arg for arg in argv[1:] if arg != "--fresh" and not arg.startswith("--fresh=")]
  launcher = (["python", "-m", "terse_tf.train"] if os.path.basename(argv[0]) in ("train.py", "terse-train")
              else [argv[0]])
  return shlex.join(launcher + given)


def interrupted_message(config: config_lib.TrainConfig | None) -> str:
  """The one line a Ctrl-C ends with."""
  if config is None:
    return "terse_tf: interrupted before the run started."
  return (f"terse_tf: interrupted. Rerun the same command to resume {config.run_dir} from its last "
          "checkpoint (without --fresh, which would start over).")


def run() -> None:
  """Entry point of `python -m terse_tf.train` and the console script terse-train."""
  # Tasks registered after this module's import (a launcher of your own) get their flags here.
  launch.run(main, __name__, other_flags=registry.define_flags(FLAGS))  # --help lists the tasks' flags too.


if __name__ == "__main__":
  run()
