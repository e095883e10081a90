"""The ViT and the CNN on the app's validation sample, side by side: accuracy, accuracy per
class, how often they agree, and where they part."""

from __future__ import annotations

from collections import Counter

import torch

from data import to_normalized


@torch.no_grad()
def predicted_classes(model: torch.nn.Module, images: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """The model's answer for each uint8 image (in eval mode, at the images' size)."""
    return torch.cat([model(to_normalized(c, model.mean, model.std)).argmax(1) for c in images.split(batch)])


def comparison_markdown(vit: torch.Tensor, cnn: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> str:
    """Both models' answers (class indices) against the true labels, as the page's text."""
    n = len(labels)
    vit_right, cnn_right, agree = vit == labels, cnn == labels, vit == cnn

    def share(mask: torch.Tensor) -> str:
        return f"{100 * mask.float().mean():.1f}%" if len(mask) else "-"

    lines = [
        f"On these {n} images the **ViT is right on {share(vit_right)}** and the **CNN on "
        f"{share(cnn_right)}**; they give the same answer on {share(agree)}. Both right: "
        f"{int((vit_right & cnn_right).sum())}; only the ViT: {int((vit_right & ~cnn_right).sum())}; "
        f"only the CNN: {int((~vit_right & cnn_right).sum())}; both wrong: "
        f"{int((~vit_right & ~cnn_right).sum())} (the same wrong answer on "
        f"{int((~vit_right & agree).sum())}).",
        "",
        "| class | images | ViT right | CNN right | same answer |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, name in enumerate(class_names):
        mine = labels == k
        figures = " | ".join(share(right[mine]) for right in (vit_right, cnn_right, agree))
        lines.append(f"| {name} | {int(mine.sum())} | {figures} |")
    parted = Counter(
        (class_names[t], class_names[v], class_names[c])
        for t, v, c in zip(labels.tolist(), vit.tolist(), cnn.tolist())
        if v != c
    )
    if parted:
        lines += ["", "Where they part most often:", "", "| true class | ViT says | CNN says | images |"]
        lines.append("|---|---|---|---:|")
        lines += [f"| {t} | {v} | {c} | {count} |" for (t, v, c), count in parted.most_common(8)]
    return "\n".join(lines)
