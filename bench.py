"""Training throughput and inference latency: this project against timm and a naive baseline.

    python bench.py --device cpu --json bench.json
    python bench.py --device cuda --compile          # 200 steps a contender by default on a GPU

Three contenders train the same network (3.2M parameters, patch 4, width 256, 6 blocks,
8 heads, MLP 512, dropout 0.2) in one run, side by side, so that a busy machine slows them
alike and the ratios stay meaningful even when the absolute numbers do not:

  project  train.py's fast path: the uint8 images on the device, data.DeviceAugment,
           vit_model.ViT, bf16 autocast and attention kernels as train.py picks them,
           train.train_one_epoch itself;
  timm     timm's VisionTransformer of the same size, fed by a torchvision DataLoader
           running data.train_transform (the v2 reference chain) per image, with the
           same optimizer and autocast and torch's default attention kernel;
  naive    what a first attempt looks like: PIL images, classic torchvision.transforms
           per image in a DataLoader, a patchify written as a Python loop, float32.

Training throughput counts data loading and augmentation (images/s); warm-up steps are
not timed. Inference is eval-mode forward passes on normalized batches already on the
device. Synthetic images by default: speed does not depend on what the pixels show.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

import loop
import train
from data import (CROP_RATIO, CROP_SCALE, DeviceAugment, ImageTensorDataset, channel_stats,
                  train_transform, training_data_or_exit)
from vit_model import CIFAR10_CLASSES, ViT, count_parameters

CONTENDERS = ("project", "timm", "naive")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or a torch device name")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size (train.py's default)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed training steps per contender and repeat, one epoch of steps x "
                        "batch-size images; default 12 on a CPU, 200 on a GPU")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed training steps first (at most --steps); default 3 on a CPU, "
                        "20 on a GPU (enough for --compile to finish compiling)")
    p.add_argument("--repeats", type=int, default=2,
                   help="rounds of timing, the contenders taking turns in each; the median counts")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes for timm and naive; default 0 on a CPU "
                        "(workers would only take cores from the model's own threads) and "
                        "min(8, CPU cores) on a GPU (they overlap the GPU's work)")
    p.add_argument("--infer-batch", type=int, default=256, help="batch size for inference latency")
    p.add_argument("--infer-reps", type=int, default=3, help="timed inference batches")
    p.add_argument("--latency-reps", type=int, default=20, help="timed single-image forward passes")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default, one per core); on a machine "
                        "shared with another job, fewer threads than cores give steadier numbers")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="bf16 autocast for project and timm, as train.py's --amp (naive: always off)")
    p.add_argument("--compile", action="store_true", help="torch.compile the project's and timm's models")
    p.add_argument("--data-dir", default=None,
                   help="use real training images from this folder (as train.py's --data-dir) "
                        "instead of random ones")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and the models")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON")
    return p.parse_args(argv)


def resolve_defaults(args: argparse.Namespace, device: torch.device) -> None:
    """Fill in the defaults that depend on the device: a GPU step takes milliseconds, so
    it needs many more of them for a steady number than a CPU step."""
    gpu = device.type != "cpu"
    if args.steps is None:
        args.steps = 200 if gpu else 12
    if args.warmup is None:
        args.warmup = min(20 if gpu else 3, args.steps)


def check_args(args: argparse.Namespace) -> None:
    """Fail at once, with one message, on settings that cannot be measured."""
    problems = [f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}"
                for name in ("batch_size", "steps", "repeats", "infer_batch", "infer_reps", "latency_reps")
                if getattr(args, name) <= 0]
    if not 0 <= args.warmup <= args.steps:
        problems.append(f"--warmup must be between 0 and --steps ({args.steps}), got {args.warmup}")
    if args.threads < 0:
        problems.append(f"--threads must be 0 (torch's default) or more, got {args.threads}")
    if args.workers is not None and args.workers < 0:
        problems.append(f"--workers must be 0 or more, got {args.workers}")
    if problems:
        raise SystemExit("error: " + "; ".join(problems))


# ---------------------------------------------------------------- the naive baseline

def naive_patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """data.patchify as a first attempt writes it: a Python loop over patch positions,
    one slice and one copy each, stacked at the end."""
    b, c, h, w = images.shape
    p = patch_size
    patches = []
    for top in range(0, h, p):
        for left in range(0, w, p):
            patches.append(images[:, :, top:top + p, left:left + p].reshape(b, c * p * p))
    return torch.stack(patches, dim=1)


class NaiveViT(ViT):
    """vit_model.ViT with only the patch extraction swapped for naive_patchify."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(naive_patchify(x, self.patch_size))
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = self.pos_drop(torch.cat([cls, tokens], dim=1) + self.pos_embed)
        for block in self.blocks:
            x, _ = block(x)
        return self.head(self.norm(x[:, 0]))


