"""The tutorial notebook: paired with its plain-text version and executes without error."""

import pathlib

import jupytext
import nbclient
import nbformat
import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"


def test_ipynb_matches_its_paired_script():
  ipynb = jupytext.read(NOTEBOOKS / "subset_sampling.ipynb")
  script = jupytext.read(NOTEBOOKS / "subset_sampling.py")
  sources = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]
  assert sources(ipynb) == sources(script), "run `jupytext --sync notebooks/subset_sampling.py`"


@pytest.mark.slow
def test_notebook_executes(tmp_path):
  nb = nbformat.read(NOTEBOOKS / "subset_sampling.ipynb", as_version=4)
  nbclient.NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  ).execute()
  errors = [
    o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
  ]
  assert not errors
  images = [
    o
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.outputs
    if "image/png" in o.get("data", {})
  ]
  assert len(images) >= 6
