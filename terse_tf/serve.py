r"""A small client of the exported synthesizer: one cut-out and one background in, the composite out as a PNG.

    # Against TF Serving (REST API, port 8501), serving runs/affnist/export/synthesizer as "synthesizer":
    python -m terse_tf.serve --server=http://localhost:8501/v1/models/synthesizer \
        --foreground=digit.png --background=photo.jpg --out=composite.png
    # Without a server, from the SavedModel (TF Serving's layout or a version directory):
    python -m terse_tf.serve --model=runs/affnist/export/synthesizer --foreground=... --out=...

The cut-out is a PNG with alpha, or an image with <name>.mask.png beside it (data/cutouts.py); it is fitted
to the synthesizer's cut-out size. The background is resized to the synthesizer's background size (no
--background: black). For a detection synthesizer the cut-out is object 0 of class --class_id and the other
slots are empty; with --model, --class_id must be one of the classes the export lists (TF Serving's metadata
does not carry that list, so over --server any id is sent). The signature's other outputs (params, boxes, ...)
are printed as JSON. Bad input (a target export, an --out that cannot be written, ...) is one line on stderr
and a non-zero exit, found before the model runs.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request

import numpy as np
import tensorflow as tf
from absl import app, flags

from terse_tf import export, launch
from terse_tf.data import cutouts, photos
from terse_tf.errors import ConfigError, DataError, TerseError

flags.DEFINE_string("server", "", "TF Serving REST URL of the model, http://HOST:8501/v1/models/NAME.")
flags.DEFINE_string("model", "", "Or an exported synthesizer to run in this process.")
flags.DEFINE_string("signature", export.SERVING_DEFAULT, "Signature to call (serving_default or sample).")
flags.DEFINE_string("foreground", "", "Cut-out: a PNG with alpha, or an image with <name>.mask.png beside it.")
flags.DEFINE_string("background", "", "Background image ('' black).")
flags.DEFINE_integer("class_id", 0, "Detection synthesizers: the object's class, one of the export's "
                     "(0..classes - 1).", lower_bound=0)
flags.DEFINE_string("out", "composite.png", "Where to write the composite.")
FLAGS = flags.FLAGS
# Outputs that are per-pixel masks (classification's warped_mask, detection's masks).
MASK_OUTPUTS = ("warped_mask", "masks")


class LocalModel:
  """A signature of a SavedModel, loaded in this process."""

  def __init__(self, path: str, signature: str):
    loaded = export.load(path, "--model")
    self.flag = f"--model={path}"
    if signature not in loaded.signatures:
      raise ConfigError(f"--signature={signature}: {path} has only {sorted(loaded.signatures)}")
    self._loaded, self._function = loaded, loaded.signatures[signature]
    self.class_names = export.class_names(export.saved_model_path(path))  # None: the export lists none.

  def input_shapes(self) -> dict[str, list[int]]:
    return {name: spec.shape.as_list() for name, spec in self._function.structured_input_signature[1].items()}

  def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in self._function(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


class RestModel:
  """A signature of a model on TF Serving's REST API (its documented metadata and predict requests)."""

  # TF Serving's metadata has the signatures only, not the export's list of classes.
  class_names = None

  def __init__(self, url: str, signature: str):
    self.url, self.signature = url.rstrip("/"), signature
    self.flag = f"--server={url}"

  def _request(self, url: str, payload: dict | None = None) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
      with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)
    except OSError as e:
      raise ConfigError(f"--server={self.url}: request to {url} failed ({e})") from e

  def input_shapes(self) -> dict[str, list[int]]:
    signatures = self._request(self.url + "/metadata")["metadata"]["signature_def"]["signature_def"]
    if self.signature not in signatures:
      raise ConfigError(f"--signature={self.signature}: the server has only {sorted(signatures)}")
    return {name: [int(d["size"]) for d in spec["tensor_shape"]["dim"]]
            for name, spec in signatures[self.signature]["inputs"].items()}

  def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    payload = {"signature_name": self.signature, "inputs": {k: v.tolist() for k, v in inputs.items()}}
    outputs = self._request(self.url + ":predict", payload)["outputs"]
    return {k: np.asarray(v) for k, v in outputs.items()}


