"""The resumable state of a training run and its checkpoint files.

last.pt (every epoch) holds everything a resume needs: the model, the optimizer, the
EMA, the settings, the training images' statistics, progress and history; best.pt the
best weights on validation; metrics.jsonl the history, a line an epoch. Every file is
written atomically, and every tensor is saved on the CPU, so that a checkpoint written
on a GPU loads on a machine without one. Randomness is not saved: train.py reseeds it
from (seed, epoch, rank) every epoch.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError

from common.atomic_files import atomic_save, atomic_write, json_text
from common.model_folder import ModelError, load_folder
from data import same_images, same_split
from training.errors import RunError

ARCHITECTURE = ("image_size", "patch_size", "dim", "depth", "heads", "mlp_dim", "num_classes")

# How the note of the first epoch after a resume that changed --epochs begins.
REPLANNED = "resumed with --epochs"

CHECKPOINT_KEYS = {"model", "optimizer", "args", "mean", "std", "epoch", "best_val_acc", "best_epoch", "history"}


def on_cpu(obj: object) -> object:
    """The same nesting of dicts and lists with every tensor moved to the CPU, so that a
    checkpoint written on a GPU loads on a machine without one."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


def load_checkpoint(path: Path, resume_hint: bool = False) -> dict:
    """A checkpoint of train.py, or one clear message naming the file and what to do."""
    if not path.exists():
        raise RunError(f"--resume, but {path} does not exist" if resume_hint else f"checkpoint {path} does not exist")
    advice = (
        f"delete {path.parent} (or use another --out) to start the run afresh"
        if resume_hint
        else "train again to rewrite it"
    )
    damaged = damaged_member(path)
    if damaged:
        raise RunError(
            f"{path} is damaged: its {damaged} fails its checksum (a disk or copy error changed it); {advice}"
        )
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    # torch.load documents no errors: a cut or foreign file fails wherever its unpickler
    # or zip reader stops (RuntimeError, EOFError, pickle.UnpicklingError, ...).
    except Exception as err:
        reason = (
            "it is empty"
            if path.stat().st_size == 0
            else (
                "it holds objects other than tensors and plain values"
                if "weights_only" in str(err)
                else f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"
            )
        )
        raise RunError(
            f"{path} is not a readable train.py checkpoint ({reason}); "
            f"it may be truncated or come from another program: {advice}"
        ) from None
    needed = CHECKPOINT_KEYS if path.name == "last.pt" else {"model", "epoch"}
    missing = needed - set(saved) if isinstance(saved, dict) else needed
    if missing:
        raise RunError(
            f"{path} was not written by this version of train.py (it lacks {', '.join(sorted(missing))}): {advice}"
        )
    return saved


