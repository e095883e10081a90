"""Every written account of a run: its summary, lineage and machines, the model card, the
export folder and the Hub upload (its PNGs are figures.py's). train.py calls
`export_model` once after its last epoch; nothing here trains.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from atomic_files import write_json
from checkpoints import REPLANNED
from settings import FOLDER_SETTINGS, shareable_settings
from vit_model import count_parameters

PLOTS = ["curves.png", "time_to_accuracy.png", "confusion_matrix.png",
         "per_class_accuracy.png", "predictions.png"]


@dataclass(frozen=True)
class ModelKind:
    """How a card names a model and the file that defines it."""
    short: str
    long: str
    module: str
    tag: str


MODEL_KINDS = {"vit": ModelKind("ViT", "Vision Transformer", "vit_model", "vision-transformer"),
               "cnn": ModelKind("CNN", "convolutional network (global average pooling head, "
                                "exact class activation maps)", "cnn_model", "cnn")}
# What travels with the weights besides config.json: the app reads it to tell a visitor
# what the model was trained with and how accurate it is.
TRAINING_FILE = "training.json"


# ---------------------------------------------------------------- statistics

def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts, rows true class, columns predicted class."""
    return torch.bincount(labels * num_classes + preds, minlength=num_classes ** 2).view(
        num_classes, num_classes)


def per_class_accuracy(cm: torch.Tensor) -> list[float]:
    """Fraction of each true class predicted correctly (0 for a class with no images)."""
    return (cm.diag().float() / cm.sum(1).clamp(min=1)).tolist()


# ---------------------------------------------------------------- run plots

def lineage(training: dict | None, upto: float = float("inf")) -> list[dict]:
    """The per-epoch history of a run (up to epoch `upto`) and of every model it started
    from (--init-from), oldest first, numbered on from one run to the next. A starting
    model counts up to its best epoch: those are the weights the next run began from."""
    if not training:
        return []
    parent = training.get("parent")
    earlier = lineage(parent, parent.get("best_epoch", float("inf")) if parent else 0)
    offset = earlier[-1]["epoch"] if earlier else 0
    return earlier + [{**h, "epoch": h["epoch"] + offset} for h in training["history"] if h["epoch"] <= upto]


def fine_tune_starts(training: dict | None) -> list[tuple[int, bool]]:
    """Where each run of a model's line after the first began (the epochs before it, as
    `lineage` numbers them) and whether it distilled from a teacher, oldest first."""
    parent = training and training.get("parent")
    if not parent:
        return []
    before = lineage(parent, parent.get("best_epoch", float("inf")))
    return fine_tune_starts(parent) + [(before[-1]["epoch"] if before else 0, bool(training.get("teacher")))]


def public_record(training: dict | None) -> dict | None:
    """A training record (training.json, a teacher's record) as a card may publish it:
    at every level of its lineage each folder named by its own name, not by where it lay
    on the machine that trained it (settings and the command line alike), and no command
    where none replays that level (see `replayable`)."""
    if not training:
        return training
    flags = {"--" + key.replace("_", "-") for key in FOLDER_SETTINGS}
    record = dict(training)
    if record.get("command") and not replayable(record.get("history", [])):
        record["command"] = None
    if record.get("command"):
        words = record["command"].split()
        record["command"] = " ".join(Path(w).name if i and words[i - 1] in flags else w
                                     for i, w in enumerate(words))
    if "settings" in record:
        record["settings"] = shareable_settings(record["settings"])
    for key in ("parent", "teacher"):
        if isinstance(record.get(key), dict):
            record[key] = public_record(record[key])
    return record


def replayable(history: list[dict]) -> bool:
    """Whether one command trains this history again: not after a resume that changed
    --epochs, which re-planned the schedule part-way."""
    return not any(h.get("note", "").startswith(REPLANNED) for h in history)


def command_text(command: str | None, history: list[dict]) -> str:
    """How a card shows the command that trained a run: the command itself, or why no
    single command trains it again."""
    if command and replayable(history):
        return f"`{command}`"
    return ("no single command: it was resumed with a different --epochs part-way (see the "
            "notes), which re-planned its learning-rate schedule; training.json has its settings")


def teachers_down_the_line(training: dict | None) -> list[tuple[int, float]]:
    """Each teacher a model's line distilled from: (the epochs before the run it taught,
    numbered as `lineage` numbers them; its training minutes), oldest first."""
    if not training:
        return []
    parent = training.get("parent")
    before = lineage(parent, parent.get("best_epoch", float("inf"))) if parent else []
    teacher = training.get("teacher")
    return teachers_down_the_line(parent) + (
        [(before[-1]["epoch"] if before else 0, teacher["training_minutes"])] if teacher else [])


