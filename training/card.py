"""Every written account of a run: its summary, lineage and machines, the model card, the
export folder and the Hub upload (its PNGs are plots.py's). train.py calls
`export_model` once after its last epoch; nothing here trains.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from calibration import in_words as calibration_in_words
from common.atomic_files import write_json
from common.model_folder import FIGURES, TRAINING_FILE
from training.evaluation import per_class_accuracy
from training.lineage import (
    command_text,
    fine_tune_starts,
    history_minutes,
    lineage,
    replayable,
    teachers_down_the_line,
)
from vit_model import count_parameters


@dataclass(frozen=True)
class ModelKind:
    """How a card names a model and the file that defines it."""

    short: str
    long: str
    module: str
    tag: str


MODEL_KINDS = {
    "vit": ModelKind("ViT", "Vision Transformer", "vit_model", "vision-transformer"),
    "cnn": ModelKind(
        "CNN", "convolutional network (global average pooling head, exact class activation maps)", "cnn_model", "cnn"
    ),
}
# What travels with the weights besides config.json: the app reads it to tell a visitor
# what the model was trained with and how accurate it is.


# ---------------------------------------------------------------- the run's report


@dataclass
class RunSummary:
    """What a finished run reports: figures for the card, training.json and results.json."""

    recipe: str  # the recipe's name
    recipe_description: str  # every ingredient with its value
    data: str  # where the images came from, split sizes
    machine: str  # the device, in words
    command: str
    epochs: int
    best_epoch: int
    val_acc: float
    val_acc_flip_tta: float
    val_images: int
    split_seed: int
    class_names: list[str]
    confusion: list[list[int]]
    history: list[dict]
    settings: dict
    test_acc: float | None = None
    test_images: int = 0
    parent: dict | None = None  # training.json of the model this run started from
    teacher: dict | None = None  # the record of the CNN it distilled from (distillation.RECORD_KEYS)
    calibration: dict | None = None  # calibration.Calibration.as_json(), fitted on validation

    @property
    def full_history(self) -> list[dict]:
        """Every epoch that went into these weights, the starting model's first."""
        return lineage({"parent": self.parent, "history": self.history})

    @property
    def earlier_epochs(self) -> int:
        """Epochs of the models this run started from (0 for a run from scratch)."""
        return len(self.full_history) - len(self.history)

    @property
    def fine_tunes(self) -> list[tuple[int, bool]]:
        """Where each fine-tune in these weights' line began, and whether it distilled."""
        return fine_tune_starts({"parent": self.parent, "teacher": self.teacher, "history": self.history})

    @property
    def per_class_acc(self) -> list[float]:
        return per_class_accuracy(torch.tensor(self.confusion))

    @property
    def training_minutes(self) -> float:
        """All the training these weights took: the starting models' and every teacher's included."""
        return history_minutes(self.full_history) + sum(m for _, m in self.teachers)

    @property
    def teachers(self) -> list[tuple[int, float]]:
        """Each teacher down the line: where it began to teach, its minutes."""
        return teachers_down_the_line({"parent": self.parent, "teacher": self.teacher})

    @property
    def started_from(self) -> str | None:
        """The model this run started from, in words (None for a run from scratch)."""
        p = self.parent
        return p and (
            f"the best epoch ({p.get('best_epoch')} of {p.get('epochs')}) of a run with "
            f"the {p.get('recipe')} recipe ({100 * p.get('val_acc', 0):.2f}% validation"
            + (", itself distilled from a CNN teacher" if p.get("teacher") else "")
            + ")"
        )

    @property
    def distilled_from(self) -> str | None:
        """The teacher, in words (None without one)."""
        t = self.teacher
        return t and (
            f"a CNN of widths {t['widths']} trained on the same split for {t['epochs']} "
            f"epoch{'s' if t['epochs'] != 1 else ''} ({t.get('recipe') or 'teacher.py'} recipe, "
            f"{100 * t['val_acc']:.2f}% "
            f"validation, {t['training_minutes']} min): half the loss "
            + (
                f"the KL divergence to its probabilities at temperature "
                f"{self.settings.get('temperature', 1):g} (soft distillation)"
                if self.settings.get("distill") == "soft"
                else "against its predicted classes (hard distillation)"
            )
        )

    def as_json(self) -> dict:
        return {
            "recipe": self.recipe,
            "recipe_description": self.recipe_description,
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "val_acc": self.val_acc,
            "val_acc_flip_tta": self.val_acc_flip_tta,
            "val_images": self.val_images,
            "split_seed": self.split_seed,
            "test_acc": self.test_acc,
            "test_images": self.test_images,
            "data": self.data,
            "machine": self.machine,
            "training_minutes": round(self.training_minutes, 1),
            "command": self.command if replayable(self.history) else None,
            "settings": self.settings,
            "class_names": self.class_names,
            "per_class_acc": self.per_class_acc,
            "confusion_matrix": self.confusion,
            "history": self.history,
            "parent": self.parent,
            "teacher": {k: v for k, v in self.teacher.items() if k != "history"} if self.teacher else None,
            "epochs_before": self.earlier_epochs,
            "started_from": self.started_from,
            "distilled_from": self.distilled_from,
            "calibration": self.calibration,
        }


