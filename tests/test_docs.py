"""The API reference lists every public name, and every docstring states the contract."""

import inspect
import json
import pathlib
import re
import statistics

import pytest

import subsets_jax as sj

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
SECTIONS = ("Args:", "Returns:", "Raises:", "Example:")
# The functions that implement a published method cite it.
REFERENCED = {
  "dknn_loss",
  "exactly_k_entropy",
  "expectation",
  "imle_topk",
  "l2x_relaxed",
  "sum_of_gamma_noise",
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


FUNCTIONS = sorted(name for name in sj.__all__ if callable(getattr(sj, name)))
CONSTANTS = sorted(set(sj.__all__) - set(FUNCTIONS))


def test_every_public_name_is_in_the_api_reference():
  assert _autosummary_names() == set(FUNCTIONS)
  api = (DOCS / "api.rst").read_text()
  for name in CONSTANTS:
    assert f".. py:data:: {name}" in api, name


@pytest.mark.parametrize("name", FUNCTIONS)
def test_docstring_states_the_contract(name):
  doc = inspect.getdoc(getattr(sj, name))
  assert doc, f"{name} has no docstring"
  sections = SECTIONS + (("References:",) if name in REFERENCED else ())
  missing = [section for section in sections if section not in doc]
  assert not missing, f"{name}'s docstring lacks {missing}"
  assert not _TIMING.search(doc), f"{name}'s docstring quotes a timing or machine"


def test_the_accuracy_table_agrees_with_its_runs():
  table = DOCS / "results" / "dknn_accuracy"
  results = json.loads(table.with_suffix(".json").read_text())
  text = table.with_suffix(".md").read_text()
  rows = text.splitlines()[2:]
  for summary in results["summary"]:
    runs = [r for r in results["runs"].values() if r["study"] == summary["study"]]
    finite = [r for r in runs if r.get("diverged_at_step") is None]
    # The mean is over the runs that stayed finite; a diverged run is named by seed and step.
    diverged = [
      f"seed {r['seed']} diverged at step {r['diverged_at_step']}" for r in runs if r not in finite
    ]
    mean = statistics.fmean(100 * r["test_accuracy"] for r in finite) if finite else None
    cell = f"| {len(runs)} | " + (f"{mean:.2f} " if finite else diverged[0])
    matching = [
      r for r in rows if cell in r and summary["command"] in r and all(d in r for d in diverged)
    ]
    assert len(matching) == 1, (summary["study"], cell, rows)
    for run in runs:  # every run's command is its row's with its seed
      seed = str(run["seed"])
      expected = summary["command"].replace("--seed S", "--seed " + seed)
      assert run["command"] == expected.replace("/seedS", "/seed" + seed)
