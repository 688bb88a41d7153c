"""The training harness shared by the examples: checkpoints, signals, metrics and the loop.

`checkpoints`: Orbax checkpoints (latest and best) and the check that a resumed run's
configuration matches the saved one; `stopping`: a clean stop on SIGINT / SIGTERM;
`metric_writers`: `metrics.jsonl` and TensorBoard; `loop`: the epoch / step loop with
resume, time budget, divergence stop and validation-based model selection.
"""
