"""Export: SavedModels with explicit serving signatures that `saved_model_cli run` and TF Serving run.

Each export is a `keras.export.ExportArchive` that tracks the network and registers one function per
signature. A plain `tf.Module` holding a Keras 3 model is not enough: `tf.saved_model.load` in Python finds
its variables through the functions that capture them, but the TF1-style loader that `saved_model_cli run`
and TF Serving use restores only the variables in the object graph's saver and fails with "Could not find
variable ...". The archive lists the model's variables on the exported object, so they are restored
everywhere. (Plain `tf.saved_model.save` of a Keras 3 model would also rename the inputs.)

Layout: TF Serving's, `<export_dir>/<model>/<version>/saved_model.pb`, each export a new version (one more
than the highest there), so a running server picks it up and the previous one stays until you delete it.
Beside the graph, in TF Serving's folder for extra files, `<version>/assets.extra/terse_tf.json` lists the
task's class names (index = class id): what no signature says (how many classes a detector tells apart,
which ids a detection synthesizer's `classes` input takes), read by the generator and the serving client.

Each task names its synthesizer's signatures (Task.synthesizer_endpoints), always three:
  serving_default: S in inference mode (dropout off, BatchNorm moving averages). A synthesizer with a noise
      input draws its noise inside the signature, so every call samples new transforms.
  sample: S with its dropout on, as it ran while it filled the hard-example cache (dropout is S's source of
      variety, paper Table 2); BatchNorm still uses its moving averages, since a served batch need not look
      like a training batch.
  generate: sample with one more input, `seed` [2] int32, that fixes the dropout masks and noise: the same
      inputs and seed give the same composites in any process (the dataset generator's determinism).
affNIST: (foreground [B,40,40,2] colour + straight alpha, background [B,40,40,1]) -> {params, composite,
warped_mask}. Detection tasks: (foreground [B,N,h,w,4], background [B,H,W,3], classes [B,N]) -> {params,
composite, boxes, classes, num_objects, masks}. The target's serving_default is Target.serving_outputs:
{probabilities} for a classifier; {boxes, scores, classes, num_detections} for a detector. Its `hardness`
signature, (images, *labels) -> {hardness [B]}, is the trainer's cache criterion (Target.verdict): a composite
is hard when its hardness is below --hard_threshold.
"""

from __future__ import annotations

import json
import os
import shutil

import keras
import tensorflow as tf

from terse_tf import files
from terse_tf.errors import DataError
from terse_tf.targets.base import Target
from terse_tf.tasks.base import Task

SYNTHESIZER_DIR, TARGET_DIR = "synthesizer", "target"
SERVING_DEFAULT, SAMPLE, GENERATE, HARDNESS = "serving_default", "sample", "generate", "hardness"
METADATA_FILE = os.path.join("assets.extra", "terse_tf.json")


def synthesizer_archive(synthesizer: keras.Model, task: Task) -> keras.export.ExportArchive:
  archive = keras.export.ExportArchive()
  archive.track(synthesizer)
  for name, (function, input_signature) in task.synthesizer_endpoints(synthesizer).items():
    archive.add_endpoint(name, function, input_signature=input_signature)
  return archive


def target_archive(target: Target, image_shape: tuple[int, int, int]) -> keras.export.ExportArchive:
  """serving_default(images [B, H, W, C] float in [0, 1]) -> Target.serving_outputs, and
  hardness(images, *labels) -> {hardness}."""
  archive = keras.export.ExportArchive()
  archive.track(target.model)
  images = tf.TensorSpec([None, *image_shape], tf.float32, name="images")
  archive.add_endpoint(SERVING_DEFAULT, target.serving_outputs, input_signature=[images])
  label_names = list(target.label_specs())

  def hardness(images: tf.Tensor, *labels: tf.Tensor) -> dict[str, tf.Tensor]:
    judgement = target.verdict(images, dict(zip(label_names, labels)))
    return {"hardness": judgement.hardness}

  archive.add_endpoint(HARDNESS, hardness, input_signature=[images, *target.label_specs().values()])
  return archive


def versions(model_dir: str) -> list[int]:
  """The version numbers under a TF Serving model directory, ascending."""
  if not os.path.isdir(model_dir):
    return []
  return sorted(int(name) for name in os.listdir(model_dir)
                if name.isdigit() and os.path.exists(os.path.join(model_dir, name, "saved_model.pb")))


def write(archive: keras.export.ExportArchive, model_dir: str, class_names: list[str]) -> str:
  """Writes the SavedModel, and its METADATA_FILE naming `class_names`, as the next version under
  `model_dir` and returns its path. It is written aside and renamed into place, so a server or a crash never
  sees a half-written version."""
  version_dir = os.path.join(model_dir, str((versions(model_dir) or [0])[-1] + 1))
  staging = version_dir + ".writing"
  shutil.rmtree(staging, ignore_errors=True)
  archive.write_out(staging, verbose=False)
  os.makedirs(os.path.dirname(os.path.join(staging, METADATA_FILE)))
  with open(os.path.join(staging, METADATA_FILE), "w") as f:
    json.dump({"class_names": list(class_names)}, f)
  os.replace(staging, version_dir)
  return version_dir


def saved_model_path(path: str) -> str:
  """A SavedModel directory, or a TF Serving model directory -> its SavedModel (the highest version)."""
  if os.path.exists(os.path.join(path, "saved_model.pb")):
    return path
  found = versions(path)
  if not found:
    raise FileNotFoundError(f"{path}: neither a SavedModel (no saved_model.pb) nor a model directory with "
                            f"numbered versions (<version>/saved_model.pb)")
  return os.path.join(path, str(found[-1]))


def class_names(saved_model: str) -> list[str] | None:
  """The class names (index = class id) of the task a SavedModel was exported from; None for an export
  made before terse_tf wrote them (or by something else)."""
  try:
    with open(os.path.join(saved_model, METADATA_FILE)) as f:
      return list(json.load(f)["class_names"])
  except FileNotFoundError:
    return None
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DataError(f"{os.path.join(saved_model, METADATA_FILE)}: unreadable ({e}); expected "
                    '{"class_names": [...]} as the export writes it') from e


def digest(saved_model: str) -> str:
  """A hash of a SavedModel's content, its graph and its variables: a model retrained and exported to the
  same path reads as another model, and one model under two spellings of its path as the same one."""
  paths = [os.path.join(saved_model, "saved_model.pb")]
  variables_dir = os.path.join(saved_model, "variables")
  if os.path.isdir(variables_dir):
    paths += [os.path.join(variables_dir, name) for name in sorted(os.listdir(variables_dir))]
  return files.content_digest(saved_model, paths)


def load(path: str, flag: str):
  """The SavedModel at `path` (a SavedModel or a TF Serving model directory), which `flag` named; a
  DataError naming the flag when there is none."""
  try:
    return tf.saved_model.load(saved_model_path(path))
  except FileNotFoundError as e:
    raise DataError(f"{flag}={path}: {e}") from e


def export_models(task: Task, synthesizer: keras.Model, target: Target, export_dir: str) -> dict[str, str]:
  """Writes both SavedModels as new versions under `export_dir`/{synthesizer,target}; returns their paths."""
  return {
      SYNTHESIZER_DIR: write(synthesizer_archive(synthesizer, task), os.path.join(export_dir, SYNTHESIZER_DIR),
                             task.class_names),
      TARGET_DIR: write(target_archive(target, task.image_shape), os.path.join(export_dir, TARGET_DIR),
                        task.class_names),
  }
