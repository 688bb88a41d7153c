"""The training harness shared by the examples: data, checkpoints, signals, metrics, the loop
and the command line.

`image_data`: MNIST, Fashion-MNIST and scikit-learn's digits from offline routes (checksummed
IDX files first); `checkpoints`: Orbax checkpoints (latest and best) and the check that a
resumed run's configuration matches the saved one; `stopping`: a clean stop on SIGINT /
SIGTERM; `metric_writers`: `metrics.jsonl` and TensorBoard; `loop`: the epoch / step loop
with resume, time budget, divergence stop and validation-based model selection;
`optimizers`: optimisers shared by the runs of one process; `flags` and `cli`: flags
generated from a configuration dataclass, one run and its exit status.
"""
