"""Train the ViT on CIFAR-10, evaluate it, plot the run, export it for the Hub.

    python train.py --epochs 160 --data-dir DATA --out runs/vit       # the assignment recipe
    python train.py --out runs/vit --resume                             # continue after a stop
    torchrun --nproc_per_node=2 train.py --data-dir DATA --out runs/ddp # several processes

The whole decoded training split lives on the training device as uint8 and is augmented
there a batch at a time (data.DeviceAugment), so no DataLoader sits in the hot loop.
Everything a run writes goes to --out: last.pt (resumable state, written every epoch),
best.pt (best on validation), metrics.jsonl, PNG plots, and export/ (model.safetensors,
config.json, README.md model card) loadable with ViT.from_pretrained.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from data import (DataError, DeviceAugment, atomic_save, channel_stats, load_split,
                  save_figure, split_indices, to_normalized)
from vit_model import ViT, count_parameters

ASSIGNMENT_EPOCHS = 160
ASSIGNMENT_MILESTONES = (100, 150)

# What --recipe sets. Every entry is also a flag of its own, which wins over the recipe,
# and the resolved values are saved with the run (last.pt, results.json, model card).
RECIPES = {
    # The course assignment, exactly: MultiStepLR, flip + mild crop, blanket dropout 0.2.
    "assignment": dict(epochs=ASSIGNMENT_EPOCHS, lr=5e-4, weight_decay=0.05, schedule="step",
                       warmup_epochs=0, label_smoothing=0.0, policy="none", mixup_alpha=0.0,
                       cutmix_alpha=0.0, dropout=0.2, attn_dropout=0.0, drop_path=0.0,
                       decay_all=True),
    # The same architecture trained as ViT-Lite / DeiT-style recipes train small ViTs.
    "strong": dict(epochs=200, lr=5e-4, weight_decay=0.05, schedule="cosine",
                   warmup_epochs=10, label_smoothing=0.1, policy="autoaugment", mixup_alpha=0.8,
                   cutmix_alpha=1.0, dropout=0.0, attn_dropout=0.1, drop_path=0.1,
                   decay_all=False),
}
POLICIES = ["none", "autoaugment", "randaugment", "trivialaugment"]


# ---------------------------------------------------------------- arguments

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default="data",
                   help="class-folder copy (<dir>/train/<class>/*.jpg) or a folder that "
                        "holds or receives the official CIFAR-10 download")
    p.add_argument("--out", default="runs/vit", help="run folder for checkpoints, metrics, plots, export")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="assignment",
                   help="defaults for the options below marked [recipe]: the assignment's, or "
                        "the strong one (warmup+cosine, label smoothing, AutoAugment, "
                        "MixUp/CutMix, drop path, no decay on norms/biases/embeddings)")
    p.add_argument("--epochs", type=int, help="[recipe] epochs (assignment 160, strong 200); "
                   "the step schedule's milestones (100, 150 of 160) scale in proportion")
    p.add_argument("--batch-size", type=int, default=128, help="global batch size")
    p.add_argument("--lr", type=float, help="[recipe] AdamW peak learning rate")
    p.add_argument("--weight-decay", type=float, help="[recipe] AdamW weight decay")
    p.add_argument("--decay-all", action=argparse.BooleanOptionalAction,
                   help="[recipe] weight decay on every parameter; --no-decay-all spares "
                        "norms, biases and the position/class embeddings")
    p.add_argument("--schedule", choices=["step", "cosine"],
                   help="[recipe] step: x0.1 at the scaled milestones; cosine: cosine decay to 0")
    p.add_argument("--warmup-epochs", type=float, help="[recipe] linear learning-rate warmup")
    p.add_argument("--label-smoothing", type=float, help="[recipe] cross-entropy label smoothing")
    p.add_argument("--policy", choices=POLICIES,
                   help="[recipe] per-image augmentation policy before flip and crop "
                        "(torchvision's AutoAugment with the CIFAR-10 policy, RandAugment, TrivialAugmentWide)")
    p.add_argument("--mixup-alpha", type=float, help="[recipe] MixUp Beta(alpha, alpha); 0 disables")
    p.add_argument("--cutmix-alpha", type=float, help="[recipe] CutMix Beta(alpha, alpha); 0 disables "
                   "(with both on, each batch picks one at random)")
    p.add_argument("--drop-path", type=float, help="[recipe] stochastic depth rate of the last block")
    p.add_argument("--attn-dropout", type=float, help="[recipe] dropout on the attention weights")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="DataLoader processes for a per-image --policy (unused without one)")
    p.add_argument("--val-size", type=int, default=5000, help="training images held out for validation")
    p.add_argument("--train-subset", type=int, default=0,
                   help="train on only this many images (0: all); for quick trials")
    p.add_argument("--patch-size", type=int, default=4, help="ViT patch size (must divide 32)")
    p.add_argument("--dim", type=int, default=256, help="ViT embedding width")
    p.add_argument("--depth", type=int, default=6, help="number of transformer blocks")
    p.add_argument("--heads", type=int, default=8, help="attention heads (must divide --dim)")
    p.add_argument("--mlp-dim", type=int, default=512, help="hidden width of each block's MLP")
    p.add_argument("--dropout", type=float, help="[recipe] dropout in embeddings, attention output and MLP")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the init, shuffling and augmentation")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or a torch device name")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="bf16 autocast; auto: on for CUDA and for CPUs with AMX bf16 units")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last.pt with the settings it was started with")
    p.add_argument("--push-to-hub", metavar="USER/REPO", default=None,
                   help="upload the export to this Hub model repo (uses your huggingface_hub login)")
    p.add_argument("--eval-batch-size", type=int, default=1000, help="batch size for evaluation")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    return apply_recipe(p.parse_args(argv))


def apply_recipe(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options left unset on the command line from the chosen recipe."""
    for key, value in RECIPES[args.recipe].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Fail at once, with one clear message, on arguments that cannot work."""
    problems = []
    if args.epochs <= 0:
        problems.append(f"--epochs must be positive, got {args.epochs}")
    if args.batch_size <= 0:
        problems.append(f"--batch-size must be positive, got {args.batch_size}")
    if args.lr <= 0:
        problems.append(f"--lr must be positive, got {args.lr}")
    if args.patch_size <= 0 or 32 % args.patch_size:
        problems.append(f"--patch-size {args.patch_size} does not divide the 32x32 image "
                        "(use 1, 2, 4, 8, 16 or 32)")
    if min(args.dim, args.depth, args.heads, args.mlp_dim) <= 0 or args.dim % args.heads:
        problems.append(f"--heads {args.heads} must divide --dim {args.dim} (all sizes positive)")
    for name in ("dropout", "attn_dropout", "drop_path", "label_smoothing"):
        if not 0 <= getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(args, name)}")
    if min(args.mixup_alpha, args.cutmix_alpha, args.warmup_epochs, args.weight_decay) < 0:
        problems.append("--mixup-alpha, --cutmix-alpha, --warmup-epochs and --weight-decay "
                        "must not be negative")
    if args.val_size <= 0:
        problems.append(f"--val-size must be positive (validation picks the best model), got {args.val_size}")
    if not Path(args.data_dir).is_dir():
        problems.append(f"data folder {args.data_dir} does not exist")
    if problems:
        raise SystemExit("error: " + "; ".join(problems))


def scaled_milestones(epochs: int) -> list[int]:
    """The assignment's LR milestones (100 and 150 of 160 epochs) at another epoch count."""
    return [max(1, round(m * epochs / ASSIGNMENT_EPOCHS)) for m in ASSIGNMENT_MILESTONES]


