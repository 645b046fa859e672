"""Training losses: photometric (L1, SSIM, VGG perceptual), the mask and opacity terms, and the FLAME
priors on the deformer.

`AvatarLoss.terms` computes every term a step uses from the avatar's output and the batch, and
`total` weighs them: a new term is one method here, one line in `terms` and one in `weights`, and
its weight one key of `LossConf` (config/schema.py).
"""

from __future__ import annotations

import logging

import torch

from ..config import Conf, LossConf
from ..data.batch import FrameBatch
from ..errors import ConfigError
from ..metrics import fused_ssim
from ..metrics.image import ssim_loss
from ..flame import FLAME
from ..model.avatar import Avatar, AvatarOutput
from ..model.compiled import StepCompiler
from ..model.networks import DeformerOutput
from ..runtime import constant
from .flame_prior import DIRS_PRIOR_SCALE, DIRS_VALUE_SCALE, LBS_PRIOR_SCALE, FlamePrior
from .vgg import VGGPerceptualLoss

log = logging.getLogger(__name__)


def check_loss_conf(conf: Conf) -> None:
    """Stop on a loss term whose parameters the conf's avatar lacks, before anything is loaded."""
    if conf.loss.point_color_weight > 0 and not conf.model.point_colors:
        raise ConfigError(f"{conf.source}: loss.point_color_weight > 0 weighs the per-Gaussian colour offsets, "
                          "which this avatar lacks: set model.point_colors=true, or loss.point_color_weight=0")


def opacity_ambiguity(opacities: torch.Tensor) -> torch.Tensor:
    """The mean of o (1 - o) over opacities [..., N] in [0, 1]: 0 where each is 0 or 1. Layers of
    half-transparent Gaussians can blend to the training views' colours and come apart in a view
    they never showed; the term asks each Gaussian to be there or not."""
    return (opacities * (1 - opacities)).mean()


