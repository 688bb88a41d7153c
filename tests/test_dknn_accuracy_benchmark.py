"""The accuracy sweep's smoke run: digits, one epoch, two seeds; then a resume."""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _sweep(tmp_path, *flags):
  return subprocess.run(
    [
      *(sys.executable, "-m", "benchmarks.dknn_accuracy", "--smoke", "--seeds", "2"),
      *("--studies", "simple", "--root", str(tmp_path / "runs")),
      *("--table", str(tmp_path / "table"), *flags),
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=900,
  )


@pytest.mark.slow
def test_smoke_sweep_writes_the_table_and_resumes(tmp_path):
  run = _sweep(tmp_path)
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads((tmp_path / "table.json").read_text())
  assert sorted(results["runs"]) == ["simple/seed0", "simple/seed1"]
  for key, entry in results["runs"].items():
    # Each entry is the run's own final record, read back from its work directory.
    metrics = tmp_path / "runs" / key / "metrics.jsonl"
    final = json.loads(metrics.read_text().splitlines()[-1])
    assert entry["test_accuracy"] == final["test_accuracy"] and final["epochs_done"] == 1
    assert entry["command"].startswith("python examples/train_mnist.py --config digits")
  rows = {row["study"]: row for row in results["summary"]}
  accuracies = [results["runs"][f"simple/seed{s}"]["test_accuracy"] * 100 for s in (0, 1)]
  assert abs(rows["simple"]["test_accuracy_mean"] - sum(accuracies) / 2) < 1e-9
  sd = abs(accuracies[0] - accuracies[1]) / 2**0.5
  assert abs(rows["simple"]["test_accuracy_sd"] - sd) < 1e-9
  lines = (tmp_path / "table.md").read_text().splitlines()
  (row,) = lines[2:]
  assert row.startswith("| SIMPLE, tau = 1 | `python examples/train_mnist.py --config digits")
  assert f"| 2 | {sum(accuracies) / 2:.2f} ± {sd:.2f} % |" in row
  assert (tmp_path / "table.png").stat().st_size > 1000
  # A second call finds every run done and trains nothing.
  again = _sweep(tmp_path)
  assert again.returncode == 0 and again.stdout.count(": done (") == 2


def _entry(study, seed, accuracy, train_s, hardware):
  return {
    "study": study,
    "seed": seed,
    "command": f"python examples/train_mnist.py --seed {seed} --workdir runs/x/seed{seed}",
    "test_accuracy": accuracy,
    "best_val_accuracy": accuracy,
    "best_epoch": 20.0,
    "epochs": 20.0,
    "train_time_s": train_s,
    "wall_time_s": train_s + 60,
    "val_curve": [[1.0, accuracy]],
    "hardware": hardware,
    "date": "2026-12-02",
  }


def test_table_names_each_machine_and_its_seeds():
  from benchmarks import dknn_accuracy

  runs = [
    _entry("simple", 0, 0.99, 600.0, "2-core A"),
    _entry("simple", 1, 0.98, 1200.0, "2-core B"),
    _entry("simple", 2, 0.97, 1500.0, "2-core B"),
    _entry("straight_through", 0, 0.99, 600.0, "2-core A"),
    _entry("straight_through", 1, 0.99, 1200.0, "2-core A"),
  ]
  results = {"runs": {f"{r['study']}/seed{r['seed']}": r for r in runs}}
  rows = dknn_accuracy.summarise(results)
  straight, simple = dknn_accuracy.markdown(rows, None).splitlines()[2:]
  # Times on different machines are not averaged: each seed's time, and which machine ran it.
  assert "| 10.0 / 20.0 / 25.0 min | 11.0 / 21.0 / 26.0 min |" in simple
  assert simple.endswith("| seed 0: 2-core A; seeds 1, 2: 2-core B; 2026-12-02 |")
  assert "| 98.00 ± 1.00 % |" in simple
  assert "| 15.0 min | 16.0 min | 2-core A; 2026-12-02 |" in straight


def test_a_diverged_run_is_tabled_as_such_and_left_out_of_the_mean():
  from benchmarks import dknn_accuracy

  diverged = dict(
    _entry("relaxed_tau0.1", 0, None, 30.0, "2-core A"),
    best_val_accuracy=None,
    best_epoch=None,
    epochs=0.2,
    val_curve=[],
    diverged_at_step=60,
  )
  runs = [
    diverged,
    _entry("relaxed", 0, 0.990, 600.0, "2-core A"),
    _entry("relaxed_tau4", 0, 0.993, 600.0, "2-core A"),
    _entry("relaxed_tau16", 0, 0.991, 600.0, "2-core A"),
    _entry("simple", 0, 0.99, 600.0, "2-core A"),
    dict(_entry("simple", 1, 0.5, 600.0, "2-core A"), diverged_at_step=700),
    _entry("simple", 2, 0.97, 600.0, "2-core A"),
  ]
  results = {"runs": {f"{r['study']}/seed{r['seed']}": r for r in runs}}
  assert dknn_accuracy.best_tau_study(results) == "relaxed_tau4"
  rows = dknn_accuracy.summarise(results)
  lines = dknn_accuracy.markdown(rows, "relaxed_tau4").splitlines()
  tau01 = next(line for line in lines if line.startswith("| relaxed, tau = 0.1 |"))
  assert "| 1 | seed 0 diverged at step 60 | n/a | 0.2 |" in tau01
  simple = next(line for line in lines if line.startswith("| SIMPLE"))
  # Seeds 0 and 2: mean 98 %, sd 1.41 %; the diverged seed 1 is named, not averaged.
  assert "| 3 | 98.00 ± 1.41 %; seed 1 diverged at step 700 | 98.00 % |" in simple
  assert any(line.startswith("A diverged run's training loss became non-finite") for line in lines)


def test_a_run_that_diverged_before_validation_is_a_result(tmp_path, monkeypatch):
  from benchmarks import dknn_accuracy

  # The example's final record of such a run: no best state, so no test metrics.
  final = {"final": True, "best_val_accuracy": None, "best_epoch": None, "best_step": None}
  final.update(epochs_done=0.07, steps=37, train_time_s=11.3, wall_time_s=18.4)
  final.update(diverged_at_step=37)
  (tmp_path / "metrics.jsonl").write_text(json.dumps(final) + "\n")
  monkeypatch.setattr(
    dknn_accuracy.subprocess,
    "run",
    lambda cmd, cwd: subprocess.CompletedProcess(cmd, dknn_accuracy.EXIT_DIVERGED),
  )
  cmd = dknn_accuracy.command("simple", 0, tmp_path, smoke=True)
  entry = dknn_accuracy.run_one("simple", 0, cmd, tmp_path, {"runs": {}})
  assert entry["test_accuracy"] is None and entry["best_val_accuracy"] is None
  assert (entry["diverged_at_step"], entry["val_curve"]) == (37, [])


def test_the_vote_k_chosen_on_validation_is_named_per_seed():
  from benchmarks import dknn_accuracy

  runs = []
  for seed, vote_k in [(0, 3), (1, 5)]:
    entry = _entry("long_shift2", seed, 0.995, 600.0, "2-core A")
    entry["command"] = entry["command"].replace("--seed", "--eval_k_grid 1 3 5 --seed")
    runs.append(dict(entry, test_eval_k=vote_k))
  runs.append(dict(_entry("simple", 0, 0.99, 600.0, "2-core A"), test_eval_k=9))
  results = {"runs": {f"{r['study']}/seed{r['seed']}": r for r in runs}}
  table = dknn_accuracy.markdown(dknn_accuracy.summarise(results), None)
  simple, long_shift2 = table.splitlines()[2:]
  assert "| 2 | 99.50 ± 0.00 %; vote k 3 / 5 | 99.50 % |" in long_shift2
  assert "vote k" not in simple


def test_neuralsort_grid_chooses_on_validation_and_tables_each_k():
  from benchmarks import dknn_accuracy as sweep

  runs = []
  for k in sweep.NS_K_GRID:
    for tau in sweep.NS_TAU_GRID:
      # Validation prefers tau 16 at every k; the test accuracy encodes k and tau.
      val = 0.99 if tau == 16.0 else 0.98
      entry = _entry(sweep.ns_study("mnist", k, tau), 0, 0.9 + k / 100 + tau / 1e4, 60.0, "A")
      runs.append(dict(entry, best_val_accuracy=val - k / 1000))
  results = {"runs": {f"{r['study']}/seed{r['seed']}": r for r in runs}}
  assert sweep.ns_best(results, "fashion_mnist") is None  # its grid has not run
  best = sweep.ns_best(results, "mnist")
  assert best == "ns_mnist_k1_tau16"  # the highest validation accuracy over k and tau
  assert sweep.ns_best(results, "mnist", 9) == "ns_mnist_k9_tau16"
  planned = sweep.planned_runs(["ns_estimators_mnist"], 2, results)
  assert planned == [
    (f"ns_mnist_k1_tau16_{e}", s) for e in ("simple", "imle", "score_function") for s in (0, 1)
  ]
  assert "--num_samples" in sweep.STUDIES["ns_mnist_k1_tau16_score_function"][1]
  assert sweep.planned_runs(["ns_imle_lams_mnist", "ns_best_mnist"], 2, results) == [
    ("ns_mnist_k1_tau16_imle_lam100", 0),
    ("ns_mnist_k1_tau16_imle_lam1000", 0),
    ("ns_mnist_k1_tau16", 0),
    ("ns_mnist_k1_tau16", 1),
  ]
  flags = sweep.STUDIES["ns_mnist_k1_tau16_imle_lam1000"][1]
  assert flags[flags.index("--estimator") + 1] == "imle"
  assert flags[flags.index("--lam") + 1] == "1000"
  lines = sweep.ns_table(results).splitlines()
  assert lines[2] == "| 1 | 91.16 % (tau 16, 1 seed) | - |"
  assert lines[5] == "| 9 | 99.16 % (tau 16, 1 seed) | - |"


def test_neuralsort_estimator_table_rows_at_the_best_configuration():
  from benchmarks import dknn_accuracy as sweep

  runs = []
  for k in sweep.NS_K_GRID:
    for tau in sweep.NS_TAU_GRID:
      val = 0.99 if (k, tau) == (5, 1.0) else 0.98
      runs.append(
        dict(_entry(sweep.ns_study("mnist", k, tau), 0, 0.99, 60.0, "A"), best_val_accuracy=val)
      )
  best = "ns_mnist_k5_tau1"
  runs.append(dict(_entry(best, 1, 0.98, 60.0, "A"), best_val_accuracy=0.97))
  runs += [_entry(f"{best}_simple", s, acc, 60.0, "A") for s, acc in [(0, 0.991), (1, 0.993)]]
  runs.append(dict(_entry(f"{best}_imle_lam100", 0, 0.5, 60.0, "A"), diverged_at_step=7))
  runs.append(_entry("ns_mnist_k9_tau1_score_function", 0, 0.9, 60.0, "A"))  # not the best
  results = {"runs": {f"{r['study']}/seed{r['seed']}": r for r in runs}}
  lines = sweep.ns_estimator_table(results).splitlines()
  assert lines[2] == "| relaxed | 98.50 ± 0.71 % (2 seeds); 98.00 % | - |"
  assert lines[3].startswith("| SIMPLE | 99.20 ± 0.14 % (2 seeds); ")
  assert lines[4] == "| I-MLE, lambda = 100 | 1 diverged | - |"
  assert len(lines) == 5  # no row for estimators without runs at the best configuration