def classic_transform(mean, std, size: int = 32):
    """The assignment's augmentation in the classic torchvision.transforms API, on PIL images."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomHorizontalFlip(),
        transforms.RandomResizedCrop(size, scale=CROP_SCALE, ratio=CROP_RATIO),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


def timm_vit(reference: ViT, dropout: float, attn_dropout: float = 0.0,
             drop_path: float = 0.0) -> nn.Module:
    """timm's VisionTransformer with the sizes of `reference`. Dropout goes where the
    project has it (after the position embedding, the attention projection and in the
    MLP); timm's drop_rate would add a head dropout that the project lacks."""
    from timm.models.vision_transformer import VisionTransformer

    dim = reference.patch_embed.out_features
    return VisionTransformer(
        img_size=reference.image_size, patch_size=reference.patch_size,
        num_classes=reference.head.out_features, embed_dim=dim, depth=len(reference.blocks),
        num_heads=reference.blocks[0].attn.num_heads,
        mlp_ratio=reference.blocks[0].mlp[0].out_features / dim, qkv_bias=True,
        class_token=True, global_pool="token", drop_rate=0.0, pos_drop_rate=dropout,
        proj_drop_rate=dropout, attn_drop_rate=attn_dropout, drop_path_rate=drop_path)


# ---------------------------------------------------------------- measuring

def sync(device: torch.device) -> None:
    """Wait for queued device work, so that a host timer sees it finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def kernel_context(kernels: list[SDPBackend] | None):
    return sdpa_kernel(kernels) if kernels else nullcontext()


@dataclass
class Contender:
    name: str
    model: nn.Module              # uncompiled, for FLOPs and parameter counts
    infer_model: nn.Module        # compiled when --compile applies
    run: Callable[[int], float]   # trains this many steps, returns synchronized seconds
    bf16: bool
    kernels: list[SDPBackend] | None   # None: torch's own choice
    setup: dict


def project_contender(images, labels, mean, std, cfg, device, bf16, compile_model) -> Contender:
    """train.py's loop, unchanged: each run is one loop.train_one_epoch over the first
    steps x batch images, which ends with the epoch's single host synchronization."""
    procs = loop.Processes(0, 1, device)
    model = train.build_model(cfg, CIFAR10_CLASSES, mean, std, images.shape[-1]).to(device)
    fast = torch.compile(model) if compile_model else model
    optimizer = loop.build_optimizer(model, cfg, device)
    batches = loop.EpochBatches(images, labels, batch_size=cfg.batch_size, seed=cfg.seed,
                                procs=procs, policy=train.build_policy(cfg.policy))
    scheduler = loop.build_scheduler(optimizer, cfg, batches.steps)
    augment = DeviceAugment(mean, std, size=images.shape[-1])
    mixing = train.build_mixing(cfg, len(CIFAR10_CLASSES))
    generator = procs.generator(cfg.seed)

    def run(steps: int) -> float:
        with procs.attention_context():
            sync(device)
            start = time.perf_counter()
            loop.train_one_epoch(fast, optimizer, scheduler, itertools.islice(batches.epoch(0), steps),
                                 steps=steps, augment=augment, generator=generator, mixing=mixing,
                                 label_smoothing=cfg.label_smoothing, bf16=bf16, procs=procs)
            sync(device)
        return time.perf_counter() - start

    kernels = [SDPBackend.MATH] if device.type == "cpu" else None
    return Contender("project", model, fast, run, bf16, kernels,
                     {"data": "uint8 tensor on the device, data.DeviceAugment",
                      "attention": "loop.Processes.attention_context: " + (
                          "MATH" if kernels else "torch's choice"),
                      "optimizer": "train.build_optimizer", "compile": compile_model})


