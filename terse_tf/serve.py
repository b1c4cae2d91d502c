r"""A small client of the exported synthesizer: one cut-out and one background in, the composite out as a PNG.

    # Against TF Serving (REST API, port 8501), serving runs/affnist/export/synthesizer as "synthesizer":
    python -m terse_tf.serve --server=http://localhost:8501/v1/models/synthesizer \
        --foreground=digit.png --background=photo.jpg --out=composite.png
    # Without a server, from the SavedModel (TF Serving's layout or a version directory):
    python -m terse_tf.serve --model=runs/affnist/export/synthesizer --foreground=... --out=...

The cut-out is a PNG with alpha, or an image with <name>.mask.png beside it (data/cutouts.py); it is fitted
to the synthesizer's cut-out size. The background is resized to the synthesizer's background size (no
--background: black). For a detection synthesizer the cut-out is object 0 of class --class_id and the other
slots are empty. The signature's other outputs (params, boxes, ...) are printed as JSON.
"""

from __future__ import annotations

import json
import sys
import urllib.request

import numpy as np
import tensorflow as tf
from absl import app, flags

from terse_tf import export
from terse_tf.data import cutouts, photos
from terse_tf.errors import ConfigError, TerseError

flags.DEFINE_string("server", "", "TF Serving REST URL of the model, http://HOST:8501/v1/models/NAME.")
flags.DEFINE_string("model", "", "Or an exported synthesizer to run in this process.")
flags.DEFINE_string("signature", export.SERVING_DEFAULT, "Signature to call (serving_default or sample).")
flags.DEFINE_string("foreground", "", "Cut-out: a PNG with alpha, or an image with <name>.mask.png beside it.")
flags.DEFINE_string("background", "", "Background image ('' black).")
flags.DEFINE_integer("class_id", 0, "Detection synthesizers: the object's class.", lower_bound=0)
flags.DEFINE_string("out", "composite.png", "Where to write the composite.")
FLAGS = flags.FLAGS
# Outputs that are per-pixel masks (classification's warped_mask, detection's masks).
MASK_OUTPUTS = ("warped_mask", "masks")


class LocalModel:
  """A signature of a SavedModel, loaded in this process."""

  def __init__(self, path: str, signature: str):
    loaded = export.load(path, "--model")
    if signature not in loaded.signatures:
      raise ConfigError(f"--signature={signature}: {path} has only {sorted(loaded.signatures)}")
    self._loaded, self._function = loaded, loaded.signatures[signature]

  def input_shapes(self) -> dict[str, list[int]]:
    return {name: spec.shape.as_list() for name, spec in self._function.structured_input_signature[1].items()}

  def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in self._function(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


class RestModel:
  """A signature of a model on TF Serving's REST API (its documented metadata and predict requests)."""

  def __init__(self, url: str, signature: str):
    self.url, self.signature = url.rstrip("/"), signature

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


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    if bool(FLAGS.server) == bool(FLAGS.model):
      raise ConfigError("give one of --server (TF Serving's REST URL) or --model (a SavedModel)")
    if not FLAGS.foreground:
      raise ConfigError("--foreground is required: a PNG with alpha, or an image with a .mask.png")
    model = RestModel(FLAGS.server, FLAGS.signature) if FLAGS.server else LocalModel(FLAGS.model, FLAGS.signature)
    outputs = model.predict(request_inputs(model.input_shapes(), FLAGS.foreground, FLAGS.background,
                                           FLAGS.class_id))
    composite = photos.to_uint8(np.asarray(outputs.pop("composite"))[0])
    with open(FLAGS.out, "wb") as f:
      f.write(tf.io.encode_png(composite).numpy())
    # The masks are images (the composite shows them): the printed summary leaves them out.
    print(json.dumps({"composite": FLAGS.out, **{k: np.asarray(v)[0].tolist() for k, v in outputs.items()
                                                 if k not in MASK_OUTPUTS}}))
  except TerseError as e:
    sys.exit(f"terse_tf.serve: error: {e}")


def run() -> None:
  """Console-script entry point (terse-serve)."""
  app.run(main)


if __name__ == "__main__":
  run()