def remove_leftovers(run_dir: Path) -> None:
    """Delete the temporary files and folders a killed process left in its run folder
    (atomic writes' `.NAME.*.tmp`, an export's `.export.tmp` and `.export.old`)."""
    for leftover in [*run_dir.glob(".*.tmp"), run_dir / ".export.old"]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def damaged_member(path: Path) -> str | None:
    """The first file in a checkpoint's zip archive whose bytes fail its CRC-32 (torch.load
    itself reads a flipped bit as a changed weight), or None; a file that is no zip
    archive is torch.load's to judge."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"archive ({err})"


@dataclass
class RunState:
    """What a run carries from epoch to epoch and across a resume: its settings, the
    training images' statistics, progress and history. Saved in last.pt with the model,
    optimizer and EMA; randomness is not saved but reseeded from (seed, epoch, rank)."""

    settings: dict
    mean: list[float]
    std: list[float]
    epoch: int = 0
    best_val_acc: float = -1.0
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    parent: dict | None = None  # the training.json of the model --init-from started from

    def save(
        self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: torch.nn.Module | None
    ) -> None:
        atomic_save(
            on_cpu(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "args": self.settings,
                    "mean": self.mean,
                    "std": self.std,
                    "epoch": self.epoch,
                    "best_val_acc": self.best_val_acc,
                    "best_epoch": self.best_epoch,
                    "history": self.history,
                    "parent": self.parent,
                }
            ),
            path,
        )

    @classmethod
    def from_checkpoint(cls, saved: dict) -> RunState:
        return cls(
            saved["args"],
            saved["mean"],
            saved["std"],
            saved["epoch"],
            saved["best_val_acc"],
            saved["best_epoch"],
            saved["history"],
            saved.get("parent"),
        )

    def restore(
        self, saved: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: torch.nn.Module | None
    ) -> None:
        """Load the tensors that save() wrote into freshly built objects."""
        try:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise RunError(
                f"the run's last.pt does not fit the model its settings build "
                f"({' '.join(str(err).split())[:300]}); it was written by another "
                "version of train.py or changed since: start the run afresh in a new --out"
            ) from None
        if ema is not None:
            if saved.get("ema") is None:
                raise RunError("the checkpoint has no EMA weights to continue")
            ema.load_state_dict(saved["ema"])

    def replanned_note(self, resumed: Mapping) -> str | None:
        """The note of the first epoch after a resume that changed --epochs (the card
        prints it), from the resumed run's settings; None where --epochs is unchanged."""
        if self.settings["epochs"] == resumed["epochs"]:
            return None
        return (
            f"{REPLANNED} {resumed['epochs']} instead of {self.settings['epochs']}: the "
            f"learning-rate schedule was re-planned for {resumed['epochs']} epochs from here on "
            f"(warmup {resumed['warmup_epochs']:g} epochs and policy {resumed['policy']} kept from the start)"
        )

    def end_epoch(
        self,
        row: dict,
        run_dir: Path,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        evaluated: torch.nn.Module,
        ema: torch.nn.Module | None,
    ) -> None:
        """Record an epoch: best.pt (the `evaluated` weights) if it is the best so far,
        then last.pt and metrics."""
        self.history.append(row)
        if row["val_acc"] > self.best_val_acc:
            self.best_val_acc, self.best_epoch = row["val_acc"], self.epoch
            atomic_save(
                on_cpu({"model": evaluated.state_dict(), "epoch": self.epoch, "val_acc": row["val_acc"]}),
                run_dir / "best.pt",
            )
        self.save(run_dir / "last.pt", model, optimizer, ema)
        text = "".join(json_text(h) + "\n" for h in self.history)
        atomic_write(run_dir / "metrics.jsonl", lambda f: f.write(text.encode()))


@dataclass
class StartingModel:
    """The exported model that a run with --init-from starts from: its checked weights
    and config, and its training.json, which says how it was trained and on which split."""

    weights: dict[str, torch.Tensor]
    config: dict
    training: dict

    @classmethod
    def load(cls, folder: str) -> StartingModel:
        path = Path(folder)
        try:
            model = load_folder(path)
        except (ModelError, OSError) as err:
            raise RunError(f"--init-from {folder}: {err}") from None
        # A cut or foreign model.safetensors (SafetensorError), weights of another shape
        # (RuntimeError), a config the ViT's constructor refuses (TypeError, ValueError).
        except (SafetensorError, RuntimeError, TypeError, ValueError) as err:
            raise RunError(
                f"--init-from {folder}: its weights do not load into the ViT its config.json "
                f"describes ({type(err).__name__}: {' '.join(str(err).split())[:200]})"
            ) from None
        try:
            training = json.loads((path / "training.json").read_text())
        except (OSError, ValueError):
            training = None
        if not isinstance(training, dict) or not isinstance(training.get("history"), list):
            raise RunError(
                f"--init-from {folder}: no readable training.json beside "
                "the weights, so nothing says which images the model was "
                "validated on; fine-tuning it could train on them"
            )
        config = json.loads((path / "config.json").read_text())
        return cls(model.state_dict(), config, training)

    def check_fits(self, wanted: dict, val_images: int) -> None:
        """Refuse a run that differs from the model where it must not: its architecture, the
        validation split (another would validate on images it trained on), the images."""
        seed = wanted["seed"]
        problems = [
            f"--{key.replace('_', '-')} {wanted[key]} (the model has {self.config.get(key)})"
            for key in ARCHITECTURE
            if key in wanted and wanted[key] != self.config.get(key)
        ]
        if not same_split(self.training, seed, val_images):
            problems.append(
                f"the validation split: {val_images} images with seed {seed}, but the "
                f"model was validated on {self.training.get('val_images')} with seed "
                f"{self.training.get('split_seed')}"
            )
        if not same_images(self.config["mean"], wanted["mean"]):
            problems.append("the training images (their mean differs from the model's)")
        if problems:
            raise RunError(
                f"the model in --init-from {wanted['init_from']} does not fit this run: {'; '.join(problems)}"
            )
