"""train.py's command line: its flags, the recipes' values as the defaults of those the
recipe sets, and which flags apply to only one of the two models."""

from __future__ import annotations

import argparse
import os

from data import val_size
from training.recipes import MODELS, POLICIES, RECIPES, recipe_defaults, recipe_help

# Flags that shape only one of the two models; giving one to the other is refused.
MODEL_ONLY = {
    "vit": {
        "patch_size",
        "dim",
        "depth",
        "heads",
        "mlp_dim",
        "dropout",
        "attn_dropout",
        "drop_path",
        "patch_keep",
        "init_from",
    },
    "cnn": {"widths", "bias_lr_scale"},
}


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    """The options whose defaults come from --recipe (shown per recipe in --help)."""
    add_optimizer_options(p)
    add_regularization_options(p)


def add_optimizer_options(p: argparse.ArgumentParser) -> None:
    """The recipe's length, batch, optimizer and learning-rate schedule."""
    p.add_argument(
        "--epochs",
        type=int,
        help=recipe_help("epochs", "epochs; the step schedule's milestones (100, 150 of 160) scale in proportion"),
    )
    p.add_argument("--batch-size", type=int, help=recipe_help("batch_size", "global batch size"))
    p.add_argument(
        "--optimizer", choices=["adamw", "sgd"], help=recipe_help("optimizer", "AdamW, or SGD with Nesterov momentum")
    )
    p.add_argument("--lr", type=float, help=recipe_help("lr", "peak learning rate"))
    p.add_argument("--momentum", type=float, help=recipe_help("momentum", "SGD's momentum, or AdamW's first beta"))
    p.add_argument(
        "--bias-lr-scale",
        type=float,
        help=recipe_help(
            "bias_lr_scale",
            "the CNN's BatchNorm shifts train at this multiple of --lr (their decay per step unchanged)",
            ("cnn",),
        ),
    )
    p.add_argument("--weight-decay", type=float, help=recipe_help("weight_decay", "weight decay"))
    p.add_argument(
        "--decay-all",
        action=argparse.BooleanOptionalAction,
        help=recipe_help(
            "decay_all",
            "weight decay on every parameter; --no-decay-all spares norms, biases and the position/class embeddings",
        ),
    )
    p.add_argument(
        "--schedule",
        choices=["step", "cosine", "linear"],
        help=recipe_help(
            "schedule", "step: x0.1 at the scaled milestones; cosine or linear: decay to 0 at the end of the run"
        ),
    )
    p.add_argument("--warmup-epochs", type=float, help=recipe_help("warmup_epochs", "linear warmup"))
    p.add_argument("--label-smoothing", type=float, help=recipe_help("label_smoothing", "label smoothing"))


def add_regularization_options(p: argparse.ArgumentParser) -> None:
    """The recipe's augmentation, mixing, dropout, weight average and patch dropout."""
    p.add_argument(
        "--augment",
        choices=["crop", "translate"],
        help=recipe_help(
            "augment",
            "crop: flip + RandomResizedCrop (scale 0.8-1, ratio 0.9-1.1); translate: "
            "flip + a shift of up to --translate pixels over a reflected border",
        ),
    )
    p.add_argument(
        "--translate", type=int, help=recipe_help("translate", "the largest shift of --augment translate, in pixels")
    )
    p.add_argument(
        "--policy",
        choices=POLICIES,
        help=recipe_help(
            "policy",
            "per-image augmentation policy before flip and crop (AutoAugment's CIFAR-10 "
            "policy, RandAugment, TrivialAugmentWide)",
        ),
    )
    p.add_argument(
        "--policy-on",
        choices=["auto", "workers", "device"],
        default="auto",
        help="where --policy is drawn: in --workers DataLoader processes, one image at a "
        "time, or for the whole batch on the training device (the same operations and "
        "probabilities); auto: the device on a GPU, the workers on a CPU",
    )
    p.add_argument("--mixup-alpha", type=float, help=recipe_help("mixup_alpha", "MixUp Beta(a, a); 0: off"))
    p.add_argument(
        "--cutmix-alpha",
        type=float,
        help=recipe_help("cutmix_alpha", "CutMix Beta(a, a); 0: off (with both on, each batch picks one)"),
    )
    p.add_argument(
        "--dropout",
        type=float,
        help=recipe_help("dropout", "dropout in the embeddings, after attention and in the MLP"),
    )
    p.add_argument(
        "--attn-dropout",
        type=float,
        help=recipe_help("attn_dropout", "dropout on the attention weights (nn.MultiheadAttention's own)"),
    )
    p.add_argument("--drop-path", type=float, help=recipe_help("drop_path", "stochastic depth of the last block"))
    p.add_argument(
        "--ema",
        type=float,
        help=recipe_help(
            "ema",
            "decay per step of an exponential moving average of the weights, which is then "
            "what is validated and exported; 0: off",
        ),
    )
    p.add_argument(
        "--patch-keep",
        type=float,
        help=recipe_help(
            "patch_keep",
            "fraction of the patch tokens each training image keeps, a random "
            "subset per image (PatchDropout); evaluation sees them all",
        ),
    )


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
    """train.py's flags; a recipe option's default is None until parse_args sets the recipe's."""
    p = argparse.ArgumentParser(
        description="Train the ViT or the CNN on CIFAR-10 (train.py).", formatter_class=HelpFormatter
    )
    p.add_argument(
        "--data-dir",
        default="data",
        help="class-folder copy (<dir>/train/<class>/*.jpg) or a folder holding the official CIFAR-10 (see --download)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="download the official CIFAR-10 (170 MB) into --data-dir if it is "
        "empty or missing; without it nothing is downloaded",
    )
    p.add_argument("--out", default="runs/vit", help="run folder for checkpoints, metrics, plots, export")
    p.add_argument(
        "--model", choices=MODELS, default=None, help="vit (vit_model.py) or cnn (cnn_model.py); default: the recipe's"
    )
    p.add_argument(
        "--recipe",
        choices=list(RECIPES),
        default=None,
        help="defaults for the options marked [recipe] (default: assignment for "
        "the ViT, cnn for the CNN); the budget recipe's 'auto' warmup is 5%% "
        "of the epochs (at least 1) and its 'auto' policy trivialaugment from "
        "40 epochs on, none below",
    )
    add_recipe_options(p)
    add_data_and_model_options(p)
    add_run_options(p)
    return p


