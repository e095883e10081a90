"""A transfer's models: the CIFAR-trained source model of --from, checked as the app
checks a model folder, and the starting models of the runs (its architecture for the new
classes, randomly initialised, or its weights with a new head)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from cnn_model import CNN
from common.model_folder import ModelError, check_config, load_folder
from data import channel_stats, to_normalized
from training.transfer_settings import TransferError
from vit_model import ViT

KINDS: dict[str, type[ViT] | type[CNN]] = {"vit": ViT, "cnn": CNN}
KIND_NAMES = {"vit": "ViT", "cnn": "CNN"}
HEAD = ("head.weight", "head.bias")


@dataclass
class Source:
    folder: Path
    kind: str
    config: dict
    model: ViT | CNN
    training: dict  # its training.json, {} without one


def load_source(folder: Path, kind: str) -> Source:
    """The CIFAR-trained model of --from, checked as the app checks a model folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TransferError(
            f"--from {folder} " + ("is a file, not a model folder" if folder.exists() else "does not exist")
        )
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        hint = f"; did you mean {folder / 'export'}?" if (folder / "export" / "config.json").is_file() else ""
        raise TransferError(f"--from {folder} is not a model folder: it has no config.json and model.safetensors{hint}")
    try:
        config = json.loads((folder / "config.json").read_text())
        check_config(config)
        found = "cnn" if "widths" in config else "vit"
        if found != kind:
            raise TransferError(
                f"--from {folder} holds a {KIND_NAMES[found]}, not a {KIND_NAMES[kind]}: "
                f"pass --model {found}, or a {KIND_NAMES[kind]} folder"
            )
        # The ViT through the app's own loader; the CNN strictly, its weights checked the same way.
        model = load_folder(folder) if kind == "vit" else CNN.from_pretrained(folder).eval()
        if not all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point()):
            raise ModelError("the weights hold NaN or infinite values")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TransferError(f"--from {folder}: config.json is not valid JSON ({err})") from None
    except (ModelError, SafetensorError, OSError, RuntimeError, TypeError, ValueError) as err:
        if isinstance(err, TransferError):
            raise
        raise TransferError(f"--from {folder} cannot be loaded: {err}") from None
    training = {}
    if (folder / "training.json").is_file():
        try:
            training = json.loads((folder / "training.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            training = {}
    return Source(folder, kind, config, model, training if isinstance(training, dict) else {})


def build(source: Source, class_names: list[str], mean: list[float], std: list[float]) -> ViT | CNN:
    """The source's architecture for the new classes, randomly initialised."""
    config = {**source.config, "num_classes": len(class_names), "class_names": class_names, "mean": mean, "std": std}
    try:
        check_config(config)  # what the app will ask of the export (at most 1000 classes, ...)
    except ModelError as err:
        raise TransferError(f"these classes cannot make a servable model: {err}") from None
    return KINDS[source.kind](**config)


def scratch_start(source: Source, class_names: list[str], train_images: torch.Tensor, seed: int) -> ViT | CNN:
    """Randomly initialised, normalised with the new training images' statistics."""
    mean, std = channel_stats(train_images)
    std = [max(s, 1e-3) for s in std]  # a class of one flat colour must not divide by zero
    torch.manual_seed(seed)
    model = build(source, class_names, mean, std)
    if isinstance(model, CNN):  # as train.py does: the stem whitens the training patches
        model.whiten(to_normalized(train_images, mean, std))
    return model


def probe_start(source: Source, class_names: list[str], seed: int) -> ViT | CNN:
    """The source's weights (its mean/std included) with a new, randomly initialised head."""
    torch.manual_seed(seed)
    model = build(source, class_names, source.model.mean, source.model.std)
    kept = {k: v for k, v in source.model.state_dict().items() if k not in HEAD}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    if sorted(missing) != sorted(HEAD) or unexpected:
        raise TransferError(
            f"--from {source.folder}: its weights do not fit its config (missing {missing}, unexpected {unexpected})"
        )
    return model
