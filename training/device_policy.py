"""The per-image policies (TrivialAugmentWide, AutoAugment's CIFAR-10 policy, RandAugment)
for a whole uint8 batch at once on the training device: each image draws its own
operations and magnitudes, with the probabilities torchvision's v2 transforms draw them
one image at a time in DataLoader workers.

Why: on a GPU, per-image Python in workers cannot keep up with the step. Here a batch
costs a few dozen kernels: every operation is computed for the whole batch and each image
keeps the one it drew, so no shape depends on the draw (no host sync, one graph for
torch.compile). The operations, policies and magnitude tables are torchvision's own, read
from its classes; tests check each operation against torchvision's functional image by image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.functional import _get_inverse_affine_matrix
from torchvision.transforms.v2 import functional as TF

GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
BLENDS = ("Brightness", "Color", "Contrast", "Sharpness")
WHOLE_IMAGE = ("AutoContrast", "Equalize", "Invert")
OPERATIONS = ("Identity", *GEOMETRIC, *BLENDS, "Posterize", "Solarize", *WHOLE_IMAGE)


def inverse_affine(name: str, magnitude: float, height: int, width: int) -> list[float]:
    """The 2x3 matrix that takes an output pixel (relative to the image centre) to the
    input pixel it reads, for one geometric operation, with the arguments torchvision's
    AutoAugment passes to affine and rotate (shears about the top-left corner, rotations
    about the centre, counter-clockwise) and torchvision's own matrix helper."""
    center, angle, translate, shear = [0.0, 0.0], 0.0, [0.0, 0.0], [0.0, 0.0]
    if name == "Rotate":
        angle = -magnitude
    elif name in ("ShearX", "ShearY"):
        shear[name == "ShearY"] = math.degrees(math.atan(magnitude))
        center = [-width * 0.5, -height * 0.5]
    else:
        translate[name == "TranslateY"] = float(int(magnitude))
    return _get_inverse_affine_matrix(center, angle, translate, 1.0, shear)


