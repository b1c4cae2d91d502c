"""Tasks: which data, which target, which synthesizer, which ranges, which figures (base.Task), found by
name in the registry (registry.py), where each task's module registers itself."""

from terse_tf.tasks.base import CommonSettings, Composition, SynthesizerSettings, Task, image_grid

__all__ = ["CommonSettings", "Composition", "SynthesizerSettings", "Task", "image_grid"]
