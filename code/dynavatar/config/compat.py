"""Keys of the paper's confs (and of older DynAvatar confs) that are not keys of `schema.py`: those
DynAvatar does not use, accepted and ignored so that the paper's confs load unchanged, and old names
of keys, read as their new names. Both are data; `normalise` applies them to a parsed conf before
it is checked against the schema.
"""

from __future__ import annotations

import logging
from typing import Any

from pyhocon import ConfigTree

from ..errors import ConfigError

log = logging.getLogger(__name__)

_NO_SDF = "PointAvatar's SDF term; Gaussians have no SDF"
_POINT_INPUT = "a point is always 3 numbers"
_FOUR_HEADS = "the networks' outputs are fixed by their four heads"

# Key (or whole section) -> why DynAvatar does not use it.
IGNORED_KEYS: dict[str, str] = {
    "train.dataset_class": "the IMavatar reader is always used",
    "train.num_pixels": "Gaussian splatting renders whole images",
    "loss.eikonal_weight": _NO_SDF,
    "loss.sdf_consistency_weight": _NO_SDF,
    "model.rendering_network": "colour comes from the canonical network (model.geometry_network)",
    "model.geometry_network.d_in": _POINT_INPUT,
    "model.geometry_network.d_out": _FOUR_HEADS,
    "model.geometry_network.feature_vector_size": _FOUR_HEADS,
    "model.geometry_network.bias": "the SDF initialisation's offset, not applied (docs/METHOD.md, departure 3)",
    "model.deformer_network.d_in": _POINT_INPUT,
    "model.gaussian_network.d_in": "its input is always a point's 3-number offset",
    "model.gaussian_network.d_out": _FOUR_HEADS,
    "model.gaussian_network.feature_vector_size": _FOUR_HEADS,
    "model.gaussian_network.multires_view": "the network has no positional encoding",
    "model.gaussian_network.multires_pnts": "the network has no positional encoding",
}

# Old name -> new name.
RENAMED_KEYS: dict[str, str] = {
    "train.upsample_freq": "train.prune_grow_every",
    "train.GT_lbs_milestones": "loss.flame_prior_milestones",
    "train.GT_lbs_factor": "loss.flame_prior_factor",
    "dataset.canonical_pose": "dataset.canonical_jaw",
}

_ABSENT = object()


def _lookup(tree: ConfigTree, key: str) -> Any:
    """The value at dotted `key`, or _ABSENT (also where a parent is not a section)."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, ConfigTree) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _remove(tree: ConfigTree, key: str) -> Any:
    parent, _, last = key.rpartition(".")
    return (_lookup(tree, parent) if parent else tree).pop(last)


def normalise(tree: ConfigTree, source: str) -> ConfigTree:
    """Drop the ignored keys of a parsed conf and move old names to new ones, in place (logged at INFO);
    a conf that gives a key under its old and its new name stops with one error naming both."""
    for key, why in IGNORED_KEYS.items():
        if _lookup(tree, key) is not _ABSENT:
            _remove(tree, key)
            log.info("%s: %s is ignored (%s)", source, key, why)
    for old, new in RENAMED_KEYS.items():
        if _lookup(tree, old) is _ABSENT:
            continue
        if _lookup(tree, new) is not _ABSENT:
            raise ConfigError(f"{source}: gives both '{old}' and '{new}', its new name (an included file "
                              f"counts too); keep only '{new}'")
        tree.put(new, _remove(tree, old))
        log.info("%s: %s is read as %s, its new name", source, old, new)
    return tree


def normalise_key(key: str, source: str) -> str | None:
    """The current name of a single key (a `key=value` override), or None when it is ignored."""
    for ignored, why in IGNORED_KEYS.items():
        if key == ignored or key.startswith(ignored + "."):
            log.info("%s: %s is ignored (%s)", source, key, why)
            return None
    if key in RENAMED_KEYS:
        log.info("%s: %s is read as %s, its new name", source, key, RENAMED_KEYS[key])
        return RENAMED_KEYS[key]
    return key
