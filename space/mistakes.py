"""The validation images a model gets wrong: a small bundled sample, and the mistakes on it.

The sample (examples/val_sample.npz) holds 50 images per CIFAR-10 class drawn from the
project's validation split (data.split_indices of the training split, 5000 images, split
seed 0), which every model trained on that split (the bundled ones included) held out;
the app says so when the served model's training.json shows another split. It loads it with
allow_pickle=False, runs the loaded model on it once (in the background at start-up),
and shows the mistakes with their top 3 and their attention rollout.

    python -m tools.rebuild_sample --data-dir /path/to/cifar10-jpeg    # rebuild the sample
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cnn_model import CNN
from common.model_folder import attention_bytes
from rollout import model_rollout, scale_to_unit
from space.pictures import attention_overlay, enlarge
from vit_model import ViT

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "val_sample.npz"
PER_CLASS, VAL_SIZE, SPLIT_SEED, PICK_SEED = 50, 5000, 0, 0
ANY = "any"
# The attention maps one batch of find_mistakes may hold (the bundled model: 81 MB for 100).
BATCH_ATTENTION_BYTES = 256_000_000


@dataclass
class Sample:
    images: torch.Tensor  # (N, 3, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    class_names: list[str]
    description: str


@dataclass
class Mistakes:
    sample: Sample
    probs: torch.Tensor  # (N, classes) of the loaded model
    maps: torch.Tensor  # (N, h, w) the ViT's rollout or the CNN's activation map, each scaled to its maximum
    wrong: list[int]  # sample positions the model gets wrong, most confident first


def build_sample(data_dir: str | os.PathLike, out: str | os.PathLike = SAMPLE) -> Path:
    """Draw PER_CLASS validation images per class (seeded) and save them as one .npz."""
    from common.atomic_files import atomic_write
    from data import load_split, split_indices

    train = load_split(data_dir, "train")
    _, val = split_indices(len(train), VAL_SIZE, SPLIT_SEED)
    order = val[torch.randperm(len(val), generator=torch.Generator().manual_seed(PICK_SEED))]
    chosen = torch.cat([order[train.labels[order] == k][:PER_CLASS] for k in range(len(train.class_names))])
    description = (
        f"{PER_CLASS} images per class drawn at random (seed {PICK_SEED}) from the "
        f"{VAL_SIZE} validation images of the training split (split seed "
        f"{SPLIT_SEED}), held out from training by every model trained on that "
        "split, the bundled ones included"
    )
    arrays = {
        "images": train.images[chosen].permute(0, 2, 3, 1).numpy(),
        "labels": train.labels[chosen].numpy(),
        "indices": chosen.numpy(),
        "class_names": np.array(train.class_names),
        "description": np.array(description),
    }
    atomic_write(out, lambda file: np.savez_compressed(file, **arrays))
    return Path(out)


def load_sample(path: str | os.PathLike = SAMPLE) -> Sample:
    """The bundled sample; ValueError, naming the cause, if it is missing or malformed."""
    keys = ("images", "labels", "class_names", "description")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in keys if k in data.files}
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a readable .npz file ({type(err).__name__})") from None
    if missing := [k for k in keys if k not in arrays]:
        raise ValueError(f"{path} lacks the arrays {', '.join(missing)}")
    images, labels = arrays["images"], arrays["labels"]
    names, description = [str(n) for n in arrays["class_names"]], str(arrays["description"])
    if (
        images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[-1] != 3
        or labels.shape != images.shape[:1]
        or not ((0 <= labels) & (labels < len(names))).all()
    ):
        raise ValueError(f"{path} does not hold uint8 RGB images with labels for {len(names)} classes")
    return Sample(
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(labels.astype(np.int64)),
        names,
        description,
    )


@torch.no_grad()
def find_mistakes(model: ViT, sample: Sample, batch: int = 100) -> Mistakes:
    """Run the model (with attention, for the rollout) over the sample at its input size,
    in batches of at most `batch` whose attention maps fit BATCH_ATTENTION_BYTES."""
    from data import to_normalized

    per_image = attention_bytes(len(model.blocks), model.blocks[0].attn.num_heads, model.pos_embed.shape[1])
    batch = max(1, min(batch, BATCH_ATTENTION_BYTES // per_image))
    images = sample.images
    if images.shape[-1] != model.image_size:
        images = (
            F.interpolate(images.float(), size=model.image_size, mode="bicubic", antialias=True)
            .round()
            .clamp(0, 255)
            .to(torch.uint8)
        )
    probs, maps = [], []
    for start in range(0, len(images), batch):
        x = to_normalized(images[start : start + batch], model.mean, model.std)
        logits, rollout, _ = model_rollout(model, x)
        probs.append((logits.float() / model.temperature).softmax(-1))  # calibrated, as on the page
        maps.append(scale_to_unit(rollout))
    resized = Sample(images, sample.labels, sample.class_names, sample.description)
    return ranked_mistakes(resized, torch.cat(probs), torch.cat(maps))


@torch.no_grad()
def find_cnn_mistakes(model: CNN, sample: Sample) -> Mistakes:
    """The CNN's answers over the sample (32x32, as the CNN reads it), each with the class
    activation map of the class it chose."""
    from data import to_normalized

    x = to_normalized(sample.images, model.mean, model.std)
    logits = torch.cat([model(c) for c in x.split(250)]).float()
    chosen = logits.argmax(1)
    maps = torch.cat([model.cam(c, k) for c, k in zip(x.split(250), chosen.split(250))])
    return ranked_mistakes(sample, (logits / model.temperature).softmax(-1), scale_to_unit(maps.clamp(min=0)))


def ranked_mistakes(sample: Sample, probs: torch.Tensor, maps: torch.Tensor) -> Mistakes:
    """The sample's wrong answers under these probabilities, most confident first."""
    confidence, predicted = probs.max(-1)
    wrong = (predicted != sample.labels).nonzero().flatten()
    wrong = wrong[confidence[wrong].argsort(descending=True)].tolist()
    return Mistakes(sample, probs, maps, wrong)


