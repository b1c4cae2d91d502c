"""The serving client writes the composite the exported synthesizer makes, from a SavedModel and over TF
Serving's REST API; bad inputs are one error naming the flag, found before the model runs."""

import http.server
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

from conftest import DETECTION_SMOKE_FLAGFILE, REPO_ROOT, smoke_config
from terse_tf import export, serve, trainer as trainer_lib
from terse_tf.data import mnist
from terse_tf.errors import ConfigError


@pytest.fixture(scope="module")
def synthesizer_and_digit(tmp_path_factory):
  root = tmp_path_factory.mktemp("serve")
  trainer = trainer_lib.Trainer(smoke_config(str(root / "run"), cycles=0, baseline_epochs=0, export=False))
  export.export_models(trainer.task, trainer.synthesizer, trainer.target, str(root / "export"))
  images, _ = mnist.load_bundled()
  # A 40x40 cut-out (the synthesizer's size, so the client need not scale it): white ink, alpha = the digit.
  la = np.stack([np.full((40, 40), 255, np.uint8), mnist.pad_to(images[123:124])[0]], axis=-1)
  (root / "digit.png").write_bytes(tf.io.encode_png(la).numpy())
  return root / "export" / export.SYNTHESIZER_DIR, root / "digit.png"


class StandInServer(http.server.BaseHTTPRequestHandler):
  """TF Serving's REST API for one model (GET .../metadata, POST ...:predict with columnar "inputs"), answered
  by the SavedModel itself: the model server binary is not installable here, its protocol is what the client
  speaks."""
  model = None

  def _reply(self, payload):
    body = json.dumps(payload).encode()
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def do_GET(self):  # pylint: disable=invalid-name
    assert self.path == "/v1/models/synthesizer/metadata"
    signatures = {}
    for name, function in self.model.signatures.items():
      signatures[name] = {"inputs": {key: {"tensor_shape": {"dim": [{"size": str(-1 if d is None else d)}
                                                                     for d in spec.shape.as_list()]}}
                                     for key, spec in function.structured_input_signature[1].items()}}
    self._reply({"metadata": {"signature_def": {"signature_def": signatures}}})

  def do_POST(self):  # pylint: disable=invalid-name
    assert self.path == "/v1/models/synthesizer:predict"
    request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    function = self.model.signatures[request["signature_name"]]
    specs = function.structured_input_signature[1]
    outputs = function(**{k: tf.constant(v, specs[k].dtype) for k, v in request["inputs"].items()})
    self._reply({"outputs": {k: v.numpy().tolist() for k, v in outputs.items()}})

  def log_message(self, *args):
    pass


def serve_cli(*args, check=True):
  result = subprocess.run([sys.executable, "-m", "terse_tf.serve", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
  if not check:
    return result
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_client_writes_the_synthesizers_composite_locally_and_over_rest(synthesizer_and_digit, tmp_path):
  model_dir, digit = synthesizer_and_digit
  local = serve_cli(f"--model={model_dir}", f"--foreground={digit}", f"--out={tmp_path / 'local.png'}")
  composite = tf.io.decode_png((tmp_path / "local.png").read_bytes()).numpy()
  assert composite.shape == (40, 40, 1) and local["composite"] == str(tmp_path / "local.png")

  # The composite is the signature's for that cut-out.
  images, _ = mnist.load_bundled()
  alpha = mnist.pad_to(images[123:124]).astype(np.float32)[..., None] / 255
  loaded = tf.saved_model.load(export.saved_model_path(str(model_dir)))
  expected = loaded.signatures[export.SERVING_DEFAULT](
      foreground=tf.constant(np.concatenate([np.ones_like(alpha), alpha], -1)), background=tf.zeros([1, 40, 40, 1]))
  np.testing.assert_allclose(composite / 255, expected["composite"].numpy()[0], atol=2 / 255)
  np.testing.assert_allclose(local["params"], expected["params"].numpy()[0], atol=1e-4)

  StandInServer.model = loaded
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandInServer)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    remote = serve_cli(f"--server=http://127.0.0.1:{server.server_port}/v1/models/synthesizer",
                       f"--foreground={digit}", f"--out={tmp_path / 'rest.png'}")
  finally:
    server.shutdown()
  assert (tmp_path / "rest.png").read_bytes() == (tmp_path / "local.png").read_bytes()
  np.testing.assert_allclose(remote["params"], local["params"], atol=1e-6)


@pytest.fixture(scope="module")
def detection_synthesizer(tmp_path_factory):
  """The photo_digits smoke task's synthesizer export: one class, "digit"."""
  root = tmp_path_factory.mktemp("serve_detection")
  trainer = trainer_lib.Trainer(smoke_config(str(root / "run"), DETECTION_SMOKE_FLAGFILE, cycles=0,
                                             baseline_epochs=0, export=False))
  return export.write(export.synthesizer_archive(trainer.synthesizer, trainer.task),
                      str(root / "export" / export.SYNTHESIZER_DIR), trainer.task.class_names)


def test_bad_requests_are_one_error_naming_the_flag(synthesizer_and_digit, detection_synthesizer, tmp_path):
  model_dir, digit = synthesizer_and_digit
  out = str(tmp_path / "composite.png")
  # A class the one-class synthesizer does not have; its one class is pasted.
  detection = serve.LocalModel(detection_synthesizer, export.SERVING_DEFAULT)
  with pytest.raises(ConfigError, match=r"--class_id=7: the synthesizer's task has 1 class\(es\) \['digit'\]; "
                                        r"give 0..0"):
    serve.composite(detection, str(digit), "", 7, out)
  assert "boxes" in serve.composite(detection, str(digit), "", 0, out) and os.path.getsize(out) > 0
  # The target's export instead of the synthesizer's.
  target = serve.LocalModel(str(model_dir.parent / export.TARGET_DIR), export.SERVING_DEFAULT)
  with pytest.raises(ConfigError, match="--model=.*target: this signature takes \\['images'\\], not a "
                                        "synthesizer's"):
    serve.composite(target, str(digit), "", 0, out)
  # An --out that cannot be written: a folder, or in a folder that does not exist.
  synthesizer = serve.LocalModel(str(model_dir), export.SERVING_DEFAULT)
  for bad, message in ((tmp_path, "is a folder"), (tmp_path / "missing" / "c.png", "does not exist")):
    with pytest.raises(ConfigError, match=f"--out={bad}.*{message}"):
      serve.composite(synthesizer, str(digit), "", 0, str(bad))


@pytest.mark.slow
def test_the_client_prints_bad_inputs_as_one_line(synthesizer_and_digit, tmp_path):
  model_dir, digit = synthesizer_and_digit
  for args, expected in (([f"--model={model_dir.parent / export.TARGET_DIR}", f"--out={tmp_path / 'c.png'}"],
                          "--model="),
                         ([f"--model={model_dir}", f"--out={tmp_path / 'missing' / 'c.png'}"], "--out=")):
    result = serve_cli(*args, f"--foreground={digit}", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"terse_tf.serve: error: {expected}")
