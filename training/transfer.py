"""Transfer a CIFAR-10 model to a user's own classes: three runs on one seeded split.

`transfer.py` (the command) calls `run_transfer`. The runs, all on the same stratified
80/20 split of the user's photos (each centre-cropped to a square and resized to the
source model's input size, as the app reads a photo):

  * scratch:  the source model's architecture, randomly initialised, normalised with the
              new training images' own mean/std (the CNN's whitening stem set from them);
  * probe:    the CIFAR-trained weights with a new classification layer (`head`); only
              that layer trains, the whole network stays in eval mode, so the CNN's
              batch-norm running statistics never move and every frozen feature is the one
              inference computes;
  * finetune: from the probe's last weights, every weight trains at the learning rate
              cut tenfold; the CNN's batch-norm layers stay in eval mode (statistics of
              batches of 32 user photos would overwrite 45,000 CIFAR images' worth).

The ViT has LayerNorm, which keeps no running statistics: there is nothing to freeze
beyond the weights, so its probe simply runs the frozen network in eval mode (dropout
and drop path off: a fixed feature extractor whose features are those the exported
model computes; noise on frozen features would only blur what the head learns), and its
fine-tune runs in train mode with the source's own dropout and drop path (the bundled
ViT: dropout 0, drop path 0.1), the regularisation it was trained with; LayerNorm gains
and shifts train like every other weight. The CNN keeps what its design fixes in every
run (the whitening stem's weights and the batch-norm scales, never trained on CIFAR
either); everything else trains in the fine-tune.

Every run: AdamW (weight decay on matrices only), one warm-up epoch then cosine decay,
peak learning rate 1e-3 from scratch, 3e-3 for the probe, 3e-4 for the fine-tune,
batch 32, augmentation flip + random 2-pixel translation over a reflected border
(device_augment.DeviceTranslate, the CNN recipe's). The best epoch of each run on
validation is kept; the best of the three is exported (transfer_report.py).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnn_model import CNN
from common.model_folder import ModelError, check_config, load_folder
from data import IMAGE_SUFFIXES, channel_stats, split_indices, to_normalized
from space.photo import UserError, load_photo
from training.augment import DeviceTranslate
from training.evaluation import Evaluator
from vit_model import ViT

STAGES = ("scratch", "probe", "finetune")
STAGE_NAMES = {"scratch": "from scratch", "probe": "linear probe", "finetune": "fine-tune"}
KINDS: dict[str, type[ViT] | type[CNN]] = {"vit": ViT, "cnn": CNN}
KIND_NAMES = {"vit": "ViT", "cnn": "CNN"}
HEAD = ("head.weight", "head.bias")
# With an 80/20 split, five images give a class one to validate on and four to train on.
MIN_PER_CLASS = 5
FINETUNE_LR_DIVISOR = 10
EVAL_BATCH = 256
Log = Callable[[str], None]


class TransferError(ValueError):
    """An input the command refuses, with the reason for the user."""


@dataclass
class Settings:
    """What one transfer does; the command line's options."""

    data_dir: Path
    out: Path
    model: str  # "vit" or "cnn"
    source: Path  # the CIFAR-trained model folder (--from)
    epochs: int = 20  # of each of the three runs
    lr: float = 3e-3  # the probe's; the fine-tune's is FINETUNE_LR_DIVISOR times smaller
    scratch_lr: float = 1e-3
    batch_size: int = 32
    val_fraction: float = 0.2
    seed: int = 0
    weight_decay: float = 0.05
    translate: int = 2  # pixels of random translation (0: flips only)
    device: str = "cpu"
    overwrite: bool = False
    command: str = ""


# ---------------------------------------------------------------- the user's photos


@dataclass
class FolderImages:
    images: torch.Tensor  # (N, 3, S, S) uint8
    labels: torch.Tensor  # (N,) int64
    class_names: list[str]
    root: Path  # the folder holding the class folders
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # unreadable, and why
    ignored: int = 0  # files that are not images by their name


