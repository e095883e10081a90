"""The deletion test (Petsiuk, Das and Saenko 2018, "RISE"): how fast a model's probability
for its own answer falls when the image's cells are blanked in the order a map ranks them.
A map that points at what the model uses makes it fall fast: the lower the area under the
curve, the better the map. Random orders are the baseline.

    python -m tools.deletion_test --plot docs/deletion.png     # the bundled models, the app's sample

Every map is brought to the ViT's 8x8 grid of 4x4-pixel cells (the CNN's 3x3 class
activation map upsampled bilinearly, then averaged per cell), so that every method blanks
the same cells; a blanked cell takes the training images' mean colour (0 after
normalization). The probability is the model's calibrated one for the class it gave the
intact image.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from cnn_model import CNN
from common.model_folder import load_folder
from data import to_normalized
from rollout import attention_rollout, class_token_map, gradient_rollout
from space.mistakes import load_sample
from vit_model import ViT

CELLS = 8  # per side: the ViT's patch grid at 32x32 pixels, patch 4
STEPS = 16  # blank CELLS**2 / STEPS cells a step


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--vit", default="weights", help="the ViT's model folder")
    p.add_argument("--cnn", default="weights/cnn", help="the CNN's model folder")
    p.add_argument("--images", type=int, default=500, help="images of the app's validation sample to use")
    p.add_argument("--plot", default=None, help="also draw the curves into this PNG")
    return p.parse_args(argv)


def to_cells(maps: torch.Tensor) -> torch.Tensor:
    """(N, h, w) maps -> (N, CELLS * CELLS) scores, one per cell of the 32x32 image."""
    fine = F.interpolate(maps[:, None].float(), size=(32, 32), mode="bilinear", align_corners=False)
    return F.adaptive_avg_pool2d(fine, CELLS).flatten(1)


def deletion_curve(model: torch.nn.Module, x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Mean calibrated probability of each image's own answer after blanking 0, k, 2k, ...
    cells (all of them at the end) of normalized images x in `order` (N, cells)."""
    with torch.no_grad():
        target = model(x).argmax(1)
        per_step = order.shape[1] // STEPS
        curve = []
        for step in range(STEPS + 1):
            keep = torch.ones(len(x), CELLS * CELLS)
            keep.scatter_(1, order[:, : step * per_step], 0.0)
            mask = F.interpolate(keep.view(-1, 1, CELLS, CELLS), size=x.shape[-2:], mode="nearest")
            probs = (model(x * mask) / model.temperature).softmax(1)
            curve.append(probs.gather(1, target[:, None]).mean())
    return torch.stack(curve)


def ranked(scores: torch.Tensor) -> torch.Tensor:
    """Cells from the highest score to the lowest."""
    return scores.argsort(dim=1, descending=True)


def vit_orders(model: ViT, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        _, attentions = model(x, return_attention=True)
    orders = {
        f"rollout ({fusion}, discard {discard:g})": ranked(
            to_cells(class_token_map(attention_rollout(attentions, fusion, discard)))
        )
        for fusion, discard in (("mean", 0.0), ("max", 0.0), ("mean", 0.9), ("max", 0.9))
    }
    orders["gradient rollout (top class)"] = ranked(to_cells(gradient_rollout(model, x)[0]))
    return orders


def cnn_orders(model: CNN, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        maps = model.cam(x, model(x).argmax(1))
    return {"class activation map (top class)": ranked(to_cells(maps))}


def measure(args: argparse.Namespace) -> dict[str, dict[str, torch.Tensor]]:
    """{model: {method: deletion curve}} on the app's sample, random orders included."""
    sample = load_sample()
    images = sample.images[: args.images]
    found: dict[str, dict[str, torch.Tensor]] = {}
    makers: dict[str, tuple[torch.nn.Module, Callable]] = {
        "ViT": (load_folder(Path(args.vit)), vit_orders),
        "CNN": (load_folder(Path(args.cnn), CNN), cnn_orders),
    }
    for name, (model, orders_of) in makers.items():
        x = to_normalized(images, model.mean, model.std)
        orders = orders_of(model, x)
        g = torch.Generator().manual_seed(0)
        orders["random order"] = torch.stack([torch.randperm(CELLS * CELLS, generator=g) for _ in range(len(x))])
        found[name] = {method: deletion_curve(model, x, order) for method, order in orders.items()}
    return found


def draw(found: dict[str, dict[str, torch.Tensor]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(found), figsize=(6 * len(found), 4), sharey=True)
    for ax, (model, curves) in zip(axes, found.items()):
        for method, curve in curves.items():
            fraction = torch.linspace(0, 1, len(curve))
            ax.plot(fraction, curve, label=f"{method}: AUC {curve.mean():.3f}")
        ax.set(title=f"{model}: deletion test", xlabel="fraction of the image blanked")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("probability of the model's own answer")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    found = measure(args)
    for model, curves in found.items():
        for method, curve in curves.items():
            print(f"{model}  {method:34s}  AUC {curve.mean():.3f}  (probability {curve[0]:.3f} -> {curve[-1]:.3f})")
    if args.plot:
        draw(found, args.plot)
    return {m: {k: float(c.mean()) for k, c in curves.items()} for m, curves in found.items()}


if __name__ == "__main__":
    main()
