"""A small convolutional network for CIFAR-10 whose class activation maps are exact.

The airbench family's shape (Keller Jordan's cifar10-airbench, after hlb-cifar10): a 2x2
whitening convolution whose weights are the training patches' principal components, then
three stages of conv -> max-pool -> BatchNorm -> GELU -> conv -> BatchNorm -> GELU (31 ->
15 -> 7 -> 3 pixels). The head is global *average* pooling and one linear layer, so the
logits are the mean over positions of a per-position class score plus the bias: those
per-position scores are the class activation map (Zhou et al. 2016, "Learning Deep
Features for Discriminative Localization"), `CNN.cam`. Imports only torch and
huggingface_hub; `save_pretrained`, `from_pretrained` and `push_to_hub` come from the
mixin, and config.json carries the class names and the normalization statistics.

    python cnn_model.py            # layer table, parameters and the cost of a forward pass
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class Stage(nn.Module):
    """conv -> max-pool -> BN -> GELU -> conv -> BN -> GELU, halving the resolution."""

    def __init__(self, cin: int, cout: int, bn_momentum: float):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(cout, eps=1e-12, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(cout, eps=1e-12, momentum=bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class CNN(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="vit-cifar",
    tags=["image-classification", "cnn", "cifar10", "pytorch"],
    license="mit",
    pipeline_tag="image-classification",
):
    """Whitening stem, len(widths) stages, global average pooling, linear head.

    BatchNorm scales stay at 1 (only the shifts train), so each convolution's output is
    invariant to the scale of its weights; the features are multiplied by `logit_scale`
    before the head, which slows the head's learning relative to the body's.
    `class_names`, `mean` and `std` ride along in config.json for whoever loads the model.

    `temperature` and `known_threshold` (fitted on validation images when training ends)
    are for whoever serves it: softmax(logits / temperature) are calibrated
    probabilities, and an image whose energy score, temperature * logsumexp(logits /
    temperature), falls below known_threshold looks like none of the classes.
    """

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: list[int] | tuple[int, ...] = (64, 256, 256),
        whiten_kernel: int = 2,
        bn_momentum: float = 0.4,
        logit_scale: float = 1 / 9,
        class_names: list[str] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        temperature: float = 1.0,
        known_threshold: float | None = None,
    ):
        super().__init__()
        if len(widths) < 1 or min(widths) <= 0:
            raise ValueError(f"widths must be one or more positive numbers, got {list(widths)}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        self.image_size, self.logit_scale = image_size, logit_scale
        self.class_names = list(
            class_names or (CIFAR10_CLASSES if num_classes == 10 else [str(i) for i in range(num_classes)])
        )
        self.mean = list(mean) if mean is not None else [0.5] * in_channels
        self.std = list(std) if std is not None else [0.5] * in_channels
        self.temperature, self.known_threshold = temperature, known_threshold
        stem_width = 2 * in_channels * whiten_kernel**2
        self.stem = nn.Conv2d(in_channels, stem_width, whiten_kernel, bias=True)
        self.stem.weight.requires_grad_(False)  # set from the data by whiten(), then fixed
        chans = [stem_width, *widths]
        self.stages = nn.Sequential(*(Stage(a, b, bn_momentum) for a, b in zip(chans, chans[1:])))
        self.head = nn.Linear(widths[-1], num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Convolutions start as identities on their first input channels (a residual path
        without the residual), BatchNorm at identity with its scale frozen."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and module is not self.stem:
                module.reset_parameters()
                nn.init.dirac_(module.weight[: module.in_channels])
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
                module.weight.requires_grad_(False)
        nn.init.zeros_(self.stem.bias)
        self.head.reset_parameters()
        nn.init.zeros_(self.head.bias)

    @torch.no_grad()
    def whiten(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the stem to whiten the k x k patches of normalized training images: each of
        the patches' principal directions divided by the square root of its variance, and
        its negative (so that the GELU after it keeps both signs)."""
        k = self.stem.kernel_size[0]
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1)  # B, C, H', W', k, k
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, images.shape[1] * k * k)
        variances, directions = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (directions.T / (variances[:, None] + eps).sqrt()).flip(0)
        filters = filters.reshape(-1, images.shape[1], k, k)
        self.stem.weight.copy_(torch.cat([filters, -filters]).to(self.stem.weight))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, widths[-1], h, w): the last stage's map, before pooling."""
        x = x.contiguous(memory_format=torch.channels_last)  # oneDNN's and cuDNN's fast layout
        return self.stages(F.gelu(self.stem(x)))

    def head_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the head reads for normalized images, (B, widths[-1]): the pooled last-stage
        features times the logit scale; a linear probe's features."""
        return self.features(x).mean(dim=(2, 3)) * self.logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for normalized images (B, C, H, W)."""
        return self.head(self.head_input(x))

    def cam(self, x: torch.Tensor, class_index: torch.Tensor | int) -> torch.Tensor:
        """Class activation maps (B, h, w) for normalized images: at each position the
        class's score from that position's features alone. Their mean over positions plus
        the head's bias for the class is exactly the class's logit. `class_index` is one
        class for all images or one per image."""
        maps = torch.einsum("bchw,kc->bkhw", self.features(x).float() * self.logit_scale, self.head.weight.float())
        index = torch.as_tensor(class_index, device=maps.device).expand(len(x))
        return maps[torch.arange(len(x), device=maps.device), index]

    @classmethod
    def _from_pretrained(cls, *, strict: bool = True, **kwargs):
        # The mixin loads non-strictly by default; a missing or extra tensor must fail.
        return super()._from_pretrained(strict=strict, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Print the CNN's layer table and the cost of a forward pass.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--widths", default="64,256,256", help="one width per stage")
    args = parser.parse_args()
    from torch.utils.flop_counter import FlopCounterMode
    from torchinfo import summary

    model = CNN(widths=[int(w) for w in args.widths.split(",")]).eval()
    print(summary(model, input_size=(1, 3, 32, 32), depth=3, verbose=0, col_names=("output_size", "num_params")))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    print(f"forward pass: {counter.get_total_flops() / 1e9:.3f} GFLOP per image")


if __name__ == "__main__":
    main()
