"""Train the ViT on CIFAR-10: the command line and its recipes, the loop, evaluation,
checkpoints and resume. What each recipe sets is recipes.py's; plots are figures.py's; the
model card, the export and the Hub upload are report.py's.

    python train.py --epochs 160 --data-dir DATA --out runs/vit       # the assignment recipe
    python train.py --recipe budget --epochs 30 --data-dir DATA ...     # most accuracy per FLOP
    python train.py --out runs/vit --resume                             # continue after a stop
    torchrun --nproc_per_node=2 train.py --data-dir DATA --out runs/ddp # several processes

The whole decoded training split lives on the training device as uint8 and is augmented
there a batch at a time (data.DeviceAugment), so without a per-image policy no DataLoader
sits in the hot loop; a policy (TrivialAugment, AutoAugment) runs in --workers processes.
Every epoch reseeds its randomness from (seed, epoch, process), so a resumed run draws
what an uninterrupted one would, on any device. Everything a run writes goes to --out:
last.pt (resumable state, every epoch), best.pt (best on validation), metrics.jsonl, PNG
plots and export/ (model.safetensors, config.json, training.json, README.md model card).
"""

from __future__ import annotations

import argparse
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import figures
import report
from recipes import MODELS, POLICIES, RECIPES, recipe_defaults, recipe_help
from checkpoints import Parent, RunState, load_checkpoint
from cnn_model import CNN
from data import TrainingData, build_mixing, build_policy, to_normalized, training_data_or_exit, val_size
from device_augment import DeviceAugment, DeviceTranslate
from distillation import TeacherError, load_teacher
from loop import (EpochBatches, Processes, build_ema, build_optimizer,
                  Evaluator, build_scheduler, scaled_milestones, seed_for, start_processes,
                  train_one_epoch)
from vit_model import ViT, count_parameters

# How a resumed run may differ from its start: these come from the new command line (its
# defaults included), --data-dir and --epochs only when given; everything else is the run's.
RESUME_RUNTIME = {"device", "amp", "compile", "workers", "eval_batch_size", "no_progress",
                  "push_to_hub", "resume", "overwrite", "out"}
RESUME_MAY_CHANGE = RESUME_RUNTIME | {"data_dir", "epochs"}
FOLDER_SETTINGS = ("data_dir", "out", "init_from", "teacher")
# Flags that shape only one of the two models; giving one to the other is refused.
MODEL_ONLY = {"vit": {"patch_size", "dim", "depth", "heads", "mlp_dim", "dropout", "attn_dropout",
                      "drop_path", "patch_keep", "init_from"},
              "cnn": {"widths", "bias_lr_scale"}}


# ---------------------------------------------------------------- arguments

