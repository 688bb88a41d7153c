"""Command-line flags generated from a configuration dataclass: one source of truth.

Every field of the dataclass becomes `--name` with the field's type, its default from the
chosen configuration and its help from the field's `metadata["help"]` (and `choices` from
`metadata["choices"]`). `metadata["flag"]` renames the flag (None: no flag); a
`tuple[T, ...]` field takes several values. A flag left out keeps the configuration's value.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def _scalar_type(annotation):
  """The Python type of a field annotated `T`, `T | None` or `tuple[T, ...]`, and whether it
  is a tuple."""
  args = [a for a in typing.get_args(annotation) if a is not type(None)]
  if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
    (annotation,) = args
    args = list(typing.get_args(annotation))
  if typing.get_origin(annotation) is tuple:
    return args[0], True
  return annotation, False


def _flag(field: dataclasses.Field) -> str | None:
  return field.metadata.get("flag", field.name)


def add_config_flags(parser: argparse.ArgumentParser, config_cls, defaults) -> None:
  """Adds `--field` for every field of `config_cls` (help shows `defaults`' value)."""
  hints = typing.get_type_hints(config_cls)
  for field in dataclasses.fields(config_cls):
    name = _flag(field)
    if name is None:
      continue
    kind, many = _scalar_type(hints[field.name])
    text = field.metadata.get("help", field.name.replace("_", " "))
    text = f"{text} (default: {getattr(defaults, field.name)})"
    if kind is bool:
      parser.add_argument(
        f"--{name}", action=argparse.BooleanOptionalAction, default=None, help=text
      )
    else:
      parser.add_argument(
        f"--{name}",
        type=kind,
        nargs="+" if many else None,
        default=None,
        choices=field.metadata.get("choices"),
        help=text,
      )


def config_from_flags(args: argparse.Namespace, defaults):
  """`defaults` with the fields given on the command line replaced."""
  changes = {}
  for field in dataclasses.fields(defaults):
    name = _flag(field)
    value = None if name is None else getattr(args, name, None)
    if value is not None:
      changes[field.name] = tuple(value) if isinstance(value, list) else value
  return dataclasses.replace(defaults, **changes)
