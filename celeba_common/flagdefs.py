"""Flags declared once, on a dataclass: `option(...)` fields become absl flags, and flag values become the dataclass.

    @dataclasses.dataclass
    class Config:
        lr: float = option(1e-4, "Adam learning rate.", lower_bound=0)
        pooling: str = option("flatten", "How features enter the head.", choices=("flatten", "avg", "max"))

    def cli():
        define_flags(Config)                      # only in the entry point's cli(), never at import
        run_main(main)

    def main(argv):
        config = from_flags(Config)               # entry points read FLAGS; library code takes `config`

A field without `option` metadata is not a flag (the entry point fills it itself). `check_choices(config)` applies the
same `choices` to a config built in code, so a bad value fails with the flag's name either way.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple, Type

from absl import flags

from celeba_common.errors import UserError

_MISSING = dataclasses.MISSING


RESUME_RULES = ("fixed", "free")


def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    choices: Optional[Sequence[str]] = None,
    lower_bound: Optional[float] = None,
    upper_bound: Optional[float] = None,
    flag_default: Any = _MISSING,
    resume: Optional[str] = None,
) -> Any:
    """A dataclass field that is also a command-line flag. flag_default: the flag's default when it differs.
    resume (for settings of a run that can be resumed): "fixed" when a checkpoint means something else with
    another value (a resume that changes it is refused), "free" when it may change between a stop and a resume."""
    if resume is not None and resume not in RESUME_RULES:
        raise ValueError(f"resume={resume!r}: expected one of {RESUME_RULES}")
    metadata = {
        "help": help,
        "choices": tuple(choices) if choices else None,
        "lower_bound": lower_bound,
        "upper_bound": upper_bound,
        "flag_default": flag_default,
        "resume": resume,
    }
    return dataclasses.field(default=default, metadata=metadata)


def _flag_fields(cls: Type) -> Iterable[Tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if "help" in field.metadata:
            yield field, hints[field.name]


def _base_type(hint: Any) -> Any:
    """Optional[X] -> X; Tuple[int, ...] -> (tuple, int)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        return _base_type(next(a for a in args if a is not type(None)))
    if typing.get_origin(hint) in (tuple, list):
        return (tuple, args[0])
    return hint


def define_flags(cls: Type, flag_values: flags.FlagValues = flags.FLAGS, skip: Sequence[str] = ()) -> None:
    """Defines one absl flag per `option` field of the dataclass `cls` (enum, bounded int/float, bool, list)."""
    for field, hint in _flag_fields(cls):
        if field.name in skip:
            continue
        meta = field.metadata
        default = meta["flag_default"] if meta["flag_default"] is not _MISSING else field.default
        default = None if default is _MISSING else default
        base = _base_type(hint)
        bounds = {k: meta[k] for k in ("lower_bound", "upper_bound") if meta[k] is not None}
        kwargs = dict(flag_values=flag_values)
        if meta["choices"]:
            flags.DEFINE_enum(field.name, default, list(meta["choices"]), meta["help"], **kwargs)
        elif base is bool:
            flags.DEFINE_bool(field.name, default, meta["help"], **kwargs)
        elif base is int:
            flags.DEFINE_integer(field.name, default, meta["help"], **bounds, **kwargs)
        elif base is float:
            flags.DEFINE_float(field.name, default, meta["help"], **bounds, **kwargs)
        elif isinstance(base, tuple):
            flags.DEFINE_list(
                field.name, None if default is None else [str(v) for v in default], meta["help"], **kwargs
            )
        else:
            flags.DEFINE_string(field.name, default, meta["help"], **kwargs)


def from_flags(cls: Type, flag_values: flags.FlagValues = flags.FLAGS, **overrides: Any):
    """The dataclass `cls` from the parsed flags (its `option` fields), plus the other fields from `overrides`."""
    values: Dict[str, Any] = {}
    for field, hint in _flag_fields(cls):
        if field.name in overrides or field.name not in flag_values:
            continue
        value = flag_values[field.name].value
        base = _base_type(hint)
        if isinstance(base, tuple) and value is not None:
            try:
                value = tuple(base[1](v) for v in value if str(v).strip())
            except ValueError:
                raise UserError(
                    f"--{field.name}={','.join(value)}: expected a comma-separated list of {base[1].__name__} values"
                ) from None
        values[field.name] = value
    values.update(overrides)
    return cls(**values)


def fields_with(cls: Type, key: str, value: Any) -> Tuple[str, ...]:
    """The names of the `option` fields of `cls` whose metadata `key` is `value` (e.g. resume="fixed")."""
    return tuple(field.name for field, _ in _flag_fields(cls) if field.metadata.get(key) == value)


def check_choices(config: Any) -> None:
    """UserError naming the flag when a field of `config` is outside its `choices` or bounds."""
    for field, _ in _flag_fields(type(config)):
        value, meta = getattr(config, field.name), field.metadata
        if meta["choices"] and value not in meta["choices"]:
            raise UserError(f"--{field.name}={value}: expected one of {', '.join(meta['choices'])}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high = meta["lower_bound"], meta["upper_bound"]
            if (low is not None and value < low) or (high is not None and value > high):
                where = f">= {low}" if high is None else f"<= {high}" if low is None else f"in {low}..{high}"
                raise UserError(f"--{field.name}={value}: must be {where}")
