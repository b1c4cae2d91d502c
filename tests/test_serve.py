"""The serving client writes the composite the exported synthesizer makes, from a SavedModel and over TF
Serving's REST API."""

import http.server
import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT, smoke_config
from terse_tf import export, trainer as trainer_lib
from terse_tf.data import mnist


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


def serve_cli(*args):
  result = subprocess.run([sys.executable, "-m", "terse_tf.serve", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


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
