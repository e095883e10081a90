"""Every PNG of a run, and the one matplotlib set-up of the project: `pyplot()` (the
non-interactive Agg backend, imported only when a figure is drawn) and `save_figure`
(atomically, then closed). train.py calls `write_run_plots` once after its last epoch;
the docs' data figures are tools/draw_figures.py's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from common.atomic_files import atomic_write
from training.card import RunSummary
from training.lineage import history_minutes, machine_spans, minutes_at_epochs

if TYPE_CHECKING:  # for annotations: matplotlib is imported only when a figure is drawn
    from matplotlib.figure import Figure


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend: files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Figure, path: str | os.PathLike) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=110, bbox_inches="tight", format="png"))
    finally:
        pyplot().close(fig)


def one_per_class(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of `count` images taken round-robin over the classes (first images of
    each class first), so a grid of samples shows every class, not the first one."""
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    rank = torch.arange(len(labels)) - torch.searchsorted(sorted_labels, sorted_labels)
    by_rank = order[torch.argsort(rank * (int(labels.max()) + 1) + sorted_labels, stable=True)]
    return by_rank[:count]


def save_curves(
    history: list[dict], path: Path, fine_tunes: Sequence[tuple[int, bool]] = (), distilled: bool = False
) -> None:
    """Loss and accuracy per epoch. A model fine-tuned from others (--init-from) shows their
    epochs too, with a line where each fine-tune began (`fine_tunes`: the epochs before it,
    and whether it distilled). A distilled run's training loss is half against the
    teacher's labels, so the curves say so where it applies."""
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    style = dict(marker="o", markersize=3)  # a 1-epoch run is a single point
    label = f"train (augmented, regularized{', loss half vs teacher' if distilled and not fine_tunes else ''})"
    ax1.plot(epochs, [h["train_loss"] for h in history], label=label, **style)
    ax1.plot(epochs, [h["val_loss"] for h in history], label="validation", **style)
    ax1.set_xlabel("epoch"), ax1.set_ylabel("cross-entropy"), ax1.legend(), ax1.grid(alpha=0.3)
    ax2.plot(epochs, [100 * h["train_acc"] for h in history], label=label, **style)
    ax2.plot(epochs, [100 * h["val_acc"] for h in history], label="validation", **style)
    ax2.set_xlabel("epoch"), ax2.set_ylabel("accuracy (%)"), ax2.legend(), ax2.grid(alpha=0.3)
    for before, taught in fine_tunes:
        for ax in (ax1, ax2):
            ax.axvline(before + 0.5, color="gray", linestyle="--", linewidth=1)
        # Upright beside its line, so that fine-tunes a few epochs apart stay legible.
        ax2.annotate(
            f"fine-tuning from epoch {before + 1}" + (", distilled" if taught else ""),
            (before + 0.5, 0.02),
            xycoords=("data", "axes fraction"),
            fontsize=8,
            color="gray",
            xytext=(-2, 0),
            textcoords="offset points",
            rotation=90,
            ha="right",
            va="bottom",
        )
    title = "loss and accuracy per epoch"
    if any(taught for _, taught in fine_tunes):
        title += "; in a distilled fine-tune the training loss is half against the teacher's labels"
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def save_time_to_accuracy(history: list[dict], path: Path, teachers: list[tuple[int, float]] = ()) -> None:
    """Validation accuracy against cumulative wall-clock minutes of training, one line per
    machine when the run moved between machines; each teacher's training minutes are
    counted where its distillation began, marked by a dotted line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    at = dict(zip((h["epoch"] for h in history), minutes_at_epochs(history, list(teachers))))
    spans = machine_spans(history)
    for machine, rows in spans:
        ax.plot(
            [at[h["epoch"]] for h in rows], [100 * h["val_acc"] for h in rows], marker="o", markersize=3, label=machine
        )
    for before, minutes in teachers:
        start = at.get(before + 1)
        if start is not None:
            ax.axvline(start - history_minutes([history[before]]), color="gray", linestyle=":", linewidth=1)
            ax.annotate(
                f"+{minutes:.0f} min teacher",
                (start, 0),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                color="gray",
                ha="right",
                va="bottom",
                rotation=90,
            )
    if len(spans) > 1:
        ax.legend(fontsize=7)
    xlabel = "wall-clock minutes" + (f" ({spans[0][0]})" if len(spans) == 1 else "")
    ax.set_xlabel(xlabel), ax.set_ylabel("validation accuracy (%)")
    ax.set_title("time to accuracy"), ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def save_confusion_matrix(cm: torch.Tensor, class_names: Sequence[str], path: Path, title: str) -> None:
    plt = pyplot()
    rates = cm.float() / cm.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    k = len(class_names)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                int(cm[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if rates[i, j] > 0.5 else "black",
            )
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.tight_layout()
    save_figure(fig, path)


def save_per_class_accuracy(accuracy: list[float], class_names: Sequence[str], path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.bar(class_names, [100 * a for a in accuracy], color="tab:blue")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_ylim(0, 105), ax.set_ylabel("accuracy (%)"), ax.set_title(title)
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    save_figure(fig, path)


def save_prediction_grid(
    images: torch.Tensor,
    labels: Sequence[int],
    preds: Sequence[int],
    class_names: Sequence[str],
    path: Path,
    rows: int = 4,
    cols: int = 8,
) -> None:
    """Sample images with true and predicted class; wrong predictions in red."""
    plt = pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
    for ax, image, y, p in zip(axes.flat, images, labels, preds):
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.set_title(f"{class_names[y]}\n→ {class_names[p]}", fontsize=8, color="tab:green" if y == p else "tab:red")
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("true → predicted (validation)")
    fig.tight_layout()
    save_figure(fig, path)


def write_run_plots(
    summary: RunSummary, run_dir: Path, val_images: torch.Tensor, val_labels: torch.Tensor, val_preds: torch.Tensor
) -> None:
    """The run's PNGs: curves, time to accuracy, confusion matrix, per-class accuracy and
    a grid of validation predictions drawn from every class."""
    names = summary.class_names
    save_curves(summary.full_history, run_dir / "curves.png", summary.fine_tunes, bool(summary.teacher))
    save_time_to_accuracy(summary.full_history, run_dir / "time_to_accuracy.png", summary.teachers)
    title = f"validation, best epoch {summary.best_epoch} ({100 * summary.val_acc:.2f}%)"
    save_confusion_matrix(torch.tensor(summary.confusion), names, run_dir / "confusion_matrix.png", title)
    save_per_class_accuracy(summary.per_class_acc, names, run_dir / "per_class_accuracy.png", title)
    pick = one_per_class(val_labels, 32)
    save_prediction_grid(
        val_images[pick], val_labels[pick].tolist(), val_preds[pick].tolist(), names, run_dir / "predictions.png"
    )
