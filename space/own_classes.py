"""A visitor's own classifier: a linear probe on the frozen features of the served ViT
(what its head reads), trained in well under a second on the photos the visitor drops,
and kept in that visitor's page state alone (gradio's gr.State: never shared, gone when
the page closes)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from calibration import logits_and_features
from space.photo import UserError

MIN_CLASSES, MAX_CLASSES = 2, 5
MIN_PHOTOS, MAX_PHOTOS = 5, 50  # per class
MAX_NAME = 40  # characters
STEPS = 100  # L-BFGS iterations of the probe: milliseconds for 250 photos
WEIGHT_DECAY = 1e-3


@dataclass(frozen=True)
class OwnClassifier:
    """The probe: a linear layer over the ViT's features, and what it was trained on."""

    class_names: list[str]
    weight: torch.Tensor  # (classes, features)
    bias: torch.Tensor  # (classes,)
    photos: int
    train_accuracy: float

    def confidences(self, features: torch.Tensor) -> dict[str, float]:
        """Class name -> probability for one image's features (D,)."""
        probs = (features.float() @ self.weight.T + self.bias).softmax(-1)
        return {name: float(p) for name, p in zip(self.class_names, probs)}


def class_names(text: str | None) -> list[str]:
    """The visitor's class names, comma-separated: 2 to 5, distinct, each 1-40 characters."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    if not MIN_CLASSES <= len(names) <= MAX_CLASSES:
        raise UserError(f"Name {MIN_CLASSES} to {MAX_CLASSES} classes, separated by commas (got {len(names)}).")
    if len(set(names)) != len(names):
        raise UserError("Each class needs a name of its own: two are the same.")
    if too_long := [n for n in names if len(n) > MAX_NAME]:
        raise UserError(f"Class names are at most {MAX_NAME} characters: {too_long[0][:MAX_NAME]}... is longer.")
    return names


def check_counts(names: list[str], counts: list[int]) -> None:
    """One message naming the first class with too few or too many photos."""
    for name, count in zip(names, counts):
        if not MIN_PHOTOS <= count <= MAX_PHOTOS:
            raise UserError(f"Class '{name}' has {count} photos: give each class {MIN_PHOTOS} to {MAX_PHOTOS}.")


def fit(model: torch.nn.Module, names: list[str], photos: list[torch.Tensor]) -> OwnClassifier:
    """A probe on the model's frozen features of photos[k] (uint8, (N_k, 3, H, W)) for class
    names[k]: multinomial logistic regression with a little weight decay, from zero."""
    check_counts(names, [len(p) for p in photos])
    _, features = logits_and_features(model, torch.cat(photos))
    labels = torch.cat([torch.full((len(p),), k) for k, p in enumerate(photos)])
    weight = torch.zeros(len(names), features.shape[1], requires_grad=True)
    bias = torch.zeros(len(names), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight.T + bias, labels) + WEIGHT_DECAY * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    weight, bias = weight.detach(), bias.detach()
    accuracy = float(((features @ weight.T + bias).argmax(1) == labels).float().mean())
    return OwnClassifier(names, weight, bias, len(labels), accuracy)


def answer(model: torch.nn.Module, classifier: OwnClassifier, image: torch.Tensor) -> dict[str, float]:
    """The visitor's classifier on one uint8 image (3, H, W)."""
    _, features = logits_and_features(model, image[None])
    return classifier.confidences(features[0])
