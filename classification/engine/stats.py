"""What the training loop measures per step without waiting for the device: loss, gradient norm, the first
non-finite loss, and the stop signal every rank agrees on."""
import datetime
from typing import Optional, Tuple

import torch
import torch.distributed as dist


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


class StepStats:
    """Loss, gradient norm and finiteness of the steps since the last sync point, kept on the device: a step
    needs no host synchronisation and no collective of its own. At a sync point one collective tells every rank
    the first step whose loss was not finite on any rank, and whether any rank received a stop signal, so that
    all stop together."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.norm_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.first_bad_step = torch.full((), float('inf'), dtype=torch.float64, device=self.device)
        self.losses = self.norms = 0

    def add_loss(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.detach().double()
        finite = torch.isfinite(loss)
        self.loss_sum += torch.where(finite, loss, 0.0)
        self.first_bad_step = torch.where(finite, self.first_bad_step, self.first_bad_step.clamp(max=step))
        self.losses += 1

    def add_norm(self, norm: torch.Tensor) -> None:
        self.norm_sum += norm.detach().double()
        self.norms += 1

    def agree(self, stop_signal: int) -> Tuple[Optional[int], int]:
        """(first step of any rank with a non-finite loss or None, the stop signal any rank received or 0)."""
        state = torch.stack([-self.first_bad_step, torch.tensor(float(stop_signal), dtype=torch.float64,
                                                                device=self.device)])
        if dist.is_initialized():
            dist.all_reduce(state, op=dist.ReduceOp.MAX)
        neg_bad, stop = state.tolist()
        return (None if neg_bad == float('-inf') else int(-neg_bad)), int(stop)

    def means(self) -> Tuple[float, float]:
        return (self.loss_sum.item() / max(self.losses, 1), self.norm_sum.item() / max(self.norms, 1))
