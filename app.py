"""The Gradio app (and Hugging Face Space): augmentation preview, patch slicing,
prediction and attention rollout for the ViT trained by train.py.

    python app.py                               # http://127.0.0.1:7860, weights from weights/
    python app.py --model USER/REPO             # weights from a Hub model repo
    VIT_CIFAR_MODEL=USER/REPO python app.py     # the same, as a Space variable would set it

Named API endpoints for gradio_client: /predict, /rollout, /augment, /patches.
"""

from __future__ import annotations

import argparse
import math
import os
import threading
from functools import partial
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from huggingface_hub.utils import HFValidationError, validate_repo_id
from PIL import Image, ImageOps, UnidentifiedImageError

from data import denormalize, tile_patches, to_normalized, train_transform
from rollout import HEAD_FUSIONS, block_attention_map, model_rollout, overlay_heatmap, scale_to_unit
from vit_model import ViT, patchify

HERE = Path(__file__).resolve().parent
BUNDLED_WEIGHTS = HERE / "weights"
EXAMPLES_DIR = HERE / "examples"
MODEL_ENV = "VIT_CIFAR_MODEL"

IMAGE_SIZE = 32
PATCH_SIZES = [p for p in range(1, IMAGE_SIZE + 1) if IMAGE_SIZE % p == 0]
MIN_SIDE = 8
# Decoding cost is what bounds memory: JPEGs are decoded at 1/2 to 1/8 scale (draft
# mode), so a phone photo of any size is cheap; other formats are decoded in full and
# are refused above this many pixels (25 MP: about 100 MB as RGBA).
MAX_DECODED_PIXELS = 25_000_000
MAX_FILE_SIZE = "20mb"
TOP_K = 5
DISPLAY_SIZE = 256

# Queue for a 2-core CPU Space: two requests run at a time, each with one torch thread
# (set in main), so they use both cores without oversubscribing them; more workers
# would only time-slice the same two cores while multiplying the memory held by decoded
# uploads. Requests are milliseconds each, so 64 waiting (32 concurrent callers, twice
# over) drain within seconds; past that a caller is told the queue is full at once
# instead of waiting without bound.
CONCURRENCY_LIMIT = 2
QUEUE_MAX_SIZE = 64

# A 32x32 upload fills the input box with visible pixels instead of sitting in it as a dot.
CSS = "#photo img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"

HOW_IMAGES_ARE_READ = (
    f"Any photo works: it is turned upright (EXIF), transparency is filled with white, "
    f"the first frame of an animation is used, then it is **center-cropped to a square "
    f"and resized to {IMAGE_SIZE}x{IMAGE_SIZE} with antialiasing** (bicubic), the size the "
    f"model was trained on. Files up to {MAX_FILE_SIZE.upper()}; JPEGs of any resolution, "
    f"other formats up to {MAX_DECODED_PIXELS // 1_000_000} megapixels; at least "
    f"{MIN_SIDE}x{MIN_SIDE} pixels.")
NO_IMAGE = "No image: upload a photo or pick one of the examples first."
NOT_AN_IMAGE = "That file is not an image Pillow can read: upload a JPEG, PNG, GIF, WebP, BMP or TIFF."
TOO_MANY_PIXELS = "The image has too many pixels to decode safely; save it smaller."


def user_error(message: str) -> gr.Error:
    """A message for the UI (and the API caller) about their input; not a server fault,
    so no traceback in the log either."""
    return gr.Error(message, print_exception=False)


# ---------------------------------------------------------------- the model

def resolve_model_source(cli_value: str | None) -> str:
    """--model, else $VIT_CIFAR_MODEL, else the bundled weights/ folder."""
    return cli_value or os.environ.get(MODEL_ENV) or str(BUNDLED_WEIGHTS)


def _is_hub_repo_id(source: str) -> bool:
    if Path(source).expanduser().exists() or source.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def _load_folder(folder: Path) -> ViT:
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} has no config.json and model.safetensors")
    return ViT.from_pretrained(folder)