class AvatarLoss:
    """L1 + ssim_weight (1 - SSIM) + vgg_feature_weight VGG + lbs_weight x FLAME priors (+ the mask and
    opacity terms, and the terms on the avatar's own parameters, `regularisers`, which the trainer
    adds: the deformer's smoothness and the size of the per-Gaussian colour offsets, each when its
    weight is above 0).

    `lbs_weight` is halved at `loss.flame_prior_milestones` by the trainer (`set_epoch`).
    With `perceptual=False` the VGG term is left out whatever the conf says: test-time fitting of
    the inputs uses L1 + SSIM only. SSIM runs in fused kernels on a GPU with Triton (`loss.fused_ssim`);
    elsewhere `compiler` (the avatar's, `model.compile`) compiles PyTorch's form.
    """

    def __init__(self, loss_conf: LossConf, var_expression: torch.Tensor | None,
                 vgg: VGGPerceptualLoss | None, device: torch.device, perceptual: bool = True,
                 compiler: StepCompiler | None = None) -> None:
        self.rgb_weight = loss_conf.rgb_weight
        self.ssim_weight = loss_conf.ssim_weight
        self.fused_ssim = loss_conf.fused_ssim
        self.vgg_weight = loss_conf.vgg_feature_weight if perceptual else 0.0
        self.mask_weight = loss_conf.mask_weight
        self.base_lbs_weight = loss_conf.lbs_weight
        self.lbs_weight = self.base_lbs_weight
        self.lbs_milestones = loss_conf.flame_prior_milestones
        self.lbs_factor = loss_conf.flame_prior_factor
        self.var_expression = None if var_expression is None else var_expression.to(device)  # [E]
        self._prior: FlamePrior | None = None
        if self.vgg_weight > 0 and vgg is None:
            raise ValueError("vgg_feature_weight > 0 needs the VGG perceptual network")  # never train without it
        self.vgg = vgg if self.vgg_weight > 0 else None
        self.compiler = compiler
        self.smoothness_weight = loss_conf.smoothness_weight
        self.smoothness_jitter = loss_conf.smoothness_jitter
        self.smoothness_points = loss_conf.smoothness_points
        self.point_color_weight = loss_conf.point_color_weight
        self.opacity_weight = loss_conf.opacity_weight

    def set_epoch(self, epoch: int) -> None:
        """lbs_weight halves at each milestone reached (epoch >= milestone)."""
        passed = sum(1 for m in self.lbs_milestones if epoch >= m)
        self.lbs_weight = self.base_lbs_weight * self.lbs_factor ** passed

    def terms(self, out: AvatarOutput, batch: FrameBatch, flame: FLAME | None = None) -> dict[str, torch.Tensor]:
        """Every term of a step, unweighted: the photometric ones, the mask term (with a weight and
        masks), and the FLAME priors: those the avatar computed in its step (`out.prior_terms`), or
        from what the output carries to compare (`out.prior`)."""
        terms = self.photometric(out.rgb, batch.rgb)
        if self.mask_weight > 0 and batch.mask is not None:
            terms["mask_loss"] = (out.alpha - batch.mask).abs().mean()
        if self.opacity_weight > 0:
            terms["opacity_loss"] = opacity_ambiguity(out.gaussians.opacities)
        terms.update(out.prior_terms)
        if out.prior is not None and flame is not None:
            terms.update(self.flame_prior(out.prior.deformer, out.prior.nearest, flame))
        return terms

    def photometric(self, rgb: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
        """rgb, gt [B, H, W, 3] -> weighted terms."""
        terms = {"rgb_loss": (rgb - gt).abs().mean()}
        if self.ssim_weight > 0:
            terms["ssim_loss"] = self.ssim(rgb, gt)
        if self.vgg is not None:
            terms["vgg_loss"] = self.vgg(rgb, gt)
        return terms

    def ssim(self, rgb: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """1 - SSIM of rgb against gt [B, H, W, 3]: the fused kernels where they run (their gradient
        reaches the rendering only, all a loss needs), else PyTorch's form, compiled with the step."""
        if (self.fused_ssim and fused_ssim.available(rgb.device) and fused_ssim.fits(rgb)
                and not gt.requires_grad):
            return fused_ssim.fused_ssim_loss(rgb, gt)
        ssim = ssim_loss if self.compiler is None else self.compiler("ssim_loss", ssim_loss, rgb.device)
        return ssim(rgb, gt)

    def regularisers(self, avatar: Avatar) -> dict[str, torch.Tensor]:
        """The terms on the avatar's parameters whose weights are above 0 (none by default)."""
        terms = self.smoothness(avatar) if self.smoothness_weight > 0 else {}
        if self.point_color_weight > 0:
            terms.update(self.point_color_size(avatar))
        return terms

    def point_color_size(self, avatar: Avatar) -> dict[str, torch.Tensor]:
        """The per-Gaussian colour-logit offsets' mean squared size (`model.point_colors`): an offset
        that few pixels of the training frames ask for, such as that of a surface they show only at a
        grazing angle, stays near the colour network's smooth colour."""
        return {"point_color_loss": avatar.point_color.square().sum(-1).mean()}

    def smoothness(self, avatar: Avatar) -> dict[str, torch.Tensor]:
        """The deformer's roughness: its outputs at `smoothness_points` random points (all when there are
        fewer) against those at the same points displaced by N(0, smoothness_jitter^2), weighted
        inside as the FLAME priors weigh the same outputs. Gradients reach the deformer, not the points.
        Per-point bases that change little over a few millimetres extrapolate to new expressions as a
        surface does, not point by point."""
        points = avatar.points.detach()
        count = min(self.smoothness_points, points.shape[0])
        sample = points[torch.randperm(points.shape[0], device=points.device)[:count]]  # [M, 3]
        jittered = sample + torch.randn_like(sample) * self.smoothness_jitter
        here, there = avatar.deformation_bases(torch.cat([sample, jittered])).split(count)
        return {"smoothness_loss": LBS_PRIOR_SCALE * ((here.lbs_weights - there.lbs_weights) ** 2).mean()
                + DIRS_PRIOR_SCALE * ((DIRS_VALUE_SCALE * (here.posedirs - there.posedirs)) ** 2).mean()
                + DIRS_PRIOR_SCALE * ((DIRS_VALUE_SCALE * (here.shapedirs - there.shapedirs)) ** 2).mean()}

    def prior_terms(self, flame: FLAME) -> FlamePrior:
        """The FLAME priors on `flame` as a function of tensors (`FlamePrior`), one object for as long as
        `flame` is the same: a training step computes them inside its recording (`Avatar.forward`'s
        `prior_terms`)."""
        if self._prior is None or self._prior.flame is not flame:
            self._prior = FlamePrior(flame, self.var_expression)
        return self._prior

    def flame_prior(self, deformer: DeformerOutput, nearest: torch.Tensor, flame: FLAME) -> dict[str, torch.Tensor]:
        """Deformer outputs vs FLAME's at each point's nearest canonical FLAME vertex `nearest` [N]."""
        prior = self.prior_terms(flame)
        return dict(zip(prior.names, prior(deformer, nearest)))

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum of whichever terms were computed (0-dim tensors), as one product: a sum of
        products term by term would be twice as many operations, forward and backward, in a step
        whose host launches set its pace at a few thousand points."""
        weights = {
            "rgb_loss": self.rgb_weight,
            "ssim_loss": self.ssim_weight,
            "vgg_loss": self.vgg_weight,
            "mask_loss": self.mask_weight,
            "lbs_loss": self.lbs_weight * LBS_PRIOR_SCALE,
            "posedirs_loss": self.lbs_weight * DIRS_PRIOR_SCALE,
            "shapedirs_loss": self.lbs_weight * DIRS_PRIOR_SCALE,
            "smoothness_loss": self.smoothness_weight,
            "point_color_loss": self.point_color_weight,
            "opacity_loss": self.opacity_weight,
        }
        values = torch.stack([value.float() for value in terms.values()])  # [T]
        return (values * constant(tuple(float(weights[name]) for name in terms), values.dtype, values.device)).sum()

    @property
    def uses_priors(self) -> bool:
        return self.lbs_weight > 0
