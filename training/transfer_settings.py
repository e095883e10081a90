"""What one transfer (training/transfer.py) does: its settings, the three runs it makes
and each one's peak learning rate, and the error it raises for what it refuses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STAGES = ("scratch", "probe", "finetune")
STAGE_NAMES = {"scratch": "from scratch", "probe": "linear probe", "finetune": "fine-tune"}
FINETUNE_LR_DIVISOR = 10
Log = Callable[[str], None]


class TransferError(ValueError):
    """An input the command refuses, with the reason for the user."""


@dataclass
class Settings:
    """What one transfer does; the command line's options."""

    data_dir: Path
    out: Path
    model: str  # "vit" or "cnn"
    source: Path  # the CIFAR-trained model folder (--from)
    epochs: int = 20  # of each of the three runs
    lr: float = 3e-3  # the probe's; the fine-tune's is FINETUNE_LR_DIVISOR times smaller
    scratch_lr: float = 1e-3
    batch_size: int = 32
    val_fraction: float = 0.2
    seed: int = 0
    weight_decay: float = 0.05
    translate: int = 2  # pixels of random translation (0: flips only)
    device: str = "cpu"
    overwrite: bool = False
    command: str = ""


def stage_lr(settings: Settings, stage: str) -> float:
    """The run's peak learning rate: the fine-tune's is the probe's cut tenfold."""
    return {"scratch": settings.scratch_lr, "probe": settings.lr, "finetune": settings.lr / FINETUNE_LR_DIVISOR}[stage]
