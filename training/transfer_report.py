"""What a transfer (training/transfer.py) leaves in its --out folder: results.json, the
printed table, transfer.png, and export/ (the best of the three runs as a model folder
with the new class names: config.json, model.safetensors, training.json, README.md).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch

from common.atomic_files import WriteError, atomic_write, write_json
from training.evaluation import Evaluator, confusion_matrix, per_class_accuracy
from training.plots import pyplot, save_figure
from training.runtime import ProcessPlacement
from training.transfer_photos import Split
from training.transfer_settings import STAGE_NAMES, STAGES, Log, Settings, stage_lr
from training.transfer_source import KIND_NAMES, Source, load_source
from training.transfer_stages import EVAL_BATCH, Run
from vit_model import ViT

COLORS = {"scratch": "tab:gray", "probe": "tab:blue", "finetune": "tab:orange"}
FOLDER_FLAGS = ("--data-dir", "--out", "--from")


def pick_best(runs: dict[str, Run]) -> str:
    """The run whose best epoch scored highest on validation (ties: the lower loss)."""
    return max(STAGES, key=lambda s: (runs[s].best["val_acc"], -runs[s].best["val_loss"]))


def table(runs: dict[str, Run], best: str) -> str:
    """The three runs side by side, as printed at the end."""
    lines = [f"{'run':<14}{'trainable':>12}{'best val acc (epoch)':>24}{'last val acc':>14}{'minutes':>9}"]
    for stage in STAGES:
        run = runs[stage]
        best_at = f"{100 * run.best['val_acc']:.2f}% ({run.best_epoch}/{run.epochs})"
        lines.append(
            f"{STAGE_NAMES[stage]:<14}{run.trainable:>12,}{best_at:>24}"
            f"{100 * run.history[-1]['val_acc']:>13.2f}%{run.minutes:>9.2f}"
            + ("  <- exported" if stage == best else "")
        )
    return "\n".join(lines)


def save_plot(runs: dict[str, Run], path: Path, title: str) -> None:
    """Loss and accuracy per epoch of the three runs, training dashed, validation solid."""
    plt = pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for stage in STAGES:
        history = runs[stage].history
        epochs = [h["epoch"] for h in history]
        for part, style, words in (("train", "--", "training"), ("val", "-", "validation")):
            label = f"{STAGE_NAMES[stage]}, {words}"
            kwargs = dict(color=COLORS[stage], linestyle=style, marker="o", markersize=3, label=label)
            loss_ax.plot(epochs, [h[f"{part}_loss"] for h in history], **kwargs)
            acc_ax.plot(epochs, [100 * h[f"{part}_acc"] for h in history], **kwargs)
    for ax in (loss_ax, acc_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs, not 2.5
    loss_ax.set_xlabel("epoch of the run"), loss_ax.set_ylabel("cross-entropy"), loss_ax.grid(alpha=0.3)
    acc_ax.set_xlabel("epoch of the run"), acc_ax.set_ylabel("accuracy (%)"), acc_ax.grid(alpha=0.3)
    # Below the plots, where it hides no curve.
    fig.legend(*acc_ax.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    save_figure(fig, path)


def public_command(command: str) -> str:
    """The command with each folder named by its own name, not by where it lay here."""
    words = command.split()
    return " ".join(Path(w).name if i and words[i - 1] in FOLDER_FLAGS else w for i, w in enumerate(words))


def source_words(source: Source) -> str:
    """The source model in words, from its training.json where it has one."""
    info = source.training
    figures = [
        f"{info['recipe']} recipe" if isinstance(info.get("recipe"), str) else None,
        f"{info['epochs']} epochs" if isinstance(info.get("epochs"), int) else None,
        f"{100 * info['val_acc']:.2f}% validation accuracy on its own classes"
        if isinstance(info.get("val_acc"), float)
        else None,
    ]
    shown = ", ".join(f for f in figures if f)
    return (
        f"the {KIND_NAMES[source.kind]} in {source.folder.name}/ ({len(source.model.class_names)} "
        f"classes: {', '.join(source.model.class_names)}" + (f"; {shown}" if shown else "") + ")"
    )


def recipe_words(settings: Settings, stage: str) -> str:
    """How the exported run trained, every ingredient with its value."""
    lr = stage_lr(settings, stage)
    kept = (
        "batch norm kept in eval mode (CIFAR's running statistics)"
        if settings.model == "cnn"
        else "the source's dropout and drop path on"
    )
    trained = {
        "scratch": "every weight from a random start, normalised with the new training images' mean/std",
        "probe": "only the new classification layer, the rest frozen in eval mode",
        "finetune": f"every weight, after a {settings.epochs}-epoch linear probe at lr {settings.lr:g}, {kept}",
    }[stage]
    return (
        f"{STAGE_NAMES[stage]}, {settings.epochs} epochs: {trained}; AdamW lr {lr:g} (1 warm-up "
        f"epoch, cosine decay), weight decay {settings.weight_decay:g} on matrices, batch "
        f"{settings.batch_size}, flip + translation by up to {settings.translate} pixels"
    )


def training_record(
    settings: Settings, source: Source, runs: dict[str, Run], best: str, scores: dict, words: str, machine: str
) -> dict:
    """export/training.json: the fields app.py reads (common.model_folder.TRAINING_FIELDS), the
    history of the exported run, and the three runs' figures."""
    run = runs[best]
    minutes = run.minutes + (runs["probe"].minutes if best == "finetune" else 0)
    started = (
        None
        if best == "scratch"
        else source_words(source)
        + (", a new classification layer" + ("" if best == "probe" else ", then a linear probe"))
    )
    return {
        "recipe": f"transfer ({STAGE_NAMES[best]})",
        "recipe_description": recipe_words(settings, best),
        "data": words,
        "machine": machine,
        "epochs": run.epochs,
        "best_epoch": run.best_epoch,
        "val_acc": scores["val_acc"],
        "val_acc_flip_tta": scores["val_acc_flip_tta"],
        "val_images": scores["val_images"],
        "split_seed": settings.seed,
        "training_minutes": round(minutes, 3),
        "started_from": started,
        "class_names": scores["class_names"],
        "per_class_acc": per_class_accuracy(scores["confusion"]),
        "confusion_matrix": scores["confusion"].tolist(),
        "history": run.history,
        "command": public_command(settings.command) or None,
        "transfer": {s: {k: v for k, v in runs[s].as_json().items() if k != "history"} for s in STAGES},
    }


