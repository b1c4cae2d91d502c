"""`pip install .` works away from the repository, its console scripts run, and the three places that pin
the dependencies agree."""

import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement

from conftest import REPO_ROOT


def pins(path: str) -> dict[str, str]:
  """{normalised name: version} of the `name==version` lines of a requirements file."""
  found = {}
  with open(path) as f:
    for line in f:
      match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
      if match:
        found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
  return found


def test_the_lock_pyproject_and_requirements_in_pin_the_same_versions():
  direct = pins(os.path.join(REPO_ROOT, "requirements.in"))
  locked = pins(os.path.join(REPO_ROOT, "requirements.txt"))
  with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
    pyproject = tomllib.load(f)
  project = pyproject["project"]
  declared = {}
  for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
    name, version = requirement.split("==")
    declared[re.sub(r"[-_.]+", "-", name).lower()] = version
  # requirements.in also pins what `pip install .` builds with, a version pyproject.toml's build-system admits.
  (build_requirement,) = map(Requirement, pyproject["build-system"]["requires"])
  assert build_requirement.specifier.contains(direct[build_requirement.name])
  assert declared == {name: version for name, version in direct.items() if name != build_requirement.name}
  assert {name: locked.get(name) for name in direct} == direct
  assert len(locked) > 3 * len(direct)  # The lock holds the whole resolved set, not only the direct pins.


@pytest.mark.slow
def test_pip_install_outside_the_repository_gives_working_console_scripts(tmp_path):
  venv = tmp_path / "venv"
  # The venv sees this interpreter's packages (TensorFlow, pip, the lock's setuptools and the rest) through a
  # .pth file, so the install needs no network and builds with what requirements.txt installed.
  # (--system-site-packages would show it the base interpreter's packages instead, when this one is itself a
  # venv, and the setuptools that `venv` puts in every Python 3.11 venv would shadow the lock's.)
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
  python, scripts = venv / "bin" / "python", venv / "bin"
  site_packages = [path for path in sys.path if os.path.basename(path) in ("site-packages", "dist-packages")]
  (venv_site_packages,) = venv.glob("lib/python*/site-packages")
  (venv_site_packages / "outer_environment.pth").write_text("\n".join(site_packages) + "\n")
  # From a copy: setuptools leaves build/ and *.egg-info in the tree it builds. (.venv: the README's install.)
  source = tmp_path / "source"
  shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", "bench"))
  installed = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--check-build-dependencies", str(source)],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert installed.returncode == 0, installed.stderr[-3000:]
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  probe = subprocess.run([str(python), "-c", "import terse_tf, os; from terse_tf.data import mnist; "
                          "print(os.path.dirname(terse_tf.__file__)); print(mnist.load_bundled()[0].shape)"],
                         cwd=elsewhere, capture_output=True, text=True, timeout=300, env=environment)
  assert probe.returncode == 0, probe.stderr[-3000:]
  location, shape = probe.stdout.split("\n")[:2]
  assert location.startswith(str(venv)) and shape == "(10000, 28, 28)"
  for script, expected in (("terse-train", "--flagfile"), ("terse-generate", "--synthesizer"),
                           ("terse-serve", "--server")):
    shown = subprocess.run([str(scripts / script), "--helpfull"], cwd=elsewhere, capture_output=True, text=True,
                           timeout=300, env=environment)
    # absl exits 1 after printing the help; a script that fails to import prints none of it.
    assert expected in shown.stdout, (script, shown.returncode, shown.stderr[-2000:])
