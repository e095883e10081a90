"""A model folder, as train.py exports it and as the app and --init-from read it:
config.json and model.safetensors, and, from train.py, training.json (recipe, validation
figures) and the run's plots. Nothing here is trusted: a config or weights that cannot
give right answers (missing or non-finite normalization statistics, wrong lengths, sizes
beyond reason, non-finite parameters) are refused at load with the reason."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import torch

from cnn_model import CNN
from vit_model import ViT

# The run's plots, in the order the card and the app show them, with the app's titles.
FIGURES = {
    "curves.png": "Training curves",
    "time_to_accuracy.png": "Time to accuracy",
    "confusion_matrix.png": "Confusion matrix",
    "per_class_accuracy.png": "Per-class accuracy",
    "predictions.png": "Predictions",
    "reliability.png": "Calibration (reliability diagram)",
}
TRAINING_FILE = "training.json"
HUB_FILES = ["config.json", "model.safetensors", TRAINING_FILE, "README.md", *FIGURES]
# Sizes "beyond reason" for this app: far above any ViT that fits a free CPU Space,
# far below what would exhaust its memory while the model is built.
LIMITS = {
    "image_size": (8, 512),
    "patch_size": (1, 64),
    "in_channels": (3, 3),
    "num_classes": (2, 1000),
    "dim": (8, 2048),
    "depth": (1, 48),
    "heads": (1, 32),
    "mlp_dim": (8, 8192),
}
MAX_PARAMETERS = 200_000_000
# At most a 32x32 grid of patches and the class token; and since the rollout and the
# block-by-block maps keep every block's attention (depth x heads x tokens^2 floats for
# one image), that is bounded too: the bundled model's take 0.8 MB.
MAX_TOKENS = 1025
MAX_ATTENTION_BYTES = 512_000_000


class ModelError(ValueError):
    """Why a model cannot be served."""


def _number_list(config: dict, key: str, length: int) -> list[float]:
    values = config.get(key)
    if not isinstance(values, list) or not values:
        raise ModelError(f"config.json has no `{key}` list: the app cannot normalize images as in training without it")
    if len(values) != length:
        raise ModelError(f"config.json `{key}` has {len(values)} values for {length} channels")
    if not all(map(_number, values)):
        raise ModelError(f"config.json `{key}` must hold finite numbers, not {values}")
    return [float(v) for v in values]


def check_config(config: dict) -> None:
    """Raise ModelError unless the config describes a model this app can build and serve."""
    if not isinstance(config, dict):
        raise ModelError("config.json does not hold a JSON object")
    sizes = {}
    for key, (low, high) in LIMITS.items():
        value = config.get(key, _default(key))
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ModelError(f"config.json `{key}` is {value!r}; this app serves {low} to {high}")
        sizes[key] = value
    if sizes["image_size"] % sizes["patch_size"] or sizes["dim"] % sizes["heads"]:
        raise ModelError(
            "config.json sizes do not fit together (patch_size must divide image_size, heads must divide dim)"
        )
    grid = sizes["image_size"] // sizes["patch_size"]
    dim, tokens = sizes["dim"], grid**2 + 1
    if tokens > MAX_TOKENS:
        raise ModelError(
            f"config.json describes {tokens} tokens ({grid}x{grid} patches and the "
            f"class token), more than the {MAX_TOKENS} this app serves"
        )
    maps = attention_bytes(sizes["depth"], sizes["heads"], tokens)
    if maps > MAX_ATTENTION_BYTES:
        raise ModelError(
            f"config.json describes attention maps of {maps / 1e6:.0f} MB for one "
            f"image (depth x heads x tokens^2 floats), more than the "
            f"{MAX_ATTENTION_BYTES // 1_000_000} MB this app serves"
        )
    per_block = 4 * dim * dim + 2 * dim * sizes["mlp_dim"]
    parameters = sizes["depth"] * per_block + tokens * dim + sizes["num_classes"] * dim
    if parameters > MAX_PARAMETERS:
        raise ModelError(
            f"config.json describes about {parameters / 1e6:.0f}M parameters, "
            f"more than the {MAX_PARAMETERS // 1_000_000}M this app serves"
        )
    _number_list(config, "mean", sizes["in_channels"])
    if min(_number_list(config, "std", sizes["in_channels"])) <= 0:
        raise ModelError(f"config.json `std` must be above 0, not {config['std']}")
    widths = config.get("widths", [1])
    if (
        not isinstance(widths, list)
        or not 1 <= len(widths) <= 8
        or not all(_whole(w) and 1 <= w <= 2048 for w in widths)
    ):
        raise ModelError(f"config.json `widths` must be 1 to 8 whole numbers from 1 to 2048, not {widths!r}")
    temperature = config.get("temperature", 1.0)
    if not _number(temperature) or temperature <= 0:
        raise ModelError(f"config.json `temperature` must be a finite number above 0, not {temperature!r}")
    threshold = config.get("known_threshold")
    if threshold is not None and not _number(threshold):
        raise ModelError(f"config.json `known_threshold` must be a finite number or null, not {threshold!r}")
    names = config.get("class_names")
    if names is not None and (
        not isinstance(names, list)
        or len(names) != sizes["num_classes"]
        or not all(isinstance(n, str) and n for n in names)
    ):
        raise ModelError(f"config.json `class_names` must be {sizes['num_classes']} names")


def attention_bytes(depth: int, heads: int, tokens: int) -> int:
    """What every block's attention maps for one image take, as float32."""
    return 4 * depth * heads * tokens**2


