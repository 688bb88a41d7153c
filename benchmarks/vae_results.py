"""The discrete k-subset VAE with every estimator, over seeds: a resumable sweep.

Runs `examples/train_vae.py`'s training (in this process, one run after another) for every
(estimator, seed) in the order given, and writes after each run `docs/results/vae.json`
(one entry per run, keyed "<variant>/seed<S>": test loss of the best state and its
Monte-Carlo error, best epoch, the per-epoch test-loss curve, training time, hardware, date,
the equivalent command), then the table `docs/results/vae.md` (mean ± sd over seeds) and the
figure `docs/results/vae.png`. A run already in the JSON is skipped and an interrupted run
resumes from its checkpoint, so the sweep continues where it stopped.

A variant is an estimator of `sj.expectation`, or "score_function-<family>" for the score
function on the exactly-k or the Gumbel-top-k family.

  python -m benchmarks.vae_results                        # every variant, seeds 0, 1, 2
  python -m benchmarks.vae_results --variants simple --seeds 3
  python -m benchmarks.vae_results --report               # table and figure from the JSON
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import pathlib
import statistics
import sys

from benchmarks import sweep

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))

from vae import configs  # noqa: E402

DEFAULT_TABLE = REPO / "docs" / "results" / "vae"
# The anchor's per-epoch test loss, from the notebook's printed output.
ANCHOR_CURVE = REPO / "docs" / "results" / "vae_anchor.json"
# Variant name -> the configuration fields it sets. The exactly-k family first: SIMPLE is
# the anchor's estimator, and "simple-notebook_kl" trains and selects on the anchor's KL.
VARIANTS = {
  "simple": {"estimator": "simple"},
  "simple-notebook_kl": {"estimator": "simple", "kl": "notebook"},
  "imle": {"estimator": "imle"},
  "score_function-exactly_k": {"estimator": "score_function", "family": "exactly_k"},
  "relaxed": {"estimator": "relaxed"},
  "straight_through": {"estimator": "straight_through"},
  "l2x": {"estimator": "l2x"},
  "score_function-gumbel_topk": {"estimator": "score_function", "family": "gumbel_topk"},
}
ANCHOR = "SIMPLE authors' DVAE notebook: best test loss 170.52 at epoch 130 (one run), under its KL"


def config_of(variant: str, seed: int) -> configs.TrainConfig:
  return configs.TrainConfig(**VARIANTS[variant], seed=seed, progress=False)


def command(variant: str, seed: int) -> str:
  fields = " ".join(f"--{name} {value}" for name, value in VARIANTS[variant].items())
  return (
    f"python examples/train_vae.py {fields} --seed {seed} --no-progress "
    f"--workdir runs/vae/{variant}/seed{seed}"
  )


def run_one(variant: str, seed: int, root: pathlib.Path) -> dict:
  from vae import train

  workdir = root / variant / f"seed{seed}"
  train.train_and_evaluate(
    config_of(variant, seed), workdir, resume=True, log=lambda line: print(line, flush=True)
  )
  return entry(variant, seed, workdir)


def entry(variant: str, seed: int, workdir: pathlib.Path) -> dict:
  """The table entry of a finished run, from its metrics file alone."""
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  summary = records[-1]
  epochs = [r for r in records if not r.get("final")]
  notebook = VARIANTS[variant].get("kl") == "notebook"
  # Per-epoch training times: their median is robust to a pause or a busy neighbour.
  times = [b["train_time_s"] - a["train_time_s"] for a, b in itertools.pairwise(epochs)]
  return {
    "test_loss": summary["test_loss"],
    "test_notebook_loss": summary["test_notebook_loss"] if notebook else None,
    "test_loss_mc_se": summary["test_loss_mc_se"],
    "test_kl": summary["test_kl"],
    "test_kl_mc_se": summary["test_kl_mc_se"],
    "test_draws": summary["test_draws"],
    # The training objective on the test images (absent from runs made before it existed).
    "test_objective_loss": summary.get("test_objective_loss"),
    "best_epoch": summary["best_epoch"],
    "best_epoch_loss": summary[f"best_{'val_notebook_loss' if notebook else 'val_loss'}"],
    "last_epoch_loss": epochs[-1]["val_loss"],
    "curve": [round(e["val_loss"], 3) for e in epochs],
    "notebook_curve": [round(e["val_notebook_loss"], 3) for e in epochs] if notebook else None,
    "epochs": summary["epochs_done"],
    "train_time_s": summary["train_time_s"],
    "s_per_epoch": round(statistics.median(times), 1) if times else summary["train_time_s"],
    "diverged_at_step": summary["diverged_at_step"],
    "hardware": sweep.HARDWARE,
    "date": datetime.date.today().isoformat(),
    "command": command(variant, seed),
  }


def _objective(runs: list[dict]) -> str:
  """Mean ± sd of the training objective on the test images over the runs that report it."""
  values = [r["test_objective_loss"] for r in runs if r.get("test_objective_loss") is not None]
  if not values:
    return "—"
  suffix = "" if len(values) == len(runs) else f" ({len(values)} of {len(runs)} runs)"
  return sweep.mean_sd(values, 2) + suffix


def report(results: dict, table: pathlib.Path) -> str:
  """The Markdown table (mean ± sd over seeds) and the figure, from the JSON entries."""
  lines = [
    "| estimator | family | KL trained | seeds | test loss (best state, 10 draws) | "
    "best epoch per seed | per-epoch test loss at the last epoch | KL | training objective on "
    "the test images | time per epoch (median) |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for variant in VARIANTS:
    runs = sweep.runs_by_seed(results, variant)
    if not runs:
      continue
    config = config_of(variant, 0)
    best_epochs = ", ".join(f"{r['best_epoch']:.0f}" for r in runs)
    lines.append(
      f"| {config.estimator} | {config.latent_family} | {config.kl} | {len(runs)} | "
      f"{sweep.mean_sd([r['test_loss'] for r in runs], 2)} | "
      f"{best_epochs} | "
      f"{sweep.mean_sd([r['last_epoch_loss'] for r in runs], 2)} | "
      f"{sweep.mean_sd([r['test_kl'] for r in runs], 2)} | {_objective(runs)} | "
      f"{statistics.mean(r['s_per_epoch'] for r in runs):.0f} s |"
    )
  machines = sorted({r["hardware"] for r in results.values()})
  dates = sorted({r["date"] for r in results.values()})
  se = max(r["test_loss_mc_se"] for r in results.values())
  text = (
    "\n".join(lines)
    + _anchor_rows(results)
    + "\n\nThe training objective on the test images: the estimator's own one-draw estimate "
    "of the negative ELBO (relaxed codes for relaxed and l2x, perturb-and-MAP samples for "
    "imle, exact samples otherwise) for the best state; where it is far below the test loss, "
    "the model relies on codes that its own discrete samples never give (— : a run made "
    "before this was recorded)."
    + f"\n\nAnchor: {ANCHOR}. Monte-Carlo standard error of every test loss at most "
    f"{se:.3f} nats. Hardware: {'; '.join(machines)}. Dates: {', '.join(dates)}. Command "
    "per run: `python examples/train_vae.py --estimator E [--family F] --seed S "
    "--no-progress`; the sweep: `python -m benchmarks.vae_results`.\n"
  )
  table.with_suffix(".md").write_text(text)
  _plot(results, table.with_suffix(".png"))
  return text


def anchor_curve() -> dict[int, float]:
  data = json.loads(ANCHOR_CURVE.read_text())["test_loss_by_epoch"]
  return {int(epoch): loss for epoch, loss in data.items()}


def compare_with_anchor(curve: list[float]) -> str:
  """Our notebook-objective test loss against the anchor's at the same epochs."""
  anchor = anchor_curve()
  epochs = [e for e in (1, 5, 10, 20, 40, 60, 80, 100, 120, 130) if e <= len(curve) and e in anchor]
  return ", ".join(f"epoch {e}: {curve[e - 1]:.2f} ({anchor[e]:.2f})" for e in epochs)


