"""CIFAR-10 data: loading and caching, the train/val split and statistics, normalization
and the assignment's reference augmentation.

Two sources sit behind one data folder:
  * a class-folder copy, `<root>/train/<class>/*.jpg|png` and optionally `<root>/test/...`
    (such as the JPEG copy of CIFAR-10 in ../shared/data), decoded once into a uint8
    tensor cache under `<root>/.cache/`;
  * otherwise the official CIFAR-10 through torchvision, downloaded into the folder.

`train_transform` is the assignment's augmentation chain in torchvision.transforms.v2,
the readable reference, attached to a Dataset as torchvision expects; training/augment.py
draws the same distribution for a whole batch on the training device (tests check one
against the other).

    python data.py --data-dir DIR      # the split and its statistics
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.transforms import v2

from common.atomic_files import atomic_save
from common.photo import DAMAGED

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
CROP_SCALE = (0.8, 1.0)
CROP_RATIO = (0.9, 1.1)


class DataError(ValueError):
    """A data folder, file or image that cannot be used, with the reason."""


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)


# ---------------------------------------------------------------- loading and caching


def load_split(data_dir: str | os.PathLike, split: str = "train", download: bool = False) -> ImageSet | None:
    """The images of one split ("train" or "test") as uint8 tensors: a class-folder copy,
    or the official CIFAR-10 in torchvision's layout, downloaded into an empty or missing
    folder only when `download` says so.

    Returns None when a class-folder source has no such split (the JPEG copy has no test
    split). Raises DataError naming the cause for anything unusable.
    """
    root = Path(data_dir)
    if root.exists() and not root.is_dir():
        raise DataError(f"data folder {root} is a file, not a folder")
    if (root / "train").is_dir():
        if not (root / split).is_dir():
            return None
        return _load_folder_split(root, split)
    if not root.exists() and not download:
        raise DataError(
            f"data folder {root} does not exist: pass --data-dir a folder with "
            f"train/<class>/ images, or add --download to fetch the official "
            f"CIFAR-10 (170 MB) into {root}"
        )
    return _load_torchvision_split(root, split, download)


# What torchvision's CIFAR-10 leaves in its folder: only these may be there before a download.
CIFAR10_FILES = {"cifar-10-python.tar.gz", "cifar-10-batches-py", ".cache"}


def _misplaced_hint(root: Path) -> str:
    """Why a folder with other things in it is not a data folder, naming the likely one."""
    below = sorted(p.parent for p in root.glob("*/train") if p.is_dir())
    if below:
        return f"its subfolder {below[0]} has train/<class>/ images: pass that as --data-dir"
    if any(p.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir()) for p in root.iterdir()):
        return f"it holds class folders itself: it looks like a train/ folder, so pass its parent {root.parent}"
    return "pass the folder that holds train/<class>/*.jpg, or an empty folder to download CIFAR-10 into"


def _load_torchvision_split(root: Path, split: str, download: bool) -> ImageSet:
    from torchvision.datasets import CIFAR10

    other = {p.name for p in root.iterdir()} - CIFAR10_FILES if root.exists() else set()
    if other:  # a folder one level off must not start a 170 MB download, nor train on it
        raise DataError(
            f"data folder {root} has no train/<class>/ images and is not an empty "
            f"folder for CIFAR-10's download: {_misplaced_hint(root)}"
        )
    if not download and not (root / "cifar-10-batches-py").is_dir():
        raise DataError(
            f"data folder {root} holds no images: pass --data-dir a folder with "
            f"train/<class>/ images, or add --download to fetch the official "
            f"CIFAR-10 (170 MB) into it"
        )
    try:
        ds = CIFAR10(str(root), train=split == "train", download=download)
    # torchvision documents no errors here: no network (URLError), a broken archive
    # (tarfile's, zlib's), a failed checksum (RuntimeError), a full disk (OSError), ...
    except Exception as err:
        raise DataError(
            f"data folder {root} has no train/<class>/ images, and CIFAR-10 could not be "
            f"downloaded into it ({type(err).__name__}: {err})"
        ) from err
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.tensor(ds.targets, dtype=torch.long), list(ds.classes))


def _list_folder_split(split_dir: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{split_dir} has no class folders: expected {split_dir}/<class>/*.jpg")
    if len(class_dirs) == 1:  # every image "right": a 100% model that has learned nothing
        raise DataError(
            f"{split_dir} has one class folder ({class_dirs[0].name}): a classifier "
            f"needs images of at least two classes, one folder each"
        )
    files = []
    for label, class_dir in enumerate(class_dirs):
        found = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"class folder {class_dir} holds no .jpg, .jpeg or .png images")
        files += [(p, label) for p in found]
    return [p.name for p in class_dirs], files


def _fingerprint(root: Path, files: list[tuple[Path, int]]) -> str:
    """Of names under `root`, labels, sizes, times: data, ./data and /abs/data share it."""
    digest = hashlib.sha1()
    for path, label in files:
        st = path.stat()
        digest.update(f"{path.relative_to(root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _decode(path: Path) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # a truncated file fails here rather than decoding half an image
            rgb = im.convert("RGB")
    except (*DAMAGED, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err
    return torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3).permute(2, 0, 1)


def _load_folder_split(root: Path, split: str) -> ImageSet:
    from tqdm import tqdm

    class_names, files = _list_folder_split(root / split)
    cache = root / ".cache" / f"{split}-{_fingerprint(root, files)}.pt"
    if cache.exists():
        try:
            state = torch.load(cache, weights_only=True)
            return ImageSet(state["images"], state["labels"], state["class_names"])
        # Cut by a full disk or a copy: decode again. torch.load documents no errors (a
        # cut file raises RuntimeError, EOFError, pickle's, ...), nor does a cache of
        # another layout (KeyError).
        except Exception as err:
            print(
                f"note: the decode cache {cache} is unreadable ({type(err).__name__}); decoding the images again",
                file=sys.stderr,
            )
            cache.unlink(missing_ok=True)
    images = []
    for path, _ in tqdm(files, desc=f"decoding {split} images (once)", unit="img", mininterval=1.0, leave=False):
        images.append(_decode(path))
        _check_size(images, files)
    result = ImageSet(torch.stack(images), torch.tensor([label for _, label in files]), class_names)
    try:
        atomic_save({"images": result.images, "labels": result.labels, "class_names": class_names}, cache)
    except OSError as err:  # a read-only copy of the data: decode again next time
        print(f"note: no decode cache in {cache.parent} ({err.strerror or err})", file=sys.stderr)
        return result
    for stale in set(cache.parent.glob(f"{split}-*.pt")) - {cache}:  # of files since changed
        stale.unlink(missing_ok=True)
    return result


def _check_size(images: list[torch.Tensor], files: list[tuple[Path, int]]) -> None:
    """Every image square and of one size; the message names the two files that differ."""
    k = len(images) - 1
    h, w = images[k].shape[1:]
    if h != w:
        raise DataError(
            f"image {files[k][0]} is {w}x{h}: images must be square (the ViT cuts them into a square grid of patches)"
        )
    if k and images[k].shape[1:] != images[0].shape[1:]:
        raise DataError(
            f"images differ in size: {files[0][0]} is {images[0].shape[2]}x"
            f"{images[0].shape[1]} but {files[k][0]} is {w}x{h}; resize them to one size"
        )


def val_size(text: str) -> float:
    """argparse type of --val-size: a fraction (0 < v < 1) or a count of images (v >= 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a fraction nor a count") from None
    if not math.isfinite(value) or value <= 0 or (value >= 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(f"{text} must be a fraction between 0 and 1 or a whole number of images")
    return value


def split_indices(n: int, val_size: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of range(n) into (train, val) index tensors; val_size is a
    fraction of n (below 1) or a count."""
    count = round(val_size * n) if 0 < val_size < 1 else int(val_size)
    if not 0 < count < n:
        raise DataError(
            f"validation size {count} must be at least 1 and below the {n} "
            f"images of the training split (--val-size {val_size:g})"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[count:].sort().values, perm[:count].sort().values


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in images.split(4096):
        x = chunk.to(torch.float64) / 255
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = images.numel() / images.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).sqrt()
    return mean.tolist(), std.tolist()


def same_images(mean: Sequence[float], other_mean: Sequence[float]) -> bool:
    """Whether two runs trained on the same images, as far as a run records them: its
    training images' channel means (another folder, split or subset moves them)."""
    return torch.allclose(torch.tensor(mean), torch.tensor(other_mean), atol=1e-6)


def same_split(record: dict, seed: int, val_images: int) -> bool:
    """Whether a run's record (training.json) held out the same validation images: the same
    split seed and count; another split would validate on images the model trained on."""
    return (record.get("split_seed"), record.get("val_images")) == (seed, val_images)


@dataclass
class TrainingData:
    """The training split of a data folder, cut into the images trained on and the ones
    held out for validation, with the training images' statistics and the test split."""

    images: torch.Tensor  # (N, C, H, W) uint8, the whole training split
    labels: torch.Tensor  # (N,) int64
    class_names: list[str]
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    mean: list[float]
    std: list[float]
    test: ImageSet | None
    description: str  # source and split sizes, in words

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]


def load_training_data(
    data_dir: str | os.PathLike, val_size: float = 0.1, seed: int = 0, train_subset: int = 0, download: bool = False
) -> TrainingData:
    """Load a data folder (CIFAR-10 downloaded into it if `download`), split it with
    `seed`, keep `train_subset` training images (0: all) and compute mean/std on the
    images trained on. Raises DataError."""
    train_set = load_split(data_dir, "train", download)
    test_set = load_split(data_dir, "test", download)
    train_idx, val_idx = split_indices(len(train_set), val_size, seed)
    if train_subset > len(train_idx):
        raise DataError(
            f"--train-subset {train_subset} is more than the {len(train_idx)} training images of {data_dir}"
        )
    if train_subset:
        pick = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(seed))
        train_idx = train_idx[pick[:train_subset]].sort().values
    mean, std = channel_stats(train_set.images[train_idx])
    source = "class folders" if (Path(data_dir) / "train").is_dir() else "official CIFAR-10 via torchvision"
    description = (
        f"{Path(data_dir).resolve().name}/ ({source}): {len(train_idx)} training / "
        f"{len(val_idx)} validation images (split seed {seed})"
        + (f", {len(test_set)} test images" if test_set else ", no test split")
    )
    return TrainingData(
        train_set.images, train_set.labels, train_set.class_names, train_idx, val_idx, mean, std, test_set, description
    )


# ---------------------------------------------------------------- reference transforms


def train_transform(mean: Sequence[float], std: Sequence[float], size: int = 32) -> v2.Compose:
    """The assignment's augmentation, for one uint8 image tensor (C, H, W)."""
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomResizedCrop(size, scale=CROP_SCALE, ratio=CROP_RATIO, antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


def to_normalized(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 batch -> normalized float batch, without augmentation; mean and std may be
    tensors on the images' device, shaped (1, C, 1, 1)."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalized float images -> [0, 1], for display."""
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Load CIFAR-10 and print its split and statistics "
        "(python -m tools.draw_figures draws its figures).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data-dir",
        required=True,
        help="class-folder copy (<dir>/train/<class>/*.jpg) or a folder holding the official CIFAR-10 (see --download)",
    )
    parser.add_argument(
        "--download", action="store_true", help="download the official CIFAR-10 (170 MB) into an empty --data-dir"
    )
    parser.add_argument(
        "--val-size", type=val_size, default=0.1, help="held out for validation: a fraction, or a number of images"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    args = parser.parse_args(argv)
    try:
        data = load_training_data(args.data_dir, args.val_size, args.seed, download=args.download)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"{data.description}, {len(data.class_names)} classes: {', '.join(data.class_names)}")
    print("mean", [round(m, 4) for m in data.mean], "std", [round(s, 4) for s in data.std])
    counts = torch.bincount(data.labels[data.train_idx], minlength=len(data.class_names))
    print("training images per class", counts.tolist())


if __name__ == "__main__":
    main()
