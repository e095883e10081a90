"""Draw the docs' figures: draws of the training transform (docs/augmentations.png), an
image cut into patches beside the token sequence the model reads (docs/patches.png), and
the bundled ViT's computation graph (docs/model_graph.png).

    python -m tools.draw_figures --data-dir cifar10-jpeg            # all three, into docs/
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from data import DataError, load_training_data, val_size
from space.model_graph import dot_missing, draw
from space.pictures import augmented_views, tile_patches
from training.plots import pyplot, save_figure
from vit_model import ViT, patchify

REPO = Path(__file__).resolve().parent.parent


def save_augmentation_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    path: str | os.PathLike,
    per_image: int = 6,
    seed: int = 0,
) -> None:
    """A grid: each row one training image, then `per_image` draws of the training
    transform, de-normalized, labelled with the class."""
    plt = pyplot()
    rows = len(images)
    fig, axes = plt.subplots(rows, per_image + 1, figsize=(1.3 * (per_image + 1), 1.4 * rows), squeeze=False)
    for r, (image, label) in enumerate(zip(images, labels)):
        views = [image.float() / 255, *augmented_views(image, per_image, seed + r, mean, std)]
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
    grid = tile_patches(
        tokens.view(-1, x.shape[0], patch_size, patch_size), x.shape[2] // patch_size, gap=max(1, patch_size // 4)
    )
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Draw the docs' figures.", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--data-dir", required=True, help="class-folder copy (<dir>/train/<class>/*.jpg) or the official CIFAR-10"
    )
    parser.add_argument("--out", default=str(REPO / "docs"), help="folder for the PNGs")
    parser.add_argument(
        "--val-size", type=val_size, default=0.1, help="held out for validation: a fraction, or a number of images"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    parser.add_argument("--patch-size", type=int, default=4, help="patch size of the patch figure")
    parser.add_argument("--model", default=str(REPO / "weights"), help="model folder of the graph")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        data = load_training_data(args.data_dir, args.val_size, args.seed)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    out = Path(args.out)
    labels = data.labels[data.train_idx]
    picks = data.train_idx[torch.stack([(labels == k).nonzero()[0, 0] for k in range(len(data.class_names))])]
    save_augmentation_grid(
        data.images[picks], data.labels[picks], data.class_names, data.mean, data.std, out / "augmentations.png"
    )
    save_patch_figure(data.images[picks[0]], args.patch_size, out / "patches.png")
    written = ["augmentations.png", "patches.png"]
    if dot_missing() is None:
        model = ViT.from_pretrained(args.model).eval()
        draw(model, model.image_size, out / "model_graph.png")
        written.append("model_graph.png")
    else:
        print(f"model_graph.png not drawn: {dot_missing()}")
    print(f"wrote {', '.join(written)} in {out}/")


if __name__ == "__main__":
    main()
