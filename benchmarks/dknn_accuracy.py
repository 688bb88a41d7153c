"""dKNN test accuracy over seeds: the estimators side by side under the reference protocol.

Runs named studies of `examples/train_mnist.py` (each a set of flags) for several seeds, each
run in its own work directory, and writes a table (Markdown and JSON) with, per study: mean
and standard deviation of the test accuracy of the best-validation checkpoint, the best
validation accuracy, epochs, training and wall time, hardware; and a plot of validation
accuracy against epochs (mean and range over seeds).

The sweep resumes where it stopped: a run whose result is in the JSON table is skipped; an
interrupted run continues from its checkpoint (`--resume`). `--studies` runs some studies
only, so a long sweep can be split into several calls; `--report` rewrites table and plot from
the JSON alone.

  python -m benchmarks.dknn_accuracy --studies relaxed --seeds 3
  python -m benchmarks.dknn_accuracy --studies tau_grid        # one seed per tau
  python -m benchmarks.dknn_accuracy --studies best_tau        # the grid's best, 3 seeds
  python -m benchmarks.dknn_accuracy --smoke --root /tmp/smoke --table /tmp/smoke/table
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shlex
import statistics
import subprocess
import sys
import time

from benchmarks import common

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = "examples/train_mnist.py"
EXIT_DIVERGED = 3  # the script's exit status when the training loss becomes non-finite
# Every run: the whole epoch count whatever the machine's speed, no progress bar.
COMMON_FLAGS = ("--time_budget_min", "0", "--no_progress")
SMOKE_FLAGS = ("--config", "digits", "--epochs", "1")
TAU_GRID = (0.1, 1.0, 4.0, 16.0)
EVAL_K_GRID = (1, 3, 5, 7, 9, 11, 13, 15)
DEFAULT_TABLE = "docs/results/dknn_accuracy"

# Study name -> (description, flags). `best_tau` resolves to a grid study once the grid ran.
STUDIES = {
  "relaxed": ("relaxed, tau = 1 (the reference)", ()),
  **{
    f"relaxed_tau{tau:g}": (f"relaxed, tau = {tau:g}", ("--tau", f"{tau:g}"))
    for tau in TAU_GRID
    if tau != 1.0
  },
  "straight_through": ("straight-through, tau = 1", ("--estimator", "straight_through")),
  "simple": ("SIMPLE, tau = 1", ("--estimator", "simple")),
  "long": ("relaxed, 40 epochs, lr 3e-3 cosine, 5 draws", ("--config", "long")),
  "long_shift2": (
    "relaxed, 40 epochs, lr 3e-3 cosine, 5 draws, shifts of up to 2 pixels, test vote k "
    f"chosen on validation from {{{', '.join(map(str, EVAL_K_GRID))}}}",
    ("--config", "long", "--augment_shift", "2", "--eval_k_grid", *map(str, EVAL_K_GRID)),
  ),
}
GRID = ["relaxed" if tau == 1.0 else f"relaxed_tau{tau:g}" for tau in TAU_GRID]
ESTIMATORS = ("relaxed", "straight_through", "simple")

# NeuralSort's protocol (Grover et al., ICLR 2019, Tables 3 and 5): no augmentation, the
# vote k of the loss, chosen with tau on validation from these grids, per data set.
NS_DATASETS = ("mnist", "fashion_mnist")
NS_K_GRID = (1, 3, 5, 9)
NS_TAU_GRID = (1.0, 16.0, 64.0)
# Estimators whose training differs from the relaxed one on the dKNN loss (straight-through
# gives the relaxed gradient bit for bit: the loss is linear in the k-hot vector).
NS_ESTIMATORS = {
  "simple": ("--estimator", "simple"),
  "imle": ("--estimator", "imle"),
  "score_function": ("--estimator", "score_function", "--num_samples", "2"),
}
# I-MLE's lambda beside the library's default 10: its gradient (z - z') / lambda makes lambda
# both the target's perturbation and the inverse of the step size.
DEFAULT_IMLE_LAM = 10.0  # the example's default, `sj.imle_topk`'s
NS_IMLE_LAMS = (100.0, 1000.0)


def ns_study(dataset: str, k: int, tau: float, estimator: str = "relaxed") -> str:
  suffix = "" if estimator == "relaxed" else f"_{estimator}"
  return f"ns_{dataset}_k{k}_tau{tau:g}{suffix}"


for _dataset in NS_DATASETS:
  for _k in NS_K_GRID:
    for _tau in NS_TAU_GRID:
      _flags = ("--dataset", _dataset, "--k", str(_k), "--tau", f"{_tau:g}")
      _name = f"{_dataset}, k = {_k}, tau = {_tau:g}, no augmentation"
      STUDIES[ns_study(_dataset, _k, _tau)] = (f"relaxed, {_name}", _flags)
      for _estimator, _extra in NS_ESTIMATORS.items():
        STUDIES[ns_study(_dataset, _k, _tau, _estimator)] = (
          f"{_estimator}, {_name}",
          (*_flags, *_extra),
        )
      for _lam in NS_IMLE_LAMS:
        STUDIES[ns_study(_dataset, _k, _tau, f"imle_lam{_lam:g}")] = (
          f"imle, lambda = {_lam:g}, {_name}",
          (*_flags, *NS_ESTIMATORS["imle"], "--lam", f"{_lam:g}"),
        )

# The larger embedding network (`--model vgg`) at the reference's k = 9, tau = 1, the
# Fashion-MNIST grid's best for the reference ConvNet; NeuralSort's 93.5 % on Fashion-MNIST
# used a ResNet-18. Its embeddings' scale runs away (docs/dknn.md): within the first epoch
# at the reference's learning rate 1e-3, later at 3e-4.
for _dataset in NS_DATASETS:
  STUDIES[f"ns_vgg_{_dataset}"] = (
    f"relaxed, VGG-style net, lr 3e-4, {_dataset}, k = 9, tau = 1, no augmentation",
    ("--dataset", _dataset, "--model", "vgg", "--k", "9", "--tau", "1", "--lr", "3e-4"),
  )
  # The same net with group and layer normalisation, whose embedding scale is one learned
  # scale's, at the reference's learning rate.
  STUDIES[f"ns_vgg_norm_{_dataset}"] = (
    f"relaxed, normalised VGG-style net, {_dataset}, k = 9, tau = 1, no augmentation",
    ("--dataset", _dataset, "--model", "vgg_norm", "--k", "9", "--tau", "1"),
  )


def ns_grid(dataset: str) -> list[str]:
  return [ns_study(dataset, k, tau) for k in NS_K_GRID for tau in NS_TAU_GRID]


def ns_best(results: dict, dataset: str, k: int | None = None) -> str | None:
  """The grid study (of vote `k`, or of any) with the highest seed-0 best validation
  accuracy; None until every one of them ran."""
  scores = {}
  for study in ns_grid(dataset):
    if k is not None and f"_k{k}_" not in study:
      continue
    run = results["runs"].get(f"{study}/seed0")
    if run is None:
      return None
    scores[study] = run["best_val_accuracy"] if run["best_val_accuracy"] is not None else -1.0
  return max(scores, key=scores.get)


def ns_table(results: dict) -> str:
  """NeuralSort's Table 5: per data set and vote k, the test accuracy of the tau chosen on
  validation (mean over the seeds run); '-' until that k's grid ran."""
  lines = [
    "| k | " + " | ".join(NS_DATASETS) + " |",
    "|---|" + "---|" * len(NS_DATASETS),
  ]
  for k in NS_K_GRID:
    cells = []
    for dataset in NS_DATASETS:
      best = ns_best(results, dataset, k)
      runs = [r for r in results["runs"].values() if best and r["study"] == best]
      accuracy = [100 * r["test_accuracy"] for r in runs if r["test_accuracy"] is not None]
      tau = best.rsplit("_tau", 1)[1] if best else None
      cells.append(
        f"{statistics.fmean(accuracy):.2f} % (tau {tau}, {len(accuracy)} "
        f"seed{'s' if len(accuracy) > 1 else ''})"
        if accuracy
        else "-"
      )
    lines.append(f"| {k} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def ns_estimator_table(results: dict) -> str:
  """The estimators whose training differs, at each data set's best grid configuration:
  test accuracy, mean ± sd over the seeds run, and the best validation accuracy (from the
  rows of `summarise`)."""
  bests = [ns_best(results, d) for d in NS_DATASETS]
  rows = {
    "relaxed": "relaxed",
    "simple": "SIMPLE",
    "imle": f"I-MLE, lambda = {DEFAULT_IMLE_LAM:g}",
    **{f"imle_lam{lam:g}": f"I-MLE, lambda = {lam:g}" for lam in NS_IMLE_LAMS},
    "score_function": "score function, 2 draws",
  }
  lines = [
    "| estimator | " + " | ".join(f"{d} (test; best validation)" for d in NS_DATASETS) + " |",
    "|---|" + "---|" * len(NS_DATASETS),
  ]
  studies = {row["study"]: row for row in summarise(results)}
  for estimator, label in rows.items():
    cells = []
    for best in bests:
      study = best if best is None or estimator == "relaxed" else f"{best}_{estimator}"
      row = studies.get(study)
      if row is None:
        cells.append("-")
        continue
      finite = len(row["seeds"]) - len(row["diverged"])
      if not finite:
        cells.append(f"{len(row['diverged'])} diverged")
        continue
      spread = f" ± {row['test_accuracy_sd']:.2f}" if finite > 1 else ""
      seeds = f"{finite} seed{'s' if finite > 1 else ''}"
      cells.append(
        f"{row['test_accuracy_mean']:.2f}{spread} % ({seeds}); "
        f"{row['best_val_accuracy_mean']:.2f} %"
      )
    if any(c != "-" for c in cells):
      lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    "--studies",
    nargs="+",
    default=["relaxed", "straight_through", "simple"],
    help=f"studies to run: {', '.join(s for s in STUDIES if not s.startswith('ns_'))}; "
    f"tau_grid (seed 0 of each tau in {TAU_GRID}); best_tau (the grid's best tau on "
    "validation); for NeuralSort's protocol on DATASET (mnist, fashion_mnist): "
    f"ns_grid_DATASET (seed 0 of k in {NS_K_GRID} x tau in {NS_TAU_GRID}, no augmentation), "
    "ns_best_DATASET (the grid's best on validation), ns_estimators_DATASET (SIMPLE, I-MLE "
    "and the score function at that configuration), ns_imle_lams_DATASET (seed 0 of I-MLE at "
    f"that configuration with lambda in {NS_IMLE_LAMS}), ns_vgg_DATASET (the larger embedding "
    "network, k = 9, tau = 1), ns_vgg_norm_DATASET (it with group and layer normalisation)",
  )
  p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per study (grid: seed 0)")
  p.add_argument("--root", default="runs/dknn_accuracy", help="work directories of the runs")
  p.add_argument(
    "--table",
    default=DEFAULT_TABLE,
    help="writes TABLE.json, TABLE.md and TABLE.png",
  )
  p.add_argument("--smoke", action="store_true", help="digits, one epoch: a check of the sweep")
  p.add_argument("--report", action="store_true", help="only rewrite the table from its JSON")
  p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
  return p.parse_args(argv)