# ---------------------------------------------------------------- device and processes

def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def use_bf16(mode: str, device: torch.device) -> bool:
    if mode != "auto":
        return mode == "on"
    if device.type == "cuda":
        return True
    # Without AMX, bf16 on a CPU is emulated and slower than float32.
    return device.type == "cpu" and torch.cpu._is_amx_tile_supported()


def attention_kernels(device: torch.device) -> list[SDPBackend]:
    """On CPUs the plain matmul-softmax attention beats the flash kernel for 65 tokens
    (1.5x per training step, measured with bf16 on 2 cores); elsewhere torch chooses."""
    if device.type == "cpu":
        return [SDPBackend.MATH]
    return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
            SDPBackend.MATH]


def init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); starts the process group under torchrun."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    return dist.get_rank(), dist.get_world_size(), local_rank


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


# ---------------------------------------------------------------- model and optimizer

def build_model(args: argparse.Namespace, class_names, mean, std) -> ViT:
    return ViT(patch_size=args.patch_size, num_classes=len(class_names), dim=args.dim,
               depth=args.depth, heads=args.heads, mlp_dim=args.mlp_dim, dropout=args.dropout,
               attn_dropout=args.attn_dropout, drop_path=args.drop_path,
               class_names=class_names, mean=mean, std=std)