class OperationTable:
    """One row per (operation, magnitude) a policy can draw, with what its kernel reads,
    computed once in float64 as torchvision computes it and kept in float32 on the device.
    Row 0 is the identity."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self.rows: list[tuple[str, float]] = [("Identity", 0.0)]
        self.index = {self.rows[0]: 0}

    def row(self, name: str, magnitude: float) -> int:
        key = (name, magnitude)
        if key not in self.index:
            self.index[key] = len(self.rows)
            self.rows.append(key)
        return self.index[key]

    def tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Each row's operation, affine matrix, blend ratio and weight, solarize threshold
        and posterize mask (neutral values where a row's operation does not read them)."""
        theta, ratio, alpha, threshold, mask = [], [], [], [], []
        for name, m in self.rows:
            geometric = name in GEOMETRIC
            theta.append(inverse_affine(name, m, self.height, self.width) if geometric else [1, 0, 0, 0, 1, 0])
            r = 1.0 + m if name in BLENDS else 1.0
            ratio.append(r)
            alpha.append(1.0 - r)
            threshold.append(255.0 * m if name == "Solarize" else 256.0)
            bits = int(m) if name == "Posterize" else 8
            mask.append((0xFF << (8 - bits)) & 0xFF)
        return {
            "operation": torch.tensor([OPERATIONS.index(n) for n, _ in self.rows], device=device),
            "theta": torch.tensor(theta, dtype=torch.float64).view(-1, 2, 3).float().to(device),
            "ratio": torch.tensor(ratio, dtype=torch.float64).float().to(device),
            "alpha": torch.tensor(alpha, dtype=torch.float64).float().to(device),
            "threshold": torch.tensor(threshold, dtype=torch.float64).float().to(device),
            "mask": torch.tensor(mask, dtype=torch.uint8, device=device),
        }


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def _blend(images: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """torchvision's blend of uint8 images with `other`, each image its own ratio:
    images * ratio + other * (1 - ratio), clamped and truncated to uint8."""
    mixed = torch.addcmul(images.float().mul(_per_image(ratio)), other.float(), _per_image(alpha))
    return mixed.clamp_(0, 255).to(torch.uint8)


def _sharpen(images: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_sharpness, each image its own factor: the interior moves away
    from (or towards) its 3x3 smoothing; the border pixels stay."""
    channels = images.shape[1]
    kernel = torch.full((3, 3), 1.0 / 13.0, device=images.device)
    kernel[1, 1] = 5.0 / 13.0
    out = images.float()
    blurred = F.conv2d(out, kernel.expand(channels, 1, 3, 3), groups=channels).round_()
    inner = out[..., 1:-1, 1:-1]
    out[..., 1:-1, 1:-1] = torch.addcmul(inner, blurred - inner, _per_image(alpha))
    return out.clamp_(0, 255).to(torch.uint8)


def _autocontrast(images: torch.Tensor) -> torch.Tensor:
    """torchvision's autocontrast (each channel stretched to 0-255; a flat channel left as
    it is) without its masked assignment, which on a GPU waits for the host."""
    x = images.float()
    low, high = x.amin(dim=(-2, -1), keepdim=True), x.amax(dim=(-2, -1), keepdim=True)
    flat = high == low
    scale = torch.where(flat, 1.0, (high - low).mul_(1.0 / 255))
    return x.sub_(torch.where(flat, 0.0, low)).div_(scale).clamp_(0, 255).to(torch.uint8)


def _warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Nearest-pixel affine warp with black outside, each image its own inverse matrix,
    on torchvision's grid (pixel centres, align_corners=False). The grid is multiplied
    out element by element: a GPU's TF32 matmul would round the matrix to 10 bits and
    move pixels."""
    n, _, h, w = images.shape
    xs = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, device=images.device).view(1, 1, w)
    ys = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h, device=images.device).view(1, h, 1)
    m = torch.cat([theta[:, :1] / (0.5 * w), theta[:, 1:] / (0.5 * h)], dim=1).view(n, 6, 1, 1).unbind(1)
    grid = torch.stack([xs * m[0] + ys * m[1] + m[2], xs * m[3] + ys * m[4] + m[5]], dim=-1)
    warped = F.grid_sample(images.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return warped.round_().to(torch.uint8)


def apply_rows(images: torch.Tensor, rows: torch.Tensor, table: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each uint8 image (N, 3, H, W) with the operation of its row of `table`."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a uint8 batch of RGB images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    operation = table["operation"][rows]
    ratio, alpha = table["ratio"][rows], table["alpha"][rows]
    gray = TF.rgb_to_grayscale(images)  # truncated, as torchvision floors it for uint8
    results = {
        "Brightness": _blend(images, torch.zeros_like(gray), ratio, alpha),
        "Color": _blend(images, gray, ratio, alpha),
        "Contrast": _blend(images, gray.float().mean(dim=(-3, -2, -1), keepdim=True), ratio, alpha),
        "Sharpness": _sharpen(images, alpha),
        "Posterize": images & _per_image(table["mask"][rows]),
        "Solarize": torch.where(images >= _per_image(table["threshold"][rows]), TF.invert(images), images),
        "AutoContrast": _autocontrast(images),
        "Equalize": TF.equalize(images),
        "Invert": TF.invert(images),
    }
    out = _warp(images, table["theta"][rows])  # the identity matrix leaves an image as it is
    for name, result in results.items():
        out = torch.where(_per_image(operation == OPERATIONS.index(name)), result, out)
    return out


POLICY_SOURCES = {
    "trivialaugment": v2.TrivialAugmentWide,
    "randaugment": v2.RandAugment,
    "autoaugment": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10),
}


class DevicePolicy:
    """A torchvision per-image policy ("trivialaugment", "autoaugment" with its CIFAR-10
    sub-policies, "randaugment") drawn for a whole uint8 batch on its device: called with
    (images, generator), returns the augmented uint8 images."""

    def __init__(self, name: str, height: int = 32, width: int = 32):
        source = POLICY_SOURCES[name]()
        self.table = OperationTable(height, width)
        # torchvision's own tables (private names): both placements draw from one
        # definition, and the tests fail if torchvision moves them.
        space = source._AUGMENTATION_SPACE
        if name == "autoaugment":
            self.stages = 2
            # [sub-policy][stage][sign] -> row (10 magnitude bins, as AutoAugment has them),
            # and each stage's probability of applying
            choices = [[self._rows(space, op, bin_, 10) for op, _, bin_ in sub] for sub in source._policies]
            self.probability = torch.tensor([[p for _, p, _ in sub] for sub in source._policies])
        else:
            self.stages = 1 if name == "trivialaugment" else source.num_ops
            bins = source.num_magnitude_bins
            drawn_bins = range(bins) if name == "trivialaugment" else [source.magnitude]
            # [operation][magnitude bin][sign] -> row
            choices = [[self._rows(space, op, b, bins) for b in drawn_bins] for op in space]
            self.probability = None
        self.choices = torch.tensor(choices)
        self._device_tensors: tuple[torch.device, dict] | None = None

    def _rows(self, space: dict, op: str, bin_: int | None, bins: int) -> list[int]:
        """The table rows of one operation at one magnitude bin: [positive, negative]."""
        magnitudes_of, signed = space[op]
        magnitudes = magnitudes_of(bins, self.table.height, self.table.width)
        if magnitudes is None:
            return [self.table.row(op, 0.0)] * 2
        magnitude = float(magnitudes[bin_])
        return [self.table.row(op, magnitude), self.table.row(op, -magnitude if signed else magnitude)]

    def _on(self, device: torch.device) -> dict:
        # Built once per device, not per batch: no host-to-device copy in the step.
        if self._device_tensors is None or self._device_tensors[0] != device:
            tensors = {**self.table.tensors(device), "choices": self.choices.to(device)}
            if self.probability is not None:
                tensors["probability"] = self.probability.to(device)
            self._device_tensors = (device, tensors)
        return self._device_tensors[1]

    def rows(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(stages, n) table rows: what each of n images draws at each stage."""
        device, on = generator.device, self._on(generator.device)
        negative = (torch.rand(self.stages, n, device=device, generator=generator) <= 0.5).long()
        if self.probability is None:
            ops, bins = self.choices.shape[:2]
            op = torch.randint(ops, (self.stages, n), device=device, generator=generator)
            bin_ = torch.randint(bins, (self.stages, n), device=device, generator=generator)
            return on["choices"][op, bin_, negative]
        sub = torch.randint(len(self.probability), (n,), device=device, generator=generator)
        stage = torch.arange(self.stages, device=device)[:, None]
        applied = torch.rand(self.stages, n, device=device, generator=generator) <= on["probability"][sub, stage]
        drawn = on["choices"][sub, stage, negative]
        return torch.where(applied, drawn, torch.zeros_like(drawn))

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        table = self._on(images.device)
        for stage_rows in self.rows(len(images), generator):
            images = apply_rows(images, stage_rows, table)
        return images