def model_card(settings: Settings, source: Source, runs: dict[str, Run], best: str, record: dict) -> str:
    """export/README.md: what was trained on what, and the three runs' real figures."""
    kind = KIND_NAMES[source.kind]
    rows = "\n".join(
        f"| {STAGE_NAMES[s]} | {runs[s].trainable:,} | {100 * runs[s].best['val_acc']:.2f}% "
        f"(epoch {runs[s].best_epoch} of {runs[s].epochs}) | {runs[s].minutes:.2f} |"
        + (" exported |" if s == best else " |")
        for s in STAGES
    )
    names = ", ".join(record["class_names"])
    return f"""---
library_name: vit-cifar
license: mit
pipeline_tag: image-classification
tags: [image-classification, transfer-learning, {source.kind}, pytorch, pytorch_model_hub_mixin]
metrics: [accuracy]
---

# {kind} for {len(record["class_names"])} classes of its own: {names}

Trained by `transfer.py` of vit-cifar: {record["recipe_description"]}.
Started from: {record["started_from"] or "nothing (random weights)"}.
Data: {record["data"]}. Machine: {record["machine"]}.

Validation accuracy {100 * record["val_acc"]:.2f}% ({record["val_images"]} images), with flip
TTA {100 * record["val_acc_flip_tta"]:.2f}%. The three runs on the same split:

| run | trainable parameters | best validation accuracy | minutes | |
|---|---|---|---|---|
{rows}

Command: `{record["command"]}`

![accuracy and loss per epoch](transfer.png)
"""