def load(table: pathlib.Path) -> dict:
  path = table.with_suffix(".json")
  if path.exists():
    return json.loads(path.read_text())
  return {"runs": {}}


def save(table: pathlib.Path, results: dict) -> None:
  table.parent.mkdir(parents=True, exist_ok=True)
  tmp = table.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(results, indent=1) + "\n")
  tmp.replace(table.with_suffix(".json"))


def best_tau_study(results: dict) -> str | None:
  """The grid study with the highest seed-0 best validation accuracy (None before the grid)."""
  scores = {}
  for name in GRID:
    run = results["runs"].get(f"{name}/seed0")
    if run is None:
      return None
    # A run that diverged before its first validation ranks last.
    scores[name] = run["best_val_accuracy"] if run["best_val_accuracy"] is not None else -1.0
  return max(scores, key=scores.get)


def planned_runs(studies: list[str], seeds: int, results: dict) -> list[tuple[str, int]]:
  runs = []
  for study in studies:
    if study == "tau_grid":
      runs += [(name, 0) for name in GRID]
    elif study.startswith("ns_grid_"):
      runs += [(name, 0) for name in ns_grid(study.removeprefix("ns_grid_"))]
    elif study.startswith(("ns_best_", "ns_estimators_", "ns_imle_lams_")):
      kind, dataset = re.fullmatch(r"(ns_best|ns_estimators|ns_imle_lams)_(.+)", study).groups()
      best = ns_best(results, dataset)
      if best is None:
        raise SystemExit(f"{study} needs the grid's results first: run --studies ns_grid_{dataset}")
      k, tau = best.removeprefix(f"ns_{dataset}_").split("_")
      k, tau = int(k[1:]), float(tau[3:])
      if kind == "ns_best":
        runs += [(best, seed) for seed in range(seeds)]
      elif kind == "ns_estimators":
        runs += [(ns_study(dataset, k, tau, e), s) for e in NS_ESTIMATORS for s in range(seeds)]
      else:  # seed 0 of each lambda; seed 0 of the default lambda is the estimators' study
        runs += [(ns_study(dataset, k, tau, f"imle_lam{lam:g}"), 0) for lam in NS_IMLE_LAMS]
    elif study == "best_tau":
      best = best_tau_study(results)
      if best is None:
        raise SystemExit("best_tau needs the tau grid's results first: run --studies tau_grid")
      runs += [(best, seed) for seed in range(seeds)]
    elif study in STUDIES:
      runs += [(study, seed) for seed in range(seeds)]
    else:
      raise SystemExit(f"unknown study {study!r}; known: {', '.join(STUDIES)}, tau_grid, best_tau")
  return list(dict.fromkeys(runs))


