"""The pictures app.py shows, as (H, W, 3) uint8 arrays: enlarged inputs, augmented views,
patch grids and token sequences, and readable attention rollouts."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from data import denormalize, train_transform
from rollout import block_attention_map, scale_to_unit
from vit_model import patchify

DISPLAY_SIZE = 256
_RNG_LOCK = threading.Lock()


def enlarge(image: torch.Tensor, size: int = DISPLAY_SIZE) -> np.ndarray:
    """(3, h, w) uint8 or [0, 1] float -> (k * h, k * w, 3) uint8 with square pixels, for
    the largest whole k (at least 1) with k * w <= size, so that a 32x32 image stays crisp
    in the browser instead of being smoothed."""
    if image.is_floating_point():
        image = (image * 255).round().to(torch.uint8)
    scale = max(1, size // image.shape[-1])
    return image.repeat_interleave(scale, 1).repeat_interleave(scale, 2).permute(1, 2, 0).numpy()


def augmented_views(
    image: torch.Tensor, count: int, seed: int, mean: Sequence[float], std: Sequence[float]
) -> list[torch.Tensor]:
    """`count` draws of the exact training transform (data.train_transform), de-normalized
    to [0, 1]. The transform draws from torch's global generator, which the server's
    threads share: the lock and fork_rng keep one request's seed from leaking into another."""
    transform = train_transform(mean, std, image.shape[-1])
    with _RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [denormalize(transform(image), mean, std) for _ in range(count)]


def tile_patches(patches: torch.Tensor, columns: int, gap: int = 1, fill: float = 1.0) -> torch.Tensor:
    """(N, C, p, p) patches laid out in rows of `columns`, `gap` pixels of `fill` apart:
    a (C, H, W) picture, for the patch figure and the app's patch tab."""
    n, c, p, _ = patches.shape
    rows, step = -(-n // columns), p + gap
    out = torch.full((c, rows * step - gap, min(n, columns) * step - gap), fill, dtype=patches.dtype)
    for k, patch in enumerate(patches):  # a display helper: at most 1024 patches
        r, col = divmod(k, columns)
        out[:, r * step : r * step + p, col * step : col * step + p] = patch
    return out


def tile_enlarged(patches: torch.Tensor, columns: int, cell: int, gap: int) -> np.ndarray:
    """(N, 3, p, p) uint8 patches, each enlarged to cell x cell pixels, tiled in rows of
    `columns` with `gap` white pixels between them; returns (H, W, 3) uint8."""
    scale = cell // patches.shape[-1]
    big = patches.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    return tile_patches(big, columns, gap, fill=255).permute(1, 2, 0).numpy()


def patch_views(image: torch.Tensor, patch_size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The image cut into patches: (grid with gaps, token sequence, caption)."""
    size = image.shape[-1]
    patches = patchify(image[None], patch_size)[0].view(-1, 3, patch_size, patch_size)
    n = len(patches)
    scale = max(1, DISPLAY_SIZE // size)
    grid = tile_enlarged(patches, size // patch_size, patch_size * scale, 4)
    # The sequence wraps like text, four times wider than tall (so it cannot be mistaken
    # for the grid) and about 770 pixels wide, whatever the patch size.
    columns = min(n, 2 * math.isqrt(n))
    cell = patch_size * min(scale, max(1, (770 // columns - 2) // patch_size))
    sequence = tile_enlarged(patches, columns, cell, 2)
    caption = (
        f"**{n} patches of {patch_size}x{patch_size}** ({size // patch_size} x "
        f"{size // patch_size}). The model reads them left to right, top to bottom, "
        f"each flattened to 3x{patch_size}x{patch_size} = {3 * patch_size**2} numbers "
        f"and projected to one token, after a learned class token: "
        f"{n + 1} tokens in all."
    )
    return grid, sequence, caption


def upsample_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(B, grid, grid) -> (B, size, size), bilinear, so the map lies over the image."""
    return F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def _tint(picture: np.ndarray, heat: np.ndarray, strength: float, cmap: str) -> np.ndarray:
    """Blend a colormap over an (H, W, 3) [0, 1] picture with opacity strength * heat."""
    from matplotlib import colormaps

    # The colormap's darkest third is skipped: near-black would read as shadow, not heat.
    colored = colormaps[cmap](0.35 + 0.65 * heat)[..., :3]
    opacity = strength * heat[..., None]
    return (255 * ((1 - opacity) * picture + opacity * colored)).round().astype(np.uint8)


def attention_overlay(
    image: torch.Tensor, heat: torch.Tensor, size: int = 256, strength: float = 0.75, cmap: str = "inferno"
) -> np.ndarray:
    """A readable rollout picture: the uint8 image (3, H, W) enlarged to size x size,
    tinted by a (grid, grid) map in [0, 1] whose opacity grows with the map, so the
    image shows through where attention is low and the colour marks where it is high."""
    picture = (
        F.interpolate(image[None].float() / 255, size=(size, size), mode="bicubic", align_corners=False)[0]
        .clamp(0, 1)
        .permute(1, 2, 0)
        .numpy()
    )
    heat = upsample_maps(heat[None], size)[0].clamp(0, 1).numpy()
    return _tint(picture, heat, strength, cmap)


def colour_scale(width: int, height: int = 14, strength: float = 0.75, cmap: str = "inferno") -> np.ndarray:
    """The key to attention_overlay: 0 at the left to 1 at the right, drawn the same way
    over mid-grey; (height, width, 3) uint8."""
    ramp = np.broadcast_to(np.linspace(0, 1, width), (height, width))
    return _tint(np.full((height, width, 3), 0.5), ramp, strength, cmap)


def rollout_figure(image: torch.Tensor, heat: torch.Tensor, size: int = DISPLAY_SIZE, gap: int = 8) -> np.ndarray:
    """The input (left) beside the rollout over it (right), with the colour scale under
    the rollout: 0 at its left end, the map's maximum at its right end."""
    crisp, overlay = enlarge(image, size), attention_overlay(image, heat, size)
    height, width = crisp.shape[0], 2 * crisp.shape[1] + gap
    figure = np.full((height + gap + 14, width, 3), 255, np.uint8)
    figure[:height, : crisp.shape[1]] = crisp
    figure[:height, crisp.shape[1] + gap :] = overlay
    figure[height + gap :, crisp.shape[1] + gap :] = colour_scale(overlay.shape[1])
    return figure


def block_maps(
    image: torch.Tensor, attentions: list[torch.Tensor], head: int | str, size: int = 128
) -> list[tuple[np.ndarray, str]]:
    """Each block's raw attention of the class token (one head, or the heads fused)."""
    return [
        (attention_overlay(image, scale_to_unit(block_attention_map(attentions, b, head))[0], size), f"block {b + 1}")
        for b in range(len(attentions))
    ]
