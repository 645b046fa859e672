"""Reading FLAME model files (`generic_model.pkl`) and landmark embeddings without chumpy or scipy.

FLAME 2020's pickle stores some arrays as chumpy `Ch` objects and the joint regressor as a scipy
sparse matrix. chumpy does not import on current Python, so an unpickler maps those classes to
small stand-ins and turns them into plain numpy arrays.

Unpickling can call any function a file names, so the unpickler admits only what these files hold:
numpy arrays, the chumpy/scipy stand-ins, plain containers, and (for DECA's landmark file) torch
tensors read with `weights_only=True`. Anything else stops with a FlameModelError naming the file
and the global, before it is called. `.npy` files are read the same way (never `allow_pickle`).
"""

from __future__ import annotations

import _codecs
import _compat_pickle
import codecs
import collections
import copyreg
import io
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import FlameModelError

log = logging.getLogger(__name__)

FLAME_HELP = (
    "Register at https://flame.is.tue.mpg.de, download FLAME 2020 and put generic_model.pkl there "
    "(or point model.flame_model_path at it). To run without it, set model.flame_model_path = synthetic."
)
LANDMARK_HELP = (
    "Use the 68-point landmark_embedding.npy that ships with DECA / MonoGaussianAvatar (FLAME2020 folder) "
    "and put it there (or point model.flame_landmark_path at it)."
)
REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")


class _PickledStandIn:
    """Stand-in for a chumpy or scipy.sparse object: keeps whatever state the pickle restores."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self._state: Any = None

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def __call__(self, *args: Any, **kwargs: Any) -> "_PickledStandIn":  # pickles that call the class
        return type(self)(*args, **kwargs)


def _stand_in(module: str, name: str) -> type:
    return type(name, (_PickledStandIn,), {"__module__": module})


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """copyreg._reconstructor (how Python 2 pickled chumpy and scipy objects) for stand-ins only."""
    if not (isinstance(cls, type) and issubclass(cls, _PickledStandIn) and base is object):
        raise pickle.UnpicklingError(f"copyreg._reconstructor of {cls!r} from {base!r}")
    return copyreg._reconstructor(cls, base, state)


def _latin1(text: str, encoding: str = "utf-8") -> bytes:
    """_codecs.encode as protocol-2 pickles use it for bytes (text, 'latin1') and nothing else."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return _codecs.encode(text, encoding)


def _storage_from_bytes(data: bytes) -> Any:
    """torch.storage._load_from_bytes (a pickled tensor's storage), read with weights_only=True."""
    return torch.load(io.BytesIO(data), weights_only=True)


_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_RECONSTRUCT = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    **{(module, "_reconstruct"): _NUMPY_RECONSTRUCT._reconstruct for module in _NUMPY_CORE},
    **{(module, "scalar"): _NUMPY_RECONSTRUCT.scalar for module in _NUMPY_CORE},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("_codecs", "encode"): _latin1,
    ("builtins", "object"): object,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
}


class _FlameUnpickler(pickle.Unpickler):
    """Unpickler that needs neither chumpy nor scipy, and admits nothing but SAFE_GLOBALS and stand-ins."""

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] == "chumpy" or module.startswith("scipy.sparse"):
            return _stand_in(module, name)
        # Python 2 names (__builtin__, copy_reg), as pickle's own find_class maps them
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in SAFE_GLOBALS:
            return SAFE_GLOBALS[(module, name)]
        raise _Refused(f"{module}.{name}")


class _Refused(pickle.UnpicklingError):
    """A global that a FLAME or landmark file has no reason to name (the file may have been crafted)."""


def _state_dict(obj: _PickledStandIn) -> dict:
    state = obj._state
    if isinstance(state, tuple):  # (dict state, slot state)
        merged: dict = {}
        for part in state:
            if isinstance(part, dict):
                merged.update(part)
        return merged
    return state if isinstance(state, dict) else {}


def _to_numpy(value: Any, key: str, path: Path) -> Any:
    """Turn chumpy / sparse stand-ins (possibly nested in containers) into numpy arrays."""
    if isinstance(value, _PickledStandIn):
        state = _state_dict(value)
        cls = type(value).__name__
        if "x" in state:  # a chumpy leaf holds its value in `x`
            return np.asarray(_to_numpy(state["x"], key, path))
        if {"data", "indices", "indptr"} <= state.keys():  # scipy csc/csr matrix
            shape = tuple(state.get("_shape") or state.get("shape"))
            dense = np.zeros(shape, dtype=np.asarray(state["data"]).dtype)
            data, indices, indptr = (np.asarray(state[k]) for k in ("data", "indices", "indptr"))
            compressed_rows = cls.startswith("csr")
            for outer in range(len(indptr) - 1):
                lo, hi = indptr[outer], indptr[outer + 1]
                if compressed_rows:
                    dense[outer, indices[lo:hi]] = data[lo:hi]
                else:
                    dense[indices[lo:hi], outer] = data[lo:hi]
            return dense
        raise FlameModelError(f"{path}: key '{key}' holds a {type(value).__module__}.{cls} object that cannot be "
                              f"read without chumpy; re-export the model with plain numpy arrays")
    if isinstance(value, dict):
        return {k: _to_numpy(v, f"{key}.{k}", path) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_numpy(v, key, path) for v in value)
    return value