def command(study: str, seed: int, workdir: pathlib.Path, smoke: bool) -> list[str]:
  base = SMOKE_FLAGS if smoke else ()
  flags = [*base, *STUDIES[study][1], *COMMON_FLAGS, "--seed", str(seed)]
  return [sys.executable, SCRIPT, *flags, "--workdir", str(workdir)]


def printable(cmd: list[str]) -> str:
  """The command as a user types it: `python` and paths relative to the repository."""
  return shlex.join(["python", *cmd[1:]])


def run_one(study: str, seed: int, cmd: list[str], workdir: pathlib.Path, results: dict) -> dict:
  """Runs (or resumes) one training and returns its table entry from its metrics file."""
  # Resume an interrupted run; with no checkpoint the script starts a new one.
  completed = subprocess.run([*cmd, "--resume"], cwd=REPO)
  # A diverged run is a result: the table says where its loss became non-finite.
  if completed.returncode not in (0, EXIT_DIVERGED):
    raise SystemExit(completed.returncode)
  records = [
    json.loads(line) for line in (REPO / workdir / "metrics.jsonl").read_text().splitlines()
  ]
  final = records[-1]
  machine = results.setdefault("machine", {})
  return {
    "study": study,
    "seed": seed,
    "command": printable(cmd),
    # A run that diverged before its first validation has no best state and no test.
    "test_accuracy": final.get("test_accuracy"),
    "best_val_accuracy": final["best_val_accuracy"],
    "best_epoch": final["best_epoch"],
    "epochs": final["epochs_done"],
    "train_time_s": final["train_time_s"],
    "wall_time_s": final["wall_time_s"],
    "diverged_at_step": final.get("diverged_at_step"),
    "test_eval_k": final.get("test_eval_k"),
    "val_curve": [[r["epoch"], r["val_accuracy"]] for r in records if not r.get("final")],
    "hardware": machine.get("hardware"),
    "date": time.strftime("%Y-%m-%d"),
  }


