"""What the page and /classify say about an image: each model's calibrated probabilities
(softmax of the logits over the temperature in its config), its top class, and whether
the image looks like any of its classes at all (its energy score against the threshold
fixed on validation images; with two models, both their scores together), in words and
as JSON."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from calibration import PairThreshold, ood_score


class NotANumberError(ValueError):
    """A model answered NaN or infinity for an image."""


@dataclass(frozen=True)
class Answer:
    """One model's answer for one image."""

    label: str
    confidences: dict[str, float]  # class name -> calibrated probability
    known: bool | None  # None: the model's config fixes no threshold
    score: float  # the energy score: higher is more like the training images

    def as_json(self) -> dict:
        return {"label": self.label, "confidences": self.confidences, "known": self.known, "score": self.score}


def answer(model: torch.nn.Module, logits: torch.Tensor) -> Answer:
    """The answer of `model` (with class_names, temperature, known_threshold) whose
    logits for one image are `logits` (shape (C,) or (1, C))."""
    logits = logits.detach().float().reshape(1, -1)
    temperature = float(getattr(model, "temperature", 1.0))
    probs = (logits / temperature).softmax(-1)[0]
    score = float(ood_score(logits, "energy", temperature)[0])
    if not torch.isfinite(probs).all() or not torch.isfinite(torch.tensor(score)):
        raise NotANumberError("the model's answer for this image is not a number")
    confidences = {name: float(p) for name, p in zip(model.class_names, probs)}
    threshold = getattr(model, "known_threshold", None)
    return Answer(
        label=max(confidences, key=confidences.get),
        confidences=confidences,
        known=None if threshold is None else score >= threshold,
        score=score,
    )


@dataclass(frozen=True)
class Together:
    """Whether an image looks like the classes to two models' scores together."""

    known: bool
    score: float  # the sum of the two standardized energy scores

    def as_json(self) -> dict:
        return {"known": self.known, "score": self.score}


def together(pair: PairThreshold, first: Answer, second: Answer) -> Together:
    """Two models' answers for one image judged by their PairThreshold."""
    score = float(pair.score(torch.tensor(first.score), torch.tensor(second.score)))
    return Together(known=score >= pair.threshold, score=score)


def top(said: Answer) -> str:
    return f"**{said.label}** ({100 * said.confidences[said.label]:.0f}%)"


def in_words(name: str, said: Answer) -> str:
    """One model's answer as a sentence of the page."""
    if said.known is False:
        return (
            f"{name}: this does not look like any of the {len(said.confidences)} classes; the closest is {top(said)}."
        )
    return f"{name}: {top(said)}."


def verdict_markdown(vit: Answer, cnn: Answer | None, both: Together | None = None) -> str:
    """The ViT's answer, the CNN's beside it, and one line when their top classes differ;
    with `both`, whether the image looks like any class is the two models' joint call."""
    if both is not None and cnn is not None:
        if not both.known:
            return (
                f"This does not look like any of the {len(vit.confidences)} classes to the two models "
                f"together; the closest is {top(vit)} for the ViT and {top(cnn)} for the CNN."
            )
        vit, cnn = replace(vit, known=None), replace(cnn, known=None)  # the joint call stands for each
    lines = [in_words("ViT", vit)]
    if cnn is not None:
        lines.append(in_words("CNN", cnn))
        if cnn.label != vit.label:
            lines.append(f"The two models disagree: the ViT says {vit.label}, the CNN {cnn.label}.")
    return "  \n".join(lines)