def add_recipe_options(p: argparse.ArgumentParser) -> None:
    """The options whose defaults come from --recipe (shown per recipe in --help)."""
    p.add_argument("--epochs", type=int, help=recipe_help("epochs", "epochs; the step schedule's "
                   "milestones (100, 150 of 160) scale in proportion"))
    p.add_argument("--batch-size", type=int, help=recipe_help("batch_size", "global batch size"))
    p.add_argument("--optimizer", choices=["adamw", "sgd"], help=recipe_help(
        "optimizer", "AdamW, or SGD with Nesterov momentum"))
    p.add_argument("--lr", type=float, help=recipe_help("lr", "peak learning rate"))
    p.add_argument("--momentum", type=float, help=recipe_help(
        "momentum", "SGD's momentum, or AdamW's first beta"))
    p.add_argument("--bias-lr-scale", type=float, help=recipe_help(
        "bias_lr_scale", "the CNN's BatchNorm shifts train at this multiple of --lr (their "
        "decay per step unchanged)", ("cnn",)))
    p.add_argument("--weight-decay", type=float, help=recipe_help("weight_decay", "weight decay"))
    p.add_argument("--decay-all", action=argparse.BooleanOptionalAction, help=recipe_help(
        "decay_all", "weight decay on every parameter; --no-decay-all spares norms, biases "
        "and the position/class embeddings"))
    p.add_argument("--schedule", choices=["step", "cosine", "linear"], help=recipe_help(
        "schedule", "step: x0.1 at the scaled milestones; cosine or linear: decay to 0 at the "
        "end of the run"))
    p.add_argument("--warmup-epochs", type=float, help=recipe_help("warmup_epochs", "linear warmup"))
    p.add_argument("--label-smoothing", type=float, help=recipe_help("label_smoothing", "label smoothing"))
    p.add_argument("--augment", choices=["crop", "translate"], help=recipe_help(
        "augment", "crop: flip + RandomResizedCrop (scale 0.8-1, ratio 0.9-1.1); translate: "
        "flip + a shift of up to 2 pixels over a reflected border"))
    p.add_argument("--policy", choices=POLICIES, help=recipe_help(
        "policy", "per-image augmentation policy before flip and crop (AutoAugment's CIFAR-10 "
        "policy, RandAugment, TrivialAugmentWide)"))
    p.add_argument("--mixup-alpha", type=float, help=recipe_help("mixup_alpha", "MixUp Beta(a, a); 0: off"))
    p.add_argument("--cutmix-alpha", type=float, help=recipe_help(
        "cutmix_alpha", "CutMix Beta(a, a); 0: off (with both on, each batch picks one)"))
    p.add_argument("--dropout", type=float, help=recipe_help(
        "dropout", "dropout in the embeddings, after attention and in the MLP"))
    p.add_argument("--attn-dropout", type=float, help=recipe_help(
        "attn_dropout", "dropout on the attention weights (nn.MultiheadAttention's own)"))
    p.add_argument("--drop-path", type=float, help=recipe_help("drop_path", "stochastic depth of the last block"))
    p.add_argument("--ema", type=float, help=recipe_help(
        "ema", "decay per step of an exponential moving average of the weights, which is then "
        "what is validated and exported; 0: off"))
    p.add_argument("--patch-keep", type=float, help=recipe_help(
        "patch_keep", "fraction of the patch tokens each training image keeps, a random "
        "subset per image (PatchDropout); evaluation sees them all"))


def width_list(text: str) -> list[int]:
    """--widths: one or more positive whole numbers, comma-separated."""
    try:
        values = [int(w) for w in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"must be positive whole numbers, comma-separated, got {text}")
    return values


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one: recipe options list theirs per recipe."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--data-dir", default="data",
                   help="class-folder copy (<dir>/train/<class>/*.jpg) or a folder that "
                        "holds or receives the official CIFAR-10 download")
    p.add_argument("--out", default="runs/vit", help="run folder for checkpoints, metrics, plots, export")
    p.add_argument("--model", choices=MODELS, default=None,
                   help="vit (vit_model.py) or cnn (cnn_model.py); default: the recipe's")
    p.add_argument("--recipe", choices=list(RECIPES), default=None,
                   help="defaults for the options marked [recipe] (default: assignment for "
                        "the ViT, cnn for the CNN); the budget recipe's 'auto' warmup is 5%% "
                        "of the epochs (at least 1) and its 'auto' policy trivialaugment from "
                        "40 epochs on, none below")
    add_recipe_options(p)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="DataLoader processes for a per-image --policy (unused without one)")
    p.add_argument("--val-size", type=val_size, default=0.1,
                   help="held out for validation: a fraction (0.1: 5,000 of CIFAR-10's 50,000) or a count")
    p.add_argument("--train-subset", type=int, default=0,
                   help="train on only this many images (0: all); for quick trials")
    p.add_argument("--patch-size", type=int, default=4, help="ViT patch size (must divide the image size)")
    p.add_argument("--dim", type=int, default=256, help="ViT embedding width")
    p.add_argument("--depth", type=int, default=6, help="number of transformer blocks")
    p.add_argument("--heads", type=int, default=8, help="attention heads (must divide --dim)")
    p.add_argument("--mlp-dim", type=int, default=512, help="hidden width of each block's MLP")
    p.add_argument("--widths", type=width_list, default="128,384,384",
                   help="the CNN's width per stage (after its whitening stem)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the init, shuffling and augmentation")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or a torch device name")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="bf16 autocast; auto: on where bf16 is native (CUDA compute capability "
                        ">= 8; CPUs with AVX512-BF16 or AMX where a ViT block's MLP measures "
                        "faster in bf16), off elsewhere")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the model (backend inductor unless named)")
    p.add_argument("--init-from", metavar="MODEL_DIR", default=None,
                   help="start from an exported model's weights (weights/, a run's export/) "
                        "with a new optimizer and schedule: fine-tuning on the same split")
    p.add_argument("--teacher", metavar="CNN_DIR", default=None,
                   help="distill from an exported CNN (`--model cnn` on this split: its "
                        "export/, or weights/cnn): half the loss against its predicted "
                        "classes (hard distillation, as DeiT)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last.pt with the settings it was "
                        "started with (--epochs may grow; the schedule is re-planned)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that holds a run, replacing it")
    p.add_argument("--push-to-hub", metavar="USER/REPO", default=None,
                   help="upload the export to this Hub model repo (uses your huggingface_hub login)")
    p.add_argument("--eval-batch-size", type=int, default=256, help="batch size for evaluation")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, the recipe's values the defaults of the flags not given (a first
    pass reads --model, --recipe and --epochs, which those defaults depend on)."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    recipe = first.recipe or ("cnn" if first.model == "cnn" else "assignment")
    model = RECIPES[recipe]["model"]
    if first.model and first.model != model:
        parser.error(f"--recipe {recipe} trains the {model.upper()}; the "
                     f"{first.model.upper()}'s recipes: " + ", ".join(
                         name for name, r in RECIPES.items() if r["model"] == first.model))
    parser.set_defaults(recipe=recipe, **recipe_defaults(recipe, first.epochs))
    args = parser.parse_args(argv)
    other = explicit_flags(argv) & MODEL_ONLY["cnn" if model == "vit" else "vit"]
    if other:
        parser.error(f"{', '.join('--' + k.replace('_', '-') for k in sorted(other))} "
                     f"{'does' if len(other) == 1 else 'do'} not apply to the {model.upper()}")
    return args


