"""What each `--recipe` of train.py sets, and how the budget recipe's values follow --epochs.

Every entry is also a flag of train.py's own, which wins over the recipe; the resolved
values are saved with the run (last.pt, training.json, model card).
"""

from __future__ import annotations

from loop import ASSIGNMENT_EPOCHS

RECIPES = {
    # The course assignment, exactly: MultiStepLR, flip + mild crop, every dropout 0.2
    # (nn.MultiheadAttention's dropout on the attention weights included).
    "assignment": dict(epochs=ASSIGNMENT_EPOCHS, lr=5e-4, weight_decay=0.05, schedule="step",
                       warmup_epochs=0, label_smoothing=0.0, policy="none", mixup_alpha=0.0,
                       cutmix_alpha=0.0, dropout=0.2, attn_dropout=0.2, drop_path=0.0,
                       decay_all=True, ema=0.0, patch_keep=1.0),
    # The same architecture trained as ViT-Lite / DeiT-style recipes train small ViTs.
    "strong": dict(epochs=200, lr=5e-4, weight_decay=0.05, schedule="cosine",
                   warmup_epochs=10, label_smoothing=0.1, policy="autoaugment", mixup_alpha=0.8,
                   cutmix_alpha=1.0, dropout=0.0, attn_dropout=0.1, drop_path=0.1,
                   decay_all=False, ema=0.0, patch_keep=1.0),
    # Most accuracy per training FLOP at a fixed --epochs (README, "The budget recipe"):
    # warmup then linear decay to zero over exactly this run, no dropout, drop path, half
    # the patches per training image; "auto" values follow --epochs (budget_value).
    "budget": dict(epochs=30, lr=5e-4, weight_decay=0.05, schedule="linear",
                   warmup_epochs="auto", label_smoothing=0.1, policy="auto", mixup_alpha=0.0,
                   cutmix_alpha=0.0, dropout=0.0, attn_dropout=0.0, drop_path=0.1,
                   decay_all=False, ema=0.0, patch_keep=0.5),
}
POLICIES = ["none", "autoaugment", "randaugment", "trivialaugment"]


def recipe_help(key: str, what: str) -> str:
    values = ", ".join(f"{name} {recipe[key]}" for name, recipe in RECIPES.items())
    return f"{what} [recipe: {values}]"


def budget_value(key: str, epochs: int) -> int | str:
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
    return {key: budget_value(key, epochs) if value == "auto" else value
            for key, value in values.items()}
