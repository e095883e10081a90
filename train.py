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
from contextlib import nullcontext
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


# ---------------------------------------------------------------- arguments

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default="data",
                   help="class-folder copy (<dir>/train/<class>/*.jpg) or a folder that "
                        "holds or receives the official CIFAR-10 download")
    p.add_argument("--out", default="runs/vit", help="run folder for checkpoints, metrics, plots, export")
    p.add_argument("--epochs", type=int, default=ASSIGNMENT_EPOCHS,
                   help="epochs; the LR milestones (100, 150 of 160) scale in proportion")
    p.add_argument("--batch-size", type=int, default=128, help="global batch size")
    p.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    p.add_argument("--val-size", type=int, default=5000, help="training images held out for validation")
    p.add_argument("--train-subset", type=int, default=0,
                   help="train on only this many images (0: all); for quick trials")
    p.add_argument("--patch-size", type=int, default=4, help="ViT patch size (must divide 32)")
    p.add_argument("--dim", type=int, default=256, help="ViT embedding width")
    p.add_argument("--depth", type=int, default=6, help="number of transformer blocks")
    p.add_argument("--heads", type=int, default=8, help="attention heads (must divide --dim)")
    p.add_argument("--mlp-dim", type=int, default=512, help="hidden width of each block's MLP")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout in embeddings, attention output and MLP")
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
    return p.parse_args(argv)


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
    if not 0 <= args.dropout < 1:
        problems.append(f"--dropout must be in [0, 1), got {args.dropout}")
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
               class_names=class_names, mean=mean, std=std)


def build_optimizer(model: torch.nn.Module, args: argparse.Namespace, device: torch.device):
    fused = device.type == "cuda"
    return torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                             fused=fused)


def build_scheduler(optimizer, args: argparse.Namespace):
    """Stepped once per epoch: x0.1 at the (scaled) assignment milestones."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, scaled_milestones(args.epochs), gamma=0.1)


# ---------------------------------------------------------------- one epoch

def train_one_epoch(model, optimizer, images, labels, augment, args, state, device, bf16,
                    rank: int, world: int, show_progress: bool) -> dict:
    """One pass over this process's shard of a fresh permutation; returns mean loss and
    accuracy over all processes."""
    from tqdm import tqdm

    model.train()
    # The permutation comes from one generator shared by every process, so the shards
    # partition the data; each process then takes every world-th index.
    n = len(labels) // world * world
    perm = torch.randperm(len(labels), generator=state["shuffle"])[:n][rank::world].to(device)
    batch = args.batch_size // world
    steps = math.ceil(len(perm) / batch)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    bar = tqdm(range(steps), desc=f"epoch {state['epoch'] + 1}/{args.epochs}", unit="step",
               disable=not show_progress, leave=False, dynamic_ncols=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    for step in bar:
        idx = perm[step * batch:(step + 1) * batch]
        x = augment(images[idx], state["augment"])
        y = labels[idx]
        with autocast:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(dim=1) == y).sum()
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


def finish(model: ViT, run_dir: Path, args, history, best, train_set, val_idx, test_set,
           mean, std, device, bf16) -> dict:
    """Plots, final evaluation of the best model, export; returns the summary."""
    best_state = load_checkpoint(run_dir / "best.pt")
    model.load_state_dict(best_state["model"])
    names = train_set.class_names
    val_images, val_labels = train_set.images[val_idx], train_set.labels[val_idx]
    val = evaluate(model, val_images, val_labels, mean, std, args.eval_batch_size, device, bf16)
    save_curves(history, run_dir / "curves.png")
    cm = confusion_matrix(val_labels, val["preds"], len(names))
    title = f"validation, best epoch {best_state['epoch']} ({100 * val['acc']:.2f}%)"
    save_confusion_matrix(cm, names, run_dir / "confusion_matrix.png", title)
    save_per_class_accuracy(cm, names, run_dir / "per_class_accuracy.png", title)
    save_prediction_grid(val_images[:32], val_labels[:32], val["preds"][:32], names,
                         run_dir / "predictions.png")
    table = {"validation accuracy": f"{100 * val['acc']:.2f}% ({len(val_idx)} held-out images)",
             "best epoch": f"{best_state['epoch']} of {args.epochs}",
             "training time": f"{sum(h['seconds'] for h in history) / 60:.1f} min on {device_name(device)}"}
    result = {"val_acc": val["acc"], "val_loss": val["loss"], "best_epoch": best_state["epoch"]}
    if test_set is not None:
        test = evaluate(model, test_set.images, test_set.labels, mean, std, args.eval_batch_size, device, bf16)
        table["test accuracy"] = f"{100 * test['acc']:.2f}% ({len(test_set)} images)"
        result["test_acc"] = test["acc"]
    table["per-class validation accuracy"] = ", ".join(
        f"{n} {100 * a:.1f}" for n, a in zip(names, (cm.diag().float() / cm.sum(1).clamp(min=1)).tolist()))
    summary = {"table": table, "params": count_parameters(model), "command": command_line(),
               "recipe": f"assignment recipe: AdamW lr {args.lr}, weight decay {args.weight_decay}, "
                         f"batch {args.batch_size}, MultiStepLR x0.1 at epochs "
                         f"{scaled_milestones(args.epochs)} of {args.epochs}, dropout {args.dropout}",
               "data": args.data_description}
    export_dir = export_model(model, run_dir, summary)
    result["export"] = str(export_dir)
    (run_dir / "results.json").write_text(json.dumps(result, indent=2))
    return result


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
    args.data_description = (f"{args.data_dir}: {len(train_idx)} training / {len(val_idx)} "
                             f"validation images (split seed {args.seed})"
                             + (f", {len(test_set)} test images" if test_set else ", no test split"))
    # Statistics of the training images only, computed once and kept in the checkpoint.
    mean, std = (saved["mean"], saved["std"]) if saved else channel_stats(train_set.images[train_idx])

    torch.manual_seed(args.seed + rank)
    random.seed(args.seed + rank)
    model = build_model(args, train_set.class_names, mean, std).to(device)
    optimizer = build_optimizer(model, args, device)
    scheduler = build_scheduler(optimizer, args)
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

    images = train_set.images[train_idx].to(device)
    labels = train_set.labels[train_idx].to(device)
    augment = DeviceAugment(mean, std, size=train_set.images.shape[-1])
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
            row = train_one_epoch(train_model, optimizer, images, labels, augment, args, state,
                                  device, bf16, rank, world, show_progress)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            state["epoch"] += 1
            if main_process:
                val = evaluate(model, train_set.images[val_idx], train_set.labels[val_idx], mean,
                               std, args.eval_batch_size, device, bf16)
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
            result = finish(model, run_dir, args, state["history"], state, train_set, val_idx,
                            test_set, mean, std, device, bf16)
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
