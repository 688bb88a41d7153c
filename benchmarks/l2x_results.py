"""L2X on its four synthetic data sets with every estimator, over seeds: a resumable sweep.

Runs `examples/train_l2x.py`'s training (in this process, one run after another) for every
(data set, estimator, seed), seed 0 of every pair first, and writes after each run
`docs/results/l2x.json` (one entry per run, keyed "<dataset>/<estimator>/seed<S>": median
rank, post-hoc accuracy, training time, hardware, date, the equivalent command), then the
table `docs/results/l2x.md` (mean ± sd over seeds) and the figure `docs/results/l2x.png`.
A run already in the JSON is skipped, so an interrupted sweep continues where it stopped.

  python -m benchmarks.l2x_results --seeds 5
  python -m benchmarks.l2x_results --datasets xor --estimators simple imle --seeds 1
  python -m benchmarks.l2x_results --report          # table and figure from the JSON
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import statistics
import sys

from benchmarks import sweep

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))

from l2x import configs, data  # noqa: E402

import subsets_jax as sj  # noqa: E402

DEFAULT_TABLE = REPO / "docs" / "results" / "l2x"


def command(dataset: str, estimator: str, seed: int) -> str:
  return (
    f"python examples/train_l2x.py --dataset {dataset} --estimator {estimator} --seed {seed} "
    f"--no-progress --workdir runs/l2x/{dataset}/{estimator}/seed{seed}"
  )


def run_one(dataset: str, estimator: str, seed: int, root: pathlib.Path) -> dict:
  from l2x import train

  config = configs.TrainConfig(dataset=dataset, estimator=estimator, seed=seed, progress=False)
  workdir = root / dataset / estimator / f"seed{seed}"
  summary = train.train_and_evaluate(config, workdir, resume=True, log=lambda _: None)
  return {
    "median_rank": summary["median_rank"],
    "median_rank_sd_over_rows": summary["median_rank_sd"],
    "optimal_median_rank": summary["optimal_median_rank"],
    "posthoc_accuracy": summary["posthoc_accuracy"],
    "train_time_s": summary["train_time_s"],
    "epochs": summary["epochs_done"],
    "diverged_at_step": summary["diverged_at_step"],
    "hardware": sweep.HARDWARE,
    "date": datetime.date.today().isoformat(),
    "command": command(dataset, estimator, seed),
  }


def report(results: dict, table: pathlib.Path) -> str:
  """The Markdown table (mean ± sd over seeds) and the figure, from the JSON entries."""
  lines = [
    "| data set (k, optimum) | estimator | seeds | median rank | post-hoc accuracy | "
    "training time |",
    "|---|---|---|---|---|---|",
  ]
  for dataset in data.DATASETS:
    optimum = (data.K[dataset] + 1) / 2
    for estimator in sj.ESTIMATORS:
      runs = sweep.runs_by_seed(results, f"{dataset}/{estimator}")
      if not runs:
        continue
      ranks = [r["median_rank"] for r in runs]
      accuracy = [100 * r["posthoc_accuracy"] for r in runs]
      times = [r["train_time_s"] for r in runs]
      lines.append(
        f"| {dataset} ({data.K[dataset]}, {optimum:g}) | {estimator} | {len(runs)} | "
        f"{sweep.mean_sd(ranks, 3)} | {sweep.mean_sd(accuracy, 2)} % | "
        f"{statistics.mean(times):.0f} s |"
      )
  machines = sorted({r["hardware"] for r in results.values()})
  dates = sorted({r["date"] for r in results.values()})
  text = (
    "\n".join(lines)
    + f"\n\nHardware: {'; '.join(machines)}. Dates: {', '.join(dates)}. Command per run: "
    "`python examples/train_l2x.py --dataset D --estimator E --seed S --no-progress`; "
    "the sweep: `python -m benchmarks.l2x_results --seeds 5`.\n"
  )
  table.with_suffix(".md").write_text(text)
  _plot(results, table.with_suffix(".png"))
  return text


def _plot(results: dict, path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(data.DATASETS), figsize=(14, 3.2), sharey=False)
  for ax, dataset in zip(axes, data.DATASETS, strict=True):
    for i, estimator in enumerate(sj.ESTIMATORS):
      ranks = [r["median_rank"] for r in sweep.runs_by_seed(results, f"{dataset}/{estimator}")]
      ax.scatter([i] * len(ranks), ranks, s=12)
    ax.axhline((data.K[dataset] + 1) / 2, color="gray", ls=":", label="optimum")
    ax.set_xticks(range(len(sj.ESTIMATORS)), sj.ESTIMATORS, rotation=60, fontsize=7)
    ax.set_title(dataset)
  axes[0].set_ylabel("mean median rank (lower is better)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--datasets", nargs="+", default=list(data.DATASETS), choices=data.DATASETS)
  p.add_argument("--estimators", nargs="+", default=list(sj.ESTIMATORS), choices=sj.ESTIMATORS)
  p.add_argument("--seeds", type=int, default=5, help="seeds 0 .. SEEDS - 1")
  p.add_argument(
    "--reverse", action="store_true", help="the last seed first (a second sweep process)"
  )
  p.add_argument("--root", default=str(REPO / "runs" / "l2x"), help="the runs' work directories")
  p.add_argument("--table", default=str(DEFAULT_TABLE), help="path of the table, no suffix")
  p.add_argument("--report", action="store_true", help="only rewrite the table and figure")
  args = p.parse_args(argv)
  table = pathlib.Path(args.table)
  path = table.with_suffix(".json")
  seeds = list(reversed(range(args.seeds))) if args.reverse else list(range(args.seeds))
  keys = [
    f"{dataset}/{estimator}/seed{seed}"
    for seed in seeds
    for dataset in args.datasets
    for estimator in args.estimators
  ]

  def run_key(key: str) -> dict:
    dataset, estimator, seed = key.split("/")
    return run_one(dataset, estimator, int(seed.removeprefix("seed")), pathlib.Path(args.root))

  def describe(key: str, entry: dict) -> str:
    return (
      f"{key}: median rank {entry['median_rank']:.3f}, post-hoc accuracy "
      f"{entry['posthoc_accuracy']:.4f}, {entry['train_time_s']:.0f} s"
    )

  results = sweep.run_or_load(args.report, keys, run_key, path, pathlib.Path(args.root), describe)
  if results:
    print(report(results, table))
  return 0


if __name__ == "__main__":
  sys.exit(main())
