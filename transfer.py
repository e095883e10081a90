"""Transfer a CIFAR-10 model to your own classes, three ways on one split, and compare.

    python transfer.py --data-dir PHOTOS --out runs/transfer-cnn --model cnn
    python transfer.py --data-dir PHOTOS --out runs/transfer-vit --model vit --from weights

PHOTOS holds one folder of photos per class (PHOTOS/<class>/*.jpg, or PHOTOS/train/<class>/),
of any size: each is centre-cropped to a square and resized to the model's 32x32. On a
seeded, stratified 80/20 split it trains the model from scratch, then a linear probe of
the CIFAR-trained network (frozen, new classification layer), then fine-tunes all of it
from the probe at a tenth of the learning rate; writes results.json, transfer.png and
export/ (the best of the three; `python app.py --model OUT/export` serves a ViT's).
The library is training/transfer.py; docs/TRANSFER.md has the choices and results.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUNDLED = {"vit": HERE / "weights", "cnn": HERE / "weights" / "cnn"}


def above(kind: type, low: float = 0, equal: bool = False) -> Callable[[str], float]:
    """argparse type: a number of `kind` above `low` (or equal to it, with `equal`)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{' whole' if kind is int else ''} number") from None
        if not (value >= low if equal else value > low) or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text} must be {'at least' if equal else 'above'} {low}")
        return value

    return parse


def fraction(text: str) -> float:
    """argparse type of --val-fraction: strictly between 0 and 1."""
    value = above(float)(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be a fraction between 0 and 1")
    return value


def device_or_error(name: str) -> str:
    """The device to train on ("auto": CUDA if there is one); a name that is no device
    here raises ValueError."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name} is not a device name (cpu, cuda, cuda:1, mps)") from None
    if (
        device.type == "cuda"
        and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count())
        or device.type == "mps"
        and not torch.backends.mps.is_available()
        or device.type not in ("cpu", "cuda", "mps")
    ):
        raise ValueError(f"--device {name} is not on this machine")
    return name


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown, except where the help names a default that depends on --model."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=Formatter)
    p.add_argument(
        "--data-dir",
        required=True,
        type=Path,
        help="one folder of photos per class: DIR/<class>/*.jpg|png (or DIR/train/<class>/)",
    )
    p.add_argument("--out", required=True, type=Path, help="folder for results.json, transfer.png and export/")
    p.add_argument("--model", choices=sorted(BUNDLED), default="cnn", help="which network to transfer")
    p.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=None,
        help="the CIFAR-trained model folder (config.json + model.safetensors), e.g. "
        "an export/ of train.py (default: weights/ for --model vit, weights/cnn/ for cnn)",
    )
    p.add_argument("--epochs", type=above(int), default=20, help="epochs of each of the three runs")
    p.add_argument(
        "--lr",
        type=above(float),
        default=3e-3,
        help="AdamW peak learning rate of the linear probe; the fine-tune's is a tenth of it",
    )
    p.add_argument(
        "--scratch-lr", type=above(float), default=1e-3, help="AdamW peak learning rate of the run from scratch"
    )
    p.add_argument("--batch-size", type=above(int), default=32, help="images per training step")
    p.add_argument("--val-fraction", type=fraction, default=0.2, help="held out per class for validation")
    p.add_argument(
        "--seed", type=above(int, 0, equal=True), default=0, help="seed of the split, the new layers and the batches"
    )
    p.add_argument(
        "--weight-decay", type=above(float, 0, equal=True), default=0.05, help="AdamW weight decay on matrices"
    )
    p.add_argument(
        "--translate",
        type=int,
        choices=range(0, 5),
        default=2,
        metavar="{0..4}",
        help="random translation in pixels (with random flips)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda if there is one)")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the transfer; an input it refuses is one `error: ...` line and exit status 2."""
    args = parse_args(argv)
    from common.atomic_files import WriteError
    from training.transfer import run_transfer
    from training.transfer_settings import Settings, TransferError

    try:
        device = device_or_error(args.device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    command = shlex.join(["python", "transfer.py", *(sys.argv[1:] if argv is None else argv)])
    settings = Settings(
        data_dir=args.data_dir,
        out=args.out,
        model=args.model,
        source=args.source or BUNDLED[args.model],
        epochs=args.epochs,
        lr=args.lr,
        scratch_lr=args.scratch_lr,
        batch_size=args.batch_size,
        val_fraction=args.val_fraction,
        seed=args.seed,
        weight_decay=args.weight_decay,
        translate=args.translate,
        device=device,
        overwrite=args.overwrite,
        command=command,
    )
    try:
        run_transfer(settings, log=lambda line: print(line, flush=True))
    except (TransferError, WriteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written for an unfinished transfer", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
