"""The API reference lists every public name, and every docstring states the contract."""

import inspect
import pathlib
import re

import pytest

import subsets_jax as sj

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
SECTIONS = ("Args:", "Returns:", "Raises:", "Example:")
# The functions that implement a published method cite it.
REFERENCED = {
  "dknn_loss",
  "gumbel_noise",
  "gumbel_topk",
  "gumbel_topk_relaxed",
  "soft_topk",
  "subset_log_prob",
  "unordered_subset_log_prob",
}
# No timings or machine facts in docstrings: those belong in the benchmarks' tables.
_TIMING = re.compile(
  r"\d\s*(s|sec|seconds?|ms|µs|us|ns)\b|\d[ -]cores?\b|\bAVX|\bEPYC|\bXeon|\bH[12]00\b", re.I
)


def _autosummary_names() -> set[str]:
  names, listing = set(), False
  for line in (DOCS / "api.rst").read_text().splitlines():
    if line.startswith(".. autosummary::"):
      listing = True
    elif listing and line.strip() and not line.startswith(" "):
      listing = False
    elif listing and line.startswith("   ") and not line.strip().startswith(":"):
      names.add(line.strip())
  return names


def test_every_public_name_is_in_the_api_reference():
  assert _autosummary_names() == set(sj.__all__)


@pytest.mark.parametrize("name", sorted(sj.__all__))
def test_docstring_states_the_contract(name):
  doc = inspect.getdoc(getattr(sj, name))
  assert doc, f"{name} has no docstring"
  sections = SECTIONS + (("References:",) if name in REFERENCED else ())
  missing = [section for section in sections if section not in doc]
  assert not missing, f"{name}'s docstring lacks {missing}"
  assert not _TIMING.search(doc), f"{name}'s docstring quotes a timing or machine"
