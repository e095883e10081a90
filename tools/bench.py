"""Training throughput and inference latency: this project against timm and a naive baseline.

    python -m tools.bench --device cpu --json bench.json
    python -m tools.bench --device cuda --compile          # 200 steps a contender by default on a GPU

Three contenders train the same network (3.2M parameters, patch 4, width 256, 6 blocks,
8 heads, MLP 512, dropout 0.2) in one run, side by side, so that a busy machine slows them
alike and the ratios stay meaningful even when the absolute numbers do not:

  project  train.py's fast path: the uint8 images on the device, data.DeviceAugment,
           vit_model.ViT, bf16 autocast and attention kernels as train.py picks them,
           epoch.train_one_epoch itself;
  timm     timm's VisionTransformer of the same size, fed by a torchvision DataLoader
           running data.train_transform (the v2 reference chain) per image, with the
           same optimizer and autocast and torch's default attention kernel;
  naive    what a first attempt looks like: PIL images, classic torchvision.transforms
           per image in a DataLoader, a patchify written as a Python loop, float32.

Beside them, train.py's other model: the cnn recipe's CNN (cnn_model.py) in the same
loop, on the same images, batch size and autocast rule, so that the two models' costs
per image read side by side.

Training throughput counts data loading and augmentation (images/s); warm-up steps are
not timed. Inference is eval-mode forward passes on normalized batches already on the
device. Synthetic images by default: speed does not depend on what the pixels show.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

import training.runtime
from common.atomic_files import atomic_write, json_text
from data import DataError, channel_stats, load_training_data
from tools.contenders import Contender, build_contenders, sync
from vit_model import CIFAR10_CLASSES, count_parameters, forward_flops

CONTENDERS = ("project", "timm", "naive", "cnn")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or a torch device name")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size (train.py's default)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed training steps per contender and repeat, one epoch of steps x "
        "batch-size images; default 12 on a CPU, 200 on a GPU",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed training steps first (at most --steps); default 3 on a CPU, "
        "20 on a GPU (enough for --compile to finish compiling)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="rounds of timing, the contenders taking turns in each; the median counts",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader worker processes for timm and naive; default 0 on a CPU "
        "(workers would only take cores from the model's own threads) and "
        "min(8, CPU cores) on a GPU (they overlap the GPU's work)",
    )
    p.add_argument("--infer-batch", type=int, default=256, help="batch size for inference latency")
    p.add_argument("--infer-reps", type=int, default=3, help="timed inference batches")
    p.add_argument("--latency-reps", type=int, default=20, help="timed single-image forward passes")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default, one per core); on a machine "
        "shared with another job, fewer threads than cores give steadier numbers",
    )
    p.add_argument(
        "--amp",
        choices=["auto", "on", "off"],
        default="auto",
        help="bf16 autocast for project and timm, as train.py's --amp (naive: always off)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the project's and timm's models")
    p.add_argument(
        "--data-dir",
        default=None,
        help="use real training images from this folder (as train.py's --data-dir) instead of random ones",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and the models")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON")
    return p.parse_args(argv)


@dataclass(frozen=True)
class Timing:
    """How long each contender is timed: steps per repeat, untimed warmup steps first."""

    steps: int
    warmup: int
    repeats: int


def timing_for(args: argparse.Namespace, device: torch.device) -> Timing:
    """The timing asked for, with the defaults that depend on the device: a GPU step takes
    milliseconds, so it needs many more of them for a steady number than a CPU step."""
    gpu = device.type != "cpu"
    steps = args.steps if args.steps is not None else (200 if gpu else 12)
    warmup = args.warmup if args.warmup is not None else min(20 if gpu else 3, steps)
    return Timing(steps, warmup, args.repeats)


def check_args(args: argparse.Namespace, timing: Timing) -> None:
    """Fail at once, with one message, on settings that cannot be measured."""
    values = {
        "batch_size": args.batch_size,
        "steps": timing.steps,
        "repeats": timing.repeats,
        "infer_batch": args.infer_batch,
        "infer_reps": args.infer_reps,
        "latency_reps": args.latency_reps,
    }
    problems = [
        f"--{name.replace('_', '-')} must be positive, got {value}" for name, value in values.items() if value <= 0
    ]
    if not 0 <= timing.warmup <= timing.steps:
        problems.append(f"--warmup must be between 0 and --steps ({timing.steps}), got {timing.warmup}")
    if args.threads < 0:
        problems.append(f"--threads must be 0 (torch's default) or more, got {args.threads}")
    if args.workers is not None and args.workers < 0:
        problems.append(f"--workers must be 0 or more, got {args.workers}")
    if problems:
        raise SystemExit("error: " + "; ".join(problems))


def time_inference(c: Contender, device: torch.device, batch: int, reps: int, image_size: int) -> float:
    """Seconds per forward pass of `batch` normalized images, eval mode, no_grad, with the
    contender's autocast and torch's own attention kernel choice, as the app runs it."""
    model = c.infer_model
    model.eval()
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    autocast = training.runtime.bf16_autocast(device, c.bf16)
    with torch.no_grad(), autocast:
        for _ in range(2):
            model(x)
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            model(x)
        sync(device)
    return (time.perf_counter() - start) / reps


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """The device's dense matmul rate in this dtype, measured on square matrices large
    enough to reach it (2048 on a CPU: 1024 still falls short by a third in bf16): the
    yardstick for the fraction of the hardware a training step uses. The best of several
    short windows counts, so that a moment of background load does not lower the peak."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best, spent = 0.0, 0.0
    while spent < seconds:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        sync(device)
        elapsed = time.perf_counter() - start
        best, spent = max(best, 4 * 2 * n**3 / elapsed / 1e12), spent + elapsed
    return best


