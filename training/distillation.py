"""The teacher of a distilled run (`train.py --teacher DIR`): an exported CNN, checked
before a single step trains on its answers.

A teacher is any folder `train.py --model cnn` exported (a run's export/, weights/cnn):
its weights load strictly into cnn_model.CNN, must be finite, and must come from the
student's own split, the same --seed and --val-size cutting the same images, so that the
teacher never saw the images the student is validated on. The loss it gives is
loop.train_one_epoch's: half against the teacher's predicted class on the same augmented
batch (hard distillation; DeiT, Touvron et al. 2021).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError

from cnn_model import CNN
from data import same_images, same_split

# What a distilled model's training.json keeps of its teacher's record.
RECORD_KEYS = (
    "recipe",
    "widths",
    "epochs",
    "best_epoch",
    "val_acc",
    "val_acc_flip_tta",
    "val_images",
    "split_seed",
    "training_minutes",
    "machine",
    "command",
)


class TeacherError(ValueError):
    """A --teacher folder that cannot teach this run, with the reason and what to do."""


def read_teacher_folder(folder: Path) -> tuple[dict, dict]:
    """(config.json, training.json) of an exported CNN, or TeacherError naming what is wrong."""
    if not folder.is_dir():
        raise TeacherError(f"{folder} does not exist")
    if (folder / "teacher.json").exists() and not (folder / "config.json").exists():
        raise TeacherError(
            f"{folder} was written by the old teacher.py, which is gone: train a CNN "
            "with `python train.py --model cnn` and pass its export/ folder (or "
            "use the bundled weights/cnn)"
        )
    missing = [n for n in ("config.json", "model.safetensors", "training.json") if not (folder / n).is_file()]
    if missing:
        raise TeacherError(
            f"{folder} lacks {', '.join(missing)}: pass the export/ folder of a "
            "`train.py --model cnn` run, or weights/cnn"
        )
    try:
        config = json.loads((folder / "config.json").read_text())
        training = json.loads((folder / "training.json").read_text())
    except (OSError, ValueError) as err:
        raise TeacherError(f"{folder}: its config.json or training.json is unreadable ({err})") from None
    if not isinstance(config, dict) or "widths" not in config:
        raise TeacherError(
            f"{folder} holds no CNN (a ViT cannot teach here): pass the export "
            "of a `train.py --model cnn` run, or weights/cnn"
        )
    if not all(isinstance(config.get(k), list) for k in ("mean", "std")):
        raise TeacherError(
            f"{folder}: its config.json lacks the mean and std of the images it "
            "was trained on, so its inputs cannot be normalized as in training: "
            "export it again with train.py"
        )
    return config, training


def load_teacher(folder: str | Path, val_images: int, seed: int, mean: list[float]) -> tuple[CNN, dict]:
    """The teacher in `folder`, in eval mode on the CPU, and what the student's record keeps
    of its training; TeacherError unless it loads, is finite and shares the split."""
    folder = Path(folder)
    config, training = read_teacher_folder(folder)
    try:
        model = CNN.from_pretrained(folder)
    # A cut or foreign model.safetensors (SafetensorError), weights of another shape
    # (RuntimeError), a config the CNN's constructor refuses (TypeError, ValueError), a
    # file this user may not read (OSError).
    except (SafetensorError, RuntimeError, TypeError, ValueError, OSError) as err:
        raise TeacherError(
            f"{folder}: its weights do not load into the CNN its config.json "
            f"describes ({type(err).__name__}: {' '.join(str(err).split())[:200]})"
        ) from None
    if not all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()):
        raise TeacherError(
            f"{folder}: its weights hold NaN or infinite values (a diverged run); train the teacher again"
        )
    if not same_split(training, seed, val_images) or not same_images(config["mean"], mean):
        raise TeacherError(
            f"{folder} was trained on another split or other images "
            f"(validation: {training.get('val_images')} images, seed {training.get('split_seed')}; this run: "
            f"{val_images}, seed {seed}); train it with the same --data-dir, "
            "--val-size and --seed"
        )
    record = {k: training.get(k) for k in RECORD_KEYS}
    record["widths"] = config["widths"]
    return model.eval(), record


@dataclass(frozen=True)
class Distillation:
    """A teacher in eval mode and how its answers enter the student's loss."""

    teacher: nn.Module
    soft: bool = False
    temperature: float = 1.0

    def loss(
        self, logits: torch.Tensor, x: torch.Tensor, label_loss: torch.Tensor, label_smoothing: float
    ) -> torch.Tensor:
        """Half `label_loss`, half the student's logits against the teacher's on x."""
        with torch.no_grad():
            taught = self.teacher(x).float()
        if not self.soft:
            return (label_loss + F.cross_entropy(logits, taught.argmax(dim=1), label_smoothing=label_smoothing)) / 2
        t = self.temperature  # t^2 keeps the gradient's size independent of t (Hinton et al.)
        kl = F.kl_div(
            F.log_softmax(logits.float() / t, dim=1),
            F.log_softmax(taught / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        return (label_loss + t * t * kl) / 2