def select(mistakes: Mistakes, true: str, predicted: str) -> list[int]:
    """The mistakes with the given true and predicted class (ANY for either); the
    caller has checked that each is ANY or one of the sample's classes."""
    names = mistakes.sample.class_names
    return [
        i
        for i in mistakes.wrong
        if (true == ANY or names[mistakes.sample.labels[i]] == true)
        and (predicted == ANY or names[int(mistakes.probs[i].argmax())] == predicted)
    ]


def picture(mistakes: Mistakes, i: int, size: int = 96, gap: int = 4) -> tuple[np.ndarray, str]:
    """One mistake: the image beside its rollout, and a caption with the top 3. The image
    is enlarged by a whole factor, to `size` or just under it (never smaller than itself),
    and the rollout drawn at the same size."""
    image = mistakes.sample.images[i]
    crisp = enlarge(image, size)
    overlay = attention_overlay(image, mistakes.maps[i], crisp.shape[0])
    white = np.full((crisp.shape[0], gap, 3), 255, np.uint8)
    names = mistakes.sample.class_names
    top = mistakes.probs[i].topk(3)
    guesses = ", ".join(f"{names[k]} {100 * float(p):.0f}%" for p, k in zip(top.values, top.indices))
    caption = f"{names[mistakes.sample.labels[i]]} → {guesses}"
    return np.concatenate([crisp, white, overlay], axis=1), caption


def sample_caveat(training: dict) -> str:
    """The bundled sample is held out from the split the bundled weights used; a model
    trained on another split (or whose training.json does not say) may have seen some."""
    if (training.get("split_seed"), training.get("val_images")) == (SPLIT_SEED, VAL_SIZE):
        return ""
    return (
        " **This model's training.json does not show the same validation split, so it "
        "may have trained on some of these images.**"
    )
