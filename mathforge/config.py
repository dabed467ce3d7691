"""One configuration system for `train`, `synth` and `eval`: TOML → typed dataclasses, `--set` overrides.

- Each component declares its settings as a dataclass beside its code; fields are typed with the small
  set `coerce` understands (bool, int, float, str, Literal, optional, list, tuple, dict, nested
  dataclasses and lists of them). A str field whose names come from a registry says so in its metadata:
  ``schedule: str = field(default="cosine", metadata={"registry": SCHEDULES})``.
- `build(cls, table, where)` makes the dataclass from a TOML table: unknown keys are refused with the
  allowed ones, values of the wrong type or outside their registry are refused naming the key.
- `apply_overrides(raw, ["a.b.c=value", "stages.0.epochs=2"])` is the one `--set` grammar: dotted keys
  of any depth, numeric parts index lists, values in TOML syntax (bare words are strings).
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from mathforge.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")


def read_toml(path: str | Path) -> dict[str, Any]:
    """The parsed TOML file; ConfigError naming the file when it is missing or invalid."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML ({error})") from None


def parse_value(text: str) -> Any:
    """A `--set` value: TOML syntax when it parses (numbers, booleans, lists, quoted strings), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies `a.b.c=value` overrides to a raw config dict (in place) and returns it."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value (e.g. optim.lr=1e-5)")
        parts = key.strip().split(".")
        node: Any = raw
        for depth, part in enumerate(parts[:-1]):
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {key}: {where} is not an index of a list of {len(node)}")
                node = node[int(part)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])} is a value, not a table")
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: expected a key after {'.'.join(parts[:-1])}")
        node[parts[-1]] = parse_value(text.strip())
    return raw


def coerce(value: Any, annotation: Any, where: str, metadata: Any = None) -> Any:
    """`value` checked (and lightly converted: int → float, str → [str]) against a field annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], where, metadata)
    if dataclasses.is_dataclass(annotation):
        return build(annotation, value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not allowed; allowed values: {', '.join(map(str, args))}")
        return value
    checker = _SCALARS.get(annotation)
    if checker is not None:
        value = checker(value, where)
        registry = (metadata or {}).get("registry")
        return registry.check(value, where) if registry is not None else value
    if origin is list:
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, args[0], f"{where}[{i}]", metadata) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if annotation is Any:
        return value
    raise TypeError(f"{where}: unsupported annotation {annotation!r}")


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    return value


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


_SCALARS = {bool: _bool, int: _int, float: _float, str: _str}


def build(cls: type[T], table: Any, where: str) -> T:
    """An instance of dataclass `cls` from a TOML table; unknown keys and bad values are ConfigErrors."""
    if dataclasses.is_dataclass(table) and isinstance(table, cls):
        return table
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(fields)}")
    values = {k: coerce(v, hints[k], f"{where}.{k}", fields[k].metadata) for k, v in table.items()}
    for name, f in fields.items():  # defaults that name registry entries are checked too
        registry = f.metadata.get("registry")
        if name not in values and registry is not None and isinstance(f.default, str):
            registry.check(f.default, f"{where}.{name}")
    return cls(**values)


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain dicts and lists (JSON/TOML-ready)."""
    return dataclasses.asdict(obj)
