"""Detectors any detection task can train, registered by --target name beside the task's own (its SSDs):
each family with its settings' flags, how they are read, and a builder. Generic code names none of them; a
family's module registers itself on import, and BUILTIN_DETECTOR_MODULES lists the built-in ones.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Callable

from absl import flags

from terse_tf.errors import ConfigError
from terse_tf.targets.base import DetectorTarget

BUILTIN_DETECTOR_MODULES = ("terse_tf.targets.frcnn",)


@dataclasses.dataclass(frozen=True, eq=False)
class DetectorFamily:
  """Detectors of one kind: their names, flags and builder."""
  names: tuple[str, ...]  # --target values.
  define_flags: Callable[[flags.FlagValues], None]
  # (--target, flags) -> the family's frozen settings dataclass.
  settings_from_flags: Callable[[str, flags.FlagValues], Any]
  # --target -> its settings when none are given (a task built without flags).
  default_settings: Callable[[str], Any]
  # (--target, settings, the task's image shape [H, W, 3], its class count, the task's image-size flag) -> T.
  build: Callable[[str, Any, tuple[int, int, int], int, str], DetectorTarget]
  # Its flags' common prefix ("frcnn_"); each flag is unset (None) unless given: given with another --target
  # it would be silently ignored, so it is an error.
  flag_prefix: str


_FAMILIES: dict[str, DetectorFamily] = {}


def register_detectors(family: DetectorFamily) -> None:
  for name in family.names:
    if name in _FAMILIES and _FAMILIES[name].build != family.build:
      raise ValueError(f"detector target {name!r} is registered twice")
    _FAMILIES[name] = family


@functools.cache
def _load_builtin() -> None:
  for module in BUILTIN_DETECTOR_MODULES:
    importlib.import_module(module)


def names() -> tuple[str, ...]:
  """The registered detectors' --target names, in registration order."""
  _load_builtin()
  return tuple(_FAMILIES)


def define_flags(flag_values: flags.FlagValues) -> None:
  """Every family's flags, once (several tasks define them)."""
  _load_builtin()
  for family in dict.fromkeys(_FAMILIES.values()):
    try:
      family.define_flags(flag_values)
    except flags.DuplicateFlagError:
      pass  # Another detection task's define_flags defined them in these flag values already.


def settings_from_flags(target: str, flag_values: flags.FlagValues) -> Any:
  """The settings of `target` read from its family's flags; None for a target no family registered. A
  ConfigError when another family's flag is given: it would change nothing."""
  _load_builtin()
  family = _FAMILIES.get(target)
  for other in dict.fromkeys(_FAMILIES.values()):
    given = sorted(name for name in flag_values if name.startswith(other.flag_prefix)
                   and flag_values[name].value is not None)
    if other is not family and given:
      raise ConfigError(f"--{given[0]} sets up {', '.join(other.names)}, not --target={target}: drop it, or "
                        f"choose one of those targets")
  return None if family is None else family.settings_from_flags(target, flag_values)


def build(target: str, settings: Any, image_shape: tuple[int, int, int], num_classes: int,
          size_flag: str) -> DetectorTarget:
  """A new `target` (inside the trainer's strategy scope) for the task's images and classes, as `settings`
  say (None: the target's defaults); `size_flag` names the task's flag for its image size, for errors."""
  _load_builtin()
  family = _FAMILIES[target]
  return family.build(target, family.default_settings(target) if settings is None else settings, image_shape,
                      num_classes, size_flag)