def explicit_flags(argv: list[str] | None) -> set[str]:
    """Destinations of the flags actually written on the command line."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def resumed_args(args: argparse.Namespace, argv: list[str] | None, saved: dict,
                 done: int) -> argparse.Namespace:
    """The run's own settings, with what may change on a resume taken from the command
    line; anything else given differently is refused rather than silently ignored."""
    given = explicit_flags(argv)
    defaults = vars(parse_args(["--recipe", saved.get("recipe", "assignment")]))
    merged = {**defaults, **saved}
    conflicts = [f"--{k.replace('_', '-')} {getattr(args, k)} (the run has {merged.get(k)})"
                 for k in sorted(given - RESUME_MAY_CHANGE) if getattr(args, k) != merged.get(k)]
    if conflicts:
        raise SystemExit("error: --resume continues a run with the settings it was started "
                         f"with; cannot change {', '.join(conflicts)}. Use a new --out to train "
                         "with other settings.")
    merged.update({k: getattr(args, k) for k in RESUME_RUNTIME | (given & {"data_dir"})})
    if "epochs" in given and args.epochs != merged["epochs"]:
        if args.epochs < done:
            raise SystemExit(f"error: --epochs {args.epochs}, but the run in {args.out} has "
                             f"already trained {done} epochs")
        merged["epochs"] = args.epochs
    return argparse.Namespace(**merged)


def check_args(args: argparse.Namespace) -> None:
    """Fail at once, with one clear message, on arguments that cannot work."""
    problems = []
    for name in ("epochs", "batch_size", "lr", "eval_batch_size", "patch_size", "dim", "depth",
                 "heads", "mlp_dim"):
        if getattr(args, name) <= 0:
            problems.append(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if min(args.dim, args.heads) > 0 and args.dim % args.heads:
        problems.append(f"--heads {args.heads} must divide --dim {args.dim}")
    for name in ("dropout", "attn_dropout", "drop_path", "label_smoothing", "ema"):
        if not 0 <= getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(args, name)}")
    if not 0 < args.patch_keep <= 1:
        problems.append(f"--patch-keep must be in (0, 1], got {args.patch_keep}")
    if min(args.mixup_alpha, args.cutmix_alpha, args.warmup_epochs, args.weight_decay,
           args.train_subset, args.workers) < 0:
        problems.append("--mixup-alpha, --cutmix-alpha, --warmup-epochs, --weight-decay, "
                        "--train-subset and --workers must not be negative")
    if not Path(args.data_dir).is_dir():
        problems.append(f"data folder {args.data_dir} does not exist (make it, and "
                        "CIFAR-10 is downloaded into it)")
    if problems:
        raise SystemExit("error: " + "; ".join(problems))


def check_data_fits(args: argparse.Namespace, data: TrainingData, world: int,
                    parent: Parent | None) -> None:
    """Checks that need the data: the patch grid, the batch size, the --init-from model."""
    size = data.image_size
    if args.model == "vit" and size % args.patch_size:
        divisors = ", ".join(str(p) for p in range(1, size + 1) if size % p == 0)
        raise SystemExit(f"error: --patch-size {args.patch_size} does not divide the "
                         f"{size}x{size} images (use one of {divisors})")
    if args.batch_size % world:
        raise SystemExit(f"error: --batch-size {args.batch_size} is not divisible by {world} processes")
    if len(data.train_idx) < args.batch_size:
        raise SystemExit(f"error: --batch-size {args.batch_size} is larger than the "
                         f"{len(data.train_idx)} training images")
    if parent:
        parent.check_fits({**vars(args), "image_size": size, "num_classes": len(data.class_names),
                           "mean": data.mean}, len(data.val_idx))


# ---------------------------------------------------------------- model, optimizer, schedule

def build_model(args: argparse.Namespace, class_names: list[str], mean: list[float], std: list[float],
                image_size: int = 32) -> ViT | CNN:
    if args.model == "cnn":
        return CNN(image_size=image_size, num_classes=len(class_names), widths=args.widths,
                   class_names=class_names, mean=mean, std=std)
    return ViT(image_size=image_size, patch_size=args.patch_size, num_classes=len(class_names),
               dim=args.dim, depth=args.depth, heads=args.heads, mlp_dim=args.mlp_dim,
               dropout=args.dropout, attn_dropout=args.attn_dropout, drop_path=args.drop_path,
               class_names=class_names, mean=mean, std=std)


def build_augment(args: argparse.Namespace, mean: list[float], std: list[float],
                  image_size: int) -> DeviceAugment | DeviceTranslate:
    if args.augment == "translate":
        return DeviceTranslate(mean, std, pad=2)
    return DeviceAugment(mean, std, size=image_size)


# ---------------------------------------------------------------- the run

@dataclass
class Trainer:
    """What trains, built once per process: the model (wrapped for DDP and compile as
    asked), its optimizer, schedule and weight average, and the data pipeline."""
    model: ViT | CNN
    train_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: torch.nn.Module | None
    batches: EpochBatches
    augment: DeviceAugment | DeviceTranslate
    mixing: object
    teacher: torch.nn.Module | None
    teacher_record: dict | None   # the teacher's recipe, widths, split and figures

    @classmethod
    def build(cls, args: argparse.Namespace, data: TrainingData, state: RunState, saved: dict | None,
              parent: Parent | None, procs: Processes) -> Trainer:
        torch.manual_seed(args.seed)
        model = build_model(args, data.class_names, state.mean, state.std, data.image_size)
        if isinstance(model, CNN) and not saved:
            # Every k-th training image (the split is sorted by class): enough for the patches' covariance.
            sample = data.train_idx[::max(1, len(data.train_idx) // 5000)]
            model.whiten(to_normalized(data.images[sample], state.mean, state.std))
        model = model.to(procs.device)
        batches = EpochBatches(data.images[data.train_idx], data.labels[data.train_idx],
                               batch_size=args.batch_size, seed=args.seed, procs=procs,
                               policy=build_policy(args.policy), workers=args.workers)
        optimizer = build_optimizer(model, args, procs.device)
        ema = build_ema(model, args.ema)
        if saved:
            state.restore(saved, model, optimizer, ema)
        elif parent:
            model.load_state_dict(parent.weights)
            if ema is not None:
                ema.module.load_state_dict(parent.weights)
        scheduler = build_scheduler(optimizer, args, batches.steps, state.epoch * batches.steps)
        teacher, record = None, None
        if args.teacher:
            try:
                teacher, record = load_teacher(args.teacher, len(data.val_idx), args.seed, data.mean)
            except TeacherError as err:
                raise SystemExit(f"error: --teacher {err}") from None
            teacher = teacher.to(procs.device)
        train_model = procs.wrap(model)
        if args.compile:
            train_model = torch.compile(train_model, backend=args.compile)
        return cls(model, train_model, optimizer, scheduler, ema, batches,
                   build_augment(args, state.mean, state.std, data.image_size),
                   build_mixing(args, len(data.class_names)), teacher, record)

    @property
    def scored(self) -> ViT:
        """The weights that are validated, kept as best.pt and exported."""
        return self.ema.module if self.ema is not None else self.model

    def train_epoch(self, args: argparse.Namespace, epoch: int, procs: Processes, bf16: bool) -> dict:
        """One epoch, its randomness drawn afresh from (seed, epoch, rank)."""
        torch.manual_seed(seed_for(args.seed, "torch", epoch, procs.rank))
        random.seed(seed_for(args.seed, "python", epoch, procs.rank))
        with procs.attention_context():   # training only: evaluation keeps torch's choice
            return train_one_epoch(
                self.train_model, self.optimizer, self.scheduler, self.batches.epoch(epoch),
                steps=self.batches.steps, augment=self.augment,
                generator=procs.generator(seed_for(args.seed, "augment", epoch, procs.rank)),
                mixing=self.mixing, label_smoothing=args.label_smoothing, bf16=bf16,
                procs=procs, patch_keep=args.patch_keep, ema=self.ema, teacher=self.teacher,
                description=f"epoch {epoch + 1}/{args.epochs}",
                show_progress=procs.main and not args.no_progress)


def finish(model: ViT, *, run_dir: Path, args: argparse.Namespace, state: RunState,
           data: TrainingData, procs: Processes, bf16: bool, teacher: dict | None) -> dict:
    """Evaluate the best checkpoint again (plain and with flip TTA), draw the plots,
    write the export and results.json; returns the results."""
    print("evaluating the best checkpoint on the validation images ...", flush=True)
    best = load_checkpoint(run_dir / "best.pt")
    model.load_state_dict(best["model"])
    val_images, val_labels = data.images[data.val_idx], data.labels[data.val_idx]
    scorer = Evaluator(data.mean, data.std, args.eval_batch_size, procs.device, bf16)
    val = scorer.evaluate(model, val_images, val_labels)
    flipped = scorer.evaluate(model, val_images, val_labels, flip=True)
    test = data.test and scorer.evaluate(model, data.test.images, data.test.labels)
    summary = report.RunSummary(
        recipe=args.recipe, recipe_description=report.describe_recipe(args, scaled_milestones(args.epochs)),
        data=data.description, machine=report.machines_of(report.lineage(vars(state))),
        command=run_command(state.settings),
        epochs=args.epochs, best_epoch=best["epoch"], val_acc=val.acc, val_acc_flip_tta=flipped.acc,
        val_images=len(val_labels), split_seed=args.seed, class_names=data.class_names,
        confusion=report.confusion_matrix(val_labels, val.preds, len(data.class_names)).tolist(),
        history=state.history, settings=shareable_settings(state.settings),
        test_acc=test.acc if test else None, test_images=len(data.test) if data.test else 0,
        parent=state.parent, teacher=teacher)
    print("drawing the plots ...", flush=True)
    figures.write_run_plots(summary, run_dir, val_images, val_labels, val.preds)
    print("writing the export ...", flush=True)
    export_dir = report.export_model(model, run_dir, summary)
    result = {**summary.as_json(), "export": str(export_dir)}
    report.write_json_atomic(result, run_dir / "results.json")
    return result


def prepare_run(args: argparse.Namespace,
                argv: list[str] | None) -> tuple[argparse.Namespace, dict | None, RunState | None]:
    """The settings, the saved checkpoint (or None) and the run state (or None)."""
    if not args.resume:
        check_args(args)
        if (Path(args.out) / "last.pt").exists() and not args.overwrite:
            raise SystemExit(f"error: {args.out} holds a run (its last.pt): add --resume to "
                             "continue it, --overwrite to replace it, or choose another --out")
        return args, None, None
    run_dir = Path(args.out)
    saved = load_checkpoint(run_dir / "last.pt", resume_hint=True)
    if (run_dir / "best.pt").exists():
        load_checkpoint(run_dir / "best.pt", resume_hint=True)
    state = RunState.from_checkpoint(saved)
    args = resumed_args(args, argv, state.settings, state.epoch)
    check_args(args)
    return args, saved, state


def run_state(args: argparse.Namespace, data: TrainingData, state: RunState | None,
              parent: Parent | None) -> RunState:
    """A new run's state, or the resumed one after checking that the data is the same."""
    if state is None:
        return RunState(settings=vars(args).copy(), mean=data.mean, std=data.std,
                        parent=parent.training if parent else None)
    if not torch.allclose(torch.tensor(state.mean), torch.tensor(data.mean), atol=1e-6):
        raise SystemExit(f"error: the images in {args.data_dir} are not the ones this run was "
                         "trained on (their mean differs from the checkpoint's)")
    state.settings = vars(args).copy()
    return state


