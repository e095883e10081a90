"""One training epoch: augmentation, mixing, the forward and backward pass, the
schedule's step and the weight average, with a progress bar and one host sync."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from training.distillation import Distillation
from training.optimization import WeightAverage
from training.runtime import ProcessPlacement, bf16_autocast

# How often the progress bar reads the running loss back from the device: each read
# waits for the device's queue to drain, so it happens by the clock, not every step.
PROGRESS_SECONDS = 2.0


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    steps: int,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    generator: torch.Generator,
    mixing: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None,
    label_smoothing: float,
    bf16: bool,
    procs: ProcessPlacement,
    patch_keep: float = 1.0,
    ema: WeightAverage | None = None,
    distill: Distillation | None = None,
    description: str = "",
    show_progress: bool = False,
) -> dict:
    """One pass over this process's batches; returns mean loss and accuracy over all
    processes (against the dominant label when batches are mixed). With `distill`, half
    the loss is against the teacher's answer on the same augmented, mixed batch."""
    from tqdm import tqdm

    model.train()
    device = procs.device
    totals = torch.zeros(2, device=device)  # loss sum, correct
    seen = 0
    bar = tqdm(total=steps, desc=description, unit="step", disable=not show_progress, leave=False, dynamic_ncols=True)
    autocast = bf16_autocast(device, bf16)
    shown = time.monotonic()
    for step, (x, y) in enumerate(batches):
        x = augment(x, generator)
        target = y
        if mixing is not None:
            x, target = mixing(x, y)
        with autocast:
            logits = model(x, patch_keep=patch_keep) if patch_keep < 1 else model(x)
            loss = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
            if distill is not None:
                loss = distill.loss(logits, x, loss, label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(model.module if hasattr(model, "module") else model)
        dominant = target.argmax(dim=1) if target.ndim == 2 else target
        totals += torch.stack([loss.detach().float() * len(y), (logits.argmax(dim=1) == dominant).sum().float()])
        seen += len(y)
        bar.update()
        if show_progress and (time.monotonic() - shown > PROGRESS_SECONDS or step == steps - 1):
            loss_sum, correct = totals.tolist()  # one host-device sync
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
            shown = time.monotonic()
    bar.close()
    totals = torch.cat([totals, torch.tensor([float(seen)], device=device)])
    if procs.world > 1:
        dist.all_reduce(totals)
    loss_sum, correct, seen = totals.tolist()
    return {"train_loss": loss_sum / seen, "train_acc": correct / seen}
