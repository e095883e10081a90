"""How far a model's confidence can be trusted: temperature scaling fitted on validation
images (Guo et al. 2017, "On Calibration of Modern Neural Networks"), the expected
calibration error, and scores that tell CIFAR-10 images from photos of anything else
(maximum softmax probability, maximum logit, energy), with their AUROC.

    python calibration.py --data-dir DIR --ood-dir PHOTOS           # both bundled models' figures
    python calibration.py --data-dir DIR --ood-dir PHOTOS --write   # and store the fit in each folder

Thresholds and temperatures are fitted on CIFAR-10 validation images only; the
out-of-distribution photos are only ever measured.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

OOD_SCORES = ("max_softmax", "max_logit", "energy")
APP_SAMPLE = 500  # validation images the app bundles, on which it fits the two models' PairThreshold


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> float:
    """The temperature T > 0 that minimizes the negative log-likelihood of softmax(logits / T)."""
    log_t = torch.zeros((), requires_grad=True)  # T = exp(log_t) stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")
    logits, labels = logits.detach().float(), labels.detach()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by their counts."""
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    error = torch.zeros(())
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            error += inside.float().mean() * (correct[inside].mean() - confidence[inside].mean()).abs()
    return float(error)


def ood_score(logits: torch.Tensor, kind: str, temperature: float = 1.0) -> torch.Tensor:
    """Higher means more like the training classes: the maximum softmax probability, the
    maximum logit, or the negative energy (logsumexp of the logits, Liu et al. 2020)."""
    scaled = logits.float() / temperature
    if kind == "max_softmax":
        return scaled.softmax(1).max(1).values
    if kind == "max_logit":
        return scaled.max(1).values
    if kind == "energy":
        return temperature * torch.logsumexp(scaled, 1)
    raise ValueError(f"unknown score {kind!r}: one of {', '.join(OOD_SCORES)}")


def auroc(inside: torch.Tensor, outside: torch.Tensor) -> float:
    """The probability that a random in-distribution score beats a random outside one
    (ties count half): the area under the ROC curve."""
    inside, outside = inside.double()[:, None], outside.double()[None, :]
    return float((inside > outside).double().mean() + 0.5 * (inside == outside).double().mean())


def threshold_keeping(scores: torch.Tensor, fraction: float = 0.95) -> float:
    """The score above which `fraction` of these (validation) images lie."""
    return float(torch.quantile(scores.double(), 1 - fraction))


@dataclass(frozen=True)
class Calibration:
    """What a model's validation logits fix for serving it: the temperature, the energy
    score under which an image looks like none of the classes (95% of validation images
    score at least that), and the calibration error before and after the temperature."""

    temperature: float
    known_threshold: float
    ece_before: float
    ece_after: float
    images: int

    def as_json(self) -> dict:
        return {**asdict(self), "known_score": "energy", "known_fraction": KNOWN_FRACTION}


KNOWN_FRACTION = 0.95  # of validation images that the threshold keeps


def in_words(calibration: dict) -> str:
    """A Calibration.as_json() as one sentence, for the model card and the page."""
    return (
        f"temperature {calibration['temperature']:.3f} (fitted on the {calibration['images']} validation "
        f"images): expected calibration error {100 * calibration['ece_before']:.2f}% before, "
        f"{100 * calibration['ece_after']:.2f}% after; an image whose energy score is below "
        f"{calibration['known_threshold']:.3f} (where {100 * calibration['known_fraction']:.0f}% of "
        "validation images score higher) looks like none of the classes"
    )


def fit_calibration(logits: torch.Tensor, labels: torch.Tensor) -> Calibration:
    """Temperature and threshold fitted on these validation logits, with the ECE figures."""
    t = fit_temperature(logits, labels)
    return Calibration(
        temperature=t,
        known_threshold=threshold_keeping(ood_score(logits, "energy", t), KNOWN_FRACTION),
        ece_before=expected_calibration_error(logits.float().softmax(1), labels),
        ece_after=expected_calibration_error((logits.float() / t).softmax(1), labels),
        images=len(labels),
    )


