"""One run of a transfer: which parameters its stage trains and in which mode, AdamW
with a warm-up and cosine decay, and the epochs, each validated, the best one kept."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnn_model import CNN
from training.augment import DeviceTranslate
from training.evaluation import Evaluator
from training.lineage import history_minutes
from training.transfer_photos import Split
from training.transfer_settings import STAGE_NAMES, STAGES, Log, Settings, TransferError, stage_lr
from training.transfer_source import HEAD
from vit_model import ViT

EVAL_BATCH = 256


def fixed_by_design(model: nn.Module) -> set[str]:
    """Parameters the architecture itself never trains (the CNN's whitening stem and its
    batch-norm scales), read off a freshly built model."""
    return {name for name, p in model.named_parameters() if not p.requires_grad}


def trainable(model: nn.Module, stage: str, fixed: set[str]) -> list[tuple[str, nn.Parameter]]:
    """Set requires_grad for the stage; the parameters it trains."""
    for name, p in model.named_parameters():
        p.requires_grad_(name in HEAD if stage == "probe" else name not in fixed)
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def set_mode(model: nn.Module, stage: str) -> None:
    """Each epoch, after evaluation (which leaves the model in train mode): the probe all in
    eval mode, the others in train mode, the fine-tune with batch norm kept in eval mode."""
    model.train(stage != "probe")
    if stage == "finetune":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


@dataclass
class Run:
    stage: str
    lr: float
    epochs: int
    trainable: int  # parameters trained
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_state: dict | None = None  # the best epoch's weights (not written to results.json)

    @property
    def best(self) -> dict:
        return self.history[self.best_epoch - 1]

    @property
    def minutes(self) -> float:
        return history_minutes(self.history)

    def as_json(self) -> dict:
        return {
            "stage": self.stage,
            "description": STAGE_NAMES[self.stage],
            "lr": self.lr,
            "epochs": self.epochs,
            "trainable_parameters": self.trainable,
            "best_epoch": self.best_epoch,
            "best_val_acc": self.best["val_acc"],
            "best_val_loss": self.best["val_loss"],
            "minutes": round(self.minutes, 3),
            "history": self.history,
        }


def optimizer_for(
    named: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float, steps: int, warmup: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with decay on matrices only (decaying norms, biases and embeddings only pulls
    them to 0), one warm-up epoch, then cosine decay to 0 at the last step."""
    decay = [p for n, p in named if p.ndim >= 2 and n not in ("pos_embed", "cls_token")]
    rest = [p for n, p in named if not (p.ndim >= 2 and n not in ("pos_embed", "cls_token"))]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=lr
    )
    factor = lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled epoch; a last batch under half the size is left out (another each epoch)."""
    chunks = list(torch.randperm(n, generator=generator).split(batch_size))
    return chunks[:-1] if len(chunks) > 1 and len(chunks[-1]) < batch_size / 2 else chunks


def train_stage(
    model: ViT | CNN, stage: str, split: Split, settings: Settings, fixed: set[str], log: Log = print
) -> Run:
    """Train one run for settings.epochs epochs, validating after each; keeps the best."""
    lr = stage_lr(settings, stage)
    named = trainable(model, stage, fixed)
    run = Run(stage, lr, settings.epochs, sum(p.numel() for _, p in named))
    device = split.train_images.device
    seed = settings.seed * 10 + STAGES.index(stage)
    # The order of the batches is drawn on the CPU, the augmentation on the device.
    order, generator = torch.Generator().manual_seed(seed), torch.Generator(device).manual_seed(seed)
    steps_per_epoch = len(batches(len(split.train_labels), settings.batch_size, torch.Generator()))
    optimizer, scheduler = optimizer_for(
        named, lr, settings.weight_decay, steps_per_epoch * settings.epochs, steps_per_epoch
    )
    augment = DeviceTranslate(model.mean, model.std, pad=settings.translate)
    scorer = Evaluator(model.mean, model.std, EVAL_BATCH, device, bf16=False)
    start, best_key = time.time(), None
    for epoch in range(1, settings.epochs + 1):
        epoch_start = time.time()
        set_mode(model, stage)
        loss_sum, correct, seen = 0.0, 0, 0
        for idx in batches(len(split.train_labels), settings.batch_size, order):
            x, y = augment(split.train_images[idx], generator), split.train_labels[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        if not math.isfinite(loss_sum):
            flag = "--scratch-lr" if stage == "scratch" else "--lr"
            raise TransferError(
                f"the {STAGE_NAMES[stage]} run diverged in epoch {epoch} (loss not a number "
                f"at learning rate {lr:g}): lower {flag}"
            )
        val = scorer.evaluate(model, split.val_images, split.val_labels)
        # "lr": where the schedule stands after the epoch's last step.
        row = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "val_loss": val.loss,
            "val_acc": val.acc,
            "seconds": time.time() - epoch_start,
        }
        run.history.append(row)
        if best_key is None or (val.acc, -val.loss) > best_key:  # ties on accuracy: the lower loss
            best_key, run.best_epoch = (val.acc, -val.loss), epoch
            run.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        log(epoch_line(stage, row, settings.epochs, time.time() - start))
    return run


def epoch_line(stage: str, row: dict, epochs: int, elapsed: float) -> str:
    """An epoch's progress line, with what this run has left at the pace so far."""
    left = elapsed / row["epoch"] * (epochs - row["epoch"])
    return (
        f"{STAGE_NAMES[stage]:>12}  epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.3f} "
        f"acc {100 * row['train_acc']:5.1f}%  val loss {row['val_loss']:.3f} acc "
        f"{100 * row['val_acc']:5.1f}%  ({row['seconds']:.0f}s; about {left:.0f}s left in this run)"
    )