def loader_contender(name: str, model: nn.Module, optimizer, loader: DataLoader, device, bf16: bool,
                     compile_model: bool, setup: dict) -> Contender:
    """The usual loop over a DataLoader (model already on the device), with the same
    bookkeeping as train.py's."""
    fast = torch.compile(model) if compile_model else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def run(steps: int) -> float:
        fast.train()
        batches = iter(loader)   # starts (or restarts) the workers' epoch before the timer
        loss_sum = torch.zeros((), device=device)
        sync(device)
        start = time.perf_counter()
        for x, y in itertools.islice(batches, steps):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast:
                loss = F.cross_entropy(fast(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
        loss_sum.item()
        sync(device)
        return time.perf_counter() - start

    return Contender(name, model, fast, run, bf16, None,
                     {**setup, "attention": "torch default", "workers": loader.num_workers,
                      "compile": compile_model})


def build_contenders(images, labels, mean, std, args, device, bf16) -> list[Contender]:
    # train.py's own settings: the assignment recipe, which the timing targets are about.
    cfg = train.parse_args(["--recipe", "assignment", "--batch-size", str(args.batch_size),
                            "--epochs", "1", "--seed", str(args.seed)])
    workers = args.workers if args.workers is not None else (
        0 if device.type == "cpu" else min(8, os.cpu_count() or 1))

    def loader(dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                          num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=device.type == "cuda")

    torch.manual_seed(args.seed)
    project = project_contender(images, labels, mean, std, cfg, device, bf16, args.compile)

    timm_model = timm_vit(project.model, cfg.dropout, cfg.attn_dropout, cfg.drop_path).to(device)
    timm = loader_contender(
        "timm", timm_model, loop.build_optimizer(timm_model, cfg, device),
        loader(ImageTensorDataset(images, labels, train_transform(mean, std, images.shape[-1]))),
        device, bf16, args.compile,
        {"data": "DataLoader, data.train_transform (transforms.v2) per uint8 image",
         "optimizer": "train.build_optimizer"})

    from torchvision.transforms.functional import to_pil_image

    naive_model = NaiveViT(patch_size=cfg.patch_size, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads,
                           mlp_dim=cfg.mlp_dim, dropout=cfg.dropout, attn_dropout=cfg.attn_dropout,
                           drop_path=cfg.drop_path).to(device)
    naive = loader_contender(
        "naive", naive_model,
        torch.optim.AdamW(naive_model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay),
        loader(ImageTensorDataset([to_pil_image(im) for im in images], labels,
                                  classic_transform(mean, std, images.shape[-1]))),
        device, False, False,
        {"data": "DataLoader, PIL images, classic torchvision.transforms per image",
         "optimizer": "torch.optim.AdamW defaults", "patchify": "Python loop"})
    return [project, timm, naive]


def forward_flops(model: nn.Module, image_size: int, device: torch.device) -> float:
    """Forward FLOPs per image (a multiply-add is 2), counted by torch's FlopCounterMode.

    Counted in training mode under the math attention kernel: there attention is plain
    batched matmuls, which the counter sees; the fused CPU kernel and the inference fast
    path of nn.MultiheadAttention are invisible to it."""
    was_training = model.training
    model.train()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), counter:
        model(torch.zeros(2, 3, image_size, image_size, device=device))
    model.train(was_training)
    return counter.get_total_flops() / 2


def time_inference(c: Contender, device, batch: int, reps: int, image_size: int) -> float:
    """Seconds per forward pass of `batch` normalized images, eval mode, as train.predict
    runs it (no_grad, the contender's autocast and attention kernels)."""
    model = c.infer_model
    model.eval()
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=c.bf16)
    with torch.no_grad(), autocast, kernel_context(c.kernels):
        for _ in range(2):
            model(x)
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            model(x)
        sync(device)
    return (time.perf_counter() - start) / reps


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """The device's achievable dense matmul rate in this dtype, measured: the yardstick
    for what fraction of the hardware the training step uses."""
    n, reps = (8192, 100) if device.type == "cuda" else (1024, 10)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e12


