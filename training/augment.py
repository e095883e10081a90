"""A run's augmentation: a whole uint8 batch at once on the training device, one
independent draw per image, normalized on the way out; the per-image policies drawn in
DataLoader workers; and MixUp/CutMix on the normalized batch.

`DeviceAugment` is the assignment's RandomHorizontalFlip -> RandomResizedCrop ->
Normalize (data.train_transform is its torchvision reference, and tests check one against
the other); `DeviceTranslate` is the CNN recipe's flip + random translation of up to a few
pixels over a reflected border (airbench's augmentation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from data import CROP_RATIO, CROP_SCALE
from training.device_policy import DevicePolicy


def random_resized_crop_boxes(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
    tries: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, left, h, w) int tensors for n crops, drawn as RandomResizedCrop.get_params draws them: area
    U(scale) of the image, log-uniform aspect ratio, the first of 10 tries that fits, else a centre crop."""
    device = generator.device
    area = height * width * torch.empty(n, tries, device=device).uniform_(*scale, generator=generator)
    log_r = torch.empty(n, tries, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_r.exp()
    w = (area * aspect).sqrt().round()
    h = (area / aspect).sqrt().round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    # Fallback, as torchvision: the whole image, clipped to the nearest allowed ratio.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    found = fits.any(dim=1)
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    u = torch.rand(2, n, device=device, generator=generator)
    top = torch.where(found, (u[0] * (height - h + 1)).floor(), ((height - h) // 2))
    left = torch.where(found, (u[1] * (width - w + 1)).floor(), ((width - w) // 2))
    return top.long(), left.long(), h.long(), w.long()


def _source_coords(start: torch.Tensor, length: torch.Tensor, out: int) -> torch.Tensor:
    """Pixel coordinates that bilinear resizing (align_corners=False) of the span
    [start, start+length) to `out` pixels reads from, as torch.nn.functional.interpolate."""
    i = torch.arange(out, device=start.device, dtype=torch.float32) + 0.5
    src = i * (length[:, None].float() / out) - 0.5
    return start[:, None] + src.clamp(min=0).minimum(length[:, None] - 1)


class DeviceAugment:
    """RandomHorizontalFlip -> RandomResizedCrop -> Normalize for a uint8 batch on its
    device, one independent draw per image, with one grid_sample for the whole batch."""

    def __init__(self, mean, std, size: int = 32, flip_p: float = 0.5, scale=CROP_SCALE, ratio=CROP_RATIO):
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.size, self.flip_p, self.scale, self.ratio = size, flip_p, scale, ratio

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.mean.device != images.device:
            # Once, not per batch: a host-to-device copy would stall the step on a GPU.
            self.mean, self.std = self.mean.to(images.device), self.std.to(images.device)
        n, _, height, width = images.shape
        top, left, h, w = random_resized_crop_boxes(n, height, width, generator, self.scale, self.ratio)
        xs = _source_coords(left, w, self.size)
        ys = _source_coords(top, h, self.size)
        # Flipping then cropping at `left` reads the mirrored columns of the original.
        flip = torch.rand(n, device=images.device, generator=generator) < self.flip_p
        xs = torch.where(flip[:, None], (width - 1) - xs, xs)
        grid = torch.stack(
            [
                ((2 * xs + 1) / width - 1)[:, None, :].expand(n, self.size, self.size),
                ((2 * ys + 1) / height - 1)[:, :, None].expand(n, self.size, self.size),
            ],
            dim=-1,
        )
        x = F.grid_sample(images.float(), grid, mode="bilinear", align_corners=False)
        return (x / 255 - self.mean) / self.std


class DeviceTranslate:
    """RandomHorizontalFlip -> a random shift of up to `pad` pixels each way over a
    reflected border (RandomCrop(size, padding=pad, padding_mode="reflect")) -> Normalize,
    for a uint8 batch on its device, with one gather for the whole batch."""

    def __init__(self, mean, std, pad: int = 2, flip_p: float = 0.5):
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.pad, self.flip_p = pad, flip_p

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.mean.device != images.device:
            self.mean, self.std = self.mean.to(images.device), self.std.to(images.device)
        n, _, height, width = images.shape
        x = (images.float() / 255 - self.mean) / self.std
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, mode="reflect")
        shift = torch.randint(0, 2 * self.pad + 1, (2, n, 1), device=images.device, generator=generator)
        rows = shift[0] + torch.arange(height, device=images.device)
        cols = shift[1] + torch.arange(width, device=images.device)
        flip = torch.rand(n, 1, device=images.device, generator=generator) < self.flip_p
        cols = torch.where(flip, cols.flip(1), cols)  # the mirror image, shifted the same way
        picked = x[torch.arange(n, device=images.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        return picked.permute(0, 3, 1, 2).contiguous()


class PolicyThenAugment:
    """A per-image policy drawn on the device (training/device_policy.py) on the uint8
    batch, then the flip and crop or translation, from the same generator."""

    def __init__(self, policy: DevicePolicy, augment: DeviceAugment | DeviceTranslate):
        self.policy, self.augment = policy, augment

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.augment(self.policy(images, generator), generator)


def build_policy(name: str) -> v2.Transform | None:
    """The per-image augmentation policy (a torchvision v2 transform on uint8), or None."""
    return {
        "none": None,
        "autoaugment": v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10),
        "randaugment": v2.RandAugment(),
        "trivialaugment": v2.TrivialAugmentWide(),
    }[name]


def build_mixing(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> v2.Transform | None:
    """MixUp and/or CutMix on a normalized batch (one of them per batch when both are on),
    or None. Returns soft targets that sum to one."""
    choices = [
        mix(alpha=alpha, num_classes=num_classes)
        for mix, alpha in ((v2.MixUp, mixup_alpha), (v2.CutMix, cutmix_alpha))
        if alpha > 0
    ]
    if len(choices) < 2:
        return choices[0] if choices else None
    return v2.RandomChoice(choices)
