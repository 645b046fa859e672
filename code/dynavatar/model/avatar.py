"""The avatar: canonical Gaussians, their expression-guided deformation to a frame, and rendering.

One frame's data flow (each arrow one call here):
points -> canonical network (logits) -> deformer (E, P, W, d) -> undo the canonical FLAME frame and
apply the frame's (LBS) -> gaussian network on the offset -> activations (colours lit by the turned
normal with `model.shading`) -> rasterize per frame (`rendering.render_gaussians`).

What does not depend on the frame (the canonical FLAME frame, the canonical state) is kept in a
`CanonicalCache` while the avatar cannot change; see its docstring for who clears it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Protocol, Sequence

import torch
from torch import nn

from ..cameras import Camera, imavatar_camera, imavatar_cameras
from ..config import ModelConf
from ..data.batch import FrameBatch
from ..flame import FLAME
from ..flame.mesh import outward_winding, vertex_normals
from ..flame.lbs import (apply_transforms, blend_transforms, blendshape_offsets, coordinate_major, corrective_offsets,
                         inverse_points, polar_rotation, with_ghost_bone)
from ..render import RasterStats
from ..render.projection import quaternion_left_matrix, rotation_to_quaternion
from ..runtime import constant
from .canonical_cache import CanonicalCache
from .compiled import StepCompiler
from .gaussians import Gaussians
from .nearest import nearest_vertex
from .networks import (CanonicalAttributes, CanonicalNetwork, DeformerNetwork, DeformerOutput, GaussianNetwork,
                       products_apart)
from .pose_graph import PoseGraphs, can_record
from .precision import NetworkPrecision
from .recompute import RecomputePolicy, activation_bytes
from .rendering import render_gaussians
from .shading import Shading
from .step_graphs import StepGraphs


@dataclass
class CanonicalState:
    """What the avatar's frames share: the canonical Gaussians' logits and their deformation bases."""

    logits: CanonicalAttributes  # [N, ...]
    deformer: DeformerOutput  # [N, ...] on the points (gradients reach them)
    shifted: torch.Tensor  # x' = x + d [N, 3]
    unposed: torch.Tensor  # x0: x' with the canonical frame undone [N, 3]
    prior: DeformerOutput | None = None  # the deformer on the detached points, for the FLAME priors
    rotation: torch.Tensor | None = None  # [N, 3, 3] canonical skinning rotation (with rotate_gaussians)
    nearest: torch.Tensor | None = None  # [N] long: each x's nearest canonical FLAME vertex (priors, shading)
    normals: torch.Tensor | None = None  # [N, 3] nearest vertex's normal, canonical turn undone (with shading)
    reused: bool = False  # kept in the avatar's cache and shared by the frames posed from it (`for_reuse`)

    def for_reuse(self) -> "CanonicalState":
        """The same state with its per-point bases laid out for the per-frame products (no copy per frame),
        marked `reused`."""
        d = self.deformer
        deformer = DeformerOutput(d.shapedirs.contiguous(), coordinate_major(d.posedirs), d.lbs_weights.contiguous(),
                                  d.offset)
        return CanonicalState(self.logits, deformer, self.shifted, self.unposed.contiguous(), self.prior, self.rotation,
                              self.nearest, self.normals, reused=True)


@dataclass
class PriorQuery:
    """What the FLAME priors compare: deformer outputs (no gradient to the points) and each point's
    nearest canonical FLAME vertex."""

    deformer: DeformerOutput  # [N, ...]
    nearest: torch.Tensor  # [N] long


class PriorTerms(Protocol):
    """Loss terms on what the FLAME priors compare, as a function of tensors (the losses' `FlamePrior`):
    `terms(deformer [N, ...], nearest [N]) -> one 0-dim tensor per name`. A training step replayed
    from CUDA graphs computes them inside its recording; `reads()` identifies the tensors they read
    in place (a change records the step again)."""

    names: tuple[str, ...]

    def __call__(self, deformer: DeformerOutput, nearest: torch.Tensor) -> tuple[torch.Tensor, ...]: ...

    def reads(self) -> tuple: ...


@dataclass
class AvatarOutput:
    rgb: torch.Tensor  # [B, H, W, 3]
    alpha: torch.Tensor  # [B, H, W]
    depth: torch.Tensor | None  # [B, H, W] alpha-weighted camera depth (None unless asked for)
    gaussians: Gaussians  # [B, N, ...]
    prior: PriorQuery | None = None
    raster: RasterStats | None = None  # [B, N, ...] the rasterizer's per-Gaussian statistics (means2d's .grad
    #                                    after backward: dL/d(pixel position), for densification)
    prior_terms: dict[str, torch.Tensor] = field(default_factory=dict)  # `PriorTerms`' values, by name


def _tensors(out) -> tuple[torch.Tensor, ...]:
    """The fields of a dataclass of tensors, in order (not `astuple`, which copies them)."""
    return tuple(getattr(out, f.name) for f in fields(out))


def _prior_values(state: CanonicalState, with_prior: bool, prior_terms: PriorTerms | None) -> tuple[torch.Tensor, ...]:
    """What a step gives beside the Gaussians, as tensors (a recording's outputs): nothing, what the
    FLAME priors compare (the deformer's outputs, then the nearest vertices), or `prior_terms`' values."""
    if not with_prior:
        return ()
    if prior_terms is None:
        return (*_tensors(state.prior), state.nearest)
    return tuple(prior_terms(state.prior, state.nearest))


def _prior_outputs(values: Sequence[torch.Tensor], with_prior: bool, prior_terms: PriorTerms | None
                   ) -> tuple[PriorQuery | None, dict[str, torch.Tensor]]:
    """`_prior_values`' tensors as the output's `prior` and `prior_terms`."""
    if not with_prior:
        return None, {}
    if prior_terms is None:
        return PriorQuery(DeformerOutput(*values[:-1]), values[-1]), {}
    return None, dict(zip(prior_terms.names, values))


def initial_points(n: int, radius: float, generator: torch.Generator) -> torch.Tensor:
    """n points [n, 3] on a sphere: a uniform cube sample pushed onto the sphere."""
    cube = torch.rand(n, 3, generator=generator) * 2.0 - 1.0
    return torch.nn.functional.normalize(cube, dim=1) * radius


class Avatar(nn.Module):
    """Animatable Gaussian head avatar (MonoGaussianAvatar).

    Persistent state (what checkpoints hold): the points, the three networks, the point radius
    (set by the training strategy), the canonical expression and pose, the subject's FLAME shape,
    (with `use_background`) the background and (with `model.shading`) the lighting's coefficients.

    `canonical_cache` keeps what does not depend on the frame while the avatar cannot change.
    `set_points`, `set_point_radius` and `load_state_dict` clear it; whoever changes the weights
    or buffers in place otherwise while the avatar is frozen must call `canonical_cache.clear()`.
    `nearest_chunk` (conf `loss.flame_distance_chunk`) is how many points the nearest-FLAME-vertex
    search takes at a time.
    """

    def __init__(self, model_conf: ModelConf, flame: FLAME, shape_params: torch.Tensor,
                 canonical_expression: torch.Tensor, canonical_jaw: float, img_res: Sequence[int],
                 use_background: bool = False, seed: int = 0, *, nearest_chunk: int) -> None:
        super().__init__()
        self.flame = flame
        self.img_res = (int(img_res[0]), int(img_res[1]))  # (H, W)
        self.max_scale = model_conf.max_scale
        self.rasterizer = model_conf.rasterizer
        self.rotate_gaussians = model_conf.rotate_gaussians
        self.nearest_chunk = int(nearest_chunk)
        self.recompute = RecomputePolicy(model_conf.recompute, model_conf.recompute_chunk)
        self.precision = NetworkPrecision(model_conf.network_precision)
        self.compiler = StepCompiler(model_conf.compile)
        self.cuda_graphs = model_conf.cuda_graphs
        self.training_graphs = StepGraphs() if model_conf.training_graphs else None
        self.shading = Shading() if model_conf.shading else None
        self.shading_normals = model_conf.shading_normals  # "skinned" | "flame"
        self.canonical_net = CanonicalNetwork(**asdict(model_conf.geometry_network))
        self.deformer = DeformerNetwork(n_joints=flame.n_joints, **asdict(model_conf.deformer_network))
        gaussian_conf = model_conf.gaussian_network
        self.gaussian_net = GaussianNetwork(gaussian_conf.dims, gaussian_conf.weight_norm)
        self.gaussian_input = gaussian_conf.input  # "posed" | "nonrigid": what gaussian_net sees of a point's motion
        schedule = model_conf.point_cloud
        generator = torch.Generator().manual_seed(seed)
        self.points = nn.Parameter(initial_points(schedule.n_init_points, schedule.init_radius, generator))
        if model_conf.point_colors:  # colour-logit offsets [N, 3] that follow the points through prune/grow
            self.point_color = nn.Parameter(torch.zeros(schedule.n_init_points, 3))
        # The smallest Gaussian extent, added to every scale: set by the training strategy (which may
        # shrink it) or loaded from a checkpoint. float64, so that its repeated shrinking rounds as a
        # Python float does.
        self.register_buffer("point_radius", torch.tensor(0.0, dtype=torch.float64))
        num_exp = self.deformer.num_exp
        expression = torch.zeros(num_exp)
        expression[: min(num_exp, canonical_expression.numel())] = canonical_expression.reshape(-1)[:num_exp]
        self.register_buffer("canonical_expression", expression)  # [E]
        # The subject's FLAME shape [100] (already baked into `flame`), kept so that checkpoints are
        # self-contained for evaluation and reenactment.
        self.register_buffer("shape_params", torch.as_tensor(shape_params, dtype=torch.float32).reshape(-1).clone())
        self.register_buffer("canonical_pose", flame.canonical_pose(canonical_jaw)[0].cpu())  # [15]
        self.use_background = use_background
        if use_background:
            self.background = nn.Parameter(torch.zeros(*self.img_res, 3))
        self.canonical_cache = CanonicalCache()

    # ---- what may change, and the cache of what follows from it ----------------------------------

    def is_frozen(self) -> bool:
        """Whether the avatar cannot change now: no gradient is recorded, or every parameter is frozen
        (evaluation, animation, fitting test-frame inputs)."""
        return not torch.is_grad_enabled() or not any(p.requires_grad for p in self.parameters())

    def _built_on(self) -> tuple:
        """The device and dtype of the avatar's parameters and buffers (a move changes them)."""
        return (self.points.device, self.points.dtype, self.canonical_expression.device,
                self.canonical_expression.dtype)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        finally:  # also after a failed load, which may have copied part of the state
            self.canonical_cache.clear()

    def compiled(self, name: str, fn: Callable, device: torch.device) -> Callable:
        """`fn` compiled by `model.compile` while training; as it is while the avatar is frozen. An
        evaluation or animation loads its avatar anew, and a new avatar's networks would compile
        again (weight norm gives each its own class), for every checkpoint evaluated."""
        if not self.compiler.enabled(device) or self.is_frozen():
            return fn
        return self.compiler(name, fn, device)

    # ---- canonical FLAME frame -------------------------------------------------------------------

    def canonical_flame(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(canonical vertices [V, 3], pose feature [1, 36], transforms with ghost bone [1, J + 1, 4, 4]).

        Depends on buffers only: computed once and kept in `canonical_cache`.
        """
        return self.canonical_cache.get("flame", self._built_on(), self._compute_canonical_flame)

    def _compute_canonical_flame(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            out = self.flame(self.canonical_expression[None], self.canonical_pose[None])
        transforms = with_ghost_bone(out.transforms) if self.deformer.ghostbone else out.transforms
        return out.vertices[0], out.pose_feature, transforms

    def canonical_winding(self) -> torch.Tensor:
        """Per-face sign [F] that turns FLAME's faces outwards (`outward_winding` of the canonical mesh)."""
        return self.canonical_cache.get("winding", self._built_on(),
                                        lambda: outward_winding(self.canonical_flame()[0], self.flame.faces))

    def canonical_normals(self) -> torch.Tensor:
        """Outward vertex normals [V, 3] of the canonical FLAME mesh (kept with `canonical_flame`)."""
        return self.canonical_cache.get("normals", self._built_on(), lambda: vertex_normals(
            self.canonical_flame()[0], self.flame.faces, self.canonical_winding()))

    # ---- points ----------------------------------------------------------------------------------

    @property
    def n_points(self) -> int:
        return int(self.points.shape[0])

    def set_points(self, points: torch.Tensor, source: torch.Tensor | None = None) -> None:
        """Replace the point set (after prune/grow, or when loading a checkpoint). `source` [M] names
        the old point each new one copies (per-point attributes follow it); without it they restart."""
        device = self.points.device
        if self.has_point_colors:
            colors = (self.point_color.detach()[source.to(device)] if source is not None
                      else torch.zeros(points.shape[0], 3, device=device))
            self.point_color = nn.Parameter(colors.clone())
        self.points = nn.Parameter(points.detach().clone().to(device))
        self.canonical_cache.clear()

    @property
    def has_point_colors(self) -> bool:
        return "point_color" in self._parameters

    def set_point_radius(self, radius: float) -> None:
        self.point_radius.fill_(radius)
        self.canonical_cache.clear()

    # ---- deformation -----------------------------------------------------------------------------

    def canonical_state(self, with_prior: bool = False, nearest_chunk: int | None = None,
                        frames: int = 1) -> CanonicalState:
        """What does not depend on the frame: canonical logits, the deformer's outputs, x' and x0.

        While the avatar cannot change (`is_frozen`), the state is computed once and kept in
        `canonical_cache`. Computed for training (with gradients to the parameters), it is never
        kept, and a kept one is dropped: an optimizer step may follow. With `with_prior`, the
        deformer is also evaluated on the detached points (in the same call) for the FLAME priors,
        which must not move the points. The nearest canonical FLAME vertices (priors, shading) are
        searched `nearest_chunk` points at a time (default the avatar's). `frames`, the frames of
        the step, enters the estimate that decides activation recomputation (`model.recompute`).
        """
        chunk = nearest_chunk or self.nearest_chunk
        if self.is_frozen():
            if with_prior:
                return self._compute_canonical_state(True, chunk, recompute=False)
            return self.canonical_cache.get(
                "state", self._built_on(), lambda: self._compute_canonical_state(False, chunk, False).for_reuse())
        return self._compute_canonical_state(with_prior, chunk, self._training_recomputes(with_prior, frames))

    def _training_recomputes(self, with_prior: bool, frames: int) -> bool:
        """Whether a training step of `frames` frames recomputes the networks' activations
        (`model.recompute`). The kept state is dropped first: an optimizer step may follow."""
        self.canonical_cache.discard("state")
        self.canonical_cache.discard("pose_graphs")  # recorded on the dropped state's tensors
        estimate = activation_bytes(self.n_points, frames, with_prior, self.canonical_net, self.deformer,
                                    self.gaussian_net, self.points.element_size())
        return self.recompute.decide(estimate, self.points.device, self.n_points)

    def _compute_canonical_state(self, with_prior: bool, nearest_chunk: int, recompute: bool) -> CanonicalState:
        _, canonical_feature, canonical_transforms = self.canonical_flame()
        n = self.n_points

        def run(name: str, net: nn.Module, x: torch.Tensor):
            return self.run_network(name, net, x, recompute)

        logits = run("canonical_net", self.canonical_net, self.points.detach())
        if self.has_point_colors:
            logits = CanonicalAttributes(logits.color + self.point_color, logits.scale, logits.rotation, logits.opacity)
        if with_prior and products_apart(self.points.device):
            # Two calls: the gradients of one call on both meet in a concatenation of 2N rows of every
            # output (0.4 GB of memory traffic a step at 100k points).
            deformer = run("deformer", self.deformer, self.points)
            prior = run("deformer_prior", self.deformer, self.points.detach())
        elif with_prior:  # one call for both: rows [:N] carry gradients to the points, rows [N:] do not
            deformer, prior = run("deformer", self.deformer, torch.cat([self.points, self.points.detach()])).split(n)
        else:
            deformer, prior = run("deformer", self.deformer, self.points), None
        shifted = self.points + deformer.offset  # x'
        unposed = inverse_points(shifted, self.canonical_expression[None], canonical_feature, canonical_transforms,
                                 deformer.shapedirs, deformer.posedirs, deformer.lbs_weights)[0]  # x0 [N, 3]
        rotation = nearest = normals = None
        if self.rotate_gaussians or self.shading is not None:  # each point's skinning in the canonical frame
            canonical_blend = blend_transforms(deformer.lbs_weights, canonical_transforms)[0, :, :3, :3]  # [N, 3, 3]
        if self.rotate_gaussians:  # the canonical frame's turn of each point, undone before a frame's
            rotation = polar_rotation(canonical_blend)
        if with_prior or self.shading is not None:
            nearest = self.nearest_flame_vertex(shifted, nearest_chunk)
        if self.shading is not None:
            # The nearest vertex's normal with the canonical frame's turn undone (its transpose: blends of
            # joint rotations are near rotations). No gradient: normals steer the lighting, not the skinning.
            with torch.no_grad():
                normals = (canonical_blend.transpose(-1, -2) @ self.canonical_normals()[nearest][..., None])[..., 0]
                normals = torch.nn.functional.normalize(normals, dim=-1)
        return CanonicalState(logits, deformer, shifted, unposed, prior, rotation, nearest, normals)

    def posed(self, expression: torch.Tensor, flame_pose: torch.Tensor, with_prior: bool = False,
              nearest_chunk: int | None = None) -> tuple[Gaussians, PriorQuery | None]:
        """Gaussians [B, N, ...] of the frames given by expression [B, E] and FLAME pose [B, 15], and with
        `with_prior` what the FLAME priors compare (`canonical_state`, then `pose`)."""
        gaussians, prior, _ = self._posed(expression, flame_pose, with_prior, nearest_chunk, None)
        return gaussians, prior

    def _posed(self, expression: torch.Tensor, flame_pose: torch.Tensor, with_prior: bool,
               nearest_chunk: int | None, prior_terms: PriorTerms | None
               ) -> tuple[Gaussians, PriorQuery | None, dict[str, torch.Tensor]]:
        """`posed`, and with `prior_terms` (which implies `with_prior`) their values instead of what
        they compare.

        While training on a GPU with `model.training_graphs` and without recomputation, all of it (the
        networks, the canonical state, the posing, the prior terms) is replayed from one recording:
        one launch for several hundred kernels, and no copies between recordings."""
        chunk = nearest_chunk or self.nearest_chunk
        with_prior = with_prior or prior_terms is not None
        frames = expression.shape[0]
        if self.is_frozen():
            state = self.canonical_state(with_prior, chunk, frames)
        else:
            recompute = self._training_recomputes(with_prior, frames)
            if not recompute and self.replays_training(expression.device):
                return self._replayed_step(with_prior, chunk, expression, flame_pose, prior_terms)
            state = self._compute_canonical_state(with_prior, chunk, recompute)
        gaussians = self.pose(state, expression, flame_pose)
        return gaussians, *_prior_outputs(_prior_values(state, with_prior, prior_terms), with_prior, prior_terms)

    def _replayed_step(self, with_prior: bool, nearest_chunk: int, expression: torch.Tensor,
                       flame_pose: torch.Tensor, prior_terms: PriorTerms | None
                       ) -> tuple[Gaussians, PriorQuery | None, dict[str, torch.Tensor]]:
        """`_posed` replayed from the training step's CUDA graphs: the frames' inputs are the recording's
        inputs, the avatar's parameters its parameters; the canonical FLAME frame (kept in
        `canonical_cache`), the point radius and the prior terms' tensors it reads in place, and it is
        recorded again when they move."""
        def step(expression: torch.Tensor, flame_pose: torch.Tensor) -> tuple[torch.Tensor, ...]:
            state = self._compute_canonical_state(with_prior, nearest_chunk, recompute=False)
            return (*_tensors(self._pose(state, expression, flame_pose)),
                    *_prior_values(state, with_prior, prior_terms))

        self.training_graphs.discard("pose")  # a recomputing step's, with its activations
        read = (*self.canonical_flame(), *((self.canonical_normals(),) if self.shading is not None else ()))
        terms_read = None if prior_terms is None else (prior_terms.names, prior_terms.reads())
        outputs = self.training_graphs.replay(
            "step", self, step, (expression, flame_pose),
            read_in_place=(with_prior, nearest_chunk, terms_read, self.point_radius.data_ptr(),
                           *(t.data_ptr() for t in read)))
        n_gaussians = len(fields(Gaussians))
        return (Gaussians(*outputs[:n_gaussians]),
                *_prior_outputs(outputs[n_gaussians:], with_prior, prior_terms))

    def pose(self, state: CanonicalState, expression: torch.Tensor, flame_pose: torch.Tensor) -> Gaussians:
        """Gaussians [B, N, ...] of the frames given by expression [B, E] and FLAME pose [B, 15]
        (compiled with `model.compile` while training; replayed from CUDA graphs while training on a
        GPU with `model.training_graphs`, and from CUDA graphs of the cached state with
        `model.cuda_graphs` when rendering without gradients on a GPU)."""
        device = expression.device
        if self.cuda_graphs and state.reused and can_record(device):
            graphs = self.canonical_cache.get("pose_graphs", (self._built_on(), id(state)),
                                              lambda: PoseGraphs(self._pose, state))
            return graphs(expression, flame_pose)
        if self.replays_training(device):
            return self._replayed_pose(state, expression, flame_pose)
        return self.compiled("pose", self._pose, device)(state, expression, flame_pose)

    def replays_training(self, device: torch.device) -> bool:
        """Whether this step's networks and posing are replayed from CUDA graphs (`model.training_graphs`):
        on a GPU, with gradients, the avatar not frozen, without `model.compile`."""
        return (self.training_graphs is not None and self.training_graphs.applies(device)
                and not self.compiler.enabled(device) and not self.is_frozen())

    def _replayed_pose(self, state: CanonicalState, expression: torch.Tensor, flame_pose: torch.Tensor
                       ) -> Gaussians:
        """`_pose` replayed from the training step's CUDA graphs. What the posing reads of the state
        becomes the recording's inputs; the Gaussian network and the shading are its parameters;
        the point radius it reads in place (`set_point_radius` fills it)."""
        logits, deformer = state.logits, state.deformer
        optional = tuple(name for name in ("rotation", "nearest", "normals") if getattr(state, name) is not None)
        inputs = (expression, flame_pose, *_tensors(logits), *_tensors(deformer), state.shifted, state.unposed,
                  *(getattr(state, name) for name in optional))
        n_logits, n_deformer = len(fields(logits)), len(fields(deformer))
        # Types only: the recording keeps this function, and the state's tensors would hold their step's graph.
        logits_type, deformer_type = type(logits), type(deformer)

        def posing(expression: torch.Tensor, flame_pose: torch.Tensor, *tensors: torch.Tensor) -> Gaussians:
            rebuilt = CanonicalState(
                logits_type(*tensors[:n_logits]), deformer_type(*tensors[n_logits:n_logits + n_deformer]),
                *tensors[n_logits + n_deformer:n_logits + n_deformer + 2],
                **dict(zip(optional, tensors[n_logits + n_deformer + 2:])))
            return self._pose(rebuilt, expression, flame_pose)

        holder = nn.ModuleList([self.gaussian_net] + ([self.shading] if self.shading is not None else []))
        self.training_graphs.discard("step")  # the whole step's, whose activations this step recomputes
        return Gaussians(*self.training_graphs.replay("pose", holder, lambda *x: _tensors(posing(*x)), inputs,
                                                      read_in_place=(self.point_radius.data_ptr(),)))

    def _pose(self, state: CanonicalState, expression: torch.Tensor, flame_pose: torch.Tensor) -> Gaussians:
        pose_feature, transforms = self.flame.transforms_only(expression, flame_pose)
        if self.deformer.ghostbone:
            transforms = with_ghost_bone(transforms)
        deformer, logits = state.deformer, state.logits
        shaped = (state.unposed[None] + blendshape_offsets(expression[:, : self.deformer.num_exp], deformer.shapedirs)
                  + corrective_offsets(pose_feature, deformer.posedirs))  # [B, N, 3]
        blended = blend_transforms(deformer.lbs_weights, transforms)  # [B, N, 4, 4]
        posed = apply_transforms(blended, shaped)
        # The paper's network input is x_t - x': the head's turn and shift included, so a head turned
        # beyond the training range is also an input beyond it. "nonrigid" gives it only the
        # expression's and the pose correctives' offsets in the canonical frame.
        motion = posed - state.shifted[None] if self.gaussian_input == "posed" else shaped - state.unposed[None]
        # Launched here: compiled with the whole posing (`model.compile`), or recorded with it.
        offsets = self.precision(self.gaussian_net, motion.detach())  # [B, N, ...]
        quats = torch.nn.functional.normalize(logits.rotation[None] + offsets.rotation, dim=-1)
        colors = torch.sigmoid(logits.color[None] + offsets.color)
        if state.rotation is not None:  # turn = R(frame) R(canonical)^T, applied on the left: q_turn * q
            turn = polar_rotation(blended[..., :3, :3]) @ state.rotation.transpose(-1, -2)
            quats = (quaternion_left_matrix(rotation_to_quaternion(turn)) @ quats[..., None])[..., 0]
        if state.normals is not None:  # albedo x the lighting of the point's normal in the frame
            with torch.no_grad():
                normals = self._frame_normals(state, blended, expression, flame_pose)  # [B, N, 3]
            colors = (colors * self.shading(normals)).clamp(0.0, 1.0)
        return Gaussians(
            means=posed,
            quats=quats,
            scales=torch.sigmoid(logits.scale[None] + offsets.scale) * self.max_scale + self.point_radius,
            opacities=torch.sigmoid(logits.opacity[None] + offsets.opacity)[..., 0],
            colors=colors,
        )

    def _frame_normals(self, state: CanonicalState, blended: torch.Tensor, expression: torch.Tensor,
                       flame_pose: torch.Tensor) -> torch.Tensor:
        """The normals [B, N, 3] that `model.shading` lights: `skinned`, each point's canonical normal
        turned by its skinning `blended` [B, N, 4, 4] (renormalised blend instead of its polar factor:
        close enough for lighting); `flame`, the normal of its nearest vertex on FLAME's mesh posed
        with the frame's expression and pose, which a smile bends as well as a turn."""
        if self.shading_normals == "flame":
            vertices = self.flame(expression, flame_pose).vertices  # [B, V, 3]
            return vertex_normals(vertices, self.flame.faces, self.canonical_winding())[:, state.nearest]
        return torch.nn.functional.normalize((blended[..., :3, :3] @ state.normals[None, ..., None])[..., 0], dim=-1)

    def run_network(self, name: str, net: nn.Module, x: torch.Tensor, recompute: bool = False):
        """A per-point network `name` on x in the avatar's precision: with its activations recomputed in
        the backward pass (`recompute`), compiled (`model.compile`), or launched."""
        if recompute:
            return self.recompute.run(self.precision.bind(self.compiled(name, net, x.device)), x, True)
        if self.compiler.enabled(x.device):
            return self.precision(self.compiled(name, net, x.device), x)
        return self.precision(net, x)

    def deform(self, expression: torch.Tensor, flame_pose: torch.Tensor) -> tuple[Gaussians, torch.Tensor]:
        """Gaussians of the frames given by expression [B, E] and FLAME pose [B, 15] -> (Gaussians [B, N, ...], x' [N, 3])."""
        state = self.canonical_state()
        return self.pose(state, expression, flame_pose), state.shifted

    def deformation_bases(self, points: torch.Tensor) -> DeformerOutput:
        """The deformer's outputs [M, ...] at canonical points [M, 3], in the networks' precision."""
        return self.precision(self.deformer, points)

    def nearest_flame_vertex(self, shifted: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """The nearest canonical FLAME vertex [N] of each x' [N, 3] (`model.nearest.nearest_vertex`: on a
        CPU searched in chunks of `chunk` points, default the avatar's `nearest_chunk`)."""
        vertices, _, _ = self.canonical_flame()
        return nearest_vertex(shifted.detach(), vertices, chunk or self.nearest_chunk)

    # ---- rendering -------------------------------------------------------------------------------

    def camera(self, world_mat: torch.Tensor, intrinsics: torch.Tensor) -> Camera:
        """The rasterizer camera of one frame (world_mat [3, 4], intrinsics [4]) at this avatar's resolution."""
        return imavatar_camera(world_mat, intrinsics, width=self.img_res[1], height=self.img_res[0])

    def background_for(self, gaussians: Gaussians) -> torch.Tensor:
        """What the Gaussians are drawn over: the learnt background image [H, W, 3] (`use_background`), else white [3]."""
        if self.use_background:
            return self.background
        return constant((1.0,) * 3, gaussians.means.dtype, gaussians.means.device)

    def render(self, gaussians: Gaussians, cameras: Sequence[Camera], depth: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Rasterize the frames of `gaussians` [B, N, ...], one camera each. Returns rgb [B, H, W, 3],
        alpha [B, H, W], depth [B, H, W] (None without `depth`)."""
        rgb, alpha, depth, _ = render_gaussians(gaussians, cameras, self.background_for(gaussians), self.rasterizer,
                                                depth)
        return rgb, alpha, depth

    def forward(self, batch: FrameBatch, with_prior: bool = False, prior_chunk: int | None = None,
                depth: bool = False, prior_terms: PriorTerms | None = None) -> AvatarOutput:
        """Render the frames of a batch (its expressions, FLAME poses and cameras). With `with_prior`,
        the output also carries what the FLAME priors compare (`AvatarOutput.prior`; the nearest
        vertices are searched `prior_chunk` points at a time, default the avatar's `nearest_chunk`);
        with `prior_terms`, their values instead (`AvatarOutput.prior_terms`, computed inside a
        replayed training step); with `depth`, the alpha-weighted depth."""
        gaussians, prior, terms = self._posed(batch.expression, batch.flame_pose, with_prior, prior_chunk, prior_terms)
        cameras = imavatar_cameras(batch.world_mat, batch.intrinsics, width=self.img_res[1], height=self.img_res[0])
        rgb, alpha, depth, raster = render_gaussians(gaussians, cameras, self.background_for(gaussians),
                                                     self.rasterizer, depth)
        return AvatarOutput(rgb, alpha, depth, gaussians, prior, raster, terms)