def load_images(args: argparse.Namespace, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """n uint8 training images with labels: the first n real ones, or random ones."""
    if args.data_dir:
        data = training_data_or_exit(args.data_dir)
        if len(data.train_idx) < n:
            raise SystemExit(f"error: {args.data_dir} has {len(data.train_idx)} training images, "
                             f"the benchmark needs steps x batch size = {n}")
        idx = data.train_idx[:n]
        return data.images[idx], data.labels[idx], f"{n} training images from {args.data_dir}"
    g = torch.Generator().manual_seed(args.seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, len(CIFAR10_CLASSES), (n,), generator=g)
    return images, labels, f"{n} random 32x32 images"


# ---------------------------------------------------------------- the run

def measure(args: argparse.Namespace) -> tuple[dict, dict]:
    """(results per contender, setup shared by all)."""
    device = loop.pick_device(args.device)
    bf16 = loop.Processes(0, 1, device).use_bf16(args.amp)
    images, labels, data_description = load_images(args, args.steps * args.batch_size)
    mean, std = channel_stats(images)
    contenders = build_contenders(images, labels, mean, std, args, device, bf16)
    image_size = images.shape[-1]

    for c in contenders:
        c.run(args.warmup)
    seconds = {c.name: [] for c in contenders}
    for _ in range(args.repeats):
        for c in contenders:   # in turns, so that a change in background load hits all
            seconds[c.name].append(c.run(args.steps))

    peak_dtype = torch.bfloat16 if bf16 else torch.float32
    peak = matmul_peak_tflops(device, peak_dtype)
    results = {}
    for c in contenders:
        step_s = statistics.median(seconds[c.name]) / args.steps
        img_per_s = args.batch_size / step_s
        batch_s = time_inference(c, device, args.infer_batch, args.infer_reps, image_size)
        single_s = time_inference(c, device, 1, args.latency_reps, image_size)
        gflops = forward_flops(c.model, image_size, device) / 1e9
        # Training costs 3 forward passes' worth: the forward, and backward's two matmuls
        # (input and weight gradients) per forward matmul.
        train_tflops = 3 * gflops * img_per_s / 1e3
        results[c.name] = {
            "train_img_per_s": img_per_s,
            "train_ms_per_step": 1e3 * step_s,
            "train_ms_per_step_repeats": [1e3 * s / args.steps for s in seconds[c.name]],
            "infer_ms_per_img": 1e3 * batch_s / args.infer_batch,
            "infer_ms_batch1": 1e3 * single_s,
            "gflops_per_img_forward": gflops,
            "train_tflops": train_tflops,
            "train_fraction_of_matmul_peak": train_tflops / peak,
            "params": count_parameters(c.model),
            "bf16": c.bf16,
            **c.setup,
        }
    for r in results.values():
        r["train_speed_vs_project"] = r["train_img_per_s"] / results["project"]["train_img_per_s"]
        r["infer_speed_vs_project"] = results["project"]["infer_ms_per_img"] / r["infer_ms_per_img"]
    setup = {"device": loop.Processes(0, 1, device).machine(), "torch": torch.__version__,
             "threads": torch.get_num_threads(), "batch_size": args.batch_size,
             "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
             "infer_batch": args.infer_batch, "data": data_description,
             "matmul_peak_tflops": peak, "matmul_peak_dtype": str(peak_dtype).removeprefix("torch.")}
    return results, setup


def report(results: dict, setup: dict) -> str:
    """The results as a fixed-width table, then the ratios to the project in words."""
    lines = [f"device {setup['device']}; torch {setup['torch']}; {setup['threads']} threads; "
             f"batch {setup['batch_size']}; {setup['repeats']} x {setup['steps']} timed steps "
             f"after {setup['warmup']} warm-up; {setup['data']}",
             f"measured {setup['matmul_peak_dtype']} matmul peak: "
             f"{setup['matmul_peak_tflops']:.2f} TFLOP/s", ""]
    header = (f"{'':8} {'train img/s':>11} {'ms/step':>8} {'vs proj':>7} "
              f"{'infer ms/img':>12} {'batch-1 ms':>10} {'vs proj':>7} "
              f"{'GFLOP/img':>9} {'TFLOP/s':>7} {'of peak':>7}")
    lines += [header, "-" * len(header)]
    for name, r in results.items():
        lines.append(
            f"{name:8} {r['train_img_per_s']:>11.0f} {r['train_ms_per_step']:>8.1f} "
            f"{r['train_speed_vs_project']:>6.2f}x {r['infer_ms_per_img']:>12.3f} "
            f"{r['infer_ms_batch1']:>10.2f} {r['infer_speed_vs_project']:>6.2f}x "
            f"{r['gflops_per_img_forward']:>9.3f} {r['train_tflops']:>7.3f} "
            f"{100 * r['train_fraction_of_matmul_peak']:>6.1f}%")
    lines.append("")
    for name, r in results.items():
        if name != "project":
            lines.append(f"{name}: training {r['train_speed_vs_project']:.2f}x project, "
                         f"inference {r['infer_speed_vs_project']:.2f}x project")
    lines.append("(x project: speed relative to the project, above 1 is faster; GFLOP/img is "
                 "one forward pass, training counts 3 of them)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Measure, print the table; returns (and with --json writes) the results per
    contender, plus the shared settings under "setup"."""
    args = parse_args(argv)
    resolve_defaults(args, loop.pick_device(args.device))
    check_args(args)
    threads = torch.get_num_threads()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        results, setup = measure(args)
    finally:
        torch.set_num_threads(threads)
    print(report(results, setup), flush=True)
    out = {**results, "setup": setup}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
