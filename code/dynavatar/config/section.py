"""What a conf key is: a field of a section dataclass that carries its default, one line on what it
means and its valid range (`setting`), and the base of those dataclasses (`Section`), which builds a
section from a conf tree and checks its ranges.

A field's conf key is its name. Its type hint says which HOCON values it takes: `bool`, `int`,
`float` (an integer too), `str`, `tuple[T, ...]` (a list of T), `A | B` (either), or a `Section`
(a nested `{ ... }`).
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Callable, Iterator

from pyhocon import ConfigTree

from ..errors import ConfigError


@dataclass(frozen=True)
class Range:
    """A range a numeric key (each item of a list key) must lie in, checked when a conf is loaded, so
    that a value the code cannot run with stops the run at once naming its key."""

    ok: Callable[[float], bool]
    wanted: str


POSITIVE = Range(lambda v: math.isfinite(v) and v > 0, "positive")
NON_NEGATIVE = Range(lambda v: v >= 0, "0 or more")
AT_LEAST_ONE = Range(lambda v: v >= 1, "at least 1")  # counts and sizes
FRACTION_BELOW_ONE = Range(lambda v: 0 <= v < 1, "in [0, 1)")  # e.g. an opacity threshold (1: every point)


def setting(default: Any, doc: str, valid: Range | None = None, *, single: bool = False) -> Any:
    """A conf key: its default (a tuple for a list), one line on what it means, the range its value
    must lie in, and with `single` that one value may stand for a list of one (`sub_dir = video`)."""
    if not doc or "\n" in doc:
        raise ValueError(f"a setting needs a one-line description, got {doc!r}")
    if isinstance(default, (list, dict, set)):
        raise TypeError(f"a setting's default must be immutable (a tuple for a list), got {default!r}")
    return field(default=default, metadata={"doc": doc, "valid": valid, "single": single})


def subsection(section: type["Section"], doc: str) -> Any:
    """A nested section `{ ... }` of keys, its defaults those of `section`."""
    return field(default_factory=section, metadata={"doc": doc, "valid": None, "single": False})


def doc(f: Field) -> str:
    return f.metadata["doc"]


def default(f: Field) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def is_section(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Section)


def hints(section: type["Section"]) -> dict[str, Any]:
    return typing.get_type_hints(section)


def value_types(hint: Any, single: bool = False) -> tuple[type, ...]:
    """The HOCON value types a field of type `hint` accepts (lists as `list`, sections as `ConfigTree`)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(hint) for t in value_types(arg))
    if origin is tuple:
        return (list, *value_types(item_type(hint))) if single else (list,)
    if is_section(hint):
        return (ConfigTree,)
    if hint is float:
        return (float, int)
    return (hint,)


def item_type(hint: Any) -> Any:
    """T of `tuple[T, ...]` (within a union too), or None."""
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0]
    for arg in typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ():
        if typing.get_origin(arg) is tuple:
            return typing.get_args(arg)[0]
    return None


def walk(section: type["Section"], prefix: str = "") -> Iterator[tuple[str, Field, Any]]:
    """(dotted conf key, field, type hint) of every key of `section`, nested sections and their keys included."""
    section_hints = hints(section)
    for f in fields(section):
        name = f"{prefix}{f.name}"
        yield name, f, section_hints[f.name]
        if is_section(section_hints[f.name]):
            yield from walk(section_hints[f.name], name + ".")


class Section:
    """Base of the section dataclasses: building one from a conf tree, and its range checks."""

    def check(self) -> list[tuple[str, str]]:
        """(key, problem) pairs of checks beyond a key's range (between keys, or a special message)."""
        return []

    def range_problems(self) -> list[tuple[str, str]]:
        problems = []
        for f in fields(self):
            valid: Range | None = f.metadata["valid"]
            value = getattr(self, f.name)
            if valid is None:
                continue
            items = value if isinstance(value, tuple) else (value,)
            if not all(valid.ok(v) for v in items):
                shown = list(value) if isinstance(value, tuple) else value
                each = " (each item)" if isinstance(value, tuple) else ""
                problems.append((f.name, f"must be {valid.wanted}{each}, got {shown!r}"))
        return problems

    @classmethod
    def from_tree(cls, tree: ConfigTree, prefix: str, source: str):
        """The section from a tree that holds every key (validated and merged over the defaults)."""
        section_hints = hints(cls)
        values = {f.name: _convert(tree[f.name], section_hints[f.name], f"{prefix}.{f.name}", source)
                  for f in fields(cls)}
        section = cls(**values)
        problems = section.range_problems() + section.check()
        if problems:
            name, problem = problems[0]
            raise ConfigError(f"{source}: key '{prefix}.{name}' {problem}")
        return section


def _convert(value: Any, hint: Any, name: str, source: str) -> Any:
    """A conf value (already type-checked) as the field's Python type."""
    if is_section(hint):
        return hint.from_tree(value, name, source)
    origin = typing.get_origin(hint)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        items = value if isinstance(value, (list, tuple)) else [value]  # sub_dir may be one name
        return tuple(item(v) for v in items)
    if origin in (typing.Union, types.UnionType):  # subsample: int or list
        return tuple(value) if isinstance(value, list) else value
    if hint is float:
        return float(value)
    return value