def minutes_at_epochs(history: list[dict], teachers: list[tuple[int, float]]) -> list[float]:
    """Cumulative wall-clock minutes at the end of each epoch of a lineage history, a
    teacher's minutes counted before the first epoch it taught."""
    total, out = 0.0, []
    for h in history:
        total += sum(m for before, m in teachers if before == h["epoch"] - 1) + h["seconds"] / 60
        out.append(total)
    return out


def machine_spans(history: list[dict]) -> list[tuple[str, list[dict]]]:
    """The history cut where the machine changes: a run resumed over several sittings may
    move between machines (rows from before machines were recorded say so)."""
    spans: list[tuple[str, list[dict]]] = []
    for h in history:
        machine = h.get("machine", "machine not recorded")
        if spans and spans[-1][0] == machine:
            spans[-1][1].append(h)
        else:
            spans.append((machine, [h]))
    return spans


def machines_of(history: list[dict]) -> str:
    """The machine the run trained on, or each machine with its epochs, in order."""
    spans = machine_spans(history)
    if len(spans) == 1:
        return spans[0][0]
    return "; ".join(f"{machine} (epochs {rows[0]['epoch']}-{rows[-1]['epoch']})"
                     if len(rows) > 1 else f"{machine} (epoch {rows[0]['epoch']})"
                     for machine, rows in spans)


# ---------------------------------------------------------------- the run's report

@dataclass
class RunSummary:
    """What a finished run reports: figures for the card, training.json and results.json."""
    recipe: str                  # the recipe's name
    recipe_description: str      # every ingredient with its value
    data: str                    # where the images came from, split sizes
    machine: str                 # the device, in words
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
    parent: dict | None = None   # training.json of the model this run started from
    teacher: dict | None = None  # the record of the CNN it distilled from (distillation.RECORD_KEYS)

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
        return sum(h["seconds"] for h in self.full_history) / 60 + sum(m for _, m in self.teachers)

    @property
    def teachers(self) -> list[tuple[int, float]]:
        """Each teacher down the line: where it began to teach, its minutes."""
        return teachers_down_the_line({"parent": self.parent, "teacher": self.teacher})

    @property
    def started_from(self) -> str | None:
        """The model this run started from, in words (None for a run from scratch)."""
        p = self.parent
        return p and (f"the best epoch ({p.get('best_epoch')} of {p.get('epochs')}) of a run with "
                      f"the {p.get('recipe')} recipe ({100 * p.get('val_acc', 0):.2f}% validation"
                      + (", itself distilled from a CNN teacher" if p.get("teacher") else "") + ")")

    @property
    def distilled_from(self) -> str | None:
        """The teacher, in words (None without one)."""
        t = self.teacher
        return t and (f"a CNN of widths {t['widths']} trained on the same split for {t['epochs']} "
                      f"epoch{'s' if t['epochs'] != 1 else ''} ({t.get('recipe') or 'teacher.py'} recipe, "
                      f"{100 * t['val_acc']:.2f}% "
                      f"validation, {t['training_minutes']} min): half the loss "
                      + (f"the KL divergence to its probabilities at temperature "
                         f"{self.settings.get('temperature', 1):g} (soft distillation)"
                         if self.settings.get("distill") == "soft"
                         else "against its predicted classes (hard distillation)"))

    def as_json(self) -> dict:
        return {"recipe": self.recipe, "recipe_description": self.recipe_description,
                "epochs": self.epochs, "best_epoch": self.best_epoch, "val_acc": self.val_acc,
                "val_acc_flip_tta": self.val_acc_flip_tta, "val_images": self.val_images,
                "split_seed": self.split_seed, "test_acc": self.test_acc,
                "test_images": self.test_images, "data": self.data,
                "machine": self.machine, "training_minutes": round(self.training_minutes, 1),
                "command": self.command if replayable(self.history) else None,
                "settings": self.settings,
                "class_names": self.class_names, "per_class_acc": self.per_class_acc,
                "confusion_matrix": self.confusion, "history": self.history, "parent": self.parent,
                "teacher": {k: v for k, v in self.teacher.items() if k != "history"} if self.teacher else None,
                "epochs_before": self.earlier_epochs, "started_from": self.started_from,
                "distilled_from": self.distilled_from}


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
        "training time": f"{summary.training_minutes:.1f} min for {epochs} on {summary.machine}",
        "per-class validation accuracy": ", ".join(
            f"{n} {100 * a:.1f}" for n, a in zip(summary.class_names, summary.per_class_acc)),
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
    plots = "\n\n".join(f"![{p[:-4]}]({p})" for p in PLOTS)
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


