"""Reading a conf: parse HOCON, read old key names as new ones and drop the ignored keys of the
paper's confs (`compat`), check keys and types against the schema, merge over the defaults, apply
`key=value` overrides, and build the typed `Conf` once.

The paper's conf layout (`train`, `loss`, `dataset`, `model` sections and their keys) is accepted
as is, so a user's old `subject1.conf` runs unchanged apart from paths. Keys new to DynAvatar are
opt-in and default to the paper's behaviour.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable

from pyhocon import ConfigFactory, ConfigTree
from pyhocon.exceptions import ConfigException
from pyparsing import ParseBaseException

from ..errors import ConfigError
from .compat import normalise, normalise_key
from .defaults import conf_text, defaults_tree, hocon_value
from .schema import SECTIONS, Conf
from .section import default, item_type, value_types, walk


def defaults() -> ConfigTree:
    """A fresh copy of the default configuration."""
    return defaults_tree()


def default_conf() -> Conf:
    """The default configuration, typed (the paper's subject conf without data paths)."""
    return Conf.from_tree(defaults(), "the default configuration")


def _schema() -> dict[str, tuple[tuple[type, ...], Any, Any]]:
    """Dotted key -> (accepted HOCON types, type of a list's items or None, default) of every key and section."""
    table: dict[str, tuple[tuple[type, ...], Any, Any]] = {}
    for name, section in SECTIONS.items():
        table[name] = ((ConfigTree,), None, None)
        for key, f, hint in walk(section, name + "."):
            table[key] = (value_types(hint, f.metadata["single"]), item_type(hint), default(f))
    return table


def _flatten(tree: ConfigTree, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        key = str(key).strip('"')
        full = f"{prefix}{key}"
        if isinstance(value, ConfigTree):
            out[full] = value  # sections are keys too, so a misspelt section is caught
            out.update(_flatten(value, full + "."))
        else:
            out[full] = value
    return out


_TYPE_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
               ConfigTree: "a section { ... }"}


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def _problem(value: Any, types: tuple[type, ...], item: Any) -> str | None:
    """What is wrong with a value of a key that takes `types` (lists of `item`), or None."""
    if value is None or not _type_ok(value, types):
        return "must be " + " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
    if isinstance(value, list) and item in (int, float) and not all(_type_ok(v, value_types(item)) for v in value):
        return f"must be a list of {'integers' if item is int else 'numbers'}"
    return None  # items of a list of strings are read as strings (a video may be named 1810)


def validate(conf: ConfigTree, source: str) -> None:
    """Raise ConfigError for the first unknown key or wrongly typed value, naming it, the file and the fix."""
    valid = _schema()
    for key, value in _flatten(conf).items():
        if key not in valid:
            nearest = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
            if not nearest:  # a misspelt last part under a right section, e.g. train.learnig_rate
                section = key.rsplit(".", 1)[0] + "." if "." in key else ""
                same_section = [k for k in valid if k.startswith(section)]
                nearest = difflib.get_close_matches(key, same_section, n=1, cutoff=0.0)
            hint = f"; did you mean '{nearest[0]}'?" if nearest else ""
            raise ConfigError(f"{source}: unknown key '{key}'{hint}")
        types, item, default_value = valid[key]
        problem = _problem(value, types, item)
        if problem:
            shown = "a section { ... }" if ConfigTree in types else hocon_value(default_value)
            raise ConfigError(f"{source}: key '{key}' {problem}, got {value!r} (default: {shown})")


def parse_override(text: str) -> tuple[str, Any]:
    """'model.rasterizer=torch' -> ('model.rasterizer', 'torch'), the value parsed as HOCON."""
    if "=" not in text:
        raise ConfigError(f"command-line override '{text}' is not of the form key=value "
                          f"(e.g. train.learning_rate=2e-4)")
    key, value = text.split("=", 1)
    key = key.strip()
    try:
        parsed = ConfigFactory.parse_string(f"x = {value}" if value.strip() else 'x = ""')
    except (ConfigException, ParseBaseException, ValueError) as exc:
        raise ConfigError(f"command-line override '{text}': cannot parse the value ({exc})") from None
    return key, parsed.get("x")


def load_conf(path: str | Path, overrides: Iterable[str] = ()) -> Conf:
    """Parse `path`, merge it over the defaults, apply `key=value` overrides, validate, return the typed conf."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (pass an existing .conf, e.g. confs/demo.conf)")
    try:
        user = ConfigFactory.parse_file(str(path), resolve=True)
    except (ConfigException, ParseBaseException, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot parse the config ({type(exc).__name__}: {exc})") from None
    source = str(path)
    validate(normalise(user, source), source)
    merged = user.with_fallback(defaults())
    for text in overrides:
        key, value = parse_override(text)
        where = f"command-line override '{text}'"
        key = normalise_key(key, where)
        if key is None:
            continue
        single = ConfigTree()
        single.put(key, value)
        validate(single, where)
        merged.put(key, value, append=False)
    validate(merged, source)
    return Conf.from_tree(merged, source)


def to_hocon(conf: Conf) -> str:
    """A configuration as commented HOCON that loads back to it (what `runconf.conf` holds)."""
    return conf_text(conf)
