"""A transfer's data: the user's photos, one folder per class, read as the app reads a
photo, and split in two per class by a seeded permutation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.photo import UserError, load_photo
from data import IMAGE_SUFFIXES, split_indices
from training.transfer_settings import Log, Settings, TransferError

# With an 80/20 split, five images give a class one to validate on and four to train on.
MIN_PER_CLASS = 5


@dataclass
class FolderImages:
    images: torch.Tensor  # (N, 3, S, S) uint8
    labels: torch.Tensor  # (N,) int64
    class_names: list[str]
    root: Path  # the folder holding the class folders
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # unreadable, and why
    ignored: int = 0  # files that are not images by their name


def class_root(data_dir: Path) -> Path:
    """The folder of class folders: DIR itself, or DIR/train when there is one."""
    if not data_dir.exists():
        raise TransferError(f"data folder {data_dir} does not exist")
    if not data_dir.is_dir():
        raise TransferError(f"data folder {data_dir} is a file, not a folder of class folders")
    return data_dir / "train" if (data_dir / "train").is_dir() else data_dir


def read_class_folder(data_dir: Path, size: int, log: Log = print) -> FolderImages:
    """Every .jpg/.jpeg/.png under DIR/<class>/ as a size x size uint8 image, read as the
    app reads a photo (photo.load_photo: upright, centre square, bicubic resize). A file
    that cannot be read is skipped and counted; too few classes or images are refused."""
    root = class_root(Path(data_dir))
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) < 2:
        found = f" ({folders[0].name})" if folders else ""
        loose = any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.iterdir())
        raise TransferError(
            f"{root} has {len(folders)} class folder{'s' if len(folders) != 1 else ''}"
            f"{found}: a classifier needs at least two classes, one folder of "
            f"images each ({root}/<class>/*.jpg)"
            + (f"; it holds images itself, as one class folder does: pass its parent {root.parent}" if loose else "")
        )
    out = FolderImages(torch.empty(0), torch.empty(0), [p.name for p in folders], root)
    images, labels, counts = [], [], []
    for label, folder in enumerate(folders):
        files = sorted(p for p in folder.iterdir() if p.is_file())
        log(f"reading {folder.name}/: {len(files)} files")
        before = len(images)
        for path in files:
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                out.ignored += 1
                continue
            try:
                images.append(load_photo(path, size))
            except (UserError, OSError) as err:
                out.skipped.append((path, str(err)))
                continue
            labels.append(label)
        counts.append(len(images) - before)
    short = [f"{f.name}/ has {n}" for f, n in zip(folders, counts) if n < MIN_PER_CLASS]
    if short:
        raise TransferError(
            f"too few readable images: {', '.join(short)}; each class needs at "
            f"least {MIN_PER_CLASS} (some to validate on, the rest to train on)"
            + (
                f" ({len(out.skipped)} unreadable file{'s' if len(out.skipped) != 1 else ''} skipped)"
                if out.skipped
                else ""
            )
        )
    out.images, out.labels = torch.stack(images), torch.tensor(labels)
    return out


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) sorted indices: each class split on its own by a seeded permutation,
    val_fraction of it (rounded; at least one image, never all) held out."""
    if not 0 < val_fraction < 1:
        raise TransferError(f"the validation fraction must be between 0 and 1, not {val_fraction}")
    train, val = [], []
    for k in labels.unique().tolist():
        members = (labels == k).nonzero().flatten()
        n = len(members)
        if n < 2:
            raise TransferError(f"class {k} has {n} image: it cannot be split into training and validation")
        count = min(n - 1, max(1, round(val_fraction * n)))
        t, v = split_indices(n, count, seed * 1000 + k)
        train.append(members[t])
        val.append(members[v])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


@dataclass
class Split:
    """The user's images on the training device, cut in two."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    class_names: list[str]


def read_split(settings: Settings, size: int, log: Log) -> tuple[Split, str]:
    """The user's photos on the device, split; and the data in words."""
    folder = read_class_folder(settings.data_dir, size, log)
    if folder.skipped:
        shown = "; ".join(f"{p.name}: {why}" for p, why in folder.skipped[:5])
        log(
            f"skipped {len(folder.skipped)} unreadable file{'s' if len(folder.skipped) != 1 else ''} "
            f"({shown}{'; ...' if len(folder.skipped) > 5 else ''})"
        )
    if folder.ignored:
        log(f"ignored {folder.ignored} file{'s' if folder.ignored != 1 else ''} not named .jpg, .jpeg or .png")
    train, val = stratified_split(folder.labels, settings.val_fraction, settings.seed)
    device = torch.device(settings.device)
    split = Split(
        folder.images[train].to(device),
        folder.labels[train].to(device),
        folder.images[val].to(device),
        folder.labels[val].to(device),
        folder.class_names,
    )
    per_class = ", ".join(f"{name} {int((folder.labels == k).sum())}" for k, name in enumerate(folder.class_names))
    root = folder.root  # "train/" alone would not say which photos
    name = f"{root.parent.name}/{root.name}" if root.name == "train" else root.name
    words = (
        f"{name}/ ({len(folder.labels)} photos of {len(folder.class_names)} classes: "
        f"{per_class}; read at {size}x{size}): {len(train)} training / {len(val)} validation "
        f"images (stratified, split seed {settings.seed})"
        + (f"; {len(folder.skipped)} unreadable files skipped" if folder.skipped else "")
    )
    return split, words