def load_model(source: str) -> tuple[ViT | None, str]:
    """The trained model and a one-line status for the UI, or (None, what to do).

    A Hub repo id that cannot be loaded (no network, no such repo) falls back to the
    bundled weights/; a folder given explicitly does not, so that asking for a folder
    never silently shows another model.
    """
    how_to_fix = (f"Train one (`python train.py ...`) and copy its `export/` files into "
                  f"`{BUNDLED_WEIGHTS.name}/`, or point `--model` / `${MODEL_ENV}` at a Hub "
                  "repo or folder holding `config.json` and `model.safetensors`.")
    if _is_hub_repo_id(source):
        try:
            model = ViT.from_pretrained(source)
            return model.eval(), f"Model: `{source}` from the Hugging Face Hub."
        except Exception as err:  # offline, no such repo, no access, a broken file, ...
            reason = f"could not load `{source}` from the Hub ({type(err).__name__})"
        folder = BUNDLED_WEIGHTS
    else:
        reason, folder = None, Path(source).expanduser()
    try:
        model = _load_folder(folder)
    except Exception as err:
        problem = f"{reason}, and the bundled `{folder.name}/` failed too" if reason else \
            f"no usable weights in `{folder}`"
        return None, (f"**No trained model is loaded** ({problem}: {err}). Prediction and "
                      f"attention rollout are off; the augmentation and patch tabs work. "
                      f"{how_to_fix}")
    where = f"`{folder}`" if folder != BUNDLED_WEIGHTS else f"the bundled `{folder.name}/` folder"
    if reason:
        return model.eval(), f"Model: {where}, because the app {reason}."
    return model.eval(), f"Model: {where}."


def _require(model: ViT | None) -> ViT:
    if model is None:
        raise user_error("No trained model is loaded, so there is nothing to predict with: "
                         "see the note at the top of the page for how to add weights.")
    return model


# ---------------------------------------------------------------- reading a photo

