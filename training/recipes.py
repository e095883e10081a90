"""What each `--recipe` of train.py sets, and how the budget recipe's values follow --epochs.

Every entry is also a flag of train.py's own, which wins over the recipe; the resolved
values are saved with the run (last.pt, training.json, model card).
"""

from __future__ import annotations

from training.optimization import ASSIGNMENT_EPOCHS

RECIPES = {
    # The course assignment, exactly: MultiStepLR, flip + mild crop, every dropout 0.2
    # (nn.MultiheadAttention's dropout on the attention weights included).
    "assignment": dict(
        model="vit",
        epochs=ASSIGNMENT_EPOCHS,
        batch_size=128,
        optimizer="adamw",
        momentum=0.9,
        bias_lr_scale=1.0,
        augment="crop",
        translate=0,
        lr=5e-4,
        weight_decay=0.05,
        schedule="step",
        warmup_epochs=0,
        label_smoothing=0.0,
        policy="none",
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        dropout=0.2,
        attn_dropout=0.2,
        drop_path=0.0,
        decay_all=True,
        ema=0.0,
        patch_keep=1.0,
    ),
    # The same architecture trained as ViT-Lite / DeiT-style recipes train small ViTs.
    "strong": dict(
        model="vit",
        epochs=200,
        batch_size=128,
        optimizer="adamw",
        momentum=0.9,
        bias_lr_scale=1.0,
        augment="crop",
        translate=0,
        lr=5e-4,
        weight_decay=0.05,
        schedule="cosine",
        warmup_epochs=10,
        label_smoothing=0.1,
        policy="autoaugment",
        mixup_alpha=0.8,
        cutmix_alpha=1.0,
        dropout=0.0,
        attn_dropout=0.1,
        drop_path=0.1,
        decay_all=False,
        ema=0.0,
        patch_keep=1.0,
    ),
    # Most accuracy per training FLOP at a fixed --epochs (README, "The budget recipe"):
    # warmup then linear decay to zero over exactly this run, no dropout, drop path, half
    # the patches per training image; "auto" values follow --epochs (budget_auto_value).
    "budget": dict(
        model="vit",
        epochs=30,
        batch_size=128,
        optimizer="adamw",
        momentum=0.9,
        bias_lr_scale=1.0,
        augment="crop",
        translate=0,
        lr=5e-4,
        weight_decay=0.05,
        schedule="linear",
        warmup_epochs="auto",
        label_smoothing=0.1,
        policy="auto",
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        dropout=0.0,
        attn_dropout=0.0,
        drop_path=0.1,
        decay_all=False,
        ema=0.0,
        patch_keep=0.5,
    ),
    # The CNN (cnn_model.py), trained as airbench trains its networks: Nesterov SGD at a high
    # rate on a scale-invariant body (BatchNorm scales frozen), BatchNorm shifts at 64x the
    # rate with the same decay per step, label smoothing 0.2, flip + 2-pixel translation,
    # warmup then linear decay. airbench's rates per 1024 examples of summed loss (10 for
    # its 95% widths, decay 0.0153) are here per mean loss at batch 1024: 10 / (1 + 1 /
    # (1 - 0.85)) = 1.30, decay 0.0153 / 10 per unit of rate.
    "cnn": dict(
        model="cnn",
        epochs=18,
        batch_size=1024,
        optimizer="sgd",
        momentum=0.85,
        bias_lr_scale=64.0,
        augment="translate",
        translate=2,
        lr=1.3,
        weight_decay=1.53e-3,
        schedule="linear",
        warmup_epochs=4,
        label_smoothing=0.2,
        policy="none",
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        dropout=0.0,
        attn_dropout=0.0,
        drop_path=0.0,
        decay_all=True,
        ema=0.0,
        patch_keep=1.0,
    ),
}
MODELS = ["vit", "cnn"]
POLICIES = ["none", "autoaugment", "randaugment", "trivialaugment"]


def recipe_help(key: str, what: str, models: tuple[str, ...] = ("vit", "cnn")) -> str:
    values = ", ".join(f"{name} {recipe[key]}" for name, recipe in RECIPES.items() if recipe["model"] in models)
    return f"{what} [recipe: {values}]"


def budget_auto_value(key: str, epochs: int) -> int | str:
    """The budget recipe's epoch-dependent values: warmup 5% of the run (at least one
    epoch), and a light per-image policy only for runs long enough to need regularizing."""
    if key == "warmup_epochs":
        return max(1, round(0.05 * epochs))
    return "trivialaugment" if epochs >= 40 else "none"


def recipe_defaults(name: str, epochs: int | None) -> dict:
    """The recipe's values as defaults of train.py's flags, the budget recipe's "auto"
    values worked out for the run's --epochs (the recipe's own where not given)."""
    values = dict(RECIPES[name])
    epochs = values["epochs"] if epochs is None else epochs
    return {key: budget_auto_value(key, epochs) if value == "auto" else value for key, value in values.items()}