def _mean_sd(values):
  if not values:
    return None, None
  mean = statistics.fmean(values)
  return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: dict) -> list[dict]:
  """One row per study with results, in the order of STUDIES."""
  best = best_tau_study(results)
  rows = []
  for study, (description, _) in STUDIES.items():
    runs = sorted(
      (r for r in results["runs"].values() if r["study"] == study), key=lambda r: r["seed"]
    )
    if not runs:
      continue
    finite = [r for r in runs if r.get("diverged_at_step") is None]
    test_mean, test_sd = _mean_sd([100 * r["test_accuracy"] for r in finite])
    best_val = [100 * r["best_val_accuracy"] for r in finite]
    note = " (best tau of the grid on validation)" if study == best and study != "relaxed" else ""
    rows.append(
      {
        "study": study,
        "description": description + note,
        "command": re.sub(r"(--seed |/seed)\d+", r"\1S", runs[0]["command"]),
        "seeds": [r["seed"] for r in runs],
        "test_accuracy_mean": test_mean,
        "test_accuracy_sd": test_sd,
        "best_val_accuracy_mean": statistics.fmean(best_val) if best_val else None,
        "diverged": [[r["seed"], r["diverged_at_step"]] for r in runs if r not in finite],
        "test_eval_k": [r.get("test_eval_k") for r in runs],
        "epochs": statistics.fmean(r["epochs"] for r in runs),
        "train_time_min": [r["train_time_s"] / 60 for r in runs],
        "wall_time_min": [r["wall_time_s"] / 60 for r in runs],
        "hardware": [r["hardware"] for r in runs],
        "dates": sorted({r["date"] for r in runs}),
      }
    )
  return rows


