"""The package's layers only point down: a module imports from its own subpackage or from a lower
layer, never from a layer at or above its own (so training and evaluation never import each other,
and nothing below them imports either)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "code" / "dynavatar"

# Lowest first. Subpackages (or top-level modules) of one layer may not import each other.
LAYERS = [
    {"errors"},
    {"config", "runtime", "files", "progress"},
    {"cameras"},
    {"flame", "render", "data", "metrics", "experiment", "export"},
    {"model", "subject_generator"},
    {"losses"},
    {"train", "evaluate", "preprocess"},
    {"viewer"},
    {"cli"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def unit_of(module: str) -> str:
    """'dynavatar.train.trainer' -> 'train' (the subpackage or top-level module it belongs to)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every dynavatar import in a file, including those inside functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("dynavatar"):
                if target == "dynavatar" or (node.level and not node.module):  # from . import x
                    found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
                else:
                    found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("dynavatar")]
    return found


def upward_imports() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = unit_of(module_name(path))
        if not own:
            continue  # dynavatar/__init__.py
        for line, target in imported_modules(path):
            other = unit_of(target)
            if other == own or not other:
                continue
            if other not in RANK or own not in RANK:
                problems.append(f"{path.relative_to(PACKAGE)}:{line} imports {target}: "
                                f"place '{other if other not in RANK else own}' in a layer of tests/test_layers.py")
            elif RANK[other] >= RANK[own]:
                problems.append(f"{path.relative_to(PACKAGE)}:{line} ({own}, layer {RANK[own]}) imports {target} "
                                f"({other}, layer {RANK[other]})")
    return problems


def test_every_subpackage_has_a_layer():
    units = {p.name if p.is_dir() else p.stem for p in PACKAGE.iterdir()
             if (p.is_dir() and (p / "__init__.py").is_file()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert units <= set(RANK), units - set(RANK)


def test_imports_only_point_down():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: an evaluate -> train import (the old mistake) is reported."""
    fake = tmp_path / "dynavatar"
    (fake / "evaluate").mkdir(parents=True)
    (fake / "train").mkdir()
    for folder in (fake, fake / "evaluate", fake / "train"):
        (folder / "__init__.py").write_text("")
    (fake / "evaluate" / "fitting.py").write_text("from ..train.trainer import batches\n")
    (fake / "train" / "trainer.py").write_text("def batches():\n    pass\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    problems = upward_imports()
    assert len(problems) == 1 and "evaluate/fitting.py:1" in problems[0] and "dynavatar.train.trainer" in problems[0]
