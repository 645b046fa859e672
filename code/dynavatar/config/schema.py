"""The validated configuration as frozen dataclasses, one per conf section.

`load_conf` builds a `Conf` once; the rest of the package reads typed attributes
(`conf.train.learning_rate`) and never re-parses or re-casts conf values. Keys that the paper's
confs carry but this implementation does not use (`COMPAT_KEYS`) are accepted and dropped here, so
no network or runner signature has to take them.

A field's conf key is its name unless its metadata names another (`key("GT_lbs_milestones")`).
`check()` of each section returns (key, problem) pairs for values of the right type but out of range;
the simple ranges of numeric keys are declared as data (`POSITIVE`, `NON_NEGATIVE`, `AT_LEAST_ONE`).
"""

from __future__ import annotations

import bisect
import math
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from pyhocon import ConfigTree

from ..errors import ConfigError


def key(name: str, **kwargs: Any) -> Any:
    """A dataclass field whose conf key differs from its attribute name."""
    return field(metadata={"key": name}, **kwargs)


def conf_key(f) -> str:
    return f.metadata.get("key", f.name)


class Section:
    """Base of the section dataclasses: building from a conf tree and range checks."""

    COMPAT_KEYS: ClassVar[tuple[str, ...]] = ()  # accepted for the paper's confs, not used
    # Ranges of numeric fields (of each item of a list field), checked when the conf is loaded, so that
    # a value the code cannot run with stops the run at once naming its key, never later or silently.
    POSITIVE: ClassVar[tuple[str, ...]] = ()  # finite and > 0
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ()  # >= 0
    AT_LEAST_ONE: ClassVar[tuple[str, ...]] = ()  # counts and sizes

    def check(self) -> list[tuple[str, str]]:
        return []

    def range_problems(self) -> list[tuple[str, str]]:
        rules = ((self.POSITIVE, lambda v: math.isfinite(v) and v > 0, "positive"),
                 (self.NON_NEGATIVE, lambda v: v >= 0, "0 or more"),
                 (self.AT_LEAST_ONE, lambda v: v >= 1, "at least 1"))
        keys = {f.name: conf_key(f) for f in fields(self)}
        problems = []
        for names, ok, wanted in rules:
            for name in names:
                value = getattr(self, name)
                if not all(ok(v) for v in (value if isinstance(value, tuple) else (value,))):
                    shown = list(value) if isinstance(value, tuple) else value
                    problems.append((keys[name], f"must be {wanted}{' (each item)' if isinstance(value, tuple) else ''}"
                                                 f", got {shown!r}"))
        return problems

    @classmethod
    def from_tree(cls, tree: ConfigTree, prefix: str, source: str):
        hints = typing.get_type_hints(cls)
        values = {}
        for f in fields(cls):
            name = conf_key(f)
            values[f.name] = _convert(tree[name], hints[f.name], f"{prefix}.{name}", source)
        section = cls(**values)
        problems = section.range_problems() + section.check()
        if problems:
            name, problem = problems[0]
            raise ConfigError(f"{source}: key '{prefix}.{name}' {problem}")
        return section


def _convert(value: Any, hint: Any, name: str, source: str) -> Any:
    """A conf value (already type-checked against the defaults) as the field's Python type."""
    if isinstance(hint, type) and issubclass(hint, Section):
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