def ema_row(summary: RunSummary) -> dict[str, str]:
    """The card's row comparing the exported weight average with the weights as trained."""
    best = next((h for h in summary.history if h["epoch"] == summary.best_epoch), {})
    if "val_acc_without_ema" not in best:
        return {}
    return {"EMA": f"the exported weights are the EMA (decay {summary.settings.get('ema'):g}) of "
                   f"the trained ones, which scored {100 * best['val_acc_without_ema']:.2f}% at "
                   f"that epoch against the EMA's {100 * best['val_acc']:.2f}%"}


def started_from(summary: RunSummary) -> dict[str, str]:
    """The card's rows for a run that began from another model's weights (--init-from)."""
    earlier = summary.earlier_epochs
    own = sum(h["seconds"] for h in summary.history) / 60
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
    model.save_pretrained(tmp)
    (tmp / "model.safetensors").chmod(0o644)   # written 0600; every other export file is 0644
    for name in PLOTS:
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
        api.upload_folder(folder_path=str(export_dir), repo_id=repo_id,
                          commit_message="Upload ViT trained with vit-cifar train.py")
    except Exception as err:
        raise RuntimeError(f"upload to the Hub repo {repo_id} failed ({type(err).__name__}: "
                           f"{err}); the local export in {export_dir} is intact") from err
    return f"https://huggingface.co/{repo_id}"


# ---------------------------------------------------------------- words

def describe_schedule(settings: argparse.Namespace, milestones: list[int]) -> str:
    """The learning-rate schedule as the run had it; `milestones` are the step
    schedule's x0.1 epochs (those at or past the end never happen)."""
    warmup = f"{settings.warmup_epochs:g} warmup epochs, then " if settings.warmup_epochs else ""
    if settings.schedule in ("cosine", "linear"):
        return warmup + f"{settings.schedule} decay to 0"
    drops = [m for m in milestones if m < settings.epochs]
    if not drops:
        return warmup + "a constant learning rate (the x0.1 milestones fall at the end of the run)"
    return warmup + f"x0.1 after epoch{'s' if len(drops) > 1 else ''} {' and '.join(map(str, drops))}"


def describe_recipe(settings: argparse.Namespace, milestones: list[int]) -> str:
    """The run's recipe in words, every ingredient named with its value."""
    s = settings
    epochs = f"{s.epochs} epoch{'s' if s.epochs != 1 else ''}"
    cnn = getattr(s, "model", "vit") == "cnn"
    optimizer = (f"SGD (Nesterov, momentum {s.momentum:g})" if getattr(s, "optimizer", "adamw") == "sgd"
                 else "AdamW")
    if cnn:
        decay = f"on all parameters, BatchNorm shifts at {s.bias_lr_scale:g}x the rate"
    else:
        decay = "on all parameters" if s.decay_all else "not on norms, biases, embeddings"
    augment = (f"flip + translation by up to {s.translate} pixels" if getattr(s, "augment", "crop") == "translate"
               else "flip + RandomResizedCrop")
    model = (f"widths {list(s.widths)}" if cnn else
             f"dropout {s.dropout:g}, attention dropout {s.attn_dropout:g}, drop path "
             f"{s.drop_path:g}, patches kept {s.patch_keep:g}")
    return (f"{s.recipe} recipe, {epochs}: {optimizer} lr {s.lr:g}, batch {s.batch_size}, weight "
            f"decay {s.weight_decay:g} ({decay}), {describe_schedule(s, milestones)}, label "
            f"smoothing {s.label_smoothing:g}, policy {s.policy}, {augment}, MixUp "
            f"{s.mixup_alpha:g}, CutMix {s.cutmix_alpha:g}, {model}, EMA "
            + (f"{s.ema:g}" if s.ema else "off"))


def print_epoch(epoch: int, row: dict, epochs: int, first: bool) -> None:
    """An epoch's line of the training log; after the first, what the whole run will take."""
    print(f"epoch {epoch:>3}/{epochs}  lr {row['lr']:.2e}  train loss "
          f"{row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%  val loss "
          f"{row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%"
          + (f" (without EMA {100 * row['val_acc_without_ema']:.2f}%)" if "val_acc_without_ema" in row else "")
          + f"  ({row['seconds']:.0f}s)", flush=True)
    if first and epoch < epochs:   # so a CPU user can size --epochs
        s = row["seconds"]
        print(f"epoch {epoch}: {s:.0f} s; {epochs} epochs ≈ {format_duration(s * epochs)} "
              f"on this machine ({format_duration(s * (epochs - epoch))} to go)", flush=True)


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"