def class_root(data_dir: Path) -> Path:
    """The folder of class folders: DIR itself, or DIR/train when there is one."""
    if not data_dir.exists():
        raise TransferError(f"data folder {data_dir} does not exist")
    if not data_dir.is_dir():
        raise TransferError(f"data folder {data_dir} is a file, not a folder of class folders")
    return data_dir / "train" if (data_dir / "train").is_dir() else data_dir


def read_class_folder(data_dir: Path, size: int, log: Log = print) -> FolderImages:
    """Every .jpg/.jpeg/.png under DIR/<class>/ as a size x size uint8 image, read as the
    app reads a photo (photo.load_photo: upright, centre square, bicubic resize). A file
    that cannot be read is skipped and counted; too few classes or images are refused."""
    root = class_root(Path(data_dir))
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) < 2:
        found = f" ({folders[0].name})" if folders else ""
        loose = any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.iterdir())
        raise TransferError(
            f"{root} has {len(folders)} class folder{'s' if len(folders) != 1 else ''}"
            f"{found}: a classifier needs at least two classes, one folder of "
            f"images each ({root}/<class>/*.jpg)"
            + (f"; it holds images itself, as one class folder does: pass its parent {root.parent}" if loose else "")
        )
    out = FolderImages(torch.empty(0), torch.empty(0), [p.name for p in folders], root)
    images, labels, counts = [], [], []
    for label, folder in enumerate(folders):
        files = sorted(p for p in folder.iterdir() if p.is_file())
        log(f"reading {folder.name}/: {len(files)} files")
        before = len(images)
        for path in files:
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                out.ignored += 1
                continue
            try:
                images.append(load_photo(path, size))
            except (UserError, OSError) as err:
                out.skipped.append((path, str(err)))
                continue
            labels.append(label)
        counts.append(len(images) - before)
    short = [f"{f.name}/ has {n}" for f, n in zip(folders, counts) if n < MIN_PER_CLASS]
    if short:
        raise TransferError(
            f"too few readable images: {', '.join(short)}; each class needs at "
            f"least {MIN_PER_CLASS} (some to validate on, the rest to train on)"
            + (
                f" ({len(out.skipped)} unreadable file{'s' if len(out.skipped) != 1 else ''} skipped)"
                if out.skipped
                else ""
            )
        )
    out.images, out.labels = torch.stack(images), torch.tensor(labels)
    return out


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) sorted indices: each class split on its own by a seeded permutation,
    val_fraction of it (rounded; at least one image, never all) held out."""
    if not 0 < val_fraction < 1:
        raise TransferError(f"the validation fraction must be between 0 and 1, not {val_fraction}")
    train, val = [], []
    for k in labels.unique().tolist():
        members = (labels == k).nonzero().flatten()
        n = len(members)
        if n < 2:
            raise TransferError(f"class {k} has {n} image: it cannot be split into training and validation")
        count = min(n - 1, max(1, round(val_fraction * n)))
        t, v = split_indices(n, count, seed * 1000 + k)
        train.append(members[t])
        val.append(members[v])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


# ---------------------------------------------------------------- the source model and the three starts


@dataclass
class Source:
    folder: Path
    kind: str
    config: dict
    model: ViT | CNN
    training: dict  # its training.json, {} without one


def load_source(folder: Path, kind: str) -> Source:
    """The CIFAR-trained model of --from, checked as the app checks a model folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TransferError(
            f"--from {folder} " + ("is a file, not a model folder" if folder.exists() else "does not exist")
        )
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        hint = f"; did you mean {folder / 'export'}?" if (folder / "export" / "config.json").is_file() else ""
        raise TransferError(f"--from {folder} is not a model folder: it has no config.json and model.safetensors{hint}")
    try:
        config = json.loads((folder / "config.json").read_text())
        check_config(config)
        found = "cnn" if "widths" in config else "vit"
        if found != kind:
            raise TransferError(
                f"--from {folder} holds a {KIND_NAMES[found]}, not a {KIND_NAMES[kind]}: "
                f"pass --model {found}, or a {KIND_NAMES[kind]} folder"
            )
        # The ViT through the app's own loader; the CNN strictly, its weights checked the same way.
        model = load_folder(folder) if kind == "vit" else CNN.from_pretrained(folder).eval()
        if not all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point()):
            raise ModelError("the weights hold NaN or infinite values")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TransferError(f"--from {folder}: config.json is not valid JSON ({err})") from None
    except (ModelError, OSError, RuntimeError, TypeError, ValueError) as err:
        if isinstance(err, TransferError):
            raise
        raise TransferError(f"--from {folder} cannot be loaded: {err}") from None
    training = {}
    if (folder / "training.json").is_file():
        try:
            training = json.loads((folder / "training.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            training = {}
    return Source(folder, kind, config, model, training if isinstance(training, dict) else {})


def build(source: Source, class_names: list[str], mean: list[float], std: list[float]) -> ViT | CNN:
    """The source's architecture for the new classes, randomly initialised."""
    config = {**source.config, "num_classes": len(class_names), "class_names": class_names, "mean": mean, "std": std}
    try:
        check_config(config)  # what the app will ask of the export (at most 1000 classes, ...)
    except ModelError as err:
        raise TransferError(f"these classes cannot make a servable model: {err}") from None
    return KINDS[source.kind](**config)


def scratch_start(source: Source, class_names: list[str], train_images: torch.Tensor, seed: int) -> ViT | CNN:
    """Randomly initialised, normalised with the new training images' statistics."""
    mean, std = channel_stats(train_images)
    std = [max(s, 1e-3) for s in std]  # a class of one flat colour must not divide by zero
    torch.manual_seed(seed)
    model = build(source, class_names, mean, std)
    if isinstance(model, CNN):  # as train.py does: the stem whitens the training patches
        model.whiten(to_normalized(train_images, mean, std))
    return model


def probe_start(source: Source, class_names: list[str], seed: int) -> ViT | CNN:
    """The source's weights (its mean/std included) with a new, randomly initialised head."""
    torch.manual_seed(seed)
    model = build(source, class_names, source.model.mean, source.model.std)
    kept = {k: v for k, v in source.model.state_dict().items() if k not in HEAD}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    if sorted(missing) != sorted(HEAD) or unexpected:
        raise TransferError(
            f"--from {source.folder}: its weights do not fit its config (missing {missing}, unexpected {unexpected})"
        )
    return model


def fixed_by_design(model: nn.Module) -> set[str]:
    """Parameters the architecture itself never trains (the CNN's whitening stem and its
    batch-norm scales), read off a freshly built model."""
    return {name for name, p in model.named_parameters() if not p.requires_grad}


def trainable(model: nn.Module, stage: str, fixed: set[str]) -> list[tuple[str, nn.Parameter]]:
    """Set requires_grad for the stage; the parameters it trains."""
    for name, p in model.named_parameters():
        p.requires_grad_(name in HEAD if stage == "probe" else name not in fixed)
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def set_mode(model: nn.Module, stage: str) -> None:
    """Each epoch, after evaluation (which leaves the model in train mode): the probe all in
    eval mode, the others in train mode, the fine-tune with batch norm kept in eval mode."""
    model.train(stage != "probe")
    if stage == "finetune":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


# ---------------------------------------------------------------- one run


@dataclass
class Split:
    """The user's images on the training device, cut in two."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    class_names: list[str]


@dataclass
class Run:
    stage: str
    lr: float
    epochs: int
    trainable: int  # parameters trained
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_state: dict | None = None  # the best epoch's weights (not written to results.json)
    minutes: float = 0.0

    @property
    def best(self) -> dict:
        return self.history[self.best_epoch - 1]

    def as_json(self) -> dict:
        return {
            "stage": self.stage,
            "description": STAGE_NAMES[self.stage],
            "lr": self.lr,
            "epochs": self.epochs,
            "trainable_parameters": self.trainable,
            "best_epoch": self.best_epoch,
            "best_val_acc": self.best["val_acc"],
            "best_val_loss": self.best["val_loss"],
            "minutes": round(self.minutes, 3),
            "history": self.history,
        }


def optimizer_for(
    named: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float, steps: int, warmup: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with decay on matrices only (decaying norms, biases and embeddings only pulls
    them to 0), one warm-up epoch, then cosine decay to 0 at the last step."""
    decay = [p for n, p in named if p.ndim >= 2 and n not in ("pos_embed", "cls_token")]
    rest = [p for n, p in named if not (p.ndim >= 2 and n not in ("pos_embed", "cls_token"))]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=lr
    )
    factor = lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled epoch; a last batch under half the size is left out (another each epoch)."""
    chunks = list(torch.randperm(n, generator=generator).split(batch_size))
    return chunks[:-1] if len(chunks) > 1 and len(chunks[-1]) < batch_size / 2 else chunks


def train_stage(
    model: ViT | CNN, stage: str, split: Split, settings: Settings, fixed: set[str], log: Log = print
) -> Run:
    """Train one run for settings.epochs epochs, validating after each; keeps the best."""
    lr = stage_lr(settings, stage)
    named = trainable(model, stage, fixed)
    run = Run(stage, lr, settings.epochs, sum(p.numel() for _, p in named))
    device = split.train_images.device
    seed = settings.seed * 10 + STAGES.index(stage)
    # The order of the batches is drawn on the CPU, the augmentation on the device.
    order, generator = torch.Generator().manual_seed(seed), torch.Generator(device).manual_seed(seed)
    steps_per_epoch = len(batches(len(split.train_labels), settings.batch_size, torch.Generator()))
    optimizer, scheduler = optimizer_for(
        named, lr, settings.weight_decay, steps_per_epoch * settings.epochs, steps_per_epoch
    )
    augment = DeviceTranslate(model.mean, model.std, pad=settings.translate)
    scorer = Evaluator(model.mean, model.std, EVAL_BATCH, device, bf16=False)
    start, best_key = time.time(), None
    for epoch in range(1, settings.epochs + 1):
        epoch_start = time.time()
        set_mode(model, stage)
        loss_sum, correct, seen = 0.0, 0, 0
        for idx in batches(len(split.train_labels), settings.batch_size, order):
            x, y = augment(split.train_images[idx], generator), split.train_labels[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        if not math.isfinite(loss_sum):
            flag = "--scratch-lr" if stage == "scratch" else "--lr"
            raise TransferError(
                f"the {STAGE_NAMES[stage]} run diverged in epoch {epoch} (loss not a number "
                f"at learning rate {lr:g}): lower {flag}"
            )
        val = scorer.evaluate(model, split.val_images, split.val_labels)
        # "lr": where the schedule stands after the epoch's last step.
        row = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "val_loss": val.loss,
            "val_acc": val.acc,
            "seconds": time.time() - epoch_start,
        }
        run.history.append(row)
        if best_key is None or (val.acc, -val.loss) > best_key:  # ties on accuracy: the lower loss
            best_key, run.best_epoch = (val.acc, -val.loss), epoch
            run.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        log(epoch_line(stage, row, settings.epochs, time.time() - start))
    run.minutes = (time.time() - start) / 60
    return run


def stage_lr(settings: Settings, stage: str) -> float:
    """The run's peak learning rate: the fine-tune's is the probe's cut tenfold."""
    return {"scratch": settings.scratch_lr, "probe": settings.lr, "finetune": settings.lr / FINETUNE_LR_DIVISOR}[stage]


def epoch_line(stage: str, row: dict, epochs: int, elapsed: float) -> str:
    """An epoch's progress line, with what this run has left at the pace so far."""
    left = elapsed / row["epoch"] * (epochs - row["epoch"])
    return (
        f"{STAGE_NAMES[stage]:>12}  epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.3f} "
        f"acc {100 * row['train_acc']:5.1f}%  val loss {row['val_loss']:.3f} acc "
        f"{100 * row['val_acc']:5.1f}%  ({row['seconds']:.0f}s; about {left:.0f}s left in this run)"
    )


# ---------------------------------------------------------------- the three runs


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse to write over an earlier transfer's results unless asked to."""
    if out.exists() and not out.is_dir():
        raise TransferError(f"--out {out} is a file, not a folder")
    held = [name for name in ("results.json", "export") if (out / name).exists()]
    if held and not overwrite:
        raise TransferError(
            f"--out {out} already holds a run ({' and '.join(held)}): add --overwrite "
            "to replace it, or choose another --out"
        )


def read_split(settings: Settings, size: int, log: Log) -> tuple[Split, str]:
    """The user's photos on the device, split; and the data in words."""
    folder = read_class_folder(settings.data_dir, size, log)
    if folder.skipped:
        shown = "; ".join(f"{p.name}: {why}" for p, why in folder.skipped[:5])
        log(
            f"skipped {len(folder.skipped)} unreadable file{'s' if len(folder.skipped) != 1 else ''} "
            f"({shown}{'; ...' if len(folder.skipped) > 5 else ''})"
        )
    if folder.ignored:
        log(f"ignored {folder.ignored} file{'s' if folder.ignored != 1 else ''} not named .jpg, .jpeg or .png")
    train, val = stratified_split(folder.labels, settings.val_fraction, settings.seed)
    device = torch.device(settings.device)
    split = Split(
        folder.images[train].to(device),
        folder.labels[train].to(device),
        folder.images[val].to(device),
        folder.labels[val].to(device),
        folder.class_names,
    )
    per_class = ", ".join(f"{name} {int((folder.labels == k).sum())}" for k, name in enumerate(folder.class_names))
    root = folder.root  # "train/" alone would not say which photos
    name = f"{root.parent.name}/{root.name}" if root.name == "train" else root.name
    words = (
        f"{name}/ ({len(folder.labels)} photos of {len(folder.class_names)} classes: "
        f"{per_class}; read at {size}x{size}): {len(train)} training / {len(val)} validation "
        f"images (stratified, split seed {settings.seed})"
        + (f"; {len(folder.skipped)} unreadable files skipped" if folder.skipped else "")
    )
    return split, words


def run_transfer(settings: Settings, log: Log = print) -> dict:
    """The three runs, then results.json, the table, transfer.png and export/ in
    settings.out (transfer_report.py); returns what results.json holds."""
    from training import transfer_report

    check_out(settings.out, settings.overwrite)
    source = load_source(settings.source, settings.model)
    split, words = read_split(settings, source.model.image_size, log)
    log(f"{words}; {settings.epochs} epochs per run on {settings.device}")
    names, device = split.class_names, split.train_images.device
    scratch = scratch_start(source, names, split.train_images.cpu(), settings.seed).to(device)
    fixed = fixed_by_design(scratch)
    runs = {}
    log(f"run 1/3: {STAGE_NAMES['scratch']}, every weight random, learning rate {settings.scratch_lr:g}")
    runs["scratch"] = train_stage(scratch, "scratch", split, settings, fixed, log)
    transferred = probe_start(source, names, settings.seed).to(device)
    log(
        f"run 2/3: {STAGE_NAMES['probe']}, {source.folder} frozen, a new {len(names)}-class head, "
        f"learning rate {settings.lr:g}"
    )
    runs["probe"] = train_stage(transferred, "probe", split, settings, fixed, log)
    log(
        f"run 3/3: {STAGE_NAMES['finetune']} from the probe's last weights, learning rate "
        f"{settings.lr / FINETUNE_LR_DIVISOR:g}"
    )
    runs["finetune"] = train_stage(transferred, "finetune", split, settings, fixed, log)
    return transfer_report.finish(
        settings, source, split, words, runs, {"scratch": scratch, "probe": transferred, "finetune": transferred}, log
    )