# ---- train ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainConf(Section):
    exps_folder: str
    methodname: str
    nepoch: int
    learning_rate: float
    learning_rate_cam: float
    max_points_training: int
    max_batch: int
    upsample_freq: int
    plot_freq: int
    save_freq: int
    sched_milestones: tuple[int, ...]
    sched_factor: float
    lbs_milestones: tuple[int, ...] = key("GT_lbs_milestones")
    lbs_factor: float = key("GT_lbs_factor")
    optimize_expression: bool
    optimize_camera: bool
    optimize_inputs_after_epoch: int
    refine_camera_translation: bool
    frames_per_epoch: int
    keep_optimizer_state: bool
    seed: int
    device: str
    tf32: bool
    plot_n_images: int
    max_nonfinite_steps: int

    COMPAT_KEYS = ("dataset_class", "num_pixels")
    POSITIVE = ("learning_rate", "learning_rate_cam", "sched_factor", "lbs_factor")
    NON_NEGATIVE = ("sched_milestones", "lbs_milestones", "seed", "plot_n_images")
    AT_LEAST_ONE = ("nepoch", "max_points_training", "max_batch", "plot_freq", "save_freq", "max_nonfinite_steps")

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.upsample_freq < 1:
            problems.append(("upsample_freq", f"must be at least 1, got {self.upsample_freq}"))
        if self.frames_per_epoch < 0:
            problems.append(("frames_per_epoch", f"must be 0 (the whole training set) or more, got "
                                                 f"{self.frames_per_epoch}"))
        return problems

    def batch_size(self, n_points: int) -> int:
        """The paper's rule: min(max_points_training / n_points, max_batch), at least 1."""
        return max(1, min(self.max_points_training // max(1, n_points), self.max_batch))

    def learning_rate_at(self, epoch: int) -> float:
        """MultiStepLR in closed form, so the rate survives optimizer rebuilds after prune/grow."""
        return self.learning_rate * self.sched_factor ** sum(1 for m in self.sched_milestones if epoch >= m)


# ---- loss ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LossConf(Section):
    rgb_weight: float
    ssim_weight: float
    vgg_feature_weight: float
    vgg_weights_path: str
    lbs_weight: float
    flame_distance_chunk: int

    COMPAT_KEYS = ("eikonal_weight", "sdf_consistency_weight")
    NON_NEGATIVE = ("rgb_weight", "ssim_weight", "vgg_feature_weight", "lbs_weight")
    AT_LEAST_ONE = ("flame_distance_chunk",)


# ---- dataset -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SplitConf(Section):
    sub_dir: tuple[str, ...]
    img_res: tuple[int, ...]
    subsample: int | tuple[int, ...]
    load_images: bool

    def check(self) -> list[tuple[str, str]]:
        if not (len(self.img_res) == 2 and all(isinstance(v, int) and v > 0 for v in self.img_res)):
            return [("img_res", f"must be [height, width] in pixels, got {list(self.img_res)!r}")]
        if isinstance(self.subsample, int) and self.subsample < 1:
            return [("subsample", f"must be a step of at least 1 (or a list of frames), got {self.subsample}")]
        return []


@dataclass(frozen=True)
class DatasetConf(Section):
    data_folder: str
    subject_name: str
    json_name: str
    use_mean_expression: bool
    use_var_expression: bool
    canonical_pose: float
    use_background: bool
    synthetic: bool
    synthetic_frames: int
    synthetic_seed: int
    train: SplitConf
    test: SplitConf

    NON_NEGATIVE = ("synthetic_seed",)
    AT_LEAST_ONE = ("synthetic_frames",)

    def split(self, name: str) -> SplitConf:
        return {"train": self.train, "test": self.test}[name]


# ---- evaluation ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvaluationConf(Section):
    test_fit_steps: int
    fit_camera_translation: bool
    lpips_alexnet_path: str
    lpips_lin_path: str
    video_fps: float
    turntable_frames: int

    NON_NEGATIVE = ("test_fit_steps",)
    POSITIVE = ("video_fps",)
    AT_LEAST_ONE = ("turntable_frames",)


# ---- model ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CanonicalNetworkConf(Section):
    """`model.geometry_network`: the canonical (appearance) network."""

    dims: tuple[int, ...]
    geometric_init: bool
    skip_in: tuple[int, ...]
    weight_norm: bool
    multires: int

    # d_in is always 3 (a point); d_out/feature_vector_size name SDF outputs of PointAvatar that the
    # four heads replace; bias is the SDF init's offset, not applied (see networks.CanonicalNetwork).
    COMPAT_KEYS = ("d_in", "d_out", "feature_vector_size", "bias")
    NON_NEGATIVE = ("skip_in", "multires")
    AT_LEAST_ONE = ("dims",)


@dataclass(frozen=True)
class DeformerNetworkConf(Section):
    dims: tuple[int, ...]
    weight_norm: bool
    multires: int
    num_exp: int
    ghostbone: bool
    deform_c: bool

    COMPAT_KEYS = ("d_in",)
    NON_NEGATIVE = ("multires",)
    AT_LEAST_ONE = ("dims", "num_exp")


@dataclass(frozen=True)
class GaussianNetworkConf(Section):
    dims: tuple[int, ...]
    weight_norm: bool

    COMPAT_KEYS = ("d_in", "feature_vector_size", "d_out", "multires_view", "multires_pnts")
    AT_LEAST_ONE = ("dims",)


@dataclass(frozen=True)
class RenderingNetworkConf(Section):
    """`model.rendering_network` of the paper's confs: colour comes from the canonical network."""

    COMPAT_KEYS = ("d_in", "feature_vector_size", "d_out", "dims", "weight_norm", "multires_view", "multires_pnts")


@dataclass(frozen=True)
class PointSchedule(Section):
    """`model.point_cloud`: the coarse-to-fine schedule of the point set and its radius."""

    n_init_points: int
    max_points: int
    init_radius: float  # radius of the initial sphere of points
    radius_factor: float  # point radius = radius_factor * 0.75 ** log2(n / 100) at the start
    schedule_epochs: tuple[int, ...]
    schedule_points: tuple[int, ...]
    radius_factors: tuple[float, ...]
    late_radius_every: int
    late_radius_factor: float
    fine_noise_epoch: int
    fine_noise: float

    POSITIVE = ("init_radius", "radius_factor", "radius_factors", "late_radius_factor")
    NON_NEGATIVE = ("schedule_epochs", "late_radius_every", "fine_noise")
    AT_LEAST_ONE = ("n_init_points", "max_points", "schedule_points")

    def check(self) -> list[tuple[str, str]]:
        lengths = (len(self.schedule_epochs), len(self.schedule_points), len(self.radius_factors))
        if len(set(lengths)) != 1:
            return [("schedule_epochs", "schedule_epochs, schedule_points and radius_factors must have the same "
                                        f"length (got {lengths[0]}, {lengths[1]}, {lengths[2]})")]
        if list(self.schedule_epochs) != sorted(self.schedule_epochs):
            return [("schedule_epochs", f"must be increasing, got {list(self.schedule_epochs)}")]
        return []

    def initial_radius(self) -> float:
        return self.radius_factor * 0.75 ** math.log2(self.n_init_points / 100)

    def target_points(self, epoch: int) -> int:
        """How many points epoch `epoch` trains with."""
        index = bisect.bisect_right(list(self.schedule_epochs), epoch) - 1
        target = self.n_init_points if index < 0 else self.schedule_points[index]
        return min(target, self.max_points)

    @property
    def last_growth_epoch(self) -> int:
        """The epoch at which the point count reaches its last target (0 without a schedule)."""
        return self.schedule_epochs[-1] if self.schedule_epochs else 0

    def radius_factor_at(self, epoch: int) -> float:
        """Factor applied to the radius at the start of `epoch`."""
        if epoch in self.schedule_epochs:
            return self.radius_factors[list(self.schedule_epochs).index(epoch)]
        if epoch > self.last_growth_epoch and self.late_radius_every > 0 and epoch % self.late_radius_every == 0:
            return self.late_radius_factor
        return 1.0

    def noise_size(self, epoch: int, radius: float) -> float:
        """New points are copies of survivors plus uniform noise in [-size/2, size/2]."""
        return self.fine_noise if epoch > self.fine_noise_epoch else radius


@dataclass(frozen=True)
class ModelConf(Section):
    prune_thresh: float
    rasterizer: str
    flame_model_path: str
    flame_landmark_path: str
    max_scale: float
    rotate_gaussians: bool
    point_colors: bool
    shading: bool
    recompute: str
    recompute_chunk: int
    geometry_network: CanonicalNetworkConf
    rendering_network: RenderingNetworkConf
    gaussian_network: GaussianNetworkConf
    deformer_network: DeformerNetworkConf
    point_cloud: PointSchedule

    NON_NEGATIVE = ("prune_thresh",)
    POSITIVE = ("max_scale",)
    AT_LEAST_ONE = ("recompute_chunk",)

    def check(self) -> list[tuple[str, str]]:
        if self.recompute not in ("auto", "on", "off"):
            return [("recompute", f"must be auto, on or off, got {self.recompute!r}")]
        return []


# ---- the whole configuration ---------------------------------------------------------------------

SECTIONS: dict[str, type[Section]] = {"train": TrainConf, "loss": LossConf, "dataset": DatasetConf,
                                      "evaluation": EvaluationConf, "model": ModelConf}


@dataclass(frozen=True)
class Conf:
    """A validated configuration: one typed object per section, plus the merged tree it came from
    (written as the experiment's `runconf.conf`) and the name of its source."""

    train: TrainConf
    loss: LossConf
    dataset: DatasetConf
    evaluation: EvaluationConf
    model: ModelConf
    tree: ConfigTree = field(repr=False, compare=False)
    source: str = field(default="", compare=False)

    @classmethod
    def from_tree(cls, tree: ConfigTree, source: str) -> "Conf":
        sections = {name: section.from_tree(tree[name], name, source) for name, section in SECTIONS.items()}
        return cls(tree=tree, source=source, **sections)


def section_keys(section: type[Section]) -> set[str]:
    """Every conf key a section accepts: its fields' keys and its compatibility keys."""
    return {conf_key(f) for f in fields(section)} | set(section.COMPAT_KEYS)
