"""A collapsed run, one whose avatar renders nothing, is stopped at the end of the epoch it happens in.

Every rasterizer backend skips a Gaussian whose alpha is below 1/255 (3DGS's cut). Once no Gaussian
reaches it in any frame, nothing is rendered and the photometric loss has no gradient left that
could change that: the run would go on training an empty avatar and evaluate an empty image (exit
0). The trainer stops it instead, before the epoch's save, so that no empty avatar becomes
'latest'. The usual cause is the first epoch's full-size Adam steps pushing the opacity that all
initial points share below the cut; `train.warmup_epochs` avoids it (docs/RECIPES.md). The
coarse-to-fine strategy refuses the milder state where no point reached the prune threshold
(`model.prune_thresh`) in an epoch, which pruning would empty.
"""

from __future__ import annotations

import torch

from ..config import TrainConf
from ..errors import TrainingCollapsedError
from ..render.torch_backend import ALPHA_MIN


def collapsed(epoch: int, what: str, train: TrainConf | None = None) -> TrainingCollapsedError:
    """The one-line error of a collapsed run: the epoch, what was seen (`what`), what to do (with the
    conf's values when `train` is given)."""
    warmup = f" (now {train.warmup_epochs}; confs/demo.conf uses 2)" if train is not None else ""
    rate = f" (now {train.learning_rate:g})" if train is not None else ""
    return TrainingCollapsedError(
        f"epoch {epoch}: {what}; nothing was saved for this epoch. Raise train.warmup_epochs{warmup} or lower "
        f"train.learning_rate{rate} and train again (docs/RECIPES.md)")


def check_rendered(peak_alpha: torch.Tensor | None, epoch: int, train: TrainConf) -> None:
    """Stop the run (TrainingCollapsedError) when the epoch's last step rendered nothing: `peak_alpha`
    (0-dim) is the highest alpha of any pixel in any frame of that step. Reads the device."""
    if peak_alpha is not None and float(peak_alpha) < ALPHA_MIN:
        raise collapsed(epoch, "the avatar renders nothing (no Gaussian reached the rasterizer's alpha cut of 1/255 in "
                               "any frame of the epoch's last step) and no gradient can change that", train)
