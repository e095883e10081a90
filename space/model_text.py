"""What the page says about the loaded model, from its config and training.json: the
header line and the results table, each value shown as literal text (a model folder is
not trusted to write the page's markup)."""

from __future__ import annotations

from calibration import in_words as calibration_in_words
from space.model_source import Loaded


def markdown_text(value: object) -> str:
    """A value from a model folder as literal text on one line of a Markdown table: its
    own markup, HTML and table pipes shown, not obeyed."""
    text = " ".join(str(value).split())
    return "".join("\\" + c if c in "\\`*_[]<>|#~!$" else c for c in text)


def header(loaded: Loaded) -> str:
    """What to expect: the classes, the input, and the loaded model's figures."""
    info, model = loaded.training, loaded.model
    if model is None:
        return ""
    accuracy = (
        (
            f"{100 * info['val_acc']:.1f}%"
            + (f" on {info['val_images']} held-out images" if info.get("val_images") else "")
        )
        if "val_acc" in info
        else "unknown"
    )
    recipe = markdown_text(info.get("recipe") or "unknown")
    if info.get("epochs"):  # a fine-tuned model: the epochs it started from, then its own
        recipe += (
            f", {info['epochs_before']} + {info['epochs']} epochs"
            if info.get("epochs_before")
            else f", {info['epochs']} epochs"
        )
    return (
        f"Sorts any photo into one of **{len(model.class_names)} classes** "
        f"({markdown_text(', '.join(model.class_names))}) from a **{model.image_size}x{model.image_size}** "
        f"input. Validation accuracy: **{accuracy}**; training recipe: **{recipe}**."
    )


def results_markdown(loaded: Loaded) -> str:
    """The training settings and validation figures from training.json ("" if none)."""
    info = loaded.training
    rows = [
        ("recipe", info.get("recipe")),
        ("settings", info.get("recipe_description")),
        ("epochs", info.get("epochs")),
        ("started from", info.get("started_from")),
        ("teacher", info.get("distilled_from")),
        ("validation accuracy", f"{100 * info['val_acc']:.2f}%" if "val_acc" in info else None),
        ("validation with flip TTA", f"{100 * info['val_acc_flip_tta']:.2f}%" if "val_acc_flip_tta" in info else None),
        ("validation images", info.get("val_images")),
        ("data", info.get("data")),
        ("machine", info.get("machine")),
        ("training time", f"{info['training_minutes']} min" if info.get("training_minutes") else None),
        ("calibration", calibration_in_words(info["calibration"]) if "calibration" in info else None),
    ]
    if "per_class_acc" in info:  # checked against class_names by read_training
        rows.append(
            (
                "per-class accuracy",
                ", ".join(f"{n} {100 * a:.1f}%" for n, a in zip(info["class_names"], info["per_class_acc"])),
            )
        )
    rows = [(k, v) for k, v in rows if v not in (None, "")]
    return (
        "\n".join(
            ["| | as recorded in training.json |", "|---|---|", *(f"| {k} | {markdown_text(v)} |" for k, v in rows)]
        )
        if rows
        else ""
    )
