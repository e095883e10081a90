"""The data figures of `python data.py`: draws of the training transform, and an image cut
into patches beside the token sequence the model reads (docs/augmentations.png and
docs/patches.png in the README)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from data import denormalize, tile_patches, train_transform
from figures import pyplot, save_figure
from vit_model import patchify


def save_augmentation_grid(images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                           mean: Sequence[float], std: Sequence[float],
                           path: str | os.PathLike, per_image: int = 6, seed: int = 0) -> None:
    """A grid: each row one training image, then `per_image` draws of the training
    transform, de-normalized, labelled with the class."""
    plt = pyplot()
    torch.manual_seed(seed)
    transform = train_transform(mean, std, images.shape[-1])
    rows = len(images)
    fig, axes = plt.subplots(rows, per_image + 1, figsize=(1.3 * (per_image + 1), 1.4 * rows),
                             squeeze=False)
    for r, (image, label) in enumerate(zip(images, labels)):
        views = [image.float() / 255] + [denormalize(transform(image), mean, std)
                                         for _ in range(per_image)]
        for c, view in enumerate(views):
            ax = axes[r, c]
            ax.imshow(view.permute(1, 2, 0).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(class_names[int(label)], fontsize=9)
            if r == 0:
                ax.set_title("original" if c == 0 else f"augmented {c}", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def save_patch_figure(image: torch.Tensor, patch_size: int, path: str | os.PathLike) -> None:
    """One uint8 image, its patches laid out with gaps, and the token matrix the model
    reads: one row per patch, C*P*P values each."""
    plt = pyplot()
    x = image.float() / 255
    tokens = patchify(x[None], patch_size)[0]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4), width_ratios=[1, 1, 1.1])
    axes[0].imshow(x.permute(1, 2, 0).numpy())
    axes[0].set_title(f"image {x.shape[2]}x{x.shape[1]}")
    grid = tile_patches(tokens.view(-1, x.shape[0], patch_size, patch_size),
                        x.shape[2] // patch_size, gap=max(1, patch_size // 4))
    axes[1].imshow(grid.permute(1, 2, 0).numpy())
    axes[1].set_title(f"{len(tokens)} patches of {patch_size}x{patch_size}, row by row")
    axes[2].imshow(tokens.numpy(), aspect="auto", cmap="gray", interpolation="nearest")
    axes[2].set_title(f"token sequence: {len(tokens)} tokens x {tokens.shape[1]} values", fontsize=10)
    axes[2].set_xlabel("value (channel, row, column within the patch)")
    axes[2].set_ylabel("token (patch index)")
    for ax in axes[:2]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)