def _accuracy(row: dict) -> str:
  diverged = row["diverged"]
  parts = []
  num_finite = len(row["seeds"]) - len(diverged)
  if num_finite == 1:
    parts.append(f"{row['test_accuracy_mean']:.2f} % (one seed)")
  elif num_finite > 1:
    parts.append(f"{row['test_accuracy_mean']:.2f} ± {row['test_accuracy_sd']:.2f} %")
  parts += [f"seed {seed} diverged at step {step}" for seed, step in diverged]
  if "--eval_k_grid" in row["command"]:  # the vote k that validation chose, per seed
    parts.append("vote k " + " / ".join(str(k) for k in row["test_eval_k"]))
  return "; ".join(parts)


def _percent(value: float | None) -> str:
  return "n/a" if value is None else f"{value:.2f} %"


def _minutes(row: dict, key: str) -> str:
  """The mean over seeds on one machine; per seed where the seeds ran on different machines."""
  times = row[key]
  if len(set(row["hardware"])) == 1:
    return f"{statistics.fmean(times):.1f} min"
  return " / ".join(f"{t:.1f}" for t in times) + " min"


def _hardware(row: dict) -> str:
  machines = dict.fromkeys(row["hardware"])
  if len(machines) == 1:
    return row["hardware"][0]
  parts = []
  for machine in machines:
    seeds = [str(s) for s, h in zip(row["seeds"], row["hardware"], strict=True) if h == machine]
    parts.append(f"seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}: {machine}")
  return "; ".join(parts)