def param_groups(model: torch.nn.Module, weight_decay: float, decay_all: bool) -> list[dict]:
    """One group with weight decay on everything, or two: matrices decayed; norms, biases
    and the position/class embeddings not (decaying those only pulls them towards 0)."""
    if decay_all:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    decay, keep = [], []
    for name, param in model.named_parameters():
        exempt = param.ndim <= 1 or name.split(".")[-1] in ("pos_embed", "cls_token")
        (keep if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, args: argparse.Namespace, device: torch.device):
    # The fused kernel exists for CUDA and CPU (3.6x faster step() on one CPU thread).
    return torch.optim.AdamW(param_groups(model, args.weight_decay, args.decay_all), lr=args.lr,
                             fused=device.type in ("cuda", "cpu"))


def lr_factor(step: int, total: int, warmup: int, schedule: str, milestones: list[int]) -> float:
    """Multiplier of the peak learning rate at an optimizer step."""
    ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if schedule == "step":
        return ramp * 0.1 ** sum(step >= m for m in milestones)
    progress = max(0.0, step - warmup) / max(1, total - warmup)
    return ramp * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer, args: argparse.Namespace, steps_per_epoch: int):
    """Stepped after every optimizer step. The assignment's schedule is MultiStepLR itself,
    x0.1 at the (scaled) milestone epochs; warmup or cosine go through one LambdaLR."""
    milestones = [m * steps_per_epoch for m in scaled_milestones(args.epochs)]
    if args.schedule == "step" and not args.warmup_epochs:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    total = args.epochs * steps_per_epoch
    warmup = round(args.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, args.schedule, milestones))


def build_policy(name: str):
    """The per-image augmentation policy (a torchvision v2 transform on uint8), or None."""
    from torchvision.transforms import v2

    return {"none": None,
            "autoaugment": v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10),
            "randaugment": v2.RandAugment(),
            "trivialaugment": v2.TrivialAugmentWide()}[name]


def build_mixing(args: argparse.Namespace, num_classes: int):
    """MixUp and/or CutMix on a normalized batch (one of them per batch when both are on),
    or None. Returns soft targets that sum to one."""
    from torchvision.transforms import v2

    choices = []
    if args.mixup_alpha > 0:
        choices.append(v2.MixUp(alpha=args.mixup_alpha, num_classes=num_classes))
    if args.cutmix_alpha > 0:
        choices.append(v2.CutMix(alpha=args.cutmix_alpha, num_classes=num_classes))
    if not choices:
        return None
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)


def steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    """Optimizer steps in an epoch of n images: each process gets n // world of them."""
    return math.ceil((n // world) / (batch_size // world))


def epoch_batches(perm: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, batch: int,
                  policy, workers: int, seed: int, device: torch.device):
    """(uint8 images, labels) batches on the device, in the order of perm.

    Without a policy the images already sit on the device and are indexed there. A policy
    such as AutoAugment draws per image, so those batches come from DataLoader workers
    that apply it to the uint8 images on the CPU (cheap at 32x32), seeded per epoch so
    that a resumed run draws the same."""
    if policy is None:
        for start in range(0, len(perm), batch):
            idx = perm[start:start + batch]
            yield images[idx], labels[idx]
        return
    from torch.utils.data import DataLoader

    from data import ImageTensorDataset

    loader = DataLoader(ImageTensorDataset(images, labels, policy), batch_size=batch,
                        sampler=perm.tolist(), num_workers=workers,
                        generator=torch.Generator().manual_seed(seed),
                        pin_memory=device.type == "cuda", persistent_workers=False)
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


# ---------------------------------------------------------------- one epoch

def train_one_epoch(model, optimizer, scheduler, images, labels, pipeline: dict, args, state,
                    device, bf16, rank: int, world: int, show_progress: bool) -> dict:
    """One pass over this process's shard of a fresh permutation; returns mean loss and
    accuracy over all processes (against the dominant label when batches are mixed)."""
    from tqdm import tqdm

    model.train()
    # The permutation comes from one generator shared by every process, so the shards
    # partition the data; each process then takes every world-th index.
    n = len(labels) // world * world
    perm = torch.randperm(len(labels), generator=state["shuffle"])[:n][rank::world]
    if pipeline["policy"] is None:
        perm = perm.to(device)
    batch = args.batch_size // world
    batches = epoch_batches(perm, images, labels, batch, pipeline["policy"], args.workers,
                            args.seed * 100_003 + state["epoch"] * world + rank, device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    steps = steps_per_epoch(len(labels), args.batch_size, world)
    bar = tqdm(batches, total=steps, desc=f"epoch {state['epoch'] + 1}/{args.epochs}", unit="step",
               disable=not show_progress, leave=False, dynamic_ncols=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    for step, (x, y) in enumerate(bar):
        x = pipeline["augment"](x, state["augment"])
        target = y
        if pipeline["mixing"] is not None:
            x, target = pipeline["mixing"](x, y)
        with autocast:
            logits = model(x)
            loss = F.cross_entropy(logits, target, label_smoothing=args.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * len(y)
        dominant = target.argmax(dim=1) if target.ndim == 2 else target
        correct += (logits.argmax(dim=1) == dominant).sum()
        if show_progress and (step % 20 == 0 or step == steps - 1):
            seen = min((step + 1) * batch, len(perm))
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
    totals = torch.stack([loss_sum, correct.float(), torch.tensor(float(len(perm)), device=device)])
    if world > 1:
        dist.all_reduce(totals)
    return {"train_loss": (totals[0] / totals[2]).item(), "train_acc": (totals[1] / totals[2]).item()}


@torch.no_grad()
def predict(model, images: torch.Tensor, mean, std, batch_size: int, device, bf16: bool) -> torch.Tensor:
    """Logits (float32, on the CPU) for uint8 images, in eval mode."""
    model.eval()
    out = []
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for chunk in images.split(batch_size):
            out.append(model(to_normalized(chunk.to(device), mean, std)).float().cpu())
    return torch.cat(out)


def evaluate(model, images, labels, mean, std, batch_size, device, bf16) -> dict:
    logits = predict(model, images, mean, std, batch_size, device, bf16)
    labels = labels.cpu()
    return {"loss": F.cross_entropy(logits, labels).item(),
            "acc": (logits.argmax(1) == labels).float().mean().item(),
            "preds": logits.argmax(1)}


# ---------------------------------------------------------------- checkpoints

def rng_state(state: dict, device: torch.device) -> dict:
    out = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "shuffle": state["shuffle"].get_state(), "augment": state["augment"].get_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def restore_rng(saved: dict, state: dict, device: torch.device) -> None:
    torch.set_rng_state(saved["torch"])
    random.setstate(saved["python"])
    state["shuffle"].set_state(saved["shuffle"])
    state["augment"].set_state(saved["augment"])
    if "cuda" in saved and device.type == "cuda":
        torch.cuda.set_rng_state(saved["cuda"], device)


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SystemExit(f"error: cannot load checkpoint {path}: {err}") from err


# ---------------------------------------------------------------- plots

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_curves(history: list[dict], path: Path) -> None:
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train (augmented, dropout on)")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("cross-entropy"), ax1.legend(), ax1.grid(alpha=0.3)
    ax2.plot(epochs, [100 * h["train_acc"] for h in history], label="train (augmented, dropout on)")
    ax2.plot(epochs, [100 * h["val_acc"] for h in history], label="validation")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("accuracy (%)"), ax2.legend(), ax2.grid(alpha=0.3)
    fig.suptitle("loss and accuracy per epoch")
    fig.tight_layout()
    save_figure(fig, path)


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts, rows true class, columns predicted class."""
    return torch.bincount(labels * num_classes + preds, minlength=num_classes ** 2).view(
        num_classes, num_classes)


def save_confusion_matrix(cm: torch.Tensor, class_names, path: Path, title: str) -> None:
    plt = _plt()
    rates = cm.float() / cm.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    k = len(class_names)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.tight_layout()
    save_figure(fig, path)


def save_per_class_accuracy(cm: torch.Tensor, class_names, path: Path, title: str) -> None:
    plt = _plt()
    acc = 100 * cm.diag().float() / cm.sum(1).clamp(min=1)
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.bar(class_names, acc.numpy(), color="tab:blue")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_ylim(0, 105), ax.set_ylabel("accuracy (%)"), ax.set_title(title)
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    save_figure(fig, path)


def save_prediction_grid(images: torch.Tensor, labels, preds, class_names, path: Path,
                         rows: int = 4, cols: int = 8) -> None:
    """Sample images with true and predicted class; wrong predictions in red."""
    plt = _plt()
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows))
    for ax, image, y, p in zip(axes.flat, images, labels, preds):
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.set_title(f"{class_names[y]}\n→ {class_names[p]}", fontsize=8,
                     color="tab:green" if y == p else "tab:red")
        ax.axis("off")
    for ax in axes.flat[len(images):]:
        ax.axis("off")
    fig.suptitle("true → predicted (validation)")
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------- export and Hub

PLOTS = ["curves.png", "confusion_matrix.png", "per_class_accuracy.png", "predictions.png"]


def model_card(summary: dict) -> str:
    """The export's README.md: Hub front matter, the run's real figures and plots."""
    rows = "\n".join(f"| {k} | {v} |" for k, v in summary["table"].items())
    plots = "\n\n".join(f"![{p[:-4]}]({p})" for p in PLOTS)
    return f"""---
library_name: vit-cifar
license: mit
pipeline_tag: image-classification
tags: [image-classification, vision-transformer, cifar10, pytorch, pytorch_model_hub_mixin]
datasets: [cifar10]
metrics: [accuracy]
---

# ViT for CIFAR-10 ({summary['params'] / 1e6:.2f}M parameters)

A Vision Transformer trained from scratch by `train.py` of vit-cifar
({summary['recipe']}). Data: {summary['data']}.

| | |
|---|---|
{rows}

Command: `{summary['command']}`

```python
from vit_model import ViT   # vit-cifar's vit_model.py
model = ViT.from_pretrained("<this repo or folder>")   # config.json has class_names, mean, std
```

{plots}
"""


def export_model(model: ViT, run_dir: Path, summary: dict) -> Path:
    """Write run_dir/export (weights, config, model card, plots) via a temporary folder,
    so a reader never sees half an export."""
    final = run_dir / "export"
    tmp = run_dir / ".export.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "README.md").write_text(model_card(summary))
    model.save_pretrained(tmp)
    for name in PLOTS:
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, tmp / name)
    old = run_dir / ".export.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def push_to_hub(export_dir: Path, repo_id: str) -> str:
    """Upload the export folder; returns the repo URL. Raises RuntimeError naming the cause."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(export_dir), repo_id=repo_id,
                          commit_message="Upload ViT trained with vit-cifar train.py")
    except Exception as err:
        raise RuntimeError(f"upload to the Hub repo {repo_id} failed ({type(err).__name__}: "
                           f"{err}); the local export in {export_dir} is intact") from err
    return f"https://huggingface.co/{repo_id}"


# ---------------------------------------------------------------- the run

def write_metrics(history: list[dict], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
    os.replace(tmp, path)


def finish(model: ViT, run_dir: Path, args, history, names, val_images, val_labels,
           test_set, mean, std, device, bf16) -> dict:
    """Plots, final evaluation of the best model, export; returns the summary."""
    best_state = load_checkpoint(run_dir / "best.pt")
    model.load_state_dict(best_state["model"])
    val = evaluate(model, val_images, val_labels, mean, std, args.eval_batch_size, device, bf16)
    save_curves(history, run_dir / "curves.png")
    val_labels = val_labels.cpu()
    cm = confusion_matrix(val_labels, val["preds"], len(names))
    title = f"validation, best epoch {best_state['epoch']} ({100 * val['acc']:.2f}%)"
    save_confusion_matrix(cm, names, run_dir / "confusion_matrix.png", title)
    save_per_class_accuracy(cm, names, run_dir / "per_class_accuracy.png", title)
    save_prediction_grid(val_images[:32].cpu(), val_labels[:32], val["preds"][:32], names,
                         run_dir / "predictions.png")
    table = {"validation accuracy": f"{100 * val['acc']:.2f}% ({len(val_labels)} held-out images)",
             "best epoch": f"{best_state['epoch']} of {args.epochs}",
             "training time": f"{sum(h['seconds'] for h in history) / 60:.1f} min on {device_name(device)}"}
    result = {"val_acc": val["acc"], "val_loss": val["loss"], "best_epoch": best_state["epoch"],
              "recipe": args.recipe,
              "settings": {k: getattr(args, k) for k in [*RECIPES[args.recipe], "batch_size", "seed"]}}
    if test_set is not None:
        test = evaluate(model, test_set.images, test_set.labels, mean, std, args.eval_batch_size, device, bf16)
        table["test accuracy"] = f"{100 * test['acc']:.2f}% ({len(test_set)} images)"
        result["test_acc"] = test["acc"]
    table["per-class validation accuracy"] = ", ".join(
        f"{n} {100 * a:.1f}" for n, a in zip(names, (cm.diag().float() / cm.sum(1).clamp(min=1)).tolist()))
    summary = {"table": table, "params": count_parameters(model), "command": command_line(),
               "recipe": describe_recipe(args),
               "data": args.data_description}
    export_dir = export_model(model, run_dir, summary)
    result["export"] = str(export_dir)
    (run_dir / "results.json").write_text(json.dumps(result, indent=2))
    return result


def describe_recipe(args: argparse.Namespace) -> str:
    """The run's recipe in words, every ingredient named with its value."""
    schedule = (f"x0.1 at epochs {scaled_milestones(args.epochs)}" if args.schedule == "step"
                else "cosine decay")
    return (f"{args.recipe} recipe, {args.epochs} epochs: AdamW lr {args.lr}, batch "
            f"{args.batch_size}, weight decay {args.weight_decay} "
            f"({'on all parameters' if args.decay_all else 'not on norms, biases, embeddings'}), "
            f"{args.warmup_epochs:g} warmup epochs then {schedule}, label smoothing "
            f"{args.label_smoothing}, policy {args.policy}, flip + RandomResizedCrop, MixUp "
            f"{args.mixup_alpha}, CutMix {args.cutmix_alpha}, dropout {args.dropout}, attention "
            f"dropout {args.attn_dropout}, drop path {args.drop_path}")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"


def command_line() -> str:
    return " ".join(["python", Path(sys.argv[0]).name] + sys.argv[1:])


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    run_dir = Path(args.out)
    saved = None
    if args.resume:
        if not (run_dir / "last.pt").exists():
            raise SystemExit(f"error: --resume, but {run_dir / 'last.pt'} does not exist")
        saved = load_checkpoint(run_dir / "last.pt")
        keep = {k: getattr(args, k) for k in ("device", "compile", "push_to_hub", "no_progress", "amp")}
        # Settings the run was started with win; defaults fill in options added since.
        args = argparse.Namespace(**{**vars(parse_args([])), **saved["args"], **keep, "resume": True})
    check_args(args)

    rank, world, local_rank = init_distributed()
    device = pick_device(args.device, local_rank)
    bf16 = use_bf16(args.amp, device)
    main_process = rank == 0
    show_progress = main_process and not args.no_progress
    if args.batch_size % world:
        raise SystemExit(f"error: --batch-size {args.batch_size} is not divisible by {world} processes")

    try:
        train_set = load_split(args.data_dir, "train")
        test_set = load_split(args.data_dir, "test")
        train_idx, val_idx = split_indices(len(train_set), args.val_size, args.seed)
    except DataError as err:
        raise SystemExit(f"error: {err}")
    if args.train_subset:
        pick = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(args.seed))
        train_idx = train_idx[pick[:args.train_subset]].sort().values
    source = ("class folders" if (Path(args.data_dir) / "train").is_dir()
              else "official CIFAR-10 via torchvision")
    args.data_description = (f"{Path(args.data_dir).resolve().name}/ ({source}): "
                             f"{len(train_idx)} training / {len(val_idx)} "
                             f"validation images (split seed {args.seed})"
                             + (f", {len(test_set)} test images" if test_set else ", no test split"))
    # Statistics of the training images only, computed once and kept in the checkpoint.
    mean, std = (saved["mean"], saved["std"]) if saved else channel_stats(train_set.images[train_idx])

    torch.manual_seed(args.seed + rank)
    random.seed(args.seed + rank)
    model = build_model(args, train_set.class_names, mean, std).to(device)
    optimizer = build_optimizer(model, args, device)
    scheduler = build_scheduler(optimizer, args, steps_per_epoch(len(train_idx), args.batch_size, world))
    state = {"epoch": 0, "best_val_acc": -1.0, "best_epoch": 0, "history": [],
             "shuffle": torch.Generator().manual_seed(args.seed),
             "augment": torch.Generator(device).manual_seed(args.seed + 1000 * (rank + 1))}
    if saved:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state.update({k: saved[k] for k in ("epoch", "best_val_acc", "best_epoch", "history")})
        restore_rng(saved["rng"], state, device)

    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None)
    if args.compile:
        train_model = torch.compile(train_model)

    pipeline = {"policy": build_policy(args.policy),
                "augment": DeviceAugment(mean, std, size=train_set.images.shape[-1]),
                "mixing": build_mixing(args, len(train_set.class_names))}
    # A per-image policy runs in CPU workers, so the images stay on the CPU for them.
    data_device = device if pipeline["policy"] is None else torch.device("cpu")
    images = train_set.images[train_idx].to(data_device)
    labels = train_set.labels[train_idx].to(data_device)
    # Moved to the device once, not indexed and copied again for every evaluation.
    val_images, val_labels = train_set.images[val_idx].to(device), train_set.labels[val_idx]
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        print(f"{args.data_description}; {count_parameters(model):,} parameters; "
              f"device {device_name(device)}{' x' + str(world) if world > 1 else ''}; "
              f"bf16 {'on' if bf16 else 'off'}; "
              + (f"resuming after epoch {state['epoch']}" if saved else f"{args.epochs} epochs"),
              flush=True)

    with sdpa_kernel(attention_kernels(device)):
        while state["epoch"] < args.epochs:
            start = time.time()
            lr = optimizer.param_groups[0]["lr"]
            row = train_one_epoch(train_model, optimizer, scheduler, images, labels, pipeline,
                                  args, state, device, bf16, rank, world, show_progress)
            state["epoch"] += 1
            if main_process:
                val = evaluate(model, val_images, val_labels, mean, std, args.eval_batch_size,
                               device, bf16)
                row = {"epoch": state["epoch"], "lr": lr, **row, "val_loss": val["loss"],
                       "val_acc": val["acc"], "seconds": time.time() - start}
                state["history"].append(row)
                if val["acc"] > state["best_val_acc"]:
                    state["best_val_acc"], state["best_epoch"] = val["acc"], state["epoch"]
                    atomic_save({"model": model.state_dict(), "epoch": state["epoch"],
                                 "val_acc": val["acc"]}, run_dir / "best.pt")
                atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "args": vars(args),
                             "mean": mean, "std": std, "rng": rng_state(state, device),
                             **{k: state[k] for k in ("epoch", "best_val_acc", "best_epoch", "history")}},
                            run_dir / "last.pt")
                write_metrics(state["history"], run_dir / "metrics.jsonl")
                print(f"epoch {row['epoch']:>3}/{args.epochs}  lr {lr:.2e}  "
                      f"train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%  "
                      f"val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%  "
                      f"({row['seconds']:.0f}s)", flush=True)
            barrier(world)

        result = None
        if main_process:
            result = finish(model, run_dir, args, state["history"], train_set.class_names,
                            val_images, val_labels, test_set, mean, std, device, bf16)
            print(f"best validation accuracy {100 * result['val_acc']:.2f}% at epoch "
                  f"{result['best_epoch']}; export in {result['export']}", flush=True)
    if world > 1:
        dist.destroy_process_group()
    if result and args.push_to_hub:
        try:
            print(f"uploaded to {push_to_hub(Path(result['export']), args.push_to_hub)}")
        except RuntimeError as err:
            raise SystemExit(f"error: {err}")
    return result


if __name__ == "__main__":
    main()
