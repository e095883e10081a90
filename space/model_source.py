"""The app's model: named (a folder or a Hub repo), fetched, checked and loaded
(common.model_folder), with the status line the page shows; a Hub repo that fails falls
back to the bundled folder, a folder asked for by name does not."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.utils import HFValidationError, validate_repo_id

from common.model_folder import HUB_FILES, ModelError, load_folder, read_training
from vit_model import ViT


@dataclass
class Loaded:
    """A loaded model (or None, and why in `problem`), the status line for the page, its
    folder and training.json."""

    model: ViT | None
    status: str
    folder: Path | None = None
    training: dict = field(default_factory=dict)
    problem: str = ""


def is_hub_repo_id(source: str) -> bool:
    """Whether `source` names a Hub repo rather than a folder. A name under a folder that
    exists here (runs/exp1 beside runs/) is a folder, even if mistyped: it must say so,
    not fall back to the bundled model as an unreachable repo does."""
    path = Path(source).expanduser()
    if path.exists() or source.startswith((".", "/", "~")) or (path.parts and Path(path.parts[0]).is_dir()):
        return False
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def _how_to_fix(bundled: Path, env: str) -> str:
    return (
        f"Train one (`python train.py ...`) and copy its `export/` files into "
        f"`{bundled.name}/`, or point `--model` / `${env}` at a Hub repo or folder "
        "holding `config.json` and `model.safetensors`."
    )


def load_model(source: str, bundled: Path, env: str) -> Loaded:
    """The model named by `source` (a Hub repo id or a folder), checked.

    A Hub repo that cannot be loaded (offline, no such repo, refused) falls back to the
    bundled folder; a folder given explicitly does not, so that asking for a folder
    never silently shows another model.
    """
    reason, folder = None, Path(source).expanduser()
    if is_hub_repo_id(source):
        try:
            folder = Path(snapshot_download(source, allow_patterns=HUB_FILES))
            model = load_folder(folder)
            return Loaded(model, f"Model: `{source}` from the Hugging Face Hub.", folder, read_training(folder))
        except Exception as err:  # offline, no such repo, no access, a model refused, ...
            detail = f": {err}" if isinstance(err, ModelError) else f" ({type(err).__name__})"
            reason, folder = f"could not load `{source}` from the Hub{detail}", bundled
    try:
        model = load_folder(folder)
    except Exception as err:
        problem = (
            f"{reason}, and the bundled `{folder.name}/` failed too" if reason else f"no usable weights in `{folder}`"
        )
        return Loaded(
            None,
            f"**No trained model is loaded** ({problem}: {err}). Prediction, "
            f"attention rollout and mistakes are off; the augmentation and "
            f"patch tabs work. {_how_to_fix(bundled, env)}",
            problem=f"{problem}: {err}",
        )
    where = f"`{folder}`" if folder != bundled else f"the bundled `{folder.name}/` folder"
    status = f"Model: {where}, because the app {reason}." if reason else f"Model: {where}."
    return Loaded(model, status, folder, read_training(folder))


def source_from(cli_value: str | None, bundled: Path, env: str) -> str:
    """--model, else $env, else the bundled folder."""
    return cli_value or os.environ.get(env) or str(bundled)