def _default(key: str):
    """ViT's default for a size the config leaves out."""
    return inspect.signature(ViT.__init__).parameters[key].default


def load_folder(folder: Path, model_class: type[ViT] | type[CNN] = ViT) -> ViT | CNN:
    """The checked model of `model_class` in a folder, in eval mode; ModelError or
    OSError otherwise."""
    config_path, weights = folder / "config.json", folder / "model.safetensors"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist")
    if not config_path.is_file() or not weights.is_file():
        export = folder / "export"
        hint = (
            f": it looks like a training run's folder; did you mean {export}?"
            if (export / "config.json").is_file()
            else ""
        )
        raise FileNotFoundError(f"{folder} has no config.json and model.safetensors{hint}")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"config.json is not valid JSON ({err})") from None
    check_config(config)
    held = CNN if "widths" in config else ViT
    if held is not model_class:
        raise ModelError(f"{folder} holds a {held.__name__}, not a {model_class.__name__}")
    model = model_class.from_pretrained(folder).eval()
    broken = [name for name, p in model.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]
    if broken:
        raise ModelError(
            f"the weights hold NaN or infinite values ({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''})"
        )
    return model


def read_training(folder: Path | None) -> dict:
    """The fields of a model folder's training.json that the page shows, each kept only
    if it can be right (a field of the wrong type, non-finite or out of range is left
    out, and the page says "unknown"); {} when there is none."""
    path = folder / "training.json" if folder is not None else None
    if path is None or not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return {}
    if not isinstance(info, dict):
        return {}
    kept = {key: info[key] for key, right in TRAINING_FIELDS.items() if key in info and right(info[key])}
    per_class, names = info.get("per_class_acc"), kept.get("class_names")
    if (
        isinstance(per_class, list)
        and names is not None
        and len(per_class) == len(names)
        and all(map(_fraction, per_class))
    ):
        kept["per_class_acc"] = per_class
    return kept


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fraction(value) -> bool:
    """A finite number from 0 to 1 (an accuracy)."""
    return _number(value) and 0 <= value <= 1


def _text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


TRAINING_FIELDS = {
    "recipe": _text,
    "recipe_description": _text,
    "data": _text,
    "machine": _text,
    "epochs": lambda v: _whole(v) and v > 0,
    "val_images": lambda v: _whole(v) and v > 0,
    "split_seed": lambda v: _whole(v) and v >= 0,
    "training_minutes": lambda v: _number(v) and v > 0,
    "val_acc": _fraction,
    "val_acc_flip_tta": _fraction,
    "started_from": _text,
    "distilled_from": _text,
    "epochs_before": lambda v: _whole(v) and v > 0,
    "class_names": lambda v: isinstance(v, list) and bool(v) and all(map(_text, v)),
    "calibration": lambda v: (
        isinstance(v, dict)
        and all(_number(v.get(k)) for k in ("temperature", "known_threshold"))
        and v["temperature"] > 0
        and all(_fraction(v.get(k)) for k in ("ece_before", "ece_after", "known_fraction"))
        and _whole(v.get("images"))
        and v["images"] > 0
    ),
}