def _flatten_to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (what a viewer shows)."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def load_photo(path: str | os.PathLike | None, size: int = IMAGE_SIZE) -> torch.Tensor:
    """An uploaded file as the uint8 (3, size, size) image the model reads, or a
    gr.Error that says what is wrong with it (see HOW_IMAGES_ARE_READ)."""
    if path is None:
        raise user_error(NO_IMAGE)
    try:
        with Image.open(path) as image:
            width, height = image.size
            if min(width, height) < MIN_SIDE:
                raise user_error(f"The image is {width}x{height} pixels; it needs at least "
                                 f"{MIN_SIDE}x{MIN_SIDE} to show anything.")
            # JPEG only: decode at the smallest 1/2^k scale still 4x the target size.
            image.draft(None, (4 * size, 4 * size))
            if image.width * image.height > MAX_DECODED_PIXELS:
                raise user_error(
                    f"The image is {width}x{height} ({width * height / 1e6:.0f} megapixels), "
                    f"more than the {MAX_DECODED_PIXELS // 1_000_000} megapixels this app "
                    "decodes; save it smaller or as a JPEG.")
            image.load()
            photo = _flatten_to_rgb(ImageOps.exif_transpose(image))
    except gr.Error:
        raise
    except UnidentifiedImageError:
        raise user_error(NOT_AN_IMAGE) from None
    except Image.DecompressionBombError:
        raise user_error(TOO_MANY_PIXELS) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise user_error(f"The image file is damaged or incomplete (for example a truncated "
                         f"download) and cannot be decoded: {err}") from None
    square = ImageOps.fit(photo, (size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(square).copy()).permute(2, 0, 1)


def photo_input(**kwargs) -> gr.Image:
    """A gr.Image that passes the uploaded file's path on untouched, so that load_photo
    does all decoding. gr.Image opens the file with Pillow before any handler runs; a
    file it cannot even open would end there as a bare "Error", so that step is wrapped
    to say what is wrong. (Wrapped on the instance: a gr.Image subclass would make gradio
    write an app.pyi stub next to this file.)"""
    component = gr.Image(type="filepath", image_mode=None, **kwargs)
    preprocess = component.preprocess

    def readable_preprocess(payload):
        try:
            return preprocess(payload)
        except UnidentifiedImageError:
            raise user_error(NOT_AN_IMAGE) from None
        except Image.DecompressionBombError:
            raise user_error(TOO_MANY_PIXELS) from None

    component.preprocess = readable_preprocess
    return component


# ---------------------------------------------------------------- what each tab shows

def enlarge(image: torch.Tensor, size: int = DISPLAY_SIZE) -> np.ndarray:
    """(3, h, w) uint8 or [0, 1] float -> (size, size, 3) uint8 with square pixels, so a
    32x32 image stays crisp in the browser instead of being smoothed."""
    if image.is_floating_point():
        image = (image * 255).round().to(torch.uint8)
    scale = size // image.shape[-1]
    return image.repeat_interleave(scale, 1).repeat_interleave(scale, 2).permute(1, 2, 0).numpy()


def classify(model: ViT, image: torch.Tensor) -> dict[str, float]:
    """Class probabilities for a uint8 (3, 32, 32) image, normalized with the mean/std
    stored in the model's config."""
    return label_dict(model, model.predict_proba(to_normalized(image[None], model.mean, model.std))[0])


def label_dict(model: ViT, probs: torch.Tensor) -> dict[str, float]:
    """{class name: probability}, what gr.Label shows."""
    return {name: float(p) for name, p in zip(model.class_names, probs)}


_RNG_LOCK = threading.Lock()


def augmented_views(image: torch.Tensor, count: int, seed: int, mean, std) -> list[torch.Tensor]:
    """`count` draws of the exact training transform (data.train_transform), de-normalized
    to [0, 1]. The transform draws from torch's global generator, which the server's
    threads share: the lock and fork_rng keep one request's seed from leaking into another."""
    transform = train_transform(mean, std, image.shape[-1])
    with _RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [denormalize(transform(image), mean, std) for _ in range(count)]


def tile_enlarged(patches: torch.Tensor, columns: int, cell: int, gap: int) -> np.ndarray:
    """(N, 3, p, p) uint8 patches, each enlarged to cell x cell pixels, tiled in rows of
    `columns` with `gap` white pixels between them; returns (H, W, 3) uint8."""
    scale = cell // patches.shape[-1]
    big = patches.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    return tile_patches(big, columns, gap, fill=255).permute(1, 2, 0).numpy()


def patch_views(image: torch.Tensor, patch_size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The image cut into patches: (grid with gaps, token sequence, caption)."""
    size = image.shape[-1]
    if patch_size not in PATCH_SIZES:
        raise user_error(f"Patch size {patch_size} does not divide {size}; use one of "
                         f"{', '.join(map(str, PATCH_SIZES))}.")
    patches = patchify(image[None], patch_size)[0].view(-1, 3, patch_size, patch_size)
    n = len(patches)
    scale = DISPLAY_SIZE // size
    grid = tile_enlarged(patches, size // patch_size, patch_size * scale, 4)
    # The sequence wraps like text, four times wider than tall (so it cannot be mistaken
    # for the grid) and about 770 pixels wide, whatever the patch size.
    columns = min(n, 2 * math.isqrt(n))
    cell = patch_size * min(scale, max(1, (770 // columns - 2) // patch_size))
    sequence = tile_enlarged(patches, columns, cell, 2)
    caption = (f"**{n} patches of {patch_size}x{patch_size}** ({size // patch_size} x "
               f"{size // patch_size}). The model reads them left to right, top to bottom, "
               f"each flattened to 3x{patch_size}x{patch_size} = {3 * patch_size ** 2} numbers "
               f"and projected to one token, after a learned class token: "
               f"{n + 1} tokens in all.")
    return grid, sequence, caption


# ---------------------------------------------------------------- the tabs' handlers

def predict(model: ViT | None, image: str | None) -> dict[str, float]:
    """/predict: class probabilities for an image file."""
    model = _require(model)
    return classify(model, load_photo(image, model.image_size))


def augment(mean, std, image: str | None, count: int, seed: int | None) -> list[tuple[np.ndarray, str]]:
    """/augment: the image at 32x32, then `count` augmented versions."""
    return augment_gallery(mean, std, load_photo(image), count, seed)


def augment_gallery(mean, std, small: torch.Tensor, count: int, seed: int | None):
    """The gallery of /augment for an already decoded 32x32 image."""
    if not 1 <= count <= 32:
        raise user_error(f"Ask for 1 to 32 augmented versions, not {count}.")
    if seed is None:
        raise user_error("Enter a seed: any whole number from 0 up gives repeatable draws.")
    views = augmented_views(small, int(count), int(seed), mean, std)
    return [(enlarge(small, 128), f"input, {IMAGE_SIZE}x{IMAGE_SIZE}")] + \
        [(enlarge(v, 128), f"augmented {i + 1}") for i, v in enumerate(views)]


def patches(image: str | None, patch_size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """/patches: the grid of patches, the token sequence, and a caption."""
    return patch_views(load_photo(image), int(patch_size))


def _head_value(head: str) -> int | str:
    """Dropdown choice -> head index or fusion: "head 3" -> 2, "mean" -> "mean"."""
    return int(head.split()[1]) - 1 if head.startswith("head ") else head


def rollout(model: ViT | None, image: str | None, head_fusion: str, discard_ratio: float,
            block_head: str) -> tuple[np.ndarray, list[tuple[np.ndarray, str]], str]:
    """/rollout: the rollout heatmap over the image, each block's raw attention for one
    head (or the heads fused), and the prediction it explains."""
    model = _require(model)
    return explain(model, load_photo(image, model.image_size), head_fusion, discard_ratio,
                   block_head)[1:]


def explain(model: ViT, small: torch.Tensor, head_fusion: str, discard_ratio: float,
            block_head: str) -> tuple[dict[str, float], np.ndarray, list[tuple[np.ndarray, str]], str]:
    """One forward pass with attention for a decoded image: the class probabilities,
    and what /rollout shows (heatmap, block-by-block maps, caption)."""
    if head_fusion not in HEAD_FUSIONS:
        raise user_error(f"Head fusion must be one of {', '.join(HEAD_FUSIONS)}.")
    if not 0 <= discard_ratio < 1:
        raise user_error(f"The discard ratio must be at least 0 and below 1, not {discard_ratio}.")
    heads = model.blocks[0].attn.num_heads
    head = _head_value(block_head)
    if isinstance(head, int) and not 0 <= head < heads:
        raise user_error(f"The model has heads 1 to {heads}, not {block_head!r}.")
    x = to_normalized(small[None], model.mean, model.std)
    logits, maps, attentions = model_rollout(model, x, head_fusion, discard_ratio)
    blocks = [(overlay_heatmap(small, scale_to_unit(block_attention_map(attentions, b, head))[0]),
               f"block {b + 1}") for b in range(len(attentions))]
    probs = logits.softmax(-1)[0]
    best = int(probs.argmax())
    summary = (f"Explaining the prediction **{model.class_names[best]}** "
               f"({100 * float(probs[best]):.1f}%).")
    return label_dict(model, probs), overlay_heatmap(small, scale_to_unit(maps)[0]), blocks, summary


# ---------------------------------------------------------------- the page

def build_demo(model: ViT | None, status: str) -> gr.Blocks:
    """The four-tab app for a loaded model (or None: the model tabs then explain why)."""
    # Normalizing then de-normalizing cancels out, so without a model any statistics
    # show the augmentation exactly as training does it.
    mean, std = (model.mean, model.std) if model is not None else ([0.5] * 3, [0.5] * 3)
    heads = model.blocks[0].attn.num_heads if model is not None else 0
    default_patch = model.patch_size if model is not None else 4
    examples = sorted(str(p) for p in EXAMPLES_DIR.glob("*.jpg"))

    with gr.Blocks(title="ViT on CIFAR-10") as demo:
        gr.Markdown("# A Vision Transformer trained from scratch on CIFAR-10\n" + status)
        with gr.Row():
            with gr.Column(scale=2):
                image = photo_input(label="Image", sources=["upload", "clipboard"], height=260,
                                    elem_id="photo")
                gr.Markdown(HOW_IMAGES_ARE_READ)
                gr.Examples(examples, inputs=image, examples_per_page=len(examples) or 1,
                            cache_examples=False,
                            label="CIFAR-10 validation images (the model never trained on them)")
            with gr.Column(scale=3):
                with gr.Tabs():
                    with gr.Tab("Augmentation", id="augment"):
                        gr.Markdown("The exact training transform (random horizontal flip, "
                                    "then a random resized crop of 80-100% of the area), "
                                    "shown de-normalized.")
                        with gr.Row():
                            count = gr.Slider(1, 32, value=8, step=1, label="Augmented versions")
                            seed = gr.Number(0, precision=0, minimum=0, maximum=2**32 - 1, label="Seed")
                        augment_button = gr.Button("Augment", variant="primary")
                        views = gr.Gallery(label="Augmented", columns=6, height=400, format="png")
                    with gr.Tab("Patches", id="patches"):
                        patch_size = gr.Radio(PATCH_SIZES, value=default_patch,
                                              label="Patch size (divides 32)")
                        patch_button = gr.Button("Slice", variant="primary")
                        patch_caption = gr.Markdown()
                        grid = gr.Image(label="Patches", format="png", height=300)
                        sequence = gr.Image(label="Token sequence", format="png", height=180)
                    with gr.Tab("Prediction", id="predict"):
                        predict_button = gr.Button("Classify", variant="primary")
                        label = gr.Label(num_top_classes=TOP_K, label=f"Top {TOP_K} classes")
                    with gr.Tab("Attention rollout", id="rollout"):
                        gr.Markdown("Which patches the class token drew from, through all "
                                    "blocks and the residual paths (Abnar & Zuidema, 2020).")
                        with gr.Row():
                            fusion = gr.Radio(list(HEAD_FUSIONS), value="mean", label="Head fusion")
                            discard = gr.Slider(0, 0.95, value=0.0, step=0.05, label="Discard ratio",
                                                info="drop this fraction of the weakest "
                                                     "patch-to-patch attentions")
                        block_head = gr.Dropdown(list(HEAD_FUSIONS) + [f"head {h + 1}" for h in range(heads)],
                                                 value="mean", label="Block by block: head")
                        rollout_button = gr.Button("Explain", variant="primary")
                        rollout_caption = gr.Markdown()
                        heatmap = gr.Image(label="Attention rollout", format="png", height=300)
                        block_maps = gr.Gallery(label="Raw attention of the class token, block by block",
                                                columns=6, height=200, format="png")

        # Each tab's button (and its controls) is a named API endpoint: a missing image
        # there is an error worth showing.
        tabs = [
            (partial(augment, mean, std), [image, count, seed], [views], augment_button,
             [count, seed], "augment"),
            (patches, [image, patch_size], [grid, sequence, patch_caption], patch_button,
             [patch_size], "patches"),
            (partial(predict, model), [image], [label], predict_button, [], "predict"),
            (partial(rollout, model), [image, fusion, discard, block_head],
             [heatmap, block_maps, rollout_caption], rollout_button, [fusion, discard, block_head],
             "rollout"),
        ]
        for fn, inputs, outputs, button, controls, name in tabs:
            # always_last: dragging a slider computes its final value, not every step on the way.
            gr.on([button.click] + [c.change for c in controls], fn, inputs, outputs, api_name=name,
                  trigger_mode="always_last")

        # A new image refreshes every tab in one private call (so a bad file shows one
        # message, not four); clearing the image clears them without complaint.
        all_inputs = [image, count, seed, patch_size, fusion, discard, block_head]
        all_outputs = [o for tab in tabs for o in tab[2]]

        def refresh(path, count_, seed_, patch_, fusion_, discard_, head_):
            if path is None:
                return [None] * len(all_outputs)
            # Decoded once, and one forward pass serves both the prediction and the rollout.
            small = load_photo(path)
            model_outputs = [None, None, None, None] if model is None else \
                list(explain(model, small, fusion_, discard_, head_))
            return [augment_gallery(mean, std, small, count_, seed_),
                    *patch_views(small, int(patch_)), *model_outputs]

        image.change(refresh, all_inputs, all_outputs, api_visibility="private")
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=QUEUE_MAX_SIZE)
    return demo


def serve(demo: gr.Blocks, host: str, port: int, block: bool = True):
    """Launch with the app's limits; block=False returns at once (for tests)."""
    return demo.launch(server_name=host, server_port=port, max_file_size=MAX_FILE_SIZE,
                       prevent_thread_lock=not block, show_error=False, quiet=not block, css=CSS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help=f"Hub repo id or local folder with config.json and model.safetensors "
                             f"(default: ${MODEL_ENV}, else the bundled {BUNDLED_WEIGHTS.name}/)")
    # A Space sets GRADIO_SERVER_NAME=0.0.0.0; locally the app stays on this machine.
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to serve on, default $GRADIO_SERVER_NAME or 127.0.0.1 "
                             "(0.0.0.0 to reach it from other machines)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port to serve on, default $GRADIO_SERVER_PORT or 7860")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per concurrent request; see CONCURRENCY_LIMIT
    model, status = load_model(resolve_model_source(args.model))
    print(status.replace("`", "").replace("**", ""), flush=True)
    serve(build_demo(model, status), args.host, args.port)


if __name__ == "__main__":
    main()