def _anchor_rows(results: dict) -> str:
  """The like-for-like comparison: the notebook's objective, best epoch on the test set."""
  runs = sweep.runs_by_seed(results, "simple-notebook_kl")
  if not runs:
    return ""
  best = [r["best_epoch_loss"] for r in runs]
  return (
    "\n\nUnder the notebook's protocol (its KL, the best epoch's one-draw test loss): "
    f"SIMPLE {sweep.mean_sd(best, 2)} over {len(runs)} seeds, anchor 170.52. Seed 0 by "
    f"epoch (anchor in brackets): {compare_with_anchor(runs[0]['notebook_curve'])}."
  )


def _plot(results: dict, path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4))
  for i, variant in enumerate(VARIANTS):
    for j, run in enumerate(sweep.runs_by_seed(results, variant)):
      curve = run["notebook_curve"] or run["curve"]  # a notebook-KL run: its objective
      epochs = range(1, len(curve) + 1)
      ax.plot(epochs, curve, color=f"C{i}", lw=0.8, label=variant if j == 0 else None)
  anchor = anchor_curve()
  ax.plot(list(anchor), list(anchor.values()), color="gray", ls=":", label="anchor (its KL)")
  ax.set_xlabel("epoch")
  ax.set_ylabel("test negative ELBO (nats per image)")
  ax.set_ylim(top=200)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
  p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. SEEDS - 1")
  p.add_argument(
    "--seed_major",
    action="store_true",
    help="seed 0 of every variant first (default: every seed of a variant first)",
  )
  p.add_argument("--root", default=str(REPO / "runs" / "vae"), help="the runs' work directories")
  p.add_argument("--table", default=str(DEFAULT_TABLE), help="path of the table, no suffix")
  p.add_argument("--report", action="store_true", help="only rewrite the table and figure")
  p.add_argument(
    "--refresh",
    action="store_true",
    help="rebuild the JSON entries of the finished runs under --root from their metrics",
  )
  args = p.parse_args(argv)
  table = pathlib.Path(args.table)
  path = table.with_suffix(".json")
  pairs = [(v, s) for v in args.variants for s in range(args.seeds)]
  if args.seed_major:
    pairs.sort(key=lambda pair: pair[1])
  keys = [f"{variant}/seed{seed}" for variant, seed in pairs]

  def run_key(key: str) -> dict:
    variant, seed = key.split("/")
    return run_one(variant, int(seed.removeprefix("seed")), pathlib.Path(args.root))

  def describe(key: str, entry: dict) -> str:
    return (
      f"{key}: test loss {entry['test_loss']:.2f} ± {entry['test_loss_mc_se']:.3f} (best "
      f"epoch {entry['best_epoch']:.0f}), {entry['s_per_epoch']:.0f} s/epoch"
    )

  if args.refresh:
    for key in keys:
      variant, seed = key.split("/")
      if key in sweep.load(path):
        workdir = pathlib.Path(args.root) / variant / seed
        sweep.record(path, key, entry(variant, int(seed.removeprefix("seed")), workdir))
  results = sweep.run_or_load(args.report, keys, run_key, path, pathlib.Path(args.root), describe)
  if results:
    print(report(results, table))
  return 0


if __name__ == "__main__":
  sys.exit(main())
