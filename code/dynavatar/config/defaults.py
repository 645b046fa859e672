"""Configurations as commented HOCON text, rendered from the section dataclasses of `schema.py`: the
defaults (every key, its default and what it means; `python -m dynavatar.config` prints them) and
the `runconf.conf` of an experiment. The defaults tree that confs are merged onto is parsed from the
same text, so what is shown is what is used."""

from __future__ import annotations

import json
import textwrap
from dataclasses import fields
from typing import Any, Mapping

from pyhocon import ConfigFactory, ConfigTree

from .compat import IGNORED_KEYS, RENAMED_KEYS
from .schema import SECTIONS, Conf
from .section import Section, doc

INDENT = "    "
WIDTH = 100  # of the comment lines


def hocon_value(value: Any) -> str:
    """A Python value of a conf field as HOCON (strings quoted, so any path parses back unchanged)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(hocon_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _section_lines(section: Section, depth: int) -> list[str]:
    pad = INDENT * depth
    lines = []
    for f in fields(section):
        value = getattr(section, f.name)
        lines += textwrap.wrap(doc(f), WIDTH, initial_indent=f"{pad}# ", subsequent_indent=f"{pad}#   ",
                               break_on_hyphens=False)
        if isinstance(value, Section):
            lines += [f"{pad}{f.name} {{", *_section_lines(value, depth + 1), f"{pad}}}"]
        else:
            lines.append(f"{pad}{f.name} = {hocon_value(value)}")
    return lines


def render(sections: Mapping[str, Section], header: str = "") -> str:
    """HOCON of whole sections, each key under a comment saying what it means."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for name, section in sections.items():
        lines += [f"{name} {{", *_section_lines(section, 1), "}"]
    return "\n".join(lines) + "\n"


def default_sections() -> dict[str, Section]:
    return {name: section() for name, section in SECTIONS.items()}


def conf_text(conf: Conf) -> str:
    """A configuration as a conf file that loads back to it (what `runconf.conf` holds)."""
    return render({name: getattr(conf, name) for name in SECTIONS},
                  f"The configuration of this experiment (from {conf.source}).\n"
                  "Every key with its value; `python -m dynavatar.config` shows the defaults.")


def defaults_tree() -> ConfigTree:
    """A fresh tree of every key at its default."""
    return ConfigFactory.parse_string(render(default_sections()))


def defaults_text() -> str:
    """Every key with its default and meaning, then the keys of the paper's confs that are read under
    a new name or ignored."""
    renamed = [f"{old} -> {new}" for old, new in RENAMED_KEYS.items()]
    ignored = [f"{key}: {why}" for key, why in IGNORED_KEYS.items()]
    header = "\n".join([
        "DynAvatar's conf keys with their defaults. A conf gives only the keys it changes; the",
        "command line overrides keys as key=value (train.learning_rate=2e-4).",
        "", "Old names, still read (old -> new):", *(f"  {line}" for line in renamed),
        "", "Keys of the paper's confs that are accepted and ignored (sections with all their keys):",
        *(f"  {line}" for line in ignored), ""])
    return render(default_sections(), header)
