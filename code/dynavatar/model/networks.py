"""The three networks of the method: canonical (appearance), deformer (FLAME-like blendshapes and
skinning), and the gaussian deformation network (expression-dependent Gaussian attributes).

Constructor arguments are the fields of the conf sections `model.geometry_network`,
`model.deformer_network` and `model.gaussian_network` (`dynavatar.config.schema`); keys the paper's
confs carry for other networks are dropped by the config, not here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm as _weight_norm

from .linear import Linear, Softplus, linear

SKINNING_TEMPERATURE = 20.0  # softmax(20 * logits), as the reference deformer
N_POSE_FEATURES = 36
POINT_DIM = 3  # the networks take canonical points


class PositionalEncoding(nn.Module):
    """x -> [x, sin(2^k x), cos(2^k x) for k < multires] (NeRF-style, frequencies 1 .. 2^(multires-1))."""

    def __init__(self, multires: int, d_in: int = 3) -> None:
        super().__init__()
        self.register_buffer("freqs", 2.0 ** torch.arange(multires, dtype=torch.float32), persistent=False)
        self.out_dim = d_in * (1 + 2 * multires)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, d] -> [N, out_dim]
        if self.freqs.numel() == 0:
            return x
        scaled = x[..., None, :] * self.freqs[:, None]  # [N, K, d]
        return torch.cat([x, scaled.sin().flatten(-2), scaled.cos().flatten(-2)], dim=-1)


def _linear(d_in: int, d_out: int, use_weight_norm: bool, init: str = "default", std_scale: float = 2.0
            ) -> Linear:
    """A linear layer; `init='he'` is N(0, sqrt(std_scale) / sqrt(d_out)) weights and zero bias,
    `init='zero'` starts at zero (the deformer's blendshape and skinning outputs)."""
    layer = Linear(d_in, d_out)
    if init == "he":
        nn.init.normal_(layer.weight, 0.0, math.sqrt(std_scale) / math.sqrt(d_out))
        nn.init.zeros_(layer.bias)
    elif init == "zero":
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    return _weight_norm(layer) if use_weight_norm else layer


def _head(width: int, d_out: int, activation: nn.Module, extra_linear: bool = False) -> nn.Sequential:
    """An output head: Linear - activation - Linear, or Linear - activation - Linear - Linear."""
    layers = [Linear(width, width), activation] + ([Linear(width, width)] if extra_linear else [])
    return nn.Sequential(*layers, Linear(width, d_out))


def products_apart(device: torch.device) -> bool:
    """Whether outputs that a training step reads apart are computed by matrix products of their own
    rather than sliced from one product over all of them: the deformer's bases, and its rows for the
    points and for the FLAME priors (`Avatar`). On a GPU, where the slices' gradients cost memory
    traffic; elsewhere one product (on a CPU the demo's figures stay those of its documented runs)."""
    return device.type == "cuda"


def run_heads(x: torch.Tensor, heads: Sequence[nn.Sequential]) -> list[torch.Tensor]:
    """Each head's output on the features x [..., width] that they all read: on a GPU by
    `heads_together`, elsewhere one head after another (on a CPU together was not faster, and the
    CPU demo's figures stay those of its documented runs)."""
    if x.device.type != "cuda":
        return [head(x) for head in heads]
    return heads_together(x, heads)


def heads_together(x: torch.Tensor, heads: Sequence[nn.Sequential]) -> list[torch.Tensor]:
    """`[head(x) for head in heads]` (float rounding aside) with the heads' layers stacked.

    The heads' first layers run as one product with their weights stacked, [sum of widths, width],
    and one activation: one kernel of each instead of one per head, and x's gradient is one product
    rather than a sum of one per head. Where every head is Linear-activation-Linear their last
    layers are one block-diagonal product as well. The heads' own parameters are used, so the state
    dict is that of the separate heads."""
    firsts = [head[0] for head in heads]
    activation = heads[0][1]
    if any(type(head[1]) is not type(activation) for head in heads):
        raise ValueError("heads run together must share their activation")
    weight, bias = torch.cat([layer.weight for layer in firsts]), torch.cat([layer.bias for layer in firsts])
    if isinstance(activation, nn.ReLU):
        hidden = linear(x, weight, bias, relu=True)
    else:
        hidden = activation(linear(x, weight, bias))
    if all(len(head) == 3 for head in heads):
        lasts = [head[2] for head in heads]
        out = linear(hidden, torch.block_diag(*[layer.weight for layer in lasts]),
                     torch.cat([layer.bias for layer in lasts]))
        return list(out.split([layer.out_features for layer in lasts], dim=-1))
    chunks = hidden.split([layer.out_features for layer in firsts], dim=-1)
    return [head[2:](chunk) for head, chunk in zip(heads, chunks)]


@dataclass
class CanonicalAttributes:
    """Per-point logits of the canonical Gaussians (before activations)."""

    color: torch.Tensor  # [N, 3]
    scale: torch.Tensor  # [N, 3]
    rotation: torch.Tensor  # [N, 4]
    opacity: torch.Tensor  # [N, 1]


class CanonicalNetwork(nn.Module):
    """Point -> colour, scale, rotation and opacity logits (conf `geometry_network`).

    A softplus(beta=100) MLP on the positionally encoded point with a skip connection of the
    input, IDR's geometric initialisation and weight normalisation, then four heads.
    """

    def __init__(self, dims: Sequence[int] = (256,) * 7, geometric_init: bool = True, skip_in: Sequence[int] = (3,),
                 weight_norm: bool = True, multires: int = 6) -> None:
        super().__init__()
        d_in = POINT_DIM
        self.embed = PositionalEncoding(multires, d_in)
        widths = [self.embed.out_dim] + list(dims)
        self.skip_in = tuple(skip_in)
        layers = []
        for index in range(len(widths) - 1):
            d_out_layer = widths[index + 1] - (widths[0] if index + 1 in self.skip_in else 0)
            layer = Linear(widths[index], d_out_layer)
            if geometric_init:
                self._geometric_init(layer, index, widths[0], d_in, multires > 0)
            layers.append(_weight_norm(layer) if weight_norm else layer)
        self.layers = nn.ModuleList(layers)
        self.activation = Softplus(beta=100)
        width = widths[-1]
        # The reference's colour head has one more linear layer than the other heads.
        self.color_head = _head(width, 3, Softplus(beta=100), extra_linear=True)
        self.scale_head = _head(width, 3, Softplus(beta=100))
        self.rotation_head = _head(width, 4, Softplus(beta=100))
        self.opacity_head = _head(width, 1, Softplus(beta=100))

    def _geometric_init(self, layer: Linear, index: int, d_embedded: int, d_in: int, encoded: bool) -> None:
        """IDR's initialisation: the trunk starts as a smooth function of the raw coordinates."""
        d_out = layer.out_features
        # IDR gives its last layer an SDF-shaped init (weights ~ sqrt(pi)/sqrt(d), bias -bias). The
        # reference applies it to this 256-wide feature layer, whose softplus then starts (and tends to
        # stay) dead, freezing colour/scale/rotation/opacity across points; it is initialised like the
        # other layers instead (the conf's `bias` is therefore unused).
        nn.init.zeros_(layer.bias)
        nn.init.normal_(layer.weight, 0.0, math.sqrt(2) / math.sqrt(d_out))
        with torch.no_grad():
            if encoded and index == 0:
                layer.weight[:, d_in:] = 0.0  # encoded frequencies start switched off
            elif encoded and index in self.skip_in:
                layer.weight[:, -(d_embedded - d_in):] = 0.0

    def forward(self, points: torch.Tensor) -> CanonicalAttributes:  # points [N, 3]
        encoded = self.embed(points)
        x = encoded
        for index, layer in enumerate(self.layers):
            if index in self.skip_in:
                x = torch.cat([x, encoded], dim=-1) / math.sqrt(2)
            x = self.activation(layer(x))
        return CanonicalAttributes(*run_heads(x, [self.color_head, self.scale_head, self.rotation_head,
                                                  self.opacity_head]))


@dataclass
class DeformerOutput:
    """Per-point FLAME-like deformation quantities predicted from the canonical position."""

    shapedirs: torch.Tensor  # [N, 3, E] expression blendshapes
    posedirs: torch.Tensor  # [N, 36, 3] pose correctives
    lbs_weights: torch.Tensor  # [N, J (+1 ghost bone)] skinning weights, rows sum to 1
    offset: torch.Tensor  # [N, 3] canonical offset d (zeros without deform_c)

    def split(self, n: int) -> tuple["DeformerOutput", "DeformerOutput"]:
        """(outputs of the first n points, outputs of the rest), split in one operation per field."""
        parts = [t.split([n, t.shape[0] - n]) for t in (self.shapedirs, self.posedirs, self.lbs_weights, self.offset)]
        return DeformerOutput(*(p[0] for p in parts)), DeformerOutput(*(p[1] for p in parts))


class DeformerNetwork(nn.Module):
    """Canonical point -> (E, P, W, d) (conf `deformer_network`).

    Blendshape and skinning output layers start at zero, so every point starts with no
    blendshapes and uniform skinning weights.
    """

    def __init__(self, dims: Sequence[int] = (128,) * 4, weight_norm: bool = True, multires: int = 0,
                 num_exp: int = 50, ghostbone: bool = True, deform_c: bool = True, n_joints: int = 5) -> None:
        super().__init__()
        d_in = POINT_DIM
        self.num_exp, self.ghostbone, self.deform_c = num_exp, ghostbone, deform_c
        self.embed = PositionalEncoding(multires, d_in)
        widths = [self.embed.out_dim] + list(dims)
        self.layers = nn.ModuleList(_linear(widths[i], widths[i + 1], weight_norm, "he")
                                    for i in range(len(widths) - 1))
        width = widths[-1]
        n_blend = N_POSE_FEATURES * 3 + num_exp * 3 + (3 if deform_c else 0)
        self.blendshapes = _linear(width, n_blend, False, "zero")
        self.skinning_hidden = _linear(width, width, weight_norm, "he")
        self.skinning = _linear(width, n_joints + (1 if ghostbone else 0), False, "zero")
        self.activation = Softplus(beta=100)

    def forward(self, points: torch.Tensor) -> DeformerOutput:  # points [N, 3]
        x = self.embed(points)
        for layer in self.layers:
            x = self.activation(layer(x))
        n = points.shape[0]
        if products_apart(x.device):
            posedirs, shapedirs, offset = self._bases_apart(x)
        else:
            blend = self.blendshapes(x)
            n_pose = N_POSE_FEATURES * 3
            posedirs = blend[:, :n_pose].reshape(n, N_POSE_FEATURES, 3)
            shapedirs = blend[:, n_pose:n_pose + 3 * self.num_exp].reshape(n, 3, self.num_exp)
            offset = blend[:, -3:] if self.deform_c else None
        if offset is None:
            offset = torch.zeros_like(points)
        logits = self.skinning(self.activation(self.skinning_hidden(x)))
        weights = torch.softmax(SKINNING_TEMPERATURE * logits, dim=-1)
        return DeformerOutput(shapedirs, posedirs, weights, offset)

    def _bases_apart(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(posedirs [N, 36, 3], shapedirs [N, 3, E], offset [N, 3] or None) of the features x [N, width]
        from `blendshapes`' rows, one product each, in the layouts the posing contracts without a copy.

        From one product of all rows, each basis is a slice of it: its gradient is a zero-filled
        buffer of every row's width per basis, summed (at 100k points with the priors' rows about 2 GB
        of memory traffic a step), and the posing's contractions copy the sliced bases (`_contract`).
        Here each gradient reaches its own product, and the correctives come out coordinate-major
        (`coordinate_major`): the pose rows are taken in (coordinate, feature) order."""
        weight, bias = self.blendshapes.weight, self.blendshapes.bias
        n, n_pose, n_exp = x.shape[0], N_POSE_FEATURES * 3, 3 * self.num_exp
        # rows p * 3 + c (feature p, coordinate c) reordered to c * 36 + p
        pose_weight = weight[:n_pose].reshape(N_POSE_FEATURES, 3, -1).transpose(0, 1).reshape(n_pose, -1)
        pose_bias = bias[:n_pose].reshape(N_POSE_FEATURES, 3).T.reshape(-1)
        posedirs = linear(x, pose_weight, pose_bias).reshape(n, 3, N_POSE_FEATURES)
        shapedirs = linear(x, weight[n_pose:n_pose + n_exp], bias[n_pose:n_pose + n_exp]).reshape(n, 3, self.num_exp)
        offset = linear(x, weight[-3:], bias[-3:]) if self.deform_c else None
        return posedirs.transpose(1, 2), shapedirs, offset


@dataclass
class GaussianOffsets:
    """Expression-dependent offsets added to the canonical logits."""

    scale: torch.Tensor  # [..., 3]
    rotation: torch.Tensor  # [..., 4]
    opacity: torch.Tensor  # [..., 1]
    color: torch.Tensor  # [..., 3]


class GaussianNetwork(nn.Module):
    """Deformation offset of a point (x_t - x') -> offsets of its Gaussian's attributes (conf `gaussian_network`).

    A ReLU MLP and four Linear-ReLU-Linear heads.
    """

    def __init__(self, dims: Sequence[int] = (64, 64, 64), weight_norm: bool = True) -> None:
        super().__init__()
        d_in = POINT_DIM
        widths = [d_in] + list(dims)
        self.layers = nn.ModuleList(_linear(widths[i], widths[i + 1], weight_norm) for i in range(len(widths) - 1))
        width = widths[-1]
        self.scale_head = _head(width, 3, nn.ReLU())
        self.rotation_head = _head(width, 4, nn.ReLU())
        self.opacity_head = _head(width, 1, nn.ReLU())
        self.color_head = _head(width, 3, nn.ReLU())

    def forward(self, offset: torch.Tensor) -> GaussianOffsets:  # offset [..., 3]
        x = offset
        for index, layer in enumerate(self.layers):
            # no activation after the last trunk layer, as the reference
            x = linear(x, layer.weight, layer.bias, relu=index < len(self.layers) - 1)
        return GaussianOffsets(*run_heads(x, [self.scale_head, self.rotation_head, self.opacity_head,
                                              self.color_head]))
