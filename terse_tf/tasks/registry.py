"""Tasks register themselves here by name; generic code (the config, the trainer, the launcher) finds them
here and names none of them (Model Garden's task_factory pattern).

A task module decorates its Task class with `register(name, settings=..., ...)`:

    @registry.register("mine", settings=MySettings, summary="my objects", define_flags=define_flags,
                       settings_from_flags=settings_from_flags)
    class MyTask(tasks.base.Task):
      targets = ("my_net",)              # T's architectures it accepts, its default first
      random_source = "random_placement" # its random-placement baseline, a --sample_source value
      def __init__(self, settings: MySettings, common: CommonSettings): ...

and is then trained with `--task=mine`: the launcher (terse_tf.train) defines every registered task's flags
(the built-in tasks' modules are listed below; a task of your own is imported by your launcher before it calls
terse_tf.train.run(), README "Adding a task"). Registering defines no flag, so that a program of your own
that builds a TrainConfig keeps its flags to itself. A task registered without `settings_from_flags` is built in
Python and handed to the trainer (terse_tf.api's tasks around your own model).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Callable

from absl import flags

from terse_tf.errors import ConfigError
from terse_tf.tasks.base import CommonSettings, Task

# The registry's own loading: the one place that names the built-in tasks' modules.
BUILTIN_TASK_MODULES = ("terse_tf.tasks.affnist", "terse_tf.tasks.photo_digits", "terse_tf.tasks.gmu",
                        "terse_tf.tasks.folders", "terse_tf.tasks.voc_person", "terse_tf.tasks.custom")
# What --task (and TrainConfig.task) is when unset: the paper's first experiment.
DEFAULT_TASK = "affnist"


@dataclasses.dataclass(frozen=True)
class Registration:
  """What the generic code knows of a task."""
  name: str
  task_cls: type[Task]
  settings_cls: type              # The task's own settings (TrainConfig.task_settings), a frozen dataclass.
  settings_from_flags: Callable[[flags.FlagValues], Any] | None  # None: built in Python, not from flags.
  summary: str                    # One line for --task's help.
  define_flags: Callable[[flags.FlagValues], None] | None

  @property
  def targets(self) -> tuple[str, ...]:
    """T's architectures the task accepts, its default first."""
    return tuple(self.task_cls.targets)

  @property
  def random_source(self) -> str:
    return self.task_cls.random_source

  @property
  def random_sources(self) -> tuple[str, ...]:
    """Its random baseline first, then the variants it offers."""
    return (self.task_cls.random_source, *self.task_cls.extra_random_sources)

  @property
  def from_flags(self) -> bool:
    return self.settings_from_flags is not None


_REGISTRY: dict[str, Registration] = {}
# The flags each task's define_flags added to absl's FLAGS, by task (define_flags below).
_DEFINED_FLAGS: dict[str, tuple[str, ...]] = {}


def register(name: str, *, settings: type, summary: str,
             define_flags: Callable[[flags.FlagValues], None] | None = None,
             settings_from_flags: Callable[[flags.FlagValues], Any] | None = None) -> Callable[[type], type]:
  """A class decorator: registers a Task class under `name`, with its settings class and how its flags are
  defined (the launcher defines them: registering defines none) and read."""
  def decorate(task_cls: type[Task]) -> type[Task]:
    earlier = _REGISTRY.get(name)
    qualified = lambda cls: f"{cls.__module__}.{cls.__qualname__}"
    if earlier is not None and qualified(earlier.task_cls) != qualified(task_cls):
      raise ValueError(f"task {name!r} is registered twice: {qualified(earlier.task_cls)} and "
                       f"{qualified(task_cls)}")
    missing = [attribute for attribute in ("targets", "random_source", "headline")
               if not hasattr(task_cls, attribute)]
    if missing:
      raise ValueError(f"task {name!r} ({qualified(task_cls)}) must declare {', '.join(missing)} as class "
                       "attributes (tasks/base.py's Task says what each is)")
    task_cls.name = name
    _REGISTRY[name] = Registration(name, task_cls, settings, settings_from_flags, summary, define_flags)
    return task_cls
  return decorate


def define_flags(flag_values: flags.FlagValues) -> tuple[str, ...]:
  """Defines in `flag_values` (the launcher's absl FLAGS) the flags of every registered task not yet defined
  there; returns every task's flags (for the launcher's --help)."""
  _load_builtin_tasks()
  for name, entry in _REGISTRY.items():
    if entry.define_flags is not None and name not in _DEFINED_FLAGS:
      defined_before = set(flag_values)
      entry.define_flags(flag_values)
      _DEFINED_FLAGS[name] = tuple(sorted(set(flag_values) - defined_before))
  return tuple(flag for names in _DEFINED_FLAGS.values() for flag in names)


@functools.cache
def _load_builtin_tasks() -> None:
  for module in BUILTIN_TASK_MODULES:
    importlib.import_module(module)


def names(from_flags: bool = True) -> tuple[str, ...]:
  """The registered tasks' names (by default those the command line can build), in registration order."""
  _load_builtin_tasks()
  return tuple(name for name, entry in _REGISTRY.items() if entry.from_flags or not from_flags)


def get(name: str) -> Registration:
  """The task registered as `name`; a ConfigError naming --task and the choices otherwise."""
  _load_builtin_tasks()
  if name not in _REGISTRY:
    raise ConfigError(f"--task must be one of {list(names())}, got {name!r}")
  return _REGISTRY[name]


@functools.lru_cache(maxsize=1)
def build(name: str, settings: Any, common: CommonSettings) -> Task:
  """The task `name` with these settings, its data loaded. One task per process for a given configuration:
  an experiment's runs (every seed and arm) share the loaded and rendered data instead of making it again
  for each (tens of seconds for photo_digits). Tasks hold no training state, and making one draws from no
  random stream the runs use."""
  return get(name).task_cls(settings, common)
