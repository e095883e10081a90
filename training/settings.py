"""A run of train.py's settings, as the dict its checkpoints keep: what a resumed run may
change, the checks that need no data, and the settings and command as its model card
publishes them. The flags themselves are command_line.py's."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from training.command_line import explicit_flags, parse_args
from training.errors import RunError

# How a resumed run may differ from its start: these come from the new command line (its
# defaults included), --data-dir and --epochs only when given; everything else is the run's.
RESUME_RUNTIME = {
    "device",
    "amp",
    "compile",
    "workers",
    "policy_on",
    "eval_batch_size",
    "no_progress",
    "push_to_hub",
    "resume",
    "overwrite",
    "out",
    "download",
}
RESUME_MAY_CHANGE = RESUME_RUNTIME | {"data_dir", "epochs"}
FOLDER_SETTINGS = ("data_dir", "out", "init_from", "teacher")


def resumed_settings(parsed: Mapping, argv: list[str] | None, saved: dict, done: int) -> dict:
    """The run's own settings (`saved`, after `done` epochs), with what may change on a
    resume taken from the new command line (`argv`, parsed as `parsed`); anything else
    given differently is refused rather than silently ignored."""
    given = explicit_flags(argv)
    defaults = vars(parse_args(["--recipe", saved.get("recipe", "assignment")]))
    merged = {**defaults, **saved}
    conflicts = [
        f"--{k.replace('_', '-')} {parsed[k]} (the run has {merged.get(k)})"
        for k in sorted(given - RESUME_MAY_CHANGE)
        if parsed[k] != merged.get(k)
    ]
    if conflicts:
        raise RunError(
            "--resume continues a run with the settings it was started "
            f"with; cannot change {', '.join(conflicts)}. Use a new --out to train "
            "with other settings."
        )
    # --amp changes the numbers a step computes and --policy-on the generator the policy
    # draws from: the run keeps its own unless one is given.
    kept = {"amp", "policy_on"}
    merged.update({k: parsed[k] for k in RESUME_RUNTIME - kept | (given & (kept | {"data_dir"}))})
    if "epochs" in given and parsed["epochs"] != merged["epochs"]:
        if parsed["epochs"] < done:
            raise RunError(
                f"--epochs {parsed['epochs']}, but the run in {parsed['out']} has already trained {done} epochs"
            )
        merged["epochs"] = parsed["epochs"]
    return merged


def check_settings(settings: Mapping) -> None:
    """Fail at once, with one clear message, on settings that cannot work."""
    problems = [
        f"--{name.replace('_', '-')} must be a finite number, got {value}"
        for name, value in sorted(settings.items())
        if isinstance(value, float) and not math.isfinite(value)
    ]
    if problems:  # nan passes every comparison below unnoticed
        raise RunError("; ".join(problems))
    problems = range_problems(settings)
    if not Path(settings["data_dir"]).is_dir() and not settings["download"]:
        problems.append(
            f"data folder {settings['data_dir']} does not exist: pass --data-dir a folder "
            "with train/<class>/ images, or add --download to fetch CIFAR-10 into it"
        )
    if settings["push_to_hub"]:
        problems += hub_problems(settings["push_to_hub"])
    if not settings["teacher"] and (settings["distill"] != "hard" or settings["temperature"] != 1.0):
        problems.append("--distill and --temperature shape distillation: give a --teacher too")
    problems += out_problems(Path(settings["out"]))
    if problems:
        raise RunError("; ".join(problems))


def range_problems(settings: Mapping) -> list[str]:
    """Each number outside the range where it means something, in words."""
    s = settings
    problems = []
    if not 0 <= s["momentum"] < 1 or s["bias_lr_scale"] <= 0:
        problems.append(
            f"--momentum must be in [0, 1) and --bias-lr-scale positive, got "
            f"{s['momentum']:g} and {s['bias_lr_scale']:g}"
        )
    for name in (
        "epochs",
        "batch_size",
        "lr",
        "eval_batch_size",
        "patch_size",
        "dim",
        "depth",
        "heads",
        "mlp_dim",
        "temperature",
    ):
        if s[name] <= 0:
            problems.append(f"--{name.replace('_', '-')} must be positive, got {s[name]}")
    if min(s["dim"], s["heads"]) > 0 and s["dim"] % s["heads"]:
        problems.append(f"--heads {s['heads']} must divide --dim {s['dim']}")
    for name in ("dropout", "attn_dropout", "drop_path", "label_smoothing", "ema"):
        if not 0 <= s[name] < 1:
            problems.append(f"--{name.replace('_', '-')} must be in [0, 1), got {s[name]}")
    if not 0 < s["patch_keep"] <= 1:
        problems.append(f"--patch-keep must be in (0, 1], got {s['patch_keep']}")
    never_negative = (
        "mixup_alpha",
        "cutmix_alpha",
        "warmup_epochs",
        "weight_decay",
        "train_subset",
        "workers",
        "translate",
    )
    if min(s[name] for name in never_negative) < 0:
        problems.append(
            "--mixup-alpha, --cutmix-alpha, --warmup-epochs, --weight-decay, "
            "--train-subset, --workers and --translate must not be negative"
        )
    return problems


def hub_problems(repo_id: str) -> list[str]:
    """Why --push-to-hub cannot name a Hub model repo, found before the first epoch."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        return [f"--push-to-hub {repo_id!r} is not a Hub repo id such as USER/vit-cifar ({str(err).splitlines()[0]})"]
    return []


def out_problems(out: Path) -> list[str]:
    """Why a run could not write into --out (it, or a folder above it, is a file; the
    nearest existing folder is not writable), found before an epoch is spent on it."""
    existing = next(p for p in (out, *out.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        return [f"--out {out}: {existing} is a file, not a folder"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"--out {out}: {existing} is not writable (choose another --out)"]
    return []


def shareable_settings(settings: dict) -> dict:
    """The settings as a model card publishes them: each folder (data, run, parent model,
    teacher) by its own name, not by where it lay on the machine that trained it."""
    return {key: Path(value).name if key in FOLDER_SETTINGS and value else value for key, value in settings.items()}


def run_command(settings: dict) -> str:
    """The command that trains this run again: its recipe and every setting that differs
    from it, whatever resumes and machines it took (the card shows this, not the argv)."""
    settings = shareable_settings(settings)
    recipe = vars(parse_args(["--recipe", settings["recipe"], "--epochs", str(settings["epochs"])]))
    words = [
        "python train.py",
        f"--recipe {settings['recipe']}",
        f"--epochs {settings['epochs']}",
        f"--data-dir {settings['data_dir']}",
    ]
    for key, value in settings.items():
        if key in RESUME_MAY_CHANGE | {"recipe"} or value == recipe.get(key):
            continue
        flag = ("--no-" if value is False else "--") + key.replace("_", "-")
        words.append(
            flag
            if isinstance(value, bool)
            else f"{flag} {format(value, 'g')}"
            if isinstance(value, float)
            else f"{flag} {value}"
        )
    return " ".join(words)
