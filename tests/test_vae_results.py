"""The VAE sweep's entries, table and anchor comparison, from synthetic metrics files."""

import json


def _write_run(path, curve, notebook_curve=None, pause_at=None, objective=None):
  path.mkdir(parents=True)
  records, time = [], 0.0
  for epoch, loss in enumerate(curve, start=1):
    time += 30.0 + (600.0 if epoch == pause_at else 0.0)
    record = {"epoch": epoch, "val_loss": loss, "val_kl": 20.0, "train_time_s": time}
    if notebook_curve:
      record["val_notebook_loss"] = notebook_curve[epoch - 1]
    records.append(record)
  best = min(notebook_curve or curve)
  final = {
    "final": True,
    "test_loss": min(curve) + 0.1,
    "test_loss_mc_se": 0.02,
    "test_kl": 20.0,
    "test_kl_mc_se": 0.0,
    "test_draws": 10,
    "best_epoch": float((notebook_curve or curve).index(best) + 1),
    ("best_val_notebook_loss" if notebook_curve else "best_val_loss"): best,
    "epochs_done": float(len(curve)),
    "train_time_s": time,
    "diverged_at_step": None,
  }
  if notebook_curve:
    final["test_notebook_loss"] = best + 0.2
  if objective is not None:
    final["test_objective_loss"] = objective
  (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*records, final]))


def test_entries_table_and_anchor_comparison(tmp_path):
  from benchmarks import vae_results

  _write_run(tmp_path / "simple/seed0", [150.0, 140.0, 130.0, 131.0], pause_at=3, objective=125.0)
  _write_run(tmp_path / "simple/seed1", [151.0, 141.0, 133.0, 132.0])
  notebook = [219.0, 205.0, 197.0, 196.0, 191.0]
  _write_run(tmp_path / "simple-notebook_kl/seed0", [160.0] * 5, notebook_curve=notebook)
  later = [220.0, 206.0, 198.0, 197.0, 193.0]
  _write_run(tmp_path / "simple-notebook_kl/seed1", [161.0] * 5, notebook_curve=later)
  # Keys in an order other than by seed, as a sweep on two cores can finish them: every
  # part of the report orders a variant's runs by seed.
  entries = {}
  for key in (
    "simple/seed1",
    "simple/seed0",
    "simple-notebook_kl/seed1",
    "simple-notebook_kl/seed0",
  ):
    variant, seed = key.split("/seed")
    entries[key] = vae_results.entry(variant, int(seed), tmp_path / key)
  first = entries["simple/seed0"]
  # The median epoch time ignores the 600 s pause in epoch 3.
  assert first["s_per_epoch"] == 30.0 and first["train_time_s"] == 720.0
  assert first["best_epoch"] == 3 and first["last_epoch_loss"] == 131.0
  assert first["curve"] == [150.0, 140.0, 130.0, 131.0] and first["notebook_curve"] is None
  assert "--estimator simple --seed 0" in first["command"]
  assert first["test_objective_loss"] == 125.0
  assert entries["simple/seed1"]["test_objective_loss"] is None
  assert entries["simple-notebook_kl/seed0"]["best_epoch_loss"] == 191.0
  text = vae_results.report(entries, tmp_path / "vae")
  rows = text.splitlines()
  simple = next(r for r in rows if r.startswith("| simple | exactly_k | exact | 2 |"))
  # Test losses 130.1 and 132.1, best epochs 3 and 4, last-epoch losses 131 and 132.
  # Only seed 0 reports the training objective on the test images.
  assert (
    "| 131.10 ± 1.41 | 3, 4 | 131.50 ± 0.71 | 20.00 ± 0.00 | 125.00 (1 of 2 runs) | 30 s |"
    in simple
  )
  notebook_row = next(r for r in rows if r.startswith("| simple | exactly_k | notebook |"))
  assert "| — |" in notebook_row
  assert "| notebook | 2 |" in text
  anchor = vae_results.anchor_curve()
  assert "SIMPLE 192.00 ± 1.41 over 2 seeds" in text
  # The by-epoch comparison names seed 0 and gives seed 0's curve.
  assert f"Seed 0 by epoch (anchor in brackets): epoch 1: 219.00 ({anchor[1]:.2f})" in text
  assert f"epoch 5: 191.00 ({anchor[5]:.2f})" in text
  assert (tmp_path / "vae.png").stat().st_size > 1000
