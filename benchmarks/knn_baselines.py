"""NeuralSort's kNN baselines on the dKNN example's splits: pixels and the top-50 PCA components.

Grover et al. (ICLR 2019, Table 3) compare the differentiable kNN with a plain kNN classifier
on raw pixels and on the first 50 principal components, over k in {1, 3, 5, 9}: 97.2 % /
85.8 % (pixels) and 97.6 % / 85.9 % (PCA) on MNIST / Fashion-MNIST at their best k. This
script measures both with scikit-learn on the splits of `examples/train_mnist.py` (the
training split, 55,000 images, is the neighbour bank; the 10,000 test images are classified
by `sj.knn_predict`, the example's evaluation; scikit-learn fits the PCA on the training
split), which checks the evaluation pipeline that the dKNN table uses. Results:
`docs/results/knn_baselines.{json,md}`.

  python -m benchmarks.knn_baselines                      # MNIST and Fashion-MNIST
  python -m benchmarks.knn_baselines --datasets mnist
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys
import time

import numpy as np

import subsets_jax as sj
from benchmarks import common

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))

from dknn import configs  # noqa: E402
from dknn import train as dknn_train  # noqa: E402
from harness import image_data  # noqa: E402

KS = (1, 3, 5, 9)
PUBLISHED = {  # NeuralSort, Table 3: (pixels, PCA-50)
  "mnist": (97.2, 97.6),
  "fashion_mnist": (85.8, 85.9),
}
DEFAULT_TABLE = REPO / "docs" / "results" / "knn_baselines"


def accuracies(train_x, train_y, test_x, test_y) -> dict[int, float]:
  """Test accuracy (%) of `sj.knn_predict`, the dKNN example's evaluation, per k."""
  out = {}
  for k in KS:
    predicted = sj.knn_predict(test_x, train_x, train_y, k=k, num_classes=10)
    out[k] = float(100 * np.mean(np.asarray(predicted) == test_y))
  return out


def run(dataset: str) -> dict:
  from sklearn.decomposition import PCA

  config = configs.TrainConfig(dataset=dataset)
  splits = dknn_train.make_splits(image_data.load(dataset), config)
  flat = lambda images: images.reshape(len(images), -1).astype(np.float32)
  train_x, test_x = flat(splits.train_images), flat(splits.test_images)
  t0 = time.perf_counter()
  pixels = accuracies(train_x, splits.train_labels, test_x, splits.test_labels)
  pca = PCA(n_components=50, random_state=0).fit(train_x)
  components = accuracies(
    pca.transform(train_x), splits.train_labels, pca.transform(test_x), splits.test_labels
  )
  machine = common.machine()
  return {
    "pixels": {str(k): v for k, v in pixels.items()},
    "pca50": {str(k): v for k, v in components.items()},
    "published_best": {"pixels": PUBLISHED[dataset][0], "pca50": PUBLISHED[dataset][1]},
    "train": len(splits.train_labels),
    "test": len(splits.test_labels),
    "time_s": round(time.perf_counter() - t0, 1),
    "hardware": f"{os.cpu_count()}-core {machine['cpu']}",
    "date": datetime.date.today().isoformat(),
    "command": f"python -m benchmarks.knn_baselines --datasets {dataset}",
  }


def report(results: dict, table: pathlib.Path) -> str:
  lines = [
    "| data set | features | " + " | ".join(f"k = {k}" for k in KS) + " | best | NeuralSort |",
    "|---|---|" + "---|" * len(KS) + "---|---|",
  ]
  for dataset, entry in results.items():
    for name, label in (("pixels", "pixels"), ("pca50", "PCA, 50 components")):
      accs = entry[name]
      cells = " | ".join(f"{accs[str(k)]:.2f} %" for k in KS)
      best = max(accs.values())
      lines.append(
        f"| {dataset} | {label} | {cells} | {best:.2f} % | {entry['published_best'][name]} % |"
      )
  entry = next(iter(results.values()))
  text = "\n".join(lines) + (
    f"\n\nNeighbour bank: the dKNN example's training split ({entry['train']} images); "
    f"{entry['test']} test images classified by `sj.knn_predict` (exact neighbours, majority "
    f"vote); PCA by scikit-learn. {entry['hardware']}, {entry['date']}; "
    "`python -m benchmarks.knn_baselines`.\n"
  )
  table.with_suffix(".md").write_text(text)
  return text


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist"])
  p.add_argument("--table", default=str(DEFAULT_TABLE), help="path of the table, no suffix")
  args = p.parse_args(argv)
  table = pathlib.Path(args.table)
  path = table.with_suffix(".json")
  results = json.loads(path.read_text()) if path.exists() else {}
  for dataset in args.datasets:
    results[dataset] = run(dataset)
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(dataset, results[dataset]["pixels"], results[dataset]["pca50"], flush=True)
  print(report(results, table))
  return 0


if __name__ == "__main__":
  sys.exit(main())