def export(model: torch.nn.Module, out: Path, record: dict, card: str, plot: Path) -> Path:
    """out/export written in a temporary folder, then swapped in: never half an export."""
    final, tmp, old = out / "export", out / ".export.tmp", out / ".export.old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp)
        (tmp / "model.safetensors").chmod(0o644)  # written 0600, as the rest of the folder is not
        write_json(record, tmp / "training.json")
        atomic_write(tmp / "README.md", lambda f: f.write(card.encode()))
        shutil.copy(plot, tmp / plot.name)
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
    except OSError as err:
        raise WriteError(final, err) from err
    shutil.rmtree(old, ignore_errors=True)
    return final


def score(model: torch.nn.Module, split: Split) -> dict:
    """The exported weights' validation figures, plain and with flip TTA."""
    scorer = Evaluator(model.mean, model.std, EVAL_BATCH, split.val_images.device, bf16=False)
    val = scorer.evaluate(model, split.val_images, split.val_labels)
    flipped = scorer.evaluate(model, split.val_images, split.val_labels, flip=True)
    labels = split.val_labels.cpu()
    return {
        "val_acc": val.acc,
        "val_acc_flip_tta": flipped.acc,
        "val_images": len(labels),
        "class_names": split.class_names,
        "preds": val.preds,
        "confusion": confusion_matrix(labels, val.preds, len(split.class_names)),
    }


def finish(
    settings: Settings,
    source: Source,
    split: Split,
    words: str,
    runs: dict[str, Run],
    models: dict[str, torch.nn.Module],
    log: Log = print,
) -> dict:
    """Export the best run, check that the export loads and answers alike, write
    results.json and transfer.png, print the table; returns results.json's content."""
    best = pick_best(runs)
    model = models[best]
    model.load_state_dict(runs[best].best_state)
    scores = score(model, split)
    machine = ProcessPlacement(0, 1, split.val_images.device).machine()
    settings.out.mkdir(parents=True, exist_ok=True)
    plot = settings.out / "transfer.png"
    save_plot(
        runs,
        plot,
        f"{KIND_NAMES[source.kind]} on {', '.join(split.class_names)}: {len(split.train_labels)} "
        f"training / {scores['val_images']} validation images, {settings.epochs} epochs a run",
    )
    record = training_record(settings, source, runs, best, scores, words, machine)
    export_dir = export(model.cpu(), settings.out, record, model_card(settings, source, runs, best, record), plot)
    reloaded = load_source(export_dir, source.kind).model  # the ViT through app.py's loader
    again = score(reloaded.to(split.val_images.device), split)
    if not torch.equal(again["preds"], scores["preds"]):
        raise RuntimeError(f"{export_dir} does not answer as the weights it was written from")
    results = {
        "model": source.kind,
        "source": str(source.folder),
        "data_dir": str(settings.data_dir),
        "data": words,
        "class_names": split.class_names,
        "train_images": len(split.train_labels),
        "val_images": scores["val_images"],
        "split_seed": settings.seed,
        "machine": machine,
        "command": settings.command,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(settings).items()},
        "runs": {s: runs[s].as_json() for s in STAGES},
        "best": best,
        "export": str(export_dir),
        "export_val_acc": scores["val_acc"],
        "export_val_acc_flip_tta": scores["val_acc_flip_tta"],
    }
    write_json(results, settings.out / "results.json")
    log(table(runs, best))
    served = (
        "python app.py --model " + str(export_dir)
        if isinstance(reloaded, ViT)
        else "CNN.from_pretrained (app.py on this branch serves ViT folders only)"
    )
    log(
        f"exported the {STAGE_NAMES[best]} run ({100 * scores['val_acc']:.2f}% on {scores['val_images']} "
        f"validation images, {100 * scores['val_acc_flip_tta']:.2f}% with flip TTA) to {export_dir}; "
        f"it loads with {served}; results in {settings.out / 'results.json'}, plot in {plot}"
    )
    return results
