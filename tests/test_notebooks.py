"""The colab/ notebooks run top to bottom, headless, at smoke size (their first cell installs the pinned
requirements, as the README does)."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO_ROOT

NOTEBOOKS = ("quickstart.ipynb", "detection.ipynb")


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_notebook_executes(name, tmp_path, monkeypatch):
  monkeypatch.setenv("TERSE_TF_WORKDIR", str(tmp_path))  # The kernel inherits it: outputs stay out of the tree.
  colab = os.path.join(REPO_ROOT, "colab")
  notebook = nbformat.read(os.path.join(colab, name), as_version=4)
  assert notebook.cells[0].source.lstrip().startswith("# Install terse_tf the way the README does")
  NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": colab}}).execute()
  errors = [output for cell in notebook.cells for output in cell.get("outputs", [])
            if output.get("output_type") == "error"]
  assert not errors
