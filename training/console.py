"""The words of a run's log: its recipe and schedule, each epoch's line, durations."""

from __future__ import annotations

from collections.abc import Mapping


def describe_schedule(settings: Mapping, milestones: list[int]) -> str:
    """The learning-rate schedule as the run had it; `milestones` are the step
    schedule's x0.1 epochs (those at or past the end never happen)."""
    warmup = f"{settings['warmup_epochs']:g} warmup epochs, then " if settings["warmup_epochs"] else ""
    if settings["schedule"] in ("cosine", "linear"):
        return warmup + f"{settings['schedule']} decay to 0"
    drops = [m for m in milestones if m < settings["epochs"]]
    if not drops:
        return warmup + "a constant learning rate (the x0.1 milestones fall at the end of the run)"
    return warmup + f"x0.1 after epoch{'s' if len(drops) > 1 else ''} {' and '.join(map(str, drops))}"


def describe_recipe(settings: Mapping, milestones: list[int]) -> str:
    """The run's recipe in words, every ingredient named with its value."""
    s = settings
    epochs = f"{s['epochs']} epoch{'s' if s['epochs'] != 1 else ''}"
    cnn = s.get("model", "vit") == "cnn"
    optimizer = f"SGD (Nesterov, momentum {s['momentum']:g})" if s.get("optimizer", "adamw") == "sgd" else "AdamW"
    if cnn:
        decay = f"on all parameters, BatchNorm shifts at {s['bias_lr_scale']:g}x the rate"
    else:
        decay = "on all parameters" if s["decay_all"] else "not on norms, biases, embeddings"
    augment = (
        f"flip + translation by up to {s['translate']} pixels"
        if s.get("augment", "crop") == "translate"
        else "flip + RandomResizedCrop"
    )
    model = (
        f"widths {list(s['widths'])}"
        if cnn
        else f"dropout {s['dropout']:g}, attention dropout {s['attn_dropout']:g}, drop path "
        f"{s['drop_path']:g}, patches kept {s['patch_keep']:g}"
    )
    return (
        f"{s['recipe']} recipe, {epochs}: {optimizer} lr {s['lr']:g}, batch {s['batch_size']}, weight "
        f"decay {s['weight_decay']:g} ({decay}), {describe_schedule(s, milestones)}, label "
        f"smoothing {s['label_smoothing']:g}, policy {s['policy']}, {augment}, MixUp "
        f"{s['mixup_alpha']:g}, CutMix {s['cutmix_alpha']:g}, {model}, EMA " + (f"{s['ema']:g}" if s["ema"] else "off")
    )


def print_epoch(epoch: int, row: dict, epochs: int, first: bool) -> None:
    """An epoch's line of the training log; after the first, what the whole run will take."""
    print(
        f"epoch {epoch:>3}/{epochs}  lr {row['lr']:.2e}  train loss "
        f"{row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%  val loss "
        f"{row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%"
        + (f" (without EMA {100 * row['val_acc_without_ema']:.2f}%)" if "val_acc_without_ema" in row else "")
        + f"  ({row['seconds']:.0f}s)",
        flush=True,
    )
    if first and epoch < epochs:  # so a CPU user can size --epochs
        s = row["seconds"]
        print(
            f"epoch {epoch}: {s:.0f} s; {epochs} epochs ≈ {format_duration(s * epochs)} "
            f"on this machine ({format_duration(s * (epochs - epoch))} to go)",
            flush=True,
        )


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"