def request_inputs(shapes: dict[str, list[int]], foreground_path: str, background_path: str,
                   class_id: int) -> dict[str, np.ndarray]:
  """The signature's inputs for one cut-out on one background."""
  *slots, height, width, channels = shapes["foreground"][1:]
  fitted = cutouts.fit(cutouts.read_cutout(foreground_path), (height, width))
  cutout = cutouts.Cutouts(fitted[None], np.zeros(1, np.int32), ["object"]).with_channels(channels)[0]
  bg_height, bg_width, bg_channels = shapes["background"][1:]
  if background_path:
    background = tf.image.resize(photos.read_rgb(background_path).astype(np.float32) / 255,
                                 [bg_height, bg_width], antialias=True).numpy()
    if bg_channels == 1:
      background = photos.luminance(background)
  else:
    background = np.zeros([bg_height, bg_width, bg_channels], np.float32)
  inputs = {"background": background[None].astype(np.float32)}
  if slots:  # Detection: object 0 is the cut-out, the other slots empty.
    foreground = np.zeros([1, slots[0], height, width, channels], np.float32)
    foreground[0, 0] = cutout
    inputs["foreground"] = foreground
    inputs["classes"] = np.array([[class_id] + [-1] * (slots[0] - 1)], np.int32)
  else:
    inputs["foreground"] = cutout[None].astype(np.float32)
  if "seed" in shapes:
    inputs["seed"] = np.array([0, 0], np.int32)
  return inputs


def check_out(path: str) -> None:
  """A ConfigError unless `path` can be written as the composite's PNG: checked before the model runs."""
  folder = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    raise ConfigError(f"--out={path} is a folder; give the PNG file to write, e.g. "
                      f"{os.path.join(path, 'composite.png')}")
  if not os.path.isdir(folder):
    raise ConfigError(f"--out={path}: its folder {folder} does not exist")
  if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
    raise ConfigError(f"--out={path}: not writable here")


def check_request(model: LocalModel | RestModel, shapes: dict[str, list[int]], class_id: int) -> None:
  """A ConfigError naming the flag unless the signature is a synthesizer's that can paste class `class_id`."""
  if not {"foreground", "background"} <= set(shapes):
    raise ConfigError(f"{model.flag}: this signature takes {sorted(shapes)}, not a synthesizer's foreground and "
                      "background (a target export?); give the synthesizer's export (export/synthesizer)")
  detection = len(shapes["foreground"]) == 5  # [B, N, h, w, C]: N object slots, each of a class.
  if detection and model.class_names is not None and not 0 <= class_id < len(model.class_names):
    raise ConfigError(f"--class_id={class_id}: the synthesizer's task has {len(model.class_names)} class(es) "
                      f"{model.class_names}; give 0..{len(model.class_names) - 1}")


def composite(model: LocalModel | RestModel, foreground: str, background: str, class_id: int, out: str
              ) -> dict:
  """Runs `model` on one cut-out and background, writes the composite to `out` as a PNG and returns the
  signature's other outputs (the masks left out: the composite shows them), the bad inputs checked first."""
  check_out(out)
  shapes = model.input_shapes()
  check_request(model, shapes, class_id)
  inputs = request_inputs(shapes, foreground, background, class_id)
  try:
    outputs = model.predict(inputs)
  except (MemoryError, tf.errors.ResourceExhaustedError) as e:
    raise DataError(f"{model.flag}: out of memory running the model on one composite ({type(e).__name__}); "
                    "free memory (or use a machine with more) and retry") from e
  png = tf.io.encode_png(photos.to_uint8(np.asarray(outputs.pop("composite"))[0])).numpy()
  try:
    with open(out, "wb") as f:
      f.write(png)
  except OSError as e:
    raise DataError(f"--out={out}: cannot write the composite ({e})") from e
  return {"composite": out, **{k: np.asarray(v)[0].tolist() for k, v in outputs.items() if k not in MASK_OUTPUTS}}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    if bool(FLAGS.server) == bool(FLAGS.model):
      raise ConfigError("give one of --server (TF Serving's REST URL) or --model (a SavedModel)")
    if not FLAGS.foreground:
      raise ConfigError("--foreground is required: a PNG with alpha, or an image with a .mask.png")
    check_out(FLAGS.out)  # Before loading the model too: it takes seconds.
    model = RestModel(FLAGS.server, FLAGS.signature) if FLAGS.server else LocalModel(FLAGS.model, FLAGS.signature)
    print(json.dumps(composite(model, FLAGS.foreground, FLAGS.background, FLAGS.class_id, FLAGS.out)))
  except TerseError as e:
    sys.exit(f"terse_tf.serve: error: {e}")
  except KeyboardInterrupt:
    launch.exit_interrupted("terse_tf.serve: interrupted.")


def run() -> None:
  """Entry point of `python -m terse_tf.serve` and the console script terse-serve."""
  launch.run(main, __name__)


if __name__ == "__main__":
  run()