def _npy_header(handle: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of an open `.npy` file, read as np.load reads it."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(handle)
    return np.lib.format._read_array_header(handle, version)  # 3.0: a utf-8 header


def _unpickle(path: Path) -> Any:
    """A pickle file, or the object array of an `.npy` file (whose data is a pickle after its header)."""
    with open(path, "rb") as handle:
        if path.suffix == ".npy":
            shape, fortran, dtype = _npy_header(handle)
            if not dtype.hasobject:
                return np.fromfile(handle, dtype=dtype).reshape(shape, order="F" if fortran else "C")
        try:
            return _FlameUnpickler(handle, encoding="latin1").load()
        except _Refused as exc:
            raise FlameModelError(f"{path} names '{exc}', which a FLAME model or landmark file never holds: it was "
                                  f"not loaded (nothing in it was run; the file may have been crafted)") from None


@dataclass
class FlameModelFile:
    """The arrays of a FLAME model file, unscaled, as float64/int numpy arrays."""

    v_template: np.ndarray  # [V, 3]
    faces: np.ndarray  # [F, 3]
    shapedirs: np.ndarray  # [V, 3, S + X]: shape components first, then expression components
    posedirs: np.ndarray  # [V, 3, P]
    j_regressor: np.ndarray  # [J, V]
    weights: np.ndarray  # [V, J]
    parents: np.ndarray  # [J], parents[0] = -1


def load_flame_model(path: str | Path) -> FlameModelFile:
    """Read a FLAME model pickle (real FLAME 2020 or the synthetic one) without chumpy."""
    path = Path(path)
    if not path.is_file():
        raise FlameModelError(f"FLAME model not found: {path}. {FLAME_HELP}")
    try:
        raw = _unpickle(path)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, TypeError, RuntimeError) as exc:
        raise FlameModelError(f"{path} is not a readable FLAME model pickle ({type(exc).__name__}: {exc}). "
                              f"{FLAME_HELP}") from None
    if not isinstance(raw, dict) or not all(k in raw for k in REQUIRED_KEYS):
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise FlameModelError(f"{path} is not a FLAME model file: expected keys {list(REQUIRED_KEYS)}, found {found}. "
                              f"{FLAME_HELP}")
    arrays = {k: np.asarray(_to_numpy(raw[k], k, path)) for k in REQUIRED_KEYS}
    n_vertices = arrays["v_template"].shape[0]
    kintree = arrays["kintree_table"].astype(np.int64)
    parents = kintree[0].copy()
    parents[0] = -1  # stored as uint32 max
    model = FlameModelFile(
        v_template=arrays["v_template"].astype(np.float64),
        faces=arrays["f"].astype(np.int64),
        shapedirs=arrays["shapedirs"].astype(np.float64),
        posedirs=arrays["posedirs"].astype(np.float64),
        j_regressor=arrays["J_regressor"].astype(np.float64),
        weights=arrays["weights"].astype(np.float64),
        parents=parents,
    )
    n_joints = parents.shape[0]
    expected = {
        "v_template": (n_vertices, 3), "shapedirs": (n_vertices, 3), "posedirs": (n_vertices, 3, 9 * (n_joints - 1)),
        "J_regressor": (n_joints, n_vertices), "weights": (n_vertices, n_joints),
    }
    actual = {"v_template": model.v_template.shape, "shapedirs": model.shapedirs.shape[:2],
              "posedirs": model.posedirs.shape, "J_regressor": model.j_regressor.shape, "weights": model.weights.shape}
    for key, shape in expected.items():
        if tuple(actual[key]) != shape:
            raise FlameModelError(f"{path}: '{key}' has shape {tuple(actual[key])}, expected {shape} for a model "
                                  f"with {n_vertices} vertices and {n_joints} joints. {FLAME_HELP}")
    log.debug("FLAME model %s: %d vertices, %d faces, %d joints", path, n_vertices, len(model.faces), n_joints)
    return model


@dataclass
class LandmarkEmbedding:
    """Landmarks as points on mesh faces: face indices [L] and barycentric coordinates [L, 3]."""

    faces_idx: np.ndarray
    bary_coords: np.ndarray


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # DECA's file stores some entries as torch tensors
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def load_landmark_embedding(path: str | Path) -> LandmarkEmbedding:
    """Read the 68 landmarks of a FLAME landmark embedding (DECA's `landmark_embedding.npy` layout,
    `full_lmk_faces_idx` / `full_lmk_bary_coords`, or FLAME's `lmk_face_idx` / `lmk_b_coords`)."""
    path = Path(path)
    if not path.is_file():
        raise FlameModelError(f"FLAME landmark embedding not found: {path}. {LANDMARK_HELP}")
    try:
        raw = _unpickle(path)
        if isinstance(raw, np.ndarray) and raw.dtype == object and raw.shape == ():
            raw = raw[()]  # DECA's .npy: one object, a dict
        raw = _to_numpy(raw, "landmarks", path)
    except (OSError, ValueError, pickle.UnpicklingError, EOFError, ImportError, AttributeError, TypeError,
            RuntimeError) as exc:
        raise FlameModelError(f"{path} is not a readable landmark embedding ({type(exc).__name__}: {exc}). "
                              f"{LANDMARK_HELP}") from None
    for faces_key, bary_key in (("full_lmk_faces_idx", "full_lmk_bary_coords"), ("lmk_face_idx", "lmk_b_coords")):
        if isinstance(raw, dict) and faces_key in raw and bary_key in raw:
            faces_idx = _as_numpy(raw[faces_key]).astype(np.int64).reshape(-1)
            bary = _as_numpy(raw[bary_key]).astype(np.float64).reshape(-1, 3)
            if len(faces_idx) != len(bary):
                break
            return LandmarkEmbedding(faces_idx, bary)
    found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
    raise FlameModelError(f"{path} is not a FLAME landmark embedding: expected 'full_lmk_faces_idx' and "
                          f"'full_lmk_bary_coords', found {found}. {LANDMARK_HELP}")