def load_images(args: argparse.Namespace, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """n uint8 training images with labels: the first n real ones, or random ones."""
    if args.data_dir:
        try:
            data = load_training_data(args.data_dir)
        except DataError as err:
            raise SystemExit(f"error: {err}") from None
        if len(data.train_idx) < n:
            raise SystemExit(
                f"error: {args.data_dir} has {len(data.train_idx)} training images, "
                f"the benchmark needs steps x batch size = {n}"
            )
        idx = data.train_idx[:n]
        return data.images[idx], data.labels[idx], f"{n} training images from {args.data_dir}"
    g = torch.Generator().manual_seed(args.seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, len(CIFAR10_CLASSES), (n,), generator=g)
    return images, labels, f"{n} random 32x32 images"


# ---------------------------------------------------------------- the run


def measure(args: argparse.Namespace, device: torch.device, timing: Timing) -> tuple[dict, dict]:
    """(results per contender, setup shared by all)."""
    procs = training.runtime.ProcessPlacement(0, 1, device)
    bf16 = procs.use_bf16(args.amp)
    images, labels, data_description = load_images(args, timing.steps * args.batch_size)
    mean, std = channel_stats(images)
    contenders = build_contenders(images, labels, mean, std, args, device, bf16)
    image_size = images.shape[-1]

    for c in contenders:
        c.run(timing.warmup)
    seconds = {c.name: [] for c in contenders}
    for _ in range(timing.repeats):
        for c in contenders:  # in turns, so that a change in background load hits all
            seconds[c.name].append(c.run(timing.steps))

    # Each contender against the matmul peak of the dtype its matmuls run in.
    peaks = {
        dtype: matmul_peak_tflops(device, dtype)
        for dtype in {torch.bfloat16 if c.bf16 else torch.float32 for c in contenders}
    }
    results = {c.name: summarize(c, seconds[c.name], peaks, args, timing, device, image_size) for c in contenders}
    for r in results.values():
        r["train_speed_vs_project"] = r["train_img_per_s"] / results["project"]["train_img_per_s"]
        r["infer_speed_vs_project"] = results["project"]["infer_ms_per_img"] / r["infer_ms_per_img"]
    setup = {
        "device": procs.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "steps": timing.steps,
        "warmup": timing.warmup,
        "repeats": timing.repeats,
        "infer_batch": args.infer_batch,
        "data": data_description,
        "cpu_has_native_bf16": device.type == "cpu" and training.runtime.cpu_has_native_bf16(),
        "cpu_bf16_speedup": training.runtime.cpu_bf16_speedup() if device.type == "cpu" else None,
        "matmul_peak_tflops": {str(d).removeprefix("torch."): p for d, p in peaks.items()},
    }
    return results, setup


def summarize(
    c: Contender,
    seconds: list[float],
    peaks: dict,
    args: argparse.Namespace,
    timing: Timing,
    device: torch.device,
    image_size: int,
) -> dict:
    """One contender's figures: training from its timed runs, then inference measured
    now, FLOPs counted, and the achieved rate against its dtype's matmul peak."""
    step_s = statistics.median(seconds) / timing.steps
    img_per_s = args.batch_size / step_s
    batch_s = time_inference(c, device, args.infer_batch, args.infer_reps, image_size)
    single_s = time_inference(c, device, 1, args.latency_reps, image_size)
    gflops = forward_flops(c.model, image_size) / 1e9
    # Training costs 3 forward passes' worth: the forward, and backward's two matmuls
    # (input and weight gradients) per forward matmul.
    train_tflops = 3 * gflops * img_per_s / 1e3
    peak = peaks[torch.bfloat16 if c.bf16 else torch.float32]
    return {
        "train_img_per_s": img_per_s,
        "train_ms_per_step": 1e3 * step_s,
        "train_ms_per_step_repeats": [1e3 * s / timing.steps for s in seconds],
        "infer_ms_per_img": 1e3 * batch_s / args.infer_batch,
        "infer_ms_batch1": 1e3 * single_s,
        "gflops_per_img_forward": gflops,
        "train_tflops": train_tflops,
        "peak_tflops": peak,
        "train_fraction_of_matmul_peak": train_tflops / peak,
        "params": count_parameters(c.model),
        "bf16": c.bf16,
        **c.setup,
    }


def report(results: dict, setup: dict) -> str:
    """The results as a fixed-width table, then the ratios to the project in words."""
    lines = [
        f"device {setup['device']}; torch {setup['torch']}; {setup['threads']} threads; "
        f"batch {setup['batch_size']}; {setup['repeats']} x {setup['steps']} timed steps "
        f"after {setup['warmup']} warm-up; {setup['data']}",
        "measured matmul peak: "
        + ", ".join(f"{dtype} {tflops:.3f} TFLOP/s" for dtype, tflops in setup["matmul_peak_tflops"].items())
        + f"; CPU with native bf16: {setup['cpu_has_native_bf16']}"
        + (
            f" (a block's MLP trains {setup['cpu_bf16_speedup']:.2f}x as fast in bf16)"
            if setup["cpu_has_native_bf16"]
            else ""
        ),
        "",
    ]
    header = (
        f"{'':8} {'train img/s':>11} {'ms/step':>8} {'vs proj':>7} "
        f"{'infer ms/img':>12} {'batch-1 ms':>10} {'vs proj':>7} "
        f"{'GFLOP/img':>9} {'TFLOP/s':>7} {'of peak':>7}"
    )
    lines += [header, "-" * len(header)]
    for name, r in results.items():
        lines.append(
            f"{name:8} {r['train_img_per_s']:>11.0f} {r['train_ms_per_step']:>8.1f} "
            f"{r['train_speed_vs_project']:>6.2f}x {r['infer_ms_per_img']:>12.3f} "
            f"{r['infer_ms_batch1']:>10.2f} {r['infer_speed_vs_project']:>6.2f}x "
            f"{r['gflops_per_img_forward']:>9.3f} {r['train_tflops']:>7.3f} "
            f"{100 * r['train_fraction_of_matmul_peak']:>6.1f}%"
        )
    lines.append("")
    for name, r in results.items():
        if name != "project":
            lines.append(
                f"{name}: training {r['train_speed_vs_project']:.2f}x project, "
                f"inference {r['infer_speed_vs_project']:.2f}x project"
            )
    lines.append(
        "(x project: speed relative to the project, above 1 is faster; GFLOP/img is "
        "one forward pass, training counts 3 of them; of peak: the training step's "
        "FLOP rate against the matmul peak of its own dtype)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Measure, print the table; returns (and with --json writes) the results per
    contender, plus the shared settings under "setup"."""
    args = parse_args(argv)
    device = training.runtime.pick_device(args.device)
    timing = timing_for(args, device)
    check_args(args, timing)
    if device.type == "cuda":  # as train.py sets a GPU up: TensorFloat-32, cuDNN's autotuner
        training.runtime.use_cuda_device(device)
    threads = torch.get_num_threads()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        results, setup = measure(args, device, timing)
    finally:
        torch.set_num_threads(threads)
    print(report(results, setup), flush=True)
    out = {**results, "setup": setup}
    if args.json:
        atomic_write(args.json, lambda f: f.write((json_text(out, indent=2) + "\n").encode()))
    return out


if __name__ == "__main__":
    main()