def add_data_and_model_options(p: argparse.ArgumentParser) -> None:
    """The split and its loaders, and each model's architecture."""
    p.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="DataLoader processes for a per-image --policy (unused without one), "
        "shared among torchrun's processes on this machine",
    )
    p.add_argument(
        "--val-size",
        type=val_size,
        default=0.1,
        help="held out for validation: a fraction (0.1: 5,000 of CIFAR-10's 50,000) or a count",
    )
    p.add_argument(
        "--train-subset", type=int, default=0, help="train on only this many images (0: all); for quick trials"
    )
    p.add_argument("--patch-size", type=int, default=4, help="ViT patch size (must divide the image size)")
    p.add_argument("--dim", type=int, default=256, help="ViT embedding width")
    p.add_argument("--depth", type=int, default=6, help="number of transformer blocks")
    p.add_argument("--heads", type=int, default=8, help="attention heads (must divide --dim)")
    p.add_argument("--mlp-dim", type=int, default=512, help="hidden width of each block's MLP")
    p.add_argument(
        "--widths", type=width_list, default="128,384,384", help="the CNN's width per stage (after its whitening stem)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the init, shuffling and augmentation")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Where the run computes, what it starts or learns from, and what becomes of its folder."""
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or a torch device name")
    p.add_argument(
        "--amp",
        choices=["auto", "on", "off"],
        default="auto",
        help="bf16 autocast; auto: on where bf16 is native (CUDA compute capability "
        ">= 8; CPUs with AVX512-BF16 or AMX where a ViT block's MLP measures "
        "faster in bf16), off elsewhere",
    )
    p.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=None,
        metavar="BACKEND",
        help="torch.compile the model (backend inductor unless named)",
    )
    p.add_argument(
        "--init-from",
        metavar="MODEL_DIR",
        default=None,
        help="start from an exported model's weights (weights/, a run's export/) "
        "with a new optimizer and schedule: fine-tuning on the same split",
    )
    p.add_argument(
        "--teacher",
        metavar="CNN_DIR",
        default=None,
        help="distill from an exported CNN (`--model cnn` on this split: its "
        "export/, or weights/cnn): half the loss against its predicted "
        "classes (hard distillation, as DeiT)",
    )
    p.add_argument(
        "--distill",
        choices=["hard", "soft"],
        default="hard",
        help="with --teacher: hard, its predicted class; soft, the KL divergence to its probabilities at --temperature",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="soft distillation's temperature (both models' logits divided by it)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last.pt with the settings it was "
        "started with (--epochs may grow; the schedule is re-planned)",
    )
    p.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a run, replacing it")
    p.add_argument(
        "--push-to-hub",
        metavar="USER/REPO",
        default=None,
        help="upload the export to this Hub model repo (uses your huggingface_hub login)",
    )
    p.add_argument("--eval-batch-size", type=int, default=256, help="batch size for evaluation")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, the recipe's values the defaults of the flags not given (a first
    pass reads --model, --recipe and --epochs, which those defaults depend on)."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    recipe = first.recipe or ("cnn" if first.model == "cnn" else "assignment")
    model = RECIPES[recipe]["model"]
    if first.model and first.model != model:
        parser.error(
            f"--recipe {recipe} trains the {model.upper()}; the "
            f"{first.model.upper()}'s recipes: "
            + ", ".join(name for name, r in RECIPES.items() if r["model"] == first.model)
        )
    parser.set_defaults(recipe=recipe, **recipe_defaults(recipe, first.epochs))
    args = parser.parse_args(argv)
    other = explicit_flags(argv) & MODEL_ONLY["cnn" if model == "vit" else "vit"]
    if other:
        parser.error(
            f"{', '.join('--' + k.replace('_', '-') for k in sorted(other))} "
            f"{'does' if len(other) == 1 else 'do'} not apply to the {model.upper()}"
        )
    return args


def explicit_flags(argv: list[str] | None) -> set[str]:
    """Destinations of the flags actually written on the command line."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))
