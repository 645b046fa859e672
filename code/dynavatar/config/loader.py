"""Reading a conf: parse HOCON, validate keys and types against the defaults, merge, apply
`key=value` overrides, and build the typed `Conf` once.

The paper's conf layout (`train`, `loss`, `dataset`, `model` sections and their keys) is accepted
as is, so a user's old `subject1.conf` runs unchanged apart from paths. Keys new to DynAvatar are
opt-in and default to the paper's behaviour.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any, Iterable

from pyhocon import ConfigFactory, ConfigTree, HOCONConverter
from pyhocon.exceptions import ConfigException
from pyparsing import ParseBaseException

from ..errors import ConfigError
from .defaults import DEFAULTS_HOCON
from .schema import Conf

log = logging.getLogger(__name__)

# Keys whose value may take several types (the default's type is not the only valid one).
_POLYMORPHIC: dict[str, tuple[type, ...]] = {
    "dataset.train.subsample": (int, list),
    "dataset.test.subsample": (int, list),
    "dataset.train.sub_dir": (list, str),
    "dataset.test.sub_dir": (list, str),
}


def defaults() -> ConfigTree:
    """A fresh copy of the default configuration."""
    return ConfigFactory.parse_string(DEFAULTS_HOCON)


def default_conf() -> Conf:
    """The default configuration, typed (the paper's subject conf without data paths)."""
    return Conf.from_tree(defaults(), "the default configuration")


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


def _type_name(types: Iterable[type]) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
             ConfigTree: "a section { ... }"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _valid_types(default: Any, key: str) -> tuple[type, ...]:
    if key in _POLYMORPHIC:
        return _POLYMORPHIC[key]
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, float):
        return (float, int)
    if isinstance(default, int):
        return (int,)
    if isinstance(default, ConfigTree):
        return (ConfigTree,)
    if isinstance(default, list):
        return (list,)
    return (str,)


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def validate(conf: ConfigTree, source: str) -> None:
    """Raise ConfigError for the first unknown key or wrongly typed value, naming it, the file and the fix."""
    valid = _flatten(defaults())
    for key, value in _flatten(conf).items():
        if key not in valid:
            nearest = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
            if not nearest:  # a misspelt last part under a right section, e.g. train.learnig_rate
                section = key.rsplit(".", 1)[0] + "." if "." in key else ""
                same_section = [k for k in valid if k.startswith(section)]
                nearest = difflib.get_close_matches(key, same_section, n=1, cutoff=0.0)
            hint = f"; did you mean '{nearest[0]}'?" if nearest else ""
            raise ConfigError(f"{source}: unknown key '{key}'{hint}")
        types = _valid_types(valid[key], key)
        if value is None or not _type_ok(value, types):
            raise ConfigError(f"{source}: key '{key}' must be {_type_name(types)}, got {value!r} "
                              f"(default: {valid[key]!r})")


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
    validate(user, str(path))
    merged = user.with_fallback(defaults())
    for text in overrides:
        key, value = parse_override(text)
        single = ConfigTree()
        single.put(key, value)
        validate(single, f"command-line override '{text}'")
        merged.put(key, value, append=False)
    validate(merged, str(path))
    return Conf.from_tree(merged, str(path))


def to_hocon(conf: Conf | ConfigTree) -> str:
    """Serialise a configuration (what `runconf.conf` holds)."""
    return HOCONConverter.to_hocon(conf.tree if isinstance(conf, Conf) else conf)