@dataclass(frozen=True)
class PairThreshold:
    """Two models' energy scores as one: each standardized by its mean and spread on
    validation images, then summed; an image whose sum is below `threshold` (where
    KNOWN_FRACTION of those images score higher) looks like none of the classes."""

    means: tuple[float, float]
    stds: tuple[float, float]
    threshold: float

    def standardized(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """(2, N): each model's scores in its own validation spreads."""
        return torch.stack([(first - self.means[0]) / self.stds[0], (second - self.means[1]) / self.stds[1]])

    def score(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return self.standardized(first, second).sum(0)


def fit_pair(first: torch.Tensor, second: torch.Tensor) -> PairThreshold:
    """The PairThreshold of two models' energy scores on the same validation images."""
    first, second = first.double(), second.double()
    unfitted = PairThreshold((float(first.mean()), float(second.mean())), (float(first.std()), float(second.std())), 0)
    return PairThreshold(
        unfitted.means, unfitted.stds, threshold_keeping(unfitted.score(first, second), KNOWN_FRACTION)
    )


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, images) of each non-empty equal-width confidence bin."""
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    found = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            found.append((float(confidence[inside].mean()), float(correct[inside].mean()), int(inside.sum())))
    return found


def save_reliability_diagram(logits: torch.Tensor, labels: torch.Tensor, temperature: float, path: Path) -> None:
    """Accuracy against confidence per bin, before and after the temperature: a calibrated
    model's points lie on the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
    for ax, t, title in ((axes[0], 1.0, "as trained"), (axes[1], temperature, f"temperature {temperature:.3f}")):
        probs = (logits.float() / t).softmax(1)
        confidence, accuracy, counts = zip(*reliability_bins(probs, labels))
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
        ax.scatter(confidence, accuracy, s=[12 + 300 * c / len(labels) for c in counts], label="bins (size: images)")
        ax.plot(confidence, accuracy)
        ece = 100 * expected_calibration_error(probs, labels)
        ax.set(title=f"{title}: ECE {ece:.2f}%", xlabel="confidence of the top class", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("accuracy")
    fig.suptitle(f"Reliability on {len(labels)} validation images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def mahalanobis_score(train_features: torch.Tensor, train_labels: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Minus the smallest Mahalanobis distance to a class mean under one covariance shared
    by the classes (Lee et al. 2018), both fitted on training features: higher is more like
    the training classes."""
    train_features, features = train_features.double(), features.double()
    classes = int(train_labels.max()) + 1
    means = torch.stack([train_features[train_labels == k].mean(0) for k in range(classes)])
    centred = train_features - means[train_labels]
    covariance = centred.T @ centred / len(centred)
    precision = torch.linalg.inv(covariance + 1e-6 * torch.eye(len(covariance), dtype=torch.float64))
    gaps = features[:, None, :] - means[None]  # (N, classes, D)
    distances = torch.einsum("nkd,de,nke->nk", gaps, precision, gaps)
    return -distances.min(1).values.float()


def logits_and_features(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits and what the head reads (`head_input`: the ViT's class token, the CNN's
    pooled features) for uint8 images, in eval mode (the model's mode is restored)."""
    from data import to_normalized

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            features = torch.cat([model.head_input(to_normalized(c, model.mean, model.std)) for c in images.split(250)])
            return model.head(features).float(), features.float()
    finally:
        model.train(was_training)


def _report(name: str, fitting: torch.Tensor, inside: torch.Tensor, outside: torch.Tensor) -> None:
    """One score's AUROC and what a threshold keeping 95% of `fitting` keeps elsewhere."""
    cut = threshold_keeping(fitting, KNOWN_FRACTION)
    print(
        f"  {name:24s} AUROC {auroc(inside, outside):.3f}; keeping 95% of validation "
        f"(threshold fitted on other validation images): {100 * (inside >= cut).float().mean():.1f}% "
        f"of validation and {100 * (outside >= cut).float().mean():.1f}% of the "
        f"{len(outside)} other photos kept"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Calibration and out-of-distribution figures "
        "of the bundled models on validation images and other photos.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-dir", required=True, help="the CIFAR-10 data the models trained on")
    parser.add_argument("--ood-dir", required=True, help="photos of things none of the classes")
    parser.add_argument("--models", default="weights,weights/cnn", help="model folders, comma-separated")
    parser.add_argument(
        "--write",
        action="store_true",
        help="store the temperature and threshold fitted on all validation images in each "
        "folder's config.json (and the figures in its training.json), as train.py does",
    )
    args = parser.parse_args()
    from cnn_model import CNN
    from common.photo import load_photo
    from data import load_training_data
    from vit_model import ViT

    data = load_training_data(args.data_dir)
    val_images, val_labels = data.images[data.val_idx], data.labels[data.val_idx]
    fit_idx = data.train_idx[::5]  # a fifth of the training images, for the class means
    photos = torch.stack([load_photo(p, 32) for p in sorted(Path(args.ood_dir).glob("*.jpg"))])
    half = len(val_labels) // 2  # fit on one half of validation, measure on the other
    energies: list[tuple[torch.Tensor, torch.Tensor]] = []  # per model: validation, photos
    answers: list[tuple[torch.Tensor, torch.Tensor]] = []
    served: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = []  # model, its logits
    for folder in args.models.split(","):
        config = json.loads((Path(folder) / "config.json").read_text())
        model = (CNN if "widths" in config else ViT).from_pretrained(folder)
        (logits, val_features), (outside, photo_features) = (
            logits_and_features(model, x) for x in (val_images, photos)
        )
        t = fit_temperature(logits[:half], val_labels[:half])
        test, labels = logits[half:], val_labels[half:]
        print(
            f"{folder}: temperature {t:.3f}; ECE on {len(labels)} held-out validation images "
            f"{100 * expected_calibration_error(test.softmax(1), labels):.2f}% before, "
            f"{100 * expected_calibration_error((test / t).softmax(1), labels):.2f}% after"
        )
        for kind in OOD_SCORES:
            _report(kind, ood_score(logits[:half], kind, t), ood_score(test, kind, t), ood_score(outside, kind, t))
        train_features = logits_and_features(model, data.images[fit_idx])[1]
        scores = [mahalanobis_score(train_features, data.labels[fit_idx], f) for f in (val_features, photo_features)]
        _report("mahalanobis (features)", scores[0][:half], scores[0][half:], scores[1])
        energies.append((ood_score(logits, "energy", t), ood_score(outside, "energy", t)))
        answers.append((logits.argmax(1), outside.argmax(1)))
        served.append((model, logits, outside))
        if args.write:
            fitted = write_calibration(Path(folder), fit_calibration(logits, val_labels))
            # the lines below measure the models as the app will serve them: with what was just written
            model.temperature, model.known_threshold = fitted.temperature, fitted.known_threshold
            save_reliability_diagram(logits, val_labels, fitted.temperature, Path(folder) / "reliability.png")
            print(f"  wrote temperature {fitted.temperature:.3f} and energy threshold {fitted.known_threshold:.3f}")
    if len(energies) == 2:
        print("both models:")
        _report_pair(energies, answers, half)
        _report_served(served)


def _report_pair(
    energies: list[tuple[torch.Tensor, torch.Tensor]], answers: list[tuple[torch.Tensor, torch.Tensor]], half: int
) -> None:
    """The two models' scores together: standardized and fitted on the first half of
    validation (and, as the app fits them, on only its first APP_SAMPLE images)."""
    (a, a_out), (b, b_out) = energies
    pair = fit_pair(a[:half], b[:half])
    both, both_out = pair.standardized(a, b), pair.standardized(a_out, b_out)
    _report("energy, both (the lower)", both.min(0).values[:half], both.min(0).values[half:], both_out.min(0).values)
    _report(
        "energy, both (the sum)",
        pair.score(a[:half], b[:half]),
        pair.score(a[half:], b[half:]),
        pair.score(a_out, b_out),
    )
    small = fit_pair(a[:APP_SAMPLE], b[:APP_SAMPLE])
    _report(
        f"the sum, fitted on {APP_SAMPLE}",
        small.score(a[:APP_SAMPLE], b[:APP_SAMPLE]),
        small.score(a[half:], b[half:]),
        small.score(a_out, b_out),
    )
    agree, agree_out = ((answers[0][i] == answers[1][i]).float() for i in (0, 1))
    _report("the two agree (0 or 1)", agree[:half], agree[half:], agree_out)


def _report_served(served: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]]) -> None:
    """The two models together as the app judges them: each config's temperature (as
    loaded), the PairThreshold fitted on the app's bundled validation sample; measured on
    every validation image and every other photo."""
    from space.mistakes import load_sample

    sample = load_sample().images
    pair = fit_pair(*(ood_score(logits_and_features(m, sample)[0], "energy", m.temperature) for m, _, _ in served))
    inside, outside = (
        pair.score(*(ood_score(logits[i], "energy", m.temperature) for m, *logits in served)) for i in (0, 1)
    )
    for m, *logits in served:
        if m.known_threshold is not None:
            kept, photos = ((ood_score(x, "energy", m.temperature) >= m.known_threshold).float() for x in logits)
            print(
                f"  {type(m).__name__} alone by its config  {100 * kept.mean():.1f}% of the {len(kept)} validation "
                f"images kept, {100 * (1 - photos.mean()):.1f}% of the {len(photos)} other photos flagged"
            )
    print(
        f"  as the app serves them    AUROC {auroc(inside, outside):.3f}; threshold fitted on its "
        f"{len(sample)}-image sample: {100 * (inside >= pair.threshold).float().mean():.1f}% of the "
        f"{len(inside)} validation images kept, {100 * (outside < pair.threshold).float().mean():.1f}% "
        f"of the {len(outside)} other photos flagged"
    )


def write_calibration(folder: Path, calibration: Calibration) -> Calibration:
    """Store a calibration in a model folder: config.json's temperature and threshold,
    training.json's figures and the model card's calibration row and reliability diagram
    (where the folder has them)."""
    from common.atomic_files import atomic_write, write_json

    config = json.loads((folder / "config.json").read_text())
    config.update(temperature=calibration.temperature, known_threshold=calibration.known_threshold)
    write_json(config, folder / "config.json")
    training = folder / "training.json"
    if training.is_file():
        write_json({**json.loads(training.read_text()), "calibration": calibration.as_json()}, training)
    card = folder / "README.md"
    if card.is_file():
        text = card_with_calibration(card.read_text(), calibration.as_json())
        atomic_write(card, lambda f: f.write(text.encode()))
    return calibration


def card_with_calibration(card: str, calibration: dict) -> str:
    """A model card with its calibration row (replaced, or put before the training time)
    and the reliability diagram after its other figures."""
    row = f"| calibration | {in_words(calibration)} (written by `python calibration.py --write`) |"
    lines = card.splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith("| calibration |")), None)
    if at is not None:
        lines[at] = row
    else:
        before = next((i for i, line in enumerate(lines) if line.startswith("| training time |")), None)
        if before is not None:
            lines.insert(before, row)
    figure = "![reliability](reliability.png)"
    if figure not in lines:
        last = max((i for i, line in enumerate(lines) if line.startswith("![")), default=len(lines) - 1)
        lines[last + 1 : last + 1] = ["", figure]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
