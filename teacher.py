"""Train a small convolutional network on the ViT's own training split, to teach the ViT
(`train.py --teacher DIR`, hard-label distillation as in DeiT: Touvron et al. 2021).

    python teacher.py --data-dir DATA --out runs/teacher            # 10 epochs
    python teacher.py --data-dir DATA --out runs/teacher --resume   # after a stop: go on
    python train.py --recipe budget --teacher runs/teacher ...      # distill into the ViT

Why a CNN: on 32x32 images its built-in locality learns in a few epochs what a ViT trained
from scratch needs hundreds for, and its predictions carry that to the ViT. It trains on
exactly the images train.py trains on (the same --seed and --val-size cut the same split),
never on the validation images, so the ViT's validation figure stays honest; train.py
refuses a teacher cut from another split. The network: a 3x3 stem, then three stages of
conv -> max-pool -> BatchNorm -> GELU -> conv -> BatchNorm -> GELU (32 -> 16 -> 8 -> 4
pixels), global max pool and a linear head. SGD with Nesterov momentum, label smoothing
0.2, linear warmup then linear decay to zero, flip + mild random resized crop (the ViT's
own augmentation), bf16 autocast where train.py's --amp auto picks it. The folder it writes holds
teacher.safetensors and teacher.json (widths, split, statistics, figures, history).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save

from checkpoints import on_cpu
from device_augment import DeviceAugment
from data import (TrainingData, atomic_save, atomic_write, json_text,
                  training_data_or_exit, val_size)
from loop import Evaluator, Processes, bf16_autocast, lr_factor, seed_for, start_processes
from report import machines_of

WEIGHTS, RECORD, CHECKPOINT = "teacher.safetensors", "teacher.json", "teacher_last.pt"
# What a resumed teacher must share with the saved one (the rest may change between sittings).
SETTINGS = ("epochs", "widths", "batch_size", "lr", "weight_decay", "label_smoothing", "val_size", "seed")


class Teacher(nn.Module):
    """The CNN: widths[0] for the stem, then one stage per further width."""

    def __init__(self, widths: list[int], num_classes: int = 10):
        super().__init__()
        self.widths = list(widths)
        layers = [nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.GELU()]
        for cin, cout in zip(widths, widths[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2),
                       nn.BatchNorm2d(cout), nn.GELU(),
                       nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last: oneDNN's fast convolution layout on a CPU (and cuDNN's with bf16).
        x = self.features(x.contiguous(memory_format=torch.channels_last))
        return self.head(x.amax(dim=(2, 3)))


def load_teacher(folder: str | Path) -> tuple[Teacher, dict]:
    """The teacher in a folder, in eval mode, and its record; one clear message otherwise."""
    folder = Path(folder)
    try:
        record = json.loads((folder / RECORD).read_text())
        model = Teacher(record["widths"], len(record["class_names"]))
        model.load_state_dict(load_file(folder / WEIGHTS))
    except FileNotFoundError as err:
        raise SystemExit(f"error: --teacher {folder}: {Path(err.filename).name} is missing "
                         "(train one with `python teacher.py --out DIR`)") from None
    except Exception as err:
        raise SystemExit(f"error: --teacher {folder} is not a teacher.py folder "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    return model.to(memory_format=torch.channels_last).eval(), record


def teacher_for(folder: str, val_images: int, seed: int, mean: list[float],
                device: torch.device) -> tuple[Teacher, dict]:
    """The teacher for a train.py run, refused unless it was trained on that run's split
    (otherwise it would have seen the validation images and leak them into the ViT)."""
    model, record = load_teacher(folder)
    if (record.get("split_seed"), record.get("val_images")) != (seed, val_images) or not \
            torch.allclose(torch.tensor(record["mean"]), torch.tensor(mean), atol=1e-6):
        raise SystemExit(f"error: --teacher {folder} was trained on another split or other images "
                         f"(validation: {record.get('val_images')} images, seed "
                         f"{record.get('split_seed')}; this run: {val_images}, seed {seed}); "
                         "train it with the same --data-dir, --val-size and --seed")
    return model.to(device), record


def widths(text: str) -> list[int]:
    """--widths: two or more positive whole numbers, comma-separated."""
    try:
        values = [int(w) for w in text.split(",")]
    except ValueError:
        values = []
    if len(values) < 2 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"must be two or more positive whole numbers, got {text}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default="data", help="the data folder train.py trains on")
    p.add_argument("--out", default="runs/teacher", help="folder for teacher.safetensors and teacher.json")
    p.add_argument("--epochs", type=int, default=10, help="epochs")
    p.add_argument("--widths", type=widths, default="48,96,192,384", help="stem width, then one per stage")
    p.add_argument("--batch-size", type=int, default=256, help="batch size")
    p.add_argument("--lr", type=float, default=0.2, help="SGD peak learning rate")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay (convolutions and head)")
    p.add_argument("--label-smoothing", type=float, default=0.2, help="label smoothing")
    p.add_argument("--val-size", type=val_size, default=0.1, help="as train.py's: the same split")
    p.add_argument("--seed", type=int, default=0, help="as train.py's: the same split")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or a torch device name")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto", help="bf16 autocast, as train.py's")
    p.add_argument("--resume", action="store_true",
                   help=f"continue the teacher in --out from its {CHECKPOINT} (written every epoch)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    args = p.parse_args(argv)
    if min(args.epochs, args.batch_size) <= 0 or args.lr <= 0:
        p.error("--epochs, --batch-size and --lr must be positive")
    if not Path(args.data_dir).is_dir():
        p.error(f"data folder {args.data_dir} does not exist")
    return args


def optimizer_for(model: Teacher, args: argparse.Namespace) -> torch.optim.SGD:
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": args.weight_decay},
                            {"params": rest, "weight_decay": 0.0}],
                           lr=args.lr, momentum=0.9, nesterov=True)


def resumed_state(args: argparse.Namespace) -> dict | None:
    """The checkpoint to continue from (--resume), or None to start afresh; refused, with
    the reason, where continuing or starting afresh would mix two different teachers."""
    path = Path(args.out) / CHECKPOINT
    if not args.resume:
        if path.exists():
            raise SystemExit(f"error: {path} exists: add --resume to continue that teacher, "
                             "or choose another --out")
        return None
    if not path.exists():
        raise SystemExit(f"error: --resume, but {path} does not exist")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        changed = [k for k in SETTINGS if saved["settings"][k] != getattr(args, k)]
    except Exception as err:
        raise SystemExit(f"error: {path} is not a readable teacher.py checkpoint "
                         f"({type(err).__name__}); delete it to start afresh") from None
    if changed:
        raise SystemExit("error: --resume with other settings than the saved teacher's ("
                         + ", ".join(f"--{k.replace('_', '-')} {saved['settings'][k]}" for k in changed)
                         + "): give the same ones")
    return saved


def train_epoch(model: Teacher, optimizer: torch.optim.Optimizer, scheduler, data: TrainingData,
                args: argparse.Namespace, epoch: int, procs: Processes, bf16: bool) -> None:
    """One epoch over the training split, in a seeded order with seeded augmentation, so
    that a resumed teacher trains exactly as one that never stopped."""
    from tqdm import tqdm

    device = procs.device
    images, labels = data.images[data.train_idx].to(device), data.labels[data.train_idx].to(device)
    augment = DeviceAugment(data.mean, data.std, size=data.image_size)
    generator = procs.generator(seed_for(args.seed, "teacher", epoch))
    order = torch.randperm(len(images), device=device, generator=generator)
    model.train()
    for step in tqdm(range(len(images) // args.batch_size), desc=f"epoch {epoch + 1}/{args.epochs}",
                     leave=False, disable=args.no_progress):
        batch = order[step * args.batch_size:(step + 1) * args.batch_size]
        with bf16_autocast(device, bf16):
            loss = F.cross_entropy(model(augment(images[batch], generator)), labels[batch],
                                   label_smoothing=args.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    saved, out = resumed_state(args), Path(args.out)
    procs = start_processes(args.device)
    bf16 = procs.use_bf16(args.amp)
    data = training_data_or_exit(args.data_dir, args.val_size, args.seed)
    steps = len(data.train_idx) // args.batch_size
    torch.manual_seed(args.seed)
    model = Teacher(args.widths, len(data.class_names)).to(procs.device, memory_format=torch.channels_last)
    optimizer = optimizer_for(model, args)
    history = saved["history"] if saved else []
    if saved and not torch.allclose(torch.tensor(saved["mean"]), torch.tensor(data.mean), atol=1e-6):
        raise SystemExit(f"error: --resume on other images than the saved teacher's "
                         f"(--data-dir {args.data_dir}: their statistics differ)")
    if saved:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
    done = len(history) * steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s + done, args.epochs * steps, steps, "linear", []))
    scorer = Evaluator(data.mean, data.std, 512, procs.device, bf16)
    val_images, val_labels = data.images[data.val_idx], data.labels[data.val_idx]
    print(f"{data.description}; teacher {args.widths}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters; {procs.machine()}; "
          f"{procs.bf16_words(args.amp)}" + (f"; resuming after epoch {len(history)}" if saved else ""),
          flush=True)
    for epoch in range(len(history), args.epochs):
        start = time.time()
        train_epoch(model, optimizer, scheduler, data, args, epoch, procs, bf16)
        val = scorer.evaluate(model, val_images, val_labels)
        history.append({"epoch": epoch + 1, "val_acc": val.acc, "seconds": time.time() - start,
                        "machine": procs.machine()})
        print(f"epoch {epoch + 1:>3}/{args.epochs}  val acc {100 * val.acc:.2f}%  "
              f"({history[-1]['seconds']:.0f}s)", flush=True)
        atomic_save({"model": on_cpu(model.state_dict()), "optimizer": on_cpu(optimizer.state_dict()),
                     "settings": {k: getattr(args, k) for k in SETTINGS}, "mean": data.mean,
                     "history": history},
                    out / CHECKPOINT)
    return finish(model, scorer.evaluate(model, val_images, val_labels, flip=True).acc,
                  data, args, history)


def finish(model: Teacher, flip_acc: float, data: TrainingData, args: argparse.Namespace,
           history: list[dict]) -> dict:
    """Write teacher.safetensors and teacher.json; the record."""
    out = Path(args.out)
    record = {"widths": args.widths, "class_names": data.class_names, "mean": data.mean,
              "std": data.std, "split_seed": args.seed, "val_images": len(data.val_idx),
              "val_acc": history[-1]["val_acc"], "val_acc_flip_tta": flip_acc, "epochs": args.epochs,
              "data": data.description, "machine": machines_of(history),
              "training_minutes": round(sum(h["seconds"] for h in history) / 60, 1), "history": history}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS, lambda f: f.write(save(state)))
    atomic_write(out / RECORD, lambda f: f.write(json_text(record, indent=2).encode()))
    print(f"teacher: {100 * record['val_acc']:.2f}% validation ({100 * flip_acc:.2f}% flip TTA) "
          f"in {record['training_minutes']} min; saved in {out}", flush=True)
    return record


if __name__ == "__main__":
    main()
