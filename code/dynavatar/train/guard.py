"""Non-finite steps: detected at once, never applied, and a run that keeps making them is stopped.

After the backward pass one flag says whether the loss and every gradient are finite. On the CPU
the guard reads it and steps the optimisers only when it is set. On CUDA reading it would wait
for the device at every step, so it is handed to the optimisers as `found_inf`, the way
torch.amp.GradScaler does: the fused Adam kernel and RowSparseAdam then leave parameters, moments
and step counts as they were, on the device. The count of consecutive non-finite steps stays on
the device too; `check` reads it where the epoch loop waits for the device anyway (the progress
bar's update, once a second, and the epoch's end). An epoch that ends on non-finite steps is not
saved, so `latest` is always a state whose last step was finite.

A step whose rendering is incomplete (its tile intersections outgrew their buffer, see
render/tile_intersections.py) is skipped the same way, on the device, without counting as non-finite.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from ..errors import TrainingDivergedError

log = logging.getLogger(__name__)


def _gradients(optimizers: Sequence[torch.optim.Optimizer]) -> list[torch.Tensor]:
    """The dense gradients, and the values of the sparse ones (per-frame inputs), of the optimisers' parameters."""
    grads = []
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    grads.append(p.grad._values() if p.grad.is_sparse else p.grad)
    return grads


class NonFiniteGuard:
    """Steps optimisers only on finite losses and gradients; counts consecutive non-finite steps."""

    def __init__(self, limit: int, device: torch.device) -> None:
        self.limit = limit  # this many non-finite steps in a row stop the run
        self.device = device
        self.streak = torch.zeros((), dtype=torch.int64, device=device)  # consecutive non-finite steps now
        self.longest = torch.zeros_like(self.streak)  # the longest streak since the last `check`
        self.skipped = torch.zeros_like(self.streak)  # non-finite steps since `start_epoch`

    def start_epoch(self) -> None:
        self.skipped.zero_()

    @torch.no_grad()
    def step(self, loss: torch.Tensor, optimizers: Sequence[torch.optim.Optimizer],
             complete: torch.Tensor | None = None) -> torch.Tensor:
        """Step the optimisers unless the loss or a gradient is non-finite, or `complete` (0-dim bool,
        the rendering drew every Gaussian) is False. Returns whether they stepped, a 0-dim bool
        tensor on the device (read only on the CPU)."""
        grads = _gradients(optimizers)
        if self.device.type == "cuda":
            found_inf = (~torch.isfinite(loss.detach())).float()
            if grads:  # sets found_inf to 1 on any non-finite value; the scale 1 leaves the gradients as they are
                torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, torch.ones_like(found_inf))
            finite = found_inf == 0
            if complete is not None:
                found_inf = torch.maximum(found_inf, (~complete).float())
            for optimizer in optimizers:
                optimizer.found_inf = found_inf
                optimizer.step()
            stepped = found_inf == 0
        else:
            finite = torch.tensor(bool(torch.isfinite(loss.detach())) and all(bool(torch.isfinite(g).all())
                                                                             for g in grads))
            stepped = finite if complete is None else finite & complete.cpu()
            if stepped:
                for optimizer in optimizers:
                    optimizer.step()
        bad = (~finite).to(self.streak.dtype)
        self.streak.add_(1).mul_(bad)  # one more after a non-finite step, back to 0 after a finite one
        torch.maximum(self.longest, self.streak, out=self.longest)
        self.skipped.add_(bad)
        return stepped

    def check(self, epoch: int, learning_rate: float) -> None:
        """Stop the run (TrainingDivergedError) once `limit` consecutive steps were non-finite.
        Reads the device: call it where the loop waits anyway."""
        longest = int(self.longest)
        self.longest.zero_()
        if longest >= self.limit:
            raise _diverged(epoch, f"the loss or its gradients were not finite (NaN or inf) in {longest} consecutive "
                                   f"steps (train.max_nonfinite_steps = {self.limit}); the steps were skipped",
                            learning_rate)

    def may_save(self, epoch: int, learning_rate: float, last: bool) -> bool:
        """Whether the state at the end of `epoch` may be saved: not while its last steps were
        non-finite (a run diverging over an epoch's end, which `check` has not stopped yet). At the
        last epoch that stops the run instead."""
        streak = int(self.streak)
        if streak == 0:
            return True
        if last:
            raise _diverged(epoch, f"its last {streak} step(s) had a non-finite loss or gradient", learning_rate)
        log.warning("epoch %d ended with %d non-finite step(s) in a row: not saved ('latest' stays the previous "
                    "checkpoint)", epoch, streak)
        return False


def _diverged(epoch: int, what: str, learning_rate: float) -> TrainingDivergedError:
    return TrainingDivergedError(f"epoch {epoch}: {what}; nothing was saved for this epoch, so 'latest' is the last "
                                 f"good state. Lower train.learning_rate (now {learning_rate:g}) and resume with "
                                 f"--is_continue")


def check_finite_parameters(named: dict[str, torch.Tensor], epoch: int, learning_rate: float) -> None:
    """Refuse to go on (and so to save) when a step made a parameter non-finite (finite gradients, too
    large a step)."""
    finite = torch.stack([torch.isfinite(p.detach()).all() for p in named.values()]).tolist()  # one wait
    bad = [name for name, ok in zip(named, finite) if not ok]
    if bad:
        raise _diverged(epoch, f"parameters became non-finite (NaN or inf) in {bad[:5]}", learning_rate)