def markdown(rows: list[dict], best: str | None) -> str:
  lines = [
    "| configuration | command | seeds | test accuracy, mean ± sd | best validation, mean | "
    "epochs | training time | wall time | hardware |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['description']} | `{r['command']}` | {len(r['seeds'])} | "
      f"{_accuracy(r)} | {_percent(r['best_val_accuracy_mean'])} | {r['epochs']:.3g} | "
      f"{_minutes(r, 'train_time_min')} | {_minutes(r, 'wall_time_min')} | "
      f"{_hardware(r)}; {', '.join(r['dates'])} |"
    )
  if any(r["diverged"] for r in rows):
    lines.append("")
    lines.append(
      "A diverged run's training loss became non-finite at the step shown, which stopped it; "
      "the mean and the best validation are over the other seeds."
    )
  if best is not None:
    lines.append("")
    lines.append(
      f"The tau grid {{{', '.join(f'{t:g}' for t in TAU_GRID)}}} ran seed 0 of each; the best "
      f"validation accuracy chose `{best}`."
    )
  return "\n".join(lines) + "\n"


def plot(results: dict, path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  fig, ax = plt.subplots(figsize=(6.4, 4))
  for study in dict.fromkeys([*ESTIMATORS, best_tau_study(results)]):  # tau = 1 may be the best
    runs = [r for r in results["runs"].values() if r["study"] == study]
    if study is None or not runs:
      continue
    epochs = [e for e, _ in runs[0]["val_curve"]]
    curves = np.array([[100 * v for _, v in r["val_curve"][: len(epochs)]] for r in runs])
    seeds = f"{len(runs)} seed{'s' if len(runs) > 1 else ''}"
    ax.plot(epochs, curves.mean(0), label=f"{STUDIES[study][0]} ({seeds})")
    ax.fill_between(epochs, curves.min(0), curves.max(0), alpha=0.2)
  ax.set_xlabel("epoch")
  ax.set_ylabel("validation accuracy (%)")
  ax.set_title("dKNN on MNIST: validation accuracy, mean and range over seeds")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def report(table: pathlib.Path, results: dict) -> None:
  rows = summarise(results)
  results["summary"] = rows
  save(table, results)
  text = markdown(rows, best_tau_study(results))
  if any(r["study"].startswith("ns_") for r in results["runs"].values()):
    text += (
      "\nNeuralSort's protocol, per vote k (its Table 5; no augmentation, tau chosen on "
      f"validation from {{{', '.join(f'{t:g}' for t in NS_TAU_GRID)}}}):\n\n" + ns_table(results)
    )
    text += (
      "\nEstimators whose training differs, at each data set's best configuration above "
      "(straight-through is left out: on this loss, linear in the k-hot vector, its gradient "
      "is the relaxed one bit for bit):\n\n" + ns_estimator_table(results)
    )
  table.with_suffix(".md").write_text(text)
  if rows:
    plot(results, table.with_suffix(".png"))
  print(table.with_suffix(".md").read_text())


def main(argv=None) -> int:
  args = parse_args(argv)
  table = REPO / args.table  # relative paths are relative to the repository
  results = load(table)
  if not args.report:
    hardware = common.machine()
    results["machine"] = {
      "hardware": f"{os.cpu_count()}-core {hardware['cpu']}, JAX {hardware['jax']}",
    }
    root = pathlib.Path(args.root)  # as given: the printed commands run from the repository
    for study, seed in planned_runs(args.studies, args.seeds, results):
      key = f"{study}/seed{seed}"
      if key in results["runs"]:
        print(f"{key}: done ({results['runs'][key]['test_accuracy']:.4f})", flush=True)
        continue
      workdir = root / study / f"seed{seed}"
      cmd = command(study, seed, workdir, args.smoke)
      print(f"{key}: {printable(cmd)}", flush=True)
      if args.dry_run:
        continue
      results["runs"][key] = run_one(study, seed, cmd, workdir, results)
      save(table, results)
  report(table, results)
  return 0


if __name__ == "__main__":
  sys.exit(main())
