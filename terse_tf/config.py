"""What a training run is told: TrainConfig, the generic settings of the sleep cycles (paper §3, A.1), with
the chosen task's own settings nested as one field; and which of them a resume must keep.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from terse_tf import compositor as compositor_lib
from terse_tf.distribute import STRATEGIES
from terse_tf.errors import ConfigError
from terse_tf.tasks import CommonSettings, SynthesizerSettings, registry

# Where each cycle's added samples come from: TERSE's synthesizer (hard composites against the current T),
# the task's random-placement baseline (its `random_source`: affNIST's random affine recipe, Cut-Paste-Learn's
# random placement for detection, or one of its `extra_random_sources`), that baseline kept only where T finds
# a sample hard by TERSE's criterion (FILTERED: the hardness filter without S's learning, the control that
# tells what S adds), or nothing (a control that fine-tunes on the real set alone).
TERSE, FILTERED, NO_SAMPLES = "terse", "filtered", "none"
# What a cycle's quota (--hard_per_class) counts: added samples, or the object instances in them.
QUOTA_SAMPLES, QUOTA_INSTANCES = "samples", "instances"
QUOTA_UNITS = (QUOTA_SAMPLES, QUOTA_INSTANCES)
# Weight decay as the paper's PyTorch optimizers apply it (an L2 term whose gradient joins the loss's before
# momentum or Adam's moments), or Keras 3's own decoupled decay (w -= lr * decay * w after the update).
WEIGHT_DECAY_MODES = ("coupled", "decoupled")
# T's learning rate within each of its phases (the baseline, each fine-tuning): constant, or a cosine decay
# from target_lr to 0 over the phase's steps (a baseline that ends converged rather than at a large step).
LR_SCHEDULES = ("constant", "cosine")
# The metadata of a setting (of TrainConfig or of a task's settings) that a resume may change: where and how
# often the run writes, and how it is distributed and compiled (another strategy splits batches and per-replica
# draws otherwise, and XLA rounds otherwise: the same method, other floats). A setting whose flag is not its
# field's name says which it is the same way: metadata={"flag": "data_source"}.
SAME_RESULTS = {"changes_results": False}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  run_dir: str = dataclasses.field(metadata=SAME_RESULTS)
  # A registered task's name (tasks/registry.py) and its own settings (an instance of the settings class it
  # registered; None: that class's defaults).
  task: str = registry.DEFAULT_TASK
  task_settings: Any = None
  # How S's parameters are clamped and blended; the task sets the ranges they are clamped to.
  compositor: compositor_lib.CompositorConfig = compositor_lib.CompositorConfig()
  # T's architecture, one the task accepts (its `targets`); "" for the task's default (its first).
  target: str = ""
  seed: int = 0
  # Target T: SGD with momentum and weight decay (A.1), batch 64.
  batch_size: int = 64
  target_lr: float = 0.01
  target_lr_schedule: str = "constant"
  # Steps at the start of each of T's phases over which its learning rate ramps linearly up from 0 to the
  # schedule's: a fresh SSD at full rate stalled on a plateau (BENCHMARKS.md), and each fine-tuning restarts
  # momentum SGD at full rate on a new mix of data.
  target_lr_warmup_steps: int = 0
  target_momentum: float = 0.9
  target_weight_decay: float = 5e-4
  weight_decay_mode: str = "coupled"
  baseline_epochs: int = 3
  finetune_epochs: int = 2
  # When > 0, each cycle fine-tunes T for this many steps on real + cache instead of finetune_epochs epochs:
  # the cost of a cycle then stays constant as the cache grows.
  finetune_steps: int = 0
  # When > 0, fine-tuning batches draw this share of their examples (in expectation) from the cache and the
  # rest from the real set; 0 draws from both in proportion to their sizes, as one shuffled pool (A.1).
  # With many real examples and a fixed step count, the one pool shows T few of the added samples.
  cache_fraction: float = 0.0
  # Examples of the on-disk cache held in T's shuffle buffer (the cache streams shard by shard).
  cache_shuffle_buffer: int = 20000
  # Cycles after which T is evaluated (the last one always is); empty: after every cycle.
  eval_after_cycles: tuple[int, ...] = ()
  cycles: int = 4
  # Synthesizer S: Adam (A.1).
  synth_batch_size: int = 64
  synth_lr: float = 1e-3
  synth_weight_decay: float = 1e-4
  synth_width: int = 32
  synth_dropout: float = 0.3
  # Length of the noise vector S takes beside the images (0: none, the paper's S).
  synth_noise_dim: int = 0
  # Weight of the diversity penalty in S's loss: the energy distance between a batch's transforms
  # (normalised to the clamp box) and as many drawn uniformly from the box. 0 is the paper's loss. Without
  # it S spends a cycle on one transform (BENCHMARKS.md).
  diversity_weight: float = 0.0
  # Measure the penalty per class (each class's transforms against the whole range) rather than on the
  # pooled batch: pooled, S can give each class its own corner while the classes together look uniform.
  diversity_per_class: bool = False
  # Discriminator D (§3.3): on/off, the weight of its realism term in S's loss, Adam's rate, its width and
  # number of scales (pix2pixHD's multi-scale PatchGAN).
  discriminator: bool = False
  discriminator_weight: float = 0.1
  discriminator_lr: float = 2e-4
  discriminator_width: int = 32
  discriminator_scales: int = 2
  # D beyond eq. 2's lockstep (both need --discriminator). Pre-training (A.2 only initialises D at random):
  # before S's first step D takes steps on real images against the composites of S as it starts (frozen)
  # until it has taken this many in all (those beside a baseline T count), so that S's first steps meet a
  # judge rather than a coin. With T: A.2 trains "the discriminator and target models ... for epochs over
  # the training set" with S fixed, so in each of T's phases that S's steps follow (every phase but the last
  # cycle's fine-tuning, after which D has no S step left to judge) a D step follows each of T's steps. Its
  # fakes are S's frozen composites, all of them rather than the cached hard ones: what D judges in S's
  # steps.
  discriminator_pretrain_steps: int = 0
  discriminator_trains_with_target: bool = False
  # A composite is hard (and cached) when T's hardness score is below this; None: the target's own default
  # (0 for a classifier's p_gt - max_other, 0.5 for a detector's confidence).
  hard_threshold: float | None = None
  # Samples added per class in each cycle: one value for every cycle, or one value per cycle.
  hard_per_class: tuple[int, ...] = (500,)
  # What hard_per_class counts: samples, or instances (a detection sample counts its objects). Arms that add
  # few-object scenes (random placement) and arms whose hard scenes have more objects (TERSE, the filter)
  # then add equal numbers of objects, not of images.
  quota_unit: str = QUOTA_SAMPLES
  synth_max_steps: int = 400
  # S steps whose composites are not cached, each time S starts afresh (the first cycle; every cycle with
  # reset_synthesizer_each_cycle): a new S puts out near-identity transforms, and the diversity penalty
  # needs ~70 steps to spread them over the ranges; hard composites from those steps are all one mode.
  # synth_max_steps counts the steps after it.
  synth_warmup_steps: int = 0
  # Start S (and its optimizer) afresh every cycle: a saturated S, whose every output sits on the clamp
  # bound, no longer moves under dropout noise, so each cycle repeats one mode; a fresh S walks from the
  # identity to T's current weak spot and leaves hard composites all along the way.
  reset_synthesizer_each_cycle: bool = False
  # A.2's generation pass: when > 0, S's steps (warm-up + synth_max_steps) only train S, and then this many
  # batches are composed by the trained S, frozen (dropout and noise on, as the exported sampler), their hard
  # composites cached up to the quota. 0: hard composites are cached from S's training steps as they come
  # (A.1's cache "of hard examples seen during the synthesizer training").
  generation_batches: int = 0
  sample_source: str = TERSE
  # Infrastructure: how the run goes, not what it computes (a resume may change these).
  strategy: str = dataclasses.field(default="auto", metadata=SAME_RESULTS)
  checkpoint_every_steps: int = dataclasses.field(default=25, metadata=SAME_RESULTS)
  image_summary_every_steps: int = dataclasses.field(default=100, metadata=SAME_RESULTS)
  eval_batch_size: int = dataclasses.field(default=1000, metadata=SAME_RESULTS)
  jit_compile: bool = dataclasses.field(default=True, metadata=SAME_RESULTS)
  # Where S and T start when the run directory has no checkpoint of its own (it changes results).
  init_checkpoint: str = ""
  fresh: bool = dataclasses.field(default=False, metadata=SAME_RESULTS)
  export: bool = dataclasses.field(default=True, metadata=SAME_RESULTS)

  def __post_init__(self):
    if self.compositor.ranges is not None:
      raise ConfigError("compositor.ranges is set by the task (each task's placement ranges); leave it None")
    registration = registry.get(self.task)
    if self.task_settings is None:
      object.__setattr__(self, "task_settings", registration.settings_cls())
    if not isinstance(self.task_settings, registration.settings_cls):
      raise ConfigError(f"task {self.task!r} takes settings of type {registration.settings_cls.__name__}, got "
                        f"{type(self.task_settings).__name__}")
    for name, value in _float_settings(dataclasses.asdict(self)):
      if not np.isfinite(value):  # Checked before the bounds: NaN passes every bound (nan < 0 is False).
        raise ConfigError(f"--{name} must be a finite number, got {value}")
    if not self.target:
      object.__setattr__(self, "target", registration.targets[0])
    if self.strategy not in STRATEGIES:
      raise ConfigError(f"--strategy must be one of {STRATEGIES}, got {self.strategy!r}")
    if self.target not in registration.targets:
      raise ConfigError(f"--target must be one of {registration.targets} for --task={self.task}, got "
                        f"{self.target!r}")
    if self.target_lr_schedule not in LR_SCHEDULES:
      raise ConfigError(f"--target_lr_schedule must be one of {LR_SCHEDULES}, got "
                        f"{self.target_lr_schedule!r}")
    if self.weight_decay_mode not in WEIGHT_DECAY_MODES:
      raise ConfigError(f"--weight_decay_mode must be one of {WEIGHT_DECAY_MODES}, got "
                        f"{self.weight_decay_mode!r}")
    allowed_sources = (TERSE, *registration.random_sources, FILTERED, NO_SAMPLES)
    if self.sample_source not in allowed_sources:
      raise ConfigError(f"--sample_source must be one of {allowed_sources} for --task={self.task}, got "
                        f"{self.sample_source!r}")
    if not self.hard_per_class or min(self.hard_per_class) < 1:
      raise ConfigError(f"--hard_per_class needs values >= 1, got {list(self.hard_per_class)}")
    if self.quota_unit not in QUOTA_UNITS:
      raise ConfigError(f"--quota_unit must be one of {', '.join(QUOTA_UNITS)}, got {self.quota_unit!r}")
    if len(self.hard_per_class) not in (1, self.cycles):
      raise ConfigError(f"--hard_per_class has {len(self.hard_per_class)} values; expected one, or one per "
                        f"cycle (--cycles={self.cycles})")
    for name in ("batch_size", "synth_batch_size", "synth_max_steps", "checkpoint_every_steps",
                 "eval_batch_size", "cache_shuffle_buffer", "discriminator_width", "discriminator_scales"):
      if getattr(self, name) < 1:
        raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
    for name in ("baseline_epochs", "finetune_epochs", "finetune_steps", "cycles", "synth_noise_dim",
                 "synth_warmup_steps", "discriminator_pretrain_steps", "generation_batches",
                 "target_lr_warmup_steps"):
      if getattr(self, name) < 0:
        raise ConfigError(f"--{name} must be >= 0, got {getattr(self, name)}")
    if not 0 <= self.synth_dropout < 1:
      raise ConfigError(f"--synth_dropout must be in [0, 1), got {self.synth_dropout}")
    if not 0 <= self.cache_fraction < 1:
      raise ConfigError(f"--cache_fraction must be in [0, 1), got {self.cache_fraction}")
    for name in ("diversity_weight", "discriminator_weight"):
      if getattr(self, name) < 0:
        raise ConfigError(f"--{name} must be >= 0, got {getattr(self, name)}")

  def target_learning_rate(self, step: int, phase_steps: int) -> float:
    """T's learning rate at `step` (0-based) of a phase of `phase_steps` steps: the schedule's (constant, or
    cosine-decayed to 0 at the phase's end), ramped up linearly over the first target_lr_warmup_steps."""
    rate = self.target_lr
    if self.target_lr_schedule == "cosine":
      rate *= (1 + np.cos(np.pi * step / max(phase_steps, 1))) / 2
    if step < self.target_lr_warmup_steps:
      rate *= (step + 1) / self.target_lr_warmup_steps
    return float(rate)

  def synthesis_batches(self) -> int:
    """The most batches a cycle may cache from: those of A.2's generation pass, or S's capped steps."""
    return self.generation_batches or self.synth_max_steps

  def quota(self, cycle: int) -> int:
    """Samples (or instances, by quota_unit) to add per class in `cycle` (1-based)."""
    return self.hard_per_class[0] if len(self.hard_per_class) == 1 else self.hard_per_class[cycle - 1]


def _float_settings(settings: dict | list | tuple, name: str = ""):
  """(name, value) of every float in a config's asdict(), nested settings and tuples included; a nested
  setting goes by its own field's name (its flag's, or close to it: a task may prefix its flags)."""
  items = settings.items() if isinstance(settings, dict) else ((name, value) for value in settings)
  for key, value in items:
    if isinstance(value, float):
      yield key, value
    elif isinstance(value, (dict, list, tuple)):
      yield from _float_settings(value, key)


def synthesizer_settings(config: TrainConfig) -> SynthesizerSettings:
  """How the task is to build S and composite for it."""
  return SynthesizerSettings(width=config.synth_width, dropout=config.synth_dropout,
                             noise_dim=config.synth_noise_dim, jit_compile=config.jit_compile)


def common_settings(config: TrainConfig) -> CommonSettings:
  """What the task is built with besides its own settings."""
  return CommonSettings(target=config.target, compositor=config.compositor,
                        synthesizer=synthesizer_settings(config))


def result_settings(config: Any, prefix: str = "") -> dict[str, Any]:
  """Every setting that changes what a run computes, by its full name ("synth_lr",
  "task_settings.data.num_train"), its value as JSON has it: what a resume must keep."""
  return {name: _as_json(value) for name, (value, _, _) in _leaf_settings(config, prefix).items()}


def setting_defaults(config: Any) -> dict[str, Any]:
  """{full name: default, as JSON has it} of the settings result_settings names whose field has a default:
  what a run started before the setting existed ran with (a new setting's default keeps the old behaviour)."""
  defaults = {}
  for name, (_, field, _) in _leaf_settings(config).items():
    if field.default is not dataclasses.MISSING:
      defaults[name] = _as_json(field.default)
    elif field.default_factory is not dataclasses.MISSING:
      defaults[name] = _as_json(field.default_factory())
  return defaults


def setting_flags(config: Any) -> dict[str, str]:
  """The flag of each setting result_settings names: a field's `flag` metadata, else its own name after its
  settings class's FLAG_PREFIX (a class whose flags share a prefix says it once: tasks/scenes.py's)."""
  return {name: flag for name, (_, _, flag) in _leaf_settings(config).items()}


def _as_json(value: Any) -> Any:
  return json.loads(json.dumps(value))  # Tuples as lists, as config.json stores them.


def _leaf_settings(config: Any, prefix: str = "") -> dict[str, tuple[Any, dataclasses.Field, str]]:
  """{full name: (value, its dataclass field, its flag)} of the settings that change results (SAME_RESULTS
  fields left out)."""
  settings = {}
  for field in dataclasses.fields(config):
    if not field.metadata.get("changes_results", True):
      continue
    value = getattr(config, field.name)
    if dataclasses.is_dataclass(value):
      settings.update(_leaf_settings(value, f"{prefix}{field.name}."))
    else:
      flag = field.metadata.get("flag", getattr(config, "FLAG_PREFIX", "") + field.name)
      settings[f"{prefix}{field.name}"] = (value, field, flag)
  return settings
