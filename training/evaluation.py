"""How a run scores a model: logits in eval mode under the run's autocast, accuracy and
loss, the confusion matrix and per-class accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from data import to_normalized
from training.runtime import bf16_autocast
from vit_model import tta_logits


@dataclass
class Evaluation:
    loss: float
    acc: float
    preds: torch.Tensor
    logits: torch.Tensor


@dataclass(frozen=True)
class Evaluator:
    """How a run scores a model on uint8 images: its normalization, batch size, device
    and autocast, in eval mode and without gradients."""

    mean: list[float]
    std: list[float]
    batch_size: int
    device: torch.device
    bf16: bool

    @torch.no_grad()
    def logits(self, model: torch.nn.Module, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
        """float32 logits on the CPU, in eval mode (the model's mode is restored); with
        flip, the mean of the logits of each image and its mirror image (test-time
        augmentation)."""
        was_training, out = model.training, []
        mean, std = (
            torch.tensor(v, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) for v in (self.mean, self.std)
        )
        model.eval()
        try:
            with bf16_autocast(self.device, self.bf16):
                for chunk in images.split(self.batch_size):
                    normalized = to_normalized(chunk.to(self.device, non_blocking=True), mean, std)
                    out.append(tta_logits(model, normalized, flip).cpu())
        finally:
            model.train(was_training)
        return torch.cat(out)

    def evaluate(
        self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, flip: bool = False
    ) -> Evaluation:
        logits = self.logits(model, images, flip)
        labels = labels.cpu()
        preds = logits.argmax(1)
        return Evaluation(
            F.cross_entropy(logits, labels).item(), (preds == labels).float().mean().item(), preds, logits
        )


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts, rows true class, columns predicted class."""
    return torch.bincount(labels * num_classes + preds, minlength=num_classes**2).view(num_classes, num_classes)


def per_class_accuracy(cm: torch.Tensor) -> list[float]:
    """Fraction of each true class predicted correctly (0 for a class with no images)."""
    return (cm.diag().float() / cm.sum(1).clamp(min=1)).tolist()
