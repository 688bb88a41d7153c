"""The examples' command lines: flags from the configuration, one run, the exit status.

Exit status: 0 done; 2 bad input (a resume with a changed field, missing data); 3 the
training loss became non-finite (the final record says where); 130 or 143 interrupted by
SIGINT or SIGTERM (continue with --resume).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from . import flags

EXIT_USAGE = 2
EXIT_DIVERGED = 3
EPILOG = (
  "Exit status: 0 done; 2 a resume with a changed field or missing data; "
  f"{EXIT_DIVERGED} the training loss became non-finite; 130 or 143 interrupted by SIGINT "
  "or SIGTERM (continue with --resume)."
)


def parser(doc: str, config_cls, defaults, *, workdir_help: str) -> argparse.ArgumentParser:
  """A parser with `--<field>` for every configuration field, `--workdir` and `--resume`."""
  p = argparse.ArgumentParser(
    description=doc.split("\n\n")[0],
    epilog=EPILOG,
  )
  flags.add_config_flags(p, config_cls, defaults)
  p.add_argument("--workdir", default=None, help=workdir_help)
  p.add_argument(
    "--resume", action="store_true", help="continue the run in --workdir from its checkpoint"
  )
  return p


def main(
  argv: Sequence[str] | None,
  doc: str,
  config_cls,
  *,
  train_and_evaluate: Callable[[], Callable],
  default_workdir: Callable[[object], str],
  workdir_help: str,
  fields: Sequence[str],
  input_errors: Callable[[], tuple[type[Exception], ...]] = tuple,
) -> int:
  """Parses the flags of `config_cls`, trains and returns the exit status.

  `train_and_evaluate` and `input_errors` are called after parsing, so that `--help` does
  not import JAX.
  """
  args = parser(doc, config_cls, config_cls(), workdir_help=workdir_help).parse_args(argv)
  config = flags.config_from_flags(args, config_cls())
  return run(
    train_and_evaluate(),
    config,
    args.workdir or default_workdir(config),
    resume=args.resume,
    fields=fields,
    input_errors=input_errors(),
  )


def run(
  train_and_evaluate: Callable,
  config,
  workdir: str,
  *,
  resume: bool,
  fields: Sequence[str],
  input_errors: tuple[type[Exception], ...] = (),
) -> int:
  """Runs `train_and_evaluate(config, workdir, resume=)`, prints `fields` of its final
  record as one JSON line and returns the exit status."""
  from . import checkpoints, stopping  # JAX and Orbax load here, after --help

  try:
    summary = train_and_evaluate(config, workdir, resume=resume)
  except stopping.TrainingInterrupted as stop:
    print(stop, file=sys.stderr)
    return stop.exit_code
  except (checkpoints.ConfigMismatchError, *input_errors) as err:
    print(f"error: {err}", file=sys.stderr)
    return EXIT_USAGE
  print(json.dumps({name: summary.get(name) for name in fields}))
  return 0 if summary["diverged_at_step"] is None else EXIT_DIVERGED
