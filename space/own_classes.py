"""A visitor's own classifier: a linear probe on the frozen features of the served ViT or
CNN (what its head reads), trained in well under a second on the photos the visitor drops,
and kept in that visitor's page state alone (gradio's gr.State: never shared, gone when
the page closes); and the map that explains its answer for a photo."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from calibration import logits_and_features
from cnn_model import CNN
from common.photo import UserError
from data import to_normalized
from rollout import gradient_rollout, scale_to_unit

MODELS = ("ViT", "CNN")  # whose frozen features a probe may read
MIN_CLASSES, MAX_CLASSES = 2, 5
MIN_PHOTOS, MAX_PHOTOS = 5, 50  # per class
MAX_NAME = 40  # characters
STEPS = 100  # L-BFGS iterations of the probe: milliseconds for 250 photos
WEIGHT_DECAY = 1e-3


@dataclass(frozen=True)
class OwnClassifier:
    """The probe: a linear layer over one model's features, and what it was trained on."""

    model: str  # one of MODELS: its features are the only ones this probe can read
    class_names: list[str]
    weight: torch.Tensor  # (classes, features)
    bias: torch.Tensor  # (classes,)
    photos: int
    train_accuracy: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(..., classes) for features (..., D)."""
        return features.float() @ self.weight.T + self.bias

    def confidences(self, features: torch.Tensor) -> dict[str, float]:
        """Class name -> probability for one image's features (D,)."""
        probs = self.logits(features).softmax(-1)
        return {name: float(p) for name, p in zip(self.class_names, probs)}


def model_name(model: torch.nn.Module) -> str:
    """Which of MODELS a served model is."""
    return "CNN" if isinstance(model, CNN) else "ViT"


def features(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What the model's head reads for uint8 images (N, 3, H, W): the ViT's class token
    after its last norm, the CNN's pooled features times its logit scale."""
    return logits_and_features(model, images)[1]


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
    read = features(model, torch.cat(photos))
    labels = torch.cat([torch.full((len(p),), k) for k, p in enumerate(photos)])
    weight = torch.zeros(len(names), read.shape[1], requires_grad=True)
    bias = torch.zeros(len(names), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(read @ weight.T + bias, labels) + WEIGHT_DECAY * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    weight, bias = weight.detach(), bias.detach()
    accuracy = float(((read @ weight.T + bias).argmax(1) == labels).float().mean())
    return OwnClassifier(model_name(model), names, weight, bias, len(labels), accuracy)


def _check_model(model: torch.nn.Module, classifier: OwnClassifier) -> None:
    if model_name(model) != classifier.model:  # another model's features mean nothing to it
        raise ValueError(f"this classifier reads the {classifier.model}'s features, not the {model_name(model)}'s")


def answer(model: torch.nn.Module, classifier: OwnClassifier, image: torch.Tensor) -> dict[str, float]:
    """The visitor's classifier on one uint8 image (3, H, W), through the model it learnt on."""
    _check_model(model, classifier)
    return classifier.confidences(features(model, image[None])[0])


def class_activation_maps(model: CNN, classifier: OwnClassifier, x: torch.Tensor) -> torch.Tensor:
    """(B, classes, h, w) for normalized images: at each position of the CNN's last
    features, the probe's score from that position alone. The probe reads their mean
    times the logit scale, so each map's mean plus the probe's bias is exactly its logit."""
    with torch.no_grad():
        return torch.einsum("bchw,kc->bkhw", model.features(x).float() * model.logit_scale, classifier.weight)


def explain(model: torch.nn.Module, classifier: OwnClassifier, image: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The map (h, w), scaled to [0, 1] for showing, of the probe's top class for one uint8
    image (3, H, W), and that class: the CNN's class activation map (positions voting
    against the class left at 0), or the ViT's attention rollout weighted by the gradient
    of the probe's logit."""
    _check_model(model, classifier)
    x = to_normalized(image[None], model.mean, model.std)
    if classifier.model == "CNN":
        maps = class_activation_maps(model, classifier, x)[0]
        best = int((maps.mean((1, 2)) + classifier.bias).argmax())
        return scale_to_unit(maps[best : best + 1].clamp(min=0))[0], best
    maps, best = gradient_rollout(model, x, head=classifier.logits)
    return scale_to_unit(maps)[0], best