def model_card(summary: RunSummary, params: int) -> str:
    """The export's README.md: Hub front matter, the run's real figures and plots."""
    epochs = f"{summary.epochs} epoch{'s' if summary.epochs != 1 else ''}"
    table = {
        "recipe": summary.recipe_description,
        "validation accuracy": f"{100 * summary.val_acc:.2f}% ({summary.val_images} held-out images)",
        "validation accuracy, flip TTA": f"{100 * summary.val_acc_flip_tta:.2f}% (mean of the "
        "logits of the image and its mirror image)",
        "best epoch": f"{summary.best_epoch} of {summary.epochs}",
        **ema_row(summary),
        **calibration_row(summary.calibration),
        "training time": f"{summary.training_minutes:.1f} min for {epochs} on {summary.machine}",
        "per-class validation accuracy": ", ".join(
            f"{n} {100 * a:.1f}" for n, a in zip(summary.class_names, summary.per_class_acc)
        ),
    }
    if summary.parent:
        table.update(started_from(summary))
    if summary.teacher:
        table["teacher"] = f"{summary.distilled_from}; its training is in the training time"
    if summary.test_acc is not None:
        table["test accuracy"] = f"{100 * summary.test_acc:.2f}% ({summary.test_images} images)"
    # An epoch whose record needed correcting (a paused process, say) says so where its figures are read.
    notes = [f"epoch {h['epoch']}: {h['note']}" for h in summary.full_history if h.get("note")]
    if notes:
        table["notes"] = "; ".join(notes)
    rows = "\n".join(f"| {k} | {v} |" for k, v in table.items())
    plots = "\n\n".join(f"![{p[:-4]}]({p})" for p in FIGURES)
    kind = MODEL_KINDS[summary.settings.get("model", "vit")]
    return f"""---
library_name: vit-cifar
license: mit
pipeline_tag: image-classification
tags: [image-classification, {kind.tag}, cifar10, pytorch, pytorch_model_hub_mixin]
datasets: [cifar10]
metrics: [accuracy]
---

# {kind.short} for CIFAR-10 ({params / 1e6:.2f}M parameters)

A {kind.long} trained from scratch by `train.py` of vit-cifar ({summary.recipe}
recipe, {epochs}). Data: {summary.data}.

| | |
|---|---|
{rows}

Command: {command_text(summary.command, summary.history)}

```python
from {kind.module} import {kind.short}   # vit-cifar's {kind.module}.py
model = {kind.short}.from_pretrained("<this repo or folder>")   # config.json has class_names, mean, std
```

`{TRAINING_FILE}` holds these figures, the settings and the per-epoch history.

{plots}
"""


def calibration_row(calibration: dict | None) -> dict[str, str]:
    """The card's row on how far the served probabilities can be trusted."""
    return {"calibration": calibration_in_words(calibration)} if calibration else {}


def served_config(model: torch.nn.Module) -> dict:
    """The model's config.json: its constructor's arguments, with the temperature and
    the threshold as fitted after it was built."""
    return {
        **model._hub_mixin_config,
        "temperature": model.temperature,
        "known_threshold": model.known_threshold,
    }


def ema_row(summary: RunSummary) -> dict[str, str]:
    """The card's row comparing the exported weight average with the weights as trained."""
    best = next((h for h in summary.history if h["epoch"] == summary.best_epoch), {})
    if "val_acc_without_ema" not in best:
        return {}
    return {
        "EMA": f"the exported weights are the EMA (decay {summary.settings.get('ema'):g}) of "
        f"the trained ones, which scored {100 * best['val_acc_without_ema']:.2f}% at "
        f"that epoch against the EMA's {100 * best['val_acc']:.2f}%"
    }


def started_from(summary: RunSummary) -> dict[str, str]:
    """The card's rows for a run that began from another model's weights (--init-from)."""
    earlier = summary.earlier_epochs
    own = history_minutes(summary.history)
    return {
        "started from": f"{summary.started_from}: "
        + command_text(summary.parent.get("command"), summary.parent.get("history", [])),
        "best epoch": f"{summary.best_epoch} of this run's {summary.epochs} "
        f"(epoch {earlier + summary.best_epoch} counting the {earlier} before it)",
        "training time": f"{summary.training_minutes:.1f} min in all for {earlier + summary.epochs} "
        f"epochs on {summary.machine}; this run's {summary.epochs}: {own:.1f} min",
    }


def export_model(model: torch.nn.Module, run_dir: Path, summary: RunSummary) -> Path:
    """Write run_dir/export (weights, config, model card, training.json, plots) via a
    temporary folder, so a reader never sees half an export."""
    final = run_dir / "export"
    tmp = run_dir / ".export.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "README.md").write_text(model_card(summary, count_parameters(model)))
    write_json(summary.as_json(), tmp / TRAINING_FILE)
    model.save_pretrained(tmp, config=served_config(model))
    (tmp / "model.safetensors").chmod(0o644)  # written 0600; every other export file is 0644
    for name in FIGURES:
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, tmp / name)
    old = run_dir / ".export.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def push_to_hub(export_dir: Path, repo_id: str) -> str:
    """Upload the export folder; returns the repo URL. Raises RuntimeError naming the cause."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(
            folder_path=str(export_dir), repo_id=repo_id, commit_message="Upload ViT trained with vit-cifar train.py"
        )
    # The Hub client's errors have no common base: its own are OSErrors, but a network
    # failure surfaces as its HTTP library's (httpx's are plain Exceptions), a bad token
    # or repo id as ValueError, ...
    except Exception as err:
        raise RuntimeError(
            f"upload to the Hub repo {repo_id} failed ({type(err).__name__}: "
            f"{err}); the local export in {export_dir} is intact"
        ) from err
    return f"https://huggingface.co/{repo_id}"
