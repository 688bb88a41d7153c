"""Sphinx configuration of the subsets_jax documentation."""

import subsets_jax

project = "subsets_jax"
author = "the subsets_jax authors"
copyright = "2026, the subsets_jax authors"
release = subsets_jax.__version__

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "myst_nb",
]
autosummary_generate = True
autodoc_typehints = "description"
autodoc_type_aliases = {"ArrayLike": "jax.typing.ArrayLike"}
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
myst_enable_extensions = ["dollarmath", "amsmath"]

# The tutorial is executed at build time, so the rendered outputs are the current code's.
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True

exclude_patterns = ["_build", "**.ipynb_checkpoints", "results"]
html_theme = "furo"
html_title = f"subsets_jax {release}"
