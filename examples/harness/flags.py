"""Command-line flags generated from a configuration dataclass: one source of truth.

Every field of the dataclass becomes `--name` with the field's type, its default from the
chosen configuration and its help from the field's `metadata["help"]` (and `choices` from
`metadata["choices"]`). A flag left out keeps the configuration's value.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def _scalar_type(annotation):
  """The Python type of a field annotated `T` or `T | None` (T in bool, int, float, str)."""
  args = [a for a in typing.get_args(annotation) if a is not type(None)]
  if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
    (annotation,) = args
  return annotation


def add_config_flags(parser: argparse.ArgumentParser, config_cls, defaults) -> None:
  """Adds `--field` for every field of `config_cls` (help shows `defaults`' value)."""
  hints = typing.get_type_hints(config_cls)
  for field in dataclasses.fields(config_cls):
    kind = _scalar_type(hints[field.name])
    text = field.metadata.get("help", field.name.replace("_", " "))
    text = f"{text} (default: {getattr(defaults, field.name)})"
    if kind is bool:
      parser.add_argument(
        f"--{field.name}", action=argparse.BooleanOptionalAction, default=None, help=text
      )
    else:
      parser.add_argument(
        f"--{field.name}",
        type=kind,
        default=None,
        choices=field.metadata.get("choices"),
        help=text,
      )


def config_from_flags(args: argparse.Namespace, defaults):
  """`defaults` with the fields given on the command line replaced."""
  changes = {
    f.name: getattr(args, f.name)
    for f in dataclasses.fields(defaults)
    if getattr(args, f.name, None) is not None
  }
  return dataclasses.replace(defaults, **changes)