def shareable_settings(settings: dict) -> dict:
    """The settings as a model card publishes them: each folder (data, run, parent model,
    teacher) by its own name, not by where it lay on the machine that trained it."""
    return {key: Path(value).name if key in FOLDER_SETTINGS and value else value
            for key, value in settings.items()}


def run_command(settings: dict) -> str:
    """The command that trains this run again: its recipe and every setting that differs
    from it, whatever resumes and machines it took (the card shows this, not the argv)."""
    settings = shareable_settings(settings)
    recipe = vars(parse_args(["--recipe", settings["recipe"], "--epochs", str(settings["epochs"])]))
    words = ["python train.py", f"--recipe {settings['recipe']}", f"--epochs {settings['epochs']}",
             f"--data-dir {settings['data_dir']}"]
    for key, value in settings.items():
        if key in RESUME_MAY_CHANGE | {"recipe"} or value == recipe.get(key):
            continue
        flag = ("--no-" if value is False else "--") + key.replace("_", "-")
        words.append(flag if isinstance(value, bool) else f"{flag} {format(value, 'g')}"
                     if isinstance(value, float) else f"{flag} {value}")
    return " ".join(words)


def main(argv: list[str] | None = None) -> dict | None:
    args, saved, state = prepare_run(parse_args(argv), argv)
    run_dir = Path(args.out)
    procs = start_processes(args.device)
    bf16 = procs.use_bf16(args.amp)
    data = procs.first_on_main(lambda: training_data_or_exit(
        args.data_dir, args.val_size, args.seed, args.train_subset))
    parent = Parent.load(args.init_from) if args.init_from and not saved else None
    check_data_fits(args, data, procs.world, parent)
    note = state and state.regrown_note(args)
    state = run_state(args, data, state, parent)
    trainer = Trainer.build(args, data, state, saved, parent, procs)
    val_images, val_labels = data.images[data.val_idx].to(procs.device), data.labels[data.val_idx]
    scorer = Evaluator(data.mean, data.std, args.eval_batch_size, procs.device, bf16)
    if procs.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        print(f"{data.description}; {count_parameters(trainer.model):,} parameters; "
              f"{procs.machine()}; {procs.bf16_words(args.amp)}; "
              + (f"resuming after epoch {state.epoch} of {args.epochs}" if saved
                 else f"{args.epochs} epochs of {trainer.batches.steps} steps"), flush=True)
        if note:
            print(note, flush=True)

    result, first_epoch = None, state.epoch
    while state.epoch < args.epochs:
        start, lr = time.time(), trainer.optimizer.param_groups[0]["lr"]
        row = trainer.train_epoch(args, state.epoch, procs, bf16)
        state.epoch += 1
        if procs.main:
            val = scorer.evaluate(trainer.scored, val_images, val_labels)
            row = {"epoch": state.epoch, "lr": lr, **row, "val_loss": val.loss,
                   "val_acc": val.acc, "seconds": time.time() - start, "machine": procs.machine()}
            if note:
                row["note"], note = note, None
            state.end_epoch(row, run_dir, trainer.model, trainer.optimizer, trainer.scored, trainer.ema)
            report.print_epoch(state.epoch, row, args.epochs, first=state.epoch == first_epoch + 1)
        procs.barrier()
    if procs.main:
        result = finish(trainer.scored, run_dir=run_dir, args=args, state=state, data=data,
                        procs=procs, bf16=bf16, teacher=trainer.teacher_record)
        print(f"best validation accuracy {100 * result['val_acc']:.2f}% at epoch "
              f"{result['best_epoch']} ({100 * result['val_acc_flip_tta']:.2f}% with flip "
              f"TTA); export in {result['export']}", flush=True)
    procs.close()
    if result and args.push_to_hub:
        try:
            print(f"uploaded to {report.push_to_hub(Path(result['export']), args.push_to_hub)}")
        except RuntimeError as err:
            raise SystemExit(f"error: {err}")
    return result


if __name__ == "__main__":
    main()
